"""Counted activation memory of one run (the paper's normal / used / optimal bits; docs/design.md).

- normal_bits: what backprop through time stores for the hidden states, 32 x H per real
  (unpadded) step per layer, x2 for an LSTM's cell.
- used_bits: the buffer's heads (when charged to this run) + 16 x pushed words + stored attention
  bits. Stored values are counted over real steps, like normal_bits.
- optimal_bits: sum of -log2 z over every forget step, + stored attention bits.
The exact final state (int64) is reported separately as final_state_bits: every mode keeps it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from torch import Tensor

from nmt.reversible.buffer import InformationBuffer

_FLOAT_BITS = 32
_FIXED_BITS = 64


@dataclass(frozen=True)
class MemoryAccount:
    normal_bits: int
    used_bits: int
    optimal_bits: float
    buffer_head_bits: int
    buffer_word_bits: int
    stored_bits: int
    final_state_bits: int

    @property
    def ratio_used(self) -> float:
        """normal / used: the paper's "memory savings"."""
        return self.normal_bits / self.used_bits if self.used_bits else float("inf")

    @property
    def ratio_optimal(self) -> float:
        return self.normal_bits / self.optimal_bits if self.optimal_bits else float("inf")

    def as_dict(self) -> dict:
        figures = asdict(self)
        figures.update(ratio_used=self.ratio_used, ratio_optimal=self.ratio_optimal)
        return figures


def count_memory(rnn, mask: Tensor, buffer: InformationBuffer, *, tag: Optional[str] = "",
                 charge_head: bool = True) -> MemoryAccount:
    """The counts of a run of `rnn` (a ReversibleRNN) over `mask` (batch, T) with `buffer`.

    Words are those pushed under `tag` since the buffer's last reset_counts(); the heads are
    charged to this run when `charge_head` (a shared buffer charges them once, to one run).
    """
    real_steps = int(mask.sum())
    parts = rnn.state_parts // 2  # h, or h and c
    normal = _FLOAT_BITS * rnn.hidden_size * real_steps * rnn.num_layers * parts
    stored = rnn.storage.bits_per_step() * real_steps if rnn.storage is not None else 0
    head = buffer.head_bits() if charge_head else 0
    words = buffer.word_bits * buffer.pushed_words(tag)
    final_state = _FIXED_BITS * rnn.hidden_size * mask.shape[0] * rnn.num_layers * parts
    return MemoryAccount(normal_bits=normal, used_bits=head + words + stored,
                         optimal_bits=buffer.optimal_bits(tag) + stored,
                         buffer_head_bits=head, buffer_word_bits=words, stored_bits=stored,
                         final_state_bits=final_state)
