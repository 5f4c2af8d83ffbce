"""`WordStack`: the fused kernels' stack of spilled 16-bit words, kept on the device with its
height, so a chunk of steps never synchronises with the host (see triton_kernels)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

_SPARE_STEPS = 16  # a growing stack leaves room for this many more worst-case steps


class WordStack:
    """The buffer's state on the device: int32 heads (rows, cols), an int16 word stack of fixed
    capacity and its height `top` (a 1-element int64 tensor), and per tag (e.g. encoder,
    decoder) a histogram of gate numerators and a pushed-word counter, as InformationBuffer
    counts them (`count=False`: none). `reserve` keeps a host-side upper bound of the height and
    grows the stack (one synchronisation) only when the bound could outgrow it."""

    def __init__(self, shape: Tuple[int, int], *, device=None, capacity: int = 0,
                 forget_radix: int = 10, word_bits: int = 16, count: bool = True):
        self.forget_radix, self.word_bits = forget_radix, word_bits
        self.head = torch.full(shape, 2**forget_radix, dtype=torch.int32, device=device)
        self.words = torch.zeros(max(capacity, 1), dtype=torch.int16, device=device)
        self.top = torch.zeros(1, dtype=torch.int64, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)  # set by a bad pop
        self.count = count
        self._counters: Dict[str, Tuple[Tensor, Tensor]] = {}
        if count:
            self.counters("")  # made up front: the default tag's counters
        self.bound = 0  # host-side upper bound of top
        self._stage = self._flags = self._counts = None  # multi-block scratch (`staging`)

    def counters(self, tag: str = "") -> Tuple[Tensor, Tensor]:
        """(histogram of gate numerators (2**R + 1,), pushed words (1,)) counted under `tag`."""
        if tag not in self._counters:
            device = self.head.device
            self._counters[tag] = (
                torch.zeros(2**self.forget_radix + 1, dtype=torch.int64, device=device),
                torch.zeros(1, dtype=torch.int64, device=device))
        return self._counters[tag]

    @property
    def hist(self) -> Tensor:
        return self.counters()[0]

    @property
    def pushed(self) -> Tensor:
        return self.counters()[1]

    def pushed_words(self, tag: Optional[str] = None) -> int:
        """Words pushed under `tag` (all tags: None), as InformationBuffer.pushed_words."""
        tags = list(self._counters) if tag is None else [tag] * (tag in self._counters)
        return sum(int(self._counters[t][1]) for t in tags)

    def optimal_bits(self, tag: Optional[str] = None) -> float:
        """Sum of -log2(n / 2**R) over the elements counted, as InformationBuffer.optimal_bits."""
        tags = list(self._counters) if tag is None else [tag] * (tag in self._counters)
        if not tags:
            return 0.0
        counts = sum(self._counters[t][0] for t in tags).double()
        numerators = torch.arange(counts.numel(), dtype=torch.float64, device=counts.device)
        return float((counts * (self.forget_radix - torch.log2(numerators.clamp(min=1)))).sum())

    def nbytes(self) -> int:
        """Bytes held: heads plus the stack's allocation."""
        return (self.head.numel() * self.head.element_size()
                + self.words.numel() * self.words.element_size())

    def staging(self, elements: int, blocks: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Scratch of a multi-block step: staged words (int16) and spill flags (int8) per
        element, and block counts (int64, blocks + 1). Grown on the host's knowledge alone."""
        if self._stage is None or self._stage.numel() < elements:
            self._stage = torch.empty(elements, dtype=torch.int16, device=self.head.device)
            self._flags = torch.empty(elements, dtype=torch.int8, device=self.head.device)
        if self._counts is None or self._counts.numel() < blocks + 1:
            self._counts = torch.empty(blocks + 1, dtype=torch.int64, device=self.head.device)
        return self._stage, self._flags, self._counts

    def prepare(self, count: int) -> None:
        """Room now for `count` more words than the bound allows (e.g. a chunk's worst case:
        steps x forget calls per step x elements), so that no `reserve` inside the chunk grows
        the stack, which would read the height. Synchronises only if it must grow."""
        if self.bound + count > self.words.numel():
            height = int(self.top)
            self.bound = height
            if height + count > self.words.numel():
                grown = torch.zeros(max(2 * self.words.numel(), height + count),
                                    dtype=torch.int16, device=self.words.device)
                grown[:height] = self.words[:height]
                self.words = grown

    def reserve(self, count: int) -> None:
        """Room for `count` more words; grows (after reading the height) only when needed."""
        self.bound += count
        if self.bound <= self.words.numel():
            return
        height = int(self.top)  # the only synchronisation, once per growth
        self.bound = height + count
        if self.bound > self.words.numel():  # room for _SPARE_STEPS more such steps
            grown = torch.zeros(max(2 * self.words.numel(), height + _SPARE_STEPS * count),
                                dtype=torch.int16, device=self.words.device)
            grown[:height] = self.words[:height]
            self.words = grown

    def check(self) -> None:
        """Raise if a reverse step popped more words than the stack held (synchronises: call
        it at a chunk's end, or when done)."""
        if int(self.error):
            raise RuntimeError("word stack: a reverse step needed more words than the stack held "
                               "(not the reverse of this stack's forward steps)")

    def stacked(self) -> Tensor:
        """The words on the stack, oldest first (synchronises)."""
        return self.words[: int(self.top)]

    def is_initial(self) -> bool:
        return int(self.top) == 0 and bool((self.head == 2**self.forget_radix).all())
