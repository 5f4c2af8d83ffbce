"""The reversible RNN core: exact RevGRU/RevLSTM steps, the information buffer, memory-free backprop.

Self-contained (imports nothing else from `nmt`). A `ReversibleRNN` runs a stack of cells over
sequences in `MemoryMode.REFERENCE` (plain autograd, stores everything) or
`MemoryMode.REVERSIBLE` (keeps the final state, the buffer and the attention storage; backward
reverses the sequence), with bit-identical losses in both.
"""
from nmt.reversible.accounting import MemoryAccount, count_memory
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.checks import ReversalCheck, ReversalError, check_reversal
from nmt.reversible.cells import CELLS, ReversibleCell, RevGRUCell, RevLSTMCell
from nmt.reversible.fixed_point import (
    FORGET_RADIX, HIDDEN_RADIX, MAX_FORGET_CHOICES, WORD_BITS, check_max_forget_bits, forget_gate,
    from_fixed, straight_through, to_fixed,
)
from nmt.reversible.sequence import MemoryMode, ReversibleRNN, SequenceOutput
from nmt.reversible.storage import AttentionStorage, StorageKind

__all__ = [
    "AttentionStorage", "CELLS", "FORGET_RADIX", "HIDDEN_RADIX", "InformationBuffer",
    "MAX_FORGET_CHOICES", "MemoryAccount", "MemoryMode", "ReversibleCell", "ReversibleRNN",
    "ReversalCheck", "ReversalError", "RevGRUCell", "RevLSTMCell", "SequenceOutput", "StorageKind", "WORD_BITS",
    "check_max_forget_bits", "check_reversal", "count_memory", "forget_gate", "from_fixed", "straight_through",
    "to_fixed",
]
