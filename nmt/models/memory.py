"""The counted memory of one training batch, per side: what `Seq2Seq.training_loss` returns.

`ModelMemory` holds one `MemoryAccount` (nmt.reversible.accounting) per reversible side, their
`total`, and the bytes each side's reversible run measured it kept. It reads as the flat figures
the trainer logs (`as_dict()`, or the mapping itself): encoder_ratio, encoder_optimal_ratio,
decoder_ratio, decoder_optimal_ratio (normal / used and normal / optimal bits) and activation_mib.
A model that counts nothing returns an empty ModelMemory (an empty mapping).

Conventions of the counts (kept as they are for now): a side that shares the buffer with a side
after it leaves the buffer's heads to that side, so `total` charges them once; exact final states
are reported apart (final_state_bits), not in used bits.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional

from nmt.reversible import MemoryAccount

_MIB = float(1 << 20)
SIDES = ("encoder", "decoder")


@dataclass(frozen=True, eq=False)
class ModelMemory(Mapping):
    """encoder, decoder: the accounts of the reversible sides (None for a plain side);
    total: their sum; kept_bytes: per side, the measured {"buffer", "stored", "state"} bytes its
    reversible run held once its forward was done ({} for a side run with plain autograd)."""

    encoder: Optional[MemoryAccount] = None
    decoder: Optional[MemoryAccount] = None
    total: Optional[MemoryAccount] = None
    kept_bytes: Dict[str, dict] = field(default_factory=dict)

    @classmethod
    def of(cls, *, encoder: Optional[MemoryAccount] = None,
           decoder: Optional[MemoryAccount] = None,
           kept_bytes: Optional[Dict[str, dict]] = None) -> "ModelMemory":
        accounts = [account for account in (encoder, decoder) if account is not None]
        total = None
        if accounts:
            total = MemoryAccount(**{
                name.name: sum(getattr(account, name.name) for account in accounts)
                for name in dataclasses.fields(MemoryAccount)})
        return cls(encoder=encoder, decoder=decoder, total=total, kept_bytes=dict(kept_bytes or {}))

    @property
    def kept_total_bytes(self) -> int:
        """Bytes kept by all sides: the shared buffer once (at its peak, as the last side to
        run measured it), every side's storage and final state."""
        sides = [self.kept_bytes.get(side, {}) for side in SIDES]
        buffer = next((side["buffer"] for side in reversed(sides) if "buffer" in side), 0)
        return buffer + sum(side.get("stored", 0) + side.get("state", 0) for side in sides)

    def as_dict(self) -> Dict[str, float]:
        """The flat figures the trainer logs (TensorBoard memory/<key>, metrics.jsonl)."""
        if self.encoder is None and self.decoder is None:
            return {}
        figures: Dict[str, float] = {}
        if self.encoder is not None:
            figures.update(encoder_ratio=self.encoder.ratio_used,
                           encoder_optimal_ratio=self.encoder.ratio_optimal)
        figures["activation_mib"] = self.kept_total_bytes / _MIB
        if self.decoder is not None:
            figures.update(decoder_ratio=self.decoder.ratio_used,
                           decoder_optimal_ratio=self.decoder.ratio_optimal)
        return figures

    def details(self) -> dict:
        """Every count: per side and total MemoryAccount dicts, and the kept bytes."""
        accounts = {name: None if account is None else account.as_dict()
                    for name, account in (("encoder", self.encoder), ("decoder", self.decoder),
                                          ("total", self.total))}
        return accounts | {"kept_bytes": {**self.kept_bytes, "total": self.kept_total_bytes}}

    def __getitem__(self, key: str) -> float:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())
