"""Counted activation memory of one run (normal / used / optimal bits; docs/design.md section
"Memory accounting"). Everything a reversible run keeps between forward and backward is counted:

- normal_bits: what backprop through time stores for the hidden states, 32 x H per real
  (unpadded) step per layer, x2 for an LSTM's cell.
- used_bits = buffer_head_bits + buffer_word_bits + stored_bits + final_state_bits
  + initial_state_bits (+ autograd_state_bits, for a side that stores every state by plain
  autograd: then used = normal and nothing else is charged):
  the buffer's heads as stored (charged to every run that uses the buffer, as if it had its own;
  ModelMemory's total charges a shared buffer's heads once), 16 x the words pushed by this run,
  the stored attention values (over real steps, like normal_bits), the exact final state at the
  width it is kept (kept.py: int32 for RevGRU, int64 for RevLSTM) and what is kept of the initial
  state (a 64-bit fingerprint per row, layer and half; with slice storage the k units reversal
  restores before step 0).
- optimal_bits = sum of -log2 z over every forget step + stored + final + initial state bits:
  the information the buffer must hold plus everything else kept, so used >= optimal.
- words_only_bits = words + stored values: the paper's convention (it leaves out heads and kept
  states); its ratio is reported beside the complete one for comparison, never as the headline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from torch import Tensor

from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.kept import kept_state_bits

_FLOAT_BITS = 32
PARTS = ("buffer_head_bits", "buffer_word_bits", "stored_bits", "final_state_bits",
         "initial_state_bits", "autograd_state_bits")  # used_bits is their sum


@dataclass(frozen=True)
class MemoryAccount:
    normal_bits: int
    used_bits: int
    optimal_bits: float
    buffer_head_bits: int
    buffer_word_bits: int
    stored_bits: int
    final_state_bits: int
    initial_state_bits: int = 0
    autograd_state_bits: int = 0

    @property
    def words_only_bits(self) -> int:
        """The paper's convention: buffer words + stored values (no heads, no kept states)."""
        return self.buffer_word_bits + self.stored_bits if not self.autograd_state_bits \
            else self.autograd_state_bits

    @property
    def ratio_used(self) -> float:
        """normal / used: the paper's "memory savings"."""
        return self.normal_bits / self.used_bits if self.used_bits else float("inf")

    @property
    def ratio_optimal(self) -> float:
        return self.normal_bits / self.optimal_bits if self.optimal_bits else float("inf")

    @property
    def ratio_words_only(self) -> float:
        """normal / (words + stored): the paper's convention, which leaves out the buffer's
        heads and the kept exact states (not the headline)."""
        bits = self.words_only_bits
        return self.normal_bits / bits if bits else float("inf")

    def as_dict(self) -> dict:
        figures = asdict(self)
        figures.update(words_only_bits=self.words_only_bits, ratio_used=self.ratio_used,
                       ratio_optimal=self.ratio_optimal, ratio_words_only=self.ratio_words_only)
        return figures

    def stores_everything(self) -> "MemoryAccount":
        """This side run with plain autograd, which keeps every state: used = optimal = normal."""
        return MemoryAccount(normal_bits=self.normal_bits, used_bits=self.normal_bits,
                             optimal_bits=float(self.normal_bits), buffer_head_bits=0,
                             buffer_word_bits=0, stored_bits=0, final_state_bits=0,
                             autograd_state_bits=self.normal_bits)


def count_memory(rnn, mask: Tensor, buffer: InformationBuffer, *, tag: Optional[str] = "",
                 charge_head: bool = True) -> MemoryAccount:
    """The counts of a reversible run of `rnn` (a ReversibleRNN) over `mask` (batch, T) with
    `buffer`: what it keeps between forward and backward (module docstring).

    Words are those pushed under `tag` since the buffer's last reset_counts(). The heads are
    charged to every run (a run sharing the buffer needs them as much as one with its own);
    charge_head=False leaves them out (ModelMemory's total charges a shared buffer's once).
    """
    real_steps = int(mask.sum())
    parts = rnn.state_parts // 2  # h, or h and c
    normal = _FLOAT_BITS * rnn.hidden_size * real_steps * rnn.num_layers * parts
    stored = rnn.storage.bits_per_step() * real_steps if rnn.storage is not None else 0
    head = buffer.head_bits() if charge_head else 0
    words = buffer.word_bits * buffer.pushed_words(tag)
    final_state, initial_state = kept_state_bits(rnn, mask.shape[0])
    states = final_state + initial_state
    return MemoryAccount(normal_bits=normal, used_bits=head + words + stored + states,
                         optimal_bits=buffer.optimal_bits(tag) + stored + states,
                         buffer_head_bits=head, buffer_word_bits=words, stored_bits=stored,
                         final_state_bits=final_state, initial_state_bits=initial_state)
