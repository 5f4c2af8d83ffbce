"""The counted memory of one training batch, per side: what `Seq2Seq.training_loss` returns.

`ModelMemory` holds one `MemoryAccount` (nmt.reversible.accounting) per reversible side, their
`total`, and the bytes each side's reversible run measured it kept. It reads as the flat figures
the trainer logs (`as_dict()`, or the mapping itself): encoder_ratio, encoder_optimal_ratio,
decoder_ratio, decoder_optimal_ratio, total_ratio, total_optimal_ratio (normal / used and
normal / optimal bits) and activation_mib. A model that counts nothing returns an empty
ModelMemory (an empty mapping).

The counts are complete (nmt/reversible/accounting.py): every side is charged the buffer's heads,
its words, its stored values and the exact states it keeps for backward. A side that shares the
buffer is charged its heads as if it had its own; `total` (the headline) is the sum of the sides
with a shared buffer's heads charged once.
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
           kept_bytes: Optional[Dict[str, dict]] = None,
           shared_buffer: bool = True) -> "ModelMemory":
        """shared_buffer: the decoder continues the encoder's buffer (a reversible decoder
        always does), so `total` charges its heads once (both sides were charged them)."""
        return cls(encoder=encoder, decoder=decoder,
                   total=total_account(encoder, decoder, shared_buffer=shared_buffer),
                   kept_bytes=dict(kept_bytes or {}))

    @property
    def kept_total_bytes(self) -> int:
        """Bytes kept by all sides: the shared buffer once (at its peak, as the last side to
        run measured it), every side's storage and final state."""
        sides = [self.kept_bytes.get(side, {}) for side in SIDES]
        buffer = next((side["buffer"] for side in reversed(sides) if "buffer" in side), 0)
        return buffer + sum(side.get("stored", 0) + side.get("state", 0) + side.get("initial", 0)
                            for side in sides)

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
        figures.update(total_ratio=self.total.ratio_used,
                       total_optimal_ratio=self.total.ratio_optimal)
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


def total_account(encoder: Optional[MemoryAccount], decoder: Optional[MemoryAccount], *,
                  shared_buffer: bool = True) -> Optional[MemoryAccount]:
    """The sides' sum, every kept state once and, when they share the buffer, its heads once
    (the larger charge of the two: both sides were charged the same shared heads)."""
    accounts = [account for account in (encoder, decoder) if account is not None]
    if not accounts:
        return None
    total = {name.name: sum(getattr(account, name.name) for account in accounts)
             for name in dataclasses.fields(MemoryAccount)}
    if shared_buffer and len(accounts) == 2:
        heads = max(account.buffer_head_bits for account in accounts)
        double = total["buffer_head_bits"] - heads
        total["buffer_head_bits"] -= double
        total["used_bits"] -= double
    return MemoryAccount(**total)
