"""`StackBuffer`: the information buffer of the fused Triton path, kept in a device-side
`WordStack` (heads, words, height and counts all on the device; see word_stack.py).

It answers what the rest of the core asks of an `InformationBuffer` (shape, heads, mark and
departure, compact, byte and bit accounting) with the same heads, the same words in the same order
and the same counts, but only the fused kernels push and pop (`step_kernels.py` drives them); the
host keeps just the number of steps not yet undone (a Python int: counting never synchronises).
`make_buffer` picks the kind: a StackBuffer when the fused kernels are selected and words are kept,
else an InformationBuffer (inference buffers, which reorder rows for search, stay tensor-path).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor

from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.buffer_mark import BufferMark, departure, head_fingerprint
from nmt.reversible.fixed_point import FORGET_RADIX, WORD_BITS
from nmt.reversible.word_stack import WordStack


class StackBuffer:
    """An information buffer of shape (batch, width) whose words live in a WordStack."""

    keep_words = True
    device_offsets = True

    def __init__(self, shape: Tuple[int, int], *, device=None, word_bits: int = WORD_BITS,
                 forget_radix: int = FORGET_RADIX, activate: bool = False,
                 products: bool = False):
        self.shape = tuple(int(size) for size in shape)
        if len(self.shape) != 2 or any(size <= 0 for size in self.shape):
            raise ValueError(f"a StackBuffer's shape is (rows, columns), got {shape}")
        self.word_bits, self.forget_radix = word_bits, forget_radix
        self.lower = 2**forget_radix
        self.stack = WordStack(self.shape, device=device, forget_radix=forget_radix,
                               word_bits=word_bits)
        self._steps = 0  # cell steps pushed and not yet undone
        # the kernels apply sigmoid / tanh themselves, and with `products` also compute the
        # recurrent products (fused.py)
        self.activate, self.products = activate or products, products
        # the float views the kernels returned with each state a reverse step restored, by the
        # id of its first part: the next reverse step of that state reads them (no conversion)
        self.views: dict = {}

    @property
    def head(self) -> Tensor:
        return self.stack.head

    @property
    def num_elements(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def pushed_steps(self) -> int:
        return self._steps

    # -- what the step drivers call -------------------------------------------------------------

    def prepare(self, words: int) -> None:
        """Room for `words` more words before a chunk of steps (see WordStack.prepare): no step
        inside the chunk then reads the stack's height."""
        self.stack.prepare(words)

    def pushed_step(self) -> WordStack:
        self._steps += 1
        return self.stack

    def popped_step(self) -> WordStack:
        if self._steps == 0:
            raise RuntimeError("information buffer is empty: more reverse steps than forward steps")
        self._steps -= 1
        return self.stack

    # -- the InformationBuffer interface ---------------------------------------------------------

    def forget(self, h: Tensor, n: Tensor, *, tag: str = "") -> Tensor:
        raise RuntimeError("a StackBuffer is pushed by the fused kernels only (kernels: triton)")

    unforget = forget

    def compact(self) -> None:
        """Free the stack's unused allocation (one synchronisation)."""
        height = int(self.stack.top)
        self.stack.bound = height
        if self.stack.words.numel() > max(height, 1):
            self.stack.words = self.stack.words[: max(height, 1)].clone()

    def words(self) -> Tensor:
        """The stacked words, oldest first (int16, offset by -2**(w-1), as InformationBuffer)."""
        return self.stack.stacked()

    def nbytes(self) -> int:
        return self.stack.nbytes()

    def is_initial(self) -> bool:
        return self._steps == 0 and self.stack.is_initial() and not int(self.stack.error)

    def mark(self) -> BufferMark:
        return BufferMark(self._steps, self.stack.top.clone(), head_fingerprint(self.head))

    def departure_from(self, mark: BufferMark) -> Optional[str]:
        """As InformationBuffer.departure_from, and a pop below the stack's bottom (reported by
        the kernels on the device) is a departure too."""
        if int(self.stack.error):
            return "was asked for more words than its stack held"
        return departure(mark, self._steps, lambda: int(self.stack.top), self.head)

    def reset_counts(self) -> None:
        self.stack._counters = {}
        self.stack.counters("")

    def pushed_words(self, tag: Optional[str] = None) -> int:
        return self.stack.pushed_words(tag)

    def optimal_bits(self, tag: Optional[str] = None) -> float:
        return self.stack.optimal_bits(tag)

    def head_bits(self) -> int:
        return 32 * self.num_elements

    def used_bits(self, tag: Optional[str] = None) -> int:
        return (self.head_bits() if tag is None else 0) + self.word_bits * self.pushed_words(tag)

    def tags(self) -> List[str]:
        return sorted(self.stack._counters)

    def reorder(self, index: Tensor) -> None:
        raise RuntimeError("only a buffer without words (keep_words=False) can be reordered")


def make_buffer(shape: Tuple[int, int], *, device=None, keep_words: bool = True,
                fused: bool = False, device_offsets: Optional[bool] = None,
                activate: bool = False, products: bool = False):
    """A StackBuffer when `fused` and words are kept (`activate`: its steps' kernels apply the
    activations too; `products`: and the recurrent products), else an InformationBuffer."""
    if fused and keep_words:
        return StackBuffer(shape, device=device, activate=activate, products=products)
    return InformationBuffer(shape, device=device, keep_words=keep_words,
                             device_offsets=device_offsets)


def is_stack_buffer(buffer) -> bool:
    return isinstance(buffer, StackBuffer)
