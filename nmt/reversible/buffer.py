"""The information buffer: exact storage of the bits that forgetting destroys.

Multiplying a fixed-point state h by a gate n / 2**R loses about log2(2**R / n) bits per element.
The buffer keeps them, per element, in a natural number N coded like rANS: one forget step is a
bijection of (h, N),

    forward:  s = h mod 2**R;  h = h div 2**R;  N = N * 2**R + s;  q = N mod n;  N = N div n;  h = h * n + q
    reverse:  q = h mod n;     h = h div n;     N = N * n + q;     s = N mod 2**R;  N = N div 2**R;  h = h * 2**R + s

so N grows by the information-theoretic minimum, -log2(n / 2**R) bits. N is kept as a small head
in [L, 2**w * L) with L = 2**R; before a step, heads that would overflow spill their low w bits as
one word (where N >= n * 2**w). After a reverse step, exactly the heads that spilled are below L
and take their word back, so no flags are stored.

The words live in one growing int16 stack. A step writes its words compactly on top, in element
order, and its reverse finds them again from the refill mask alone. On the CPU the words are
selected directly; on a GPU (`device_offsets`) their offsets are computed on the device (a
cumulative sum of the spill mask), so no word count crosses to the host and the time loop never
waits for the device: the host keeps an upper bound on the stack's height and reads the true height
only when that bound could outgrow the allocation (about once per _SPARE_STEPS steps at most).
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from nmt.reversible.buffer_mark import BufferMark, departure, head_fingerprint
from nmt.reversible.fixed_point import FORGET_RADIX, WORD_BITS
from nmt.reversible.native import kernels

_HEAD_BITS = 32  # heads are stored as int32 between steps
_INT64_BITS = 63  # value bits of a signed int64
_SPARE_STEPS = 16  # device offsets: worst-case steps of room after each read of the stack height


class InformationBuffer:
    """Per-element buffer of forgotten bits, shared by every state tensor of one shape.

    Args:
        shape: the element grid, e.g. (batch, half_hidden); narrower tensors use its first columns.
        word_bits: width w of spilled words (w >= forget_radix: one spill per step suffices).
        forget_radix: R, gates are n / 2**R with n in [1, 2**R].
        keep_words: False drops spilled words (inference): forward values are unchanged and
            memory stays O(elements), but the buffer can no longer be reversed.
        device_offsets: place words at offsets computed on the device, never reading a count on
            the host (default: on every device but the CPU, where reading a count is free and
            selecting the words directly is faster). Both lay the stack out identically.
        native: run each step's integer loops in C (`native.py`; default: on the CPU when the
            kernels can be built). Same results bit for bit; False keeps the tensor code.
    """

    def __init__(self, shape: Tuple[int, ...], *, device=None, word_bits: int = WORD_BITS,
                 forget_radix: int = FORGET_RADIX, keep_words: bool = True,
                 device_offsets: Optional[bool] = None, native: Optional[bool] = None):
        _check_settings(word_bits, forget_radix)
        self.shape = tuple(int(size) for size in shape)
        if not self.shape or any(size <= 0 for size in self.shape):
            raise ValueError(f"buffer shape must be non-empty and positive, got {shape}")
        self.word_bits = word_bits
        self.forget_radix = forget_radix
        self.keep_words = keep_words
        self.lower = 2**forget_radix  # L
        self.head = torch.full(self.shape, self.lower, dtype=torch.int32, device=device)
        if device_offsets is None:
            device_offsets = torch.device(device or "cpu").type != "cpu"
        self.device_offsets = device_offsets
        self._native = None  # the C kernels, when this buffer uses them
        self._scratch: Optional[Tensor] = None  # native, keep_words=False: where words are dropped
        if native is not False and self.head.device.type == "cpu" and not device_offsets:
            self._native = kernels()
        if native and self._native is None:
            raise RuntimeError("native=True: the buffer's C kernels need a CPU buffer without "
                               "device_offsets, and a C compiler (see nmt/reversible/native.py)")
        self._words = torch.zeros(1, dtype=torch.int16, device=device)  # stack + 1 scratch word
        # words on the stack: a device tensor with device offsets, else a host int
        self._height: Union[int, Tensor] = (torch.zeros((), dtype=torch.int64, device=device)
                                            if device_offsets else 0)
        self._height_bound = 0  # host-side upper bound of _height
        self._steps = 0  # forward steps not yet reversed
        self.reset_counts()

    # -- the bijection ---------------------------------------------------------------------------

    def forget(self, h: Tensor, n: Tensor, *, tag: str = "") -> Tensor:
        """h * n / 2**R (exactly invertible given the buffer). h, n: int64 of the buffer's shape,
        or narrower in the last dimension (then the first columns are used)."""
        head = self._head_view(h)
        if self._native_fits(h, n):
            return self._native_forget(h, n, head, tag)
        radix, word = self.forget_radix, self.word_bits
        state = head.to(torch.int64)
        spill = state >= (n << word)
        pushed = self._push(state & ((1 << word) - 1), spill) if self.keep_words else spill.sum()
        self._count(pushed, n, tag)
        state = torch.where(spill, state >> word, state)
        state = (state << radix) | (h & ((1 << radix) - 1))
        quotient = torch.div(state, n, rounding_mode="floor")
        out = (h >> radix) * n + (state - quotient * n)  # one integer division, not two
        head.copy_(quotient)
        return out

    def unforget(self, h: Tensor, n: Tensor) -> Tensor:
        """The exact inverse of `forget` (pops the words the matching forward step pushed)."""
        head = self._reversible_head(h)
        if self._native_fits(h, n):
            return self._native_unforget(h, n, head)
        radix, word = self.forget_radix, self.word_bits
        quotient = torch.div(h, n, rounding_mode="floor")
        state = head.to(torch.int64) * n + (h - quotient * n)
        out = (quotient << radix) | (state & ((1 << radix) - 1))
        state = state >> radix
        refill = state < self.lower
        head.copy_(torch.where(refill, (state << word) | self._pop(refill), state))
        return out

    def fused_forget(self, h: Tensor, n: Tensor, run, *, tag: str = ""):
        """`forget` done by a fused C step (native_steps.py): run(head, words, hist) -> (result,
        words written) with this buffer's bookkeeping; None where the C kernels do not apply."""
        head = self._head_view(h)
        return self._native_forget(h, n, head, tag, run) if self._native_fits(h, n) else None

    def fused_unforget(self, h: Tensor, n: Tensor, run):
        """`unforget` by a fused C step: run(head, words, top) -> (result, new top); or None."""
        head = self._reversible_head(h)
        if not self._native_fits(h, n):
            return None
        out, self._height = run(head, self._words, self._height)
        self._steps -= 1
        return out

    def _reversible_head(self, h: Tensor) -> Tensor:
        if not self.keep_words:
            raise RuntimeError("this buffer dropped its words (keep_words=False); it cannot reverse")
        if self._steps == 0:
            raise RuntimeError("information buffer is empty: more reverse steps than forward steps")
        return self._head_view(h)

    def _native_fits(self, h: Tensor, n: Tensor) -> bool:
        """The C kernels take 2-D int64 h and n of one shape (anything else: the tensor code)."""
        return (self._native is not None and h.dim() == 2 and n.shape == h.shape
                and n.dtype == torch.int64 and n.device.type == "cpu")

    def _native_forget(self, h: Tensor, n: Tensor, head: Tensor, tag: str, run=None):
        """`forget` by the C kernels (or a fused step `run`): same outputs, heads, words, counts."""
        if self.keep_words:
            self._reserve(h.numel())  # the worst case; the exact height is known right after
            words = self._words[self._height:]
        else:  # the words go to a scratch area and are dropped
            words = self._scratch_words(h.numel() + 1)
        try:
            hist = self._gate_counts(tag, n.device)
            out, count = (run(head, words, hist) if run is not None else self._native.forget(
                h.contiguous(), n.contiguous(), head, words, hist, word_bits=self.word_bits,
                forget_radix=self.forget_radix))
            if self.keep_words:
                self._steps += 1
                self._height += count
        finally:  # exact again, whether the step was taken or refused
            self._height_bound = self._height
        self._pushed[tag] = self._pushed[tag] + count
        return out

    def _native_unforget(self, h: Tensor, n: Tensor, head: Tensor) -> Tensor:
        out, self._height = self._native.unforget(
            h.contiguous(), n.contiguous(), head, self._words, self._height,
            word_bits=self.word_bits, forget_radix=self.forget_radix, lower=self.lower)
        self._steps -= 1
        return out

    def _scratch_words(self, size: int) -> Tensor:
        if self._scratch is None or self._scratch.numel() < size:
            self._scratch = torch.empty(size, dtype=torch.int16)
        return self._scratch

    # -- the word stack -------------------------------------------------------------------------

    def _push(self, low_bits: Tensor, spill: Tensor) -> Union[int, Tensor]:
        """Write low_bits[spill] (w-bit words, stored offset by -2**(w-1) to fit int16) on top of
        the stack, in element order. Returns how many (a 0-dim tensor with device offsets)."""
        self._steps += 1
        offset = 2 ** (self.word_bits - 1)
        if not self.device_offsets:
            chunk = torch.masked_select(low_bits, spill)
            count = chunk.numel()
            self._reserve(count)
            self._words[self._height: self._height + count] = chunk - offset
            self._height += count
            return count
        self._reserve(spill.numel())  # without asking the device how many words there are
        order = torch.cumsum(spill.reshape(-1), 0)  # 1-based rank of each spilled element
        scratch = self._words.numel() - 1
        index = torch.where(spill.reshape(-1), self._height + order - 1, scratch)
        self._words.index_put_((index,), (low_bits.reshape(-1) - offset).to(torch.int16))
        self._height = self._height + order[-1]
        return order[-1]

    def _pop(self, refill: Tensor) -> Tensor:
        """The words (w-bit, int64) a forward step with spill mask == refill pushed, at their
        elements; 0 elsewhere."""
        self._steps -= 1
        offset = 2 ** (self.word_bits - 1)
        words = torch.zeros(refill.shape, dtype=torch.int64, device=refill.device)
        if not self.device_offsets:
            count = int(refill.sum())
            self._height -= count
            popped = self._words[self._height: self._height + count].to(torch.int64) + offset
            words.masked_scatter_(refill, popped)
            return words
        order = torch.cumsum(refill.reshape(-1), 0)
        self._height = self._height - order[-1]
        index = torch.where(refill.reshape(-1), self._height + order - 1, 0)
        popped = self._words[index].reshape(refill.shape).to(torch.int64) + offset
        return torch.where(refill, popped, words)

    def _reserve(self, count: int) -> None:
        """Room for `count` more words on the stack (and the scratch word after them). With device
        offsets, `count` is the worst case and the true height is read only when that bound might
        not fit; the stack then grows to leave room for _SPARE_STEPS more such steps."""
        self._height_bound += count
        if self._height_bound < self._words.numel():
            return
        height = self._read_height()
        self._height_bound = height + count
        room = _SPARE_STEPS * count if self.device_offsets else count
        if height + room >= self._words.numel():
            grown = torch.zeros(max(2 * self._words.numel(), height + room + 1),
                                dtype=torch.int16, device=self._words.device)
            grown[:height] = self._words[:height]
            self._words = grown

    def _read_height(self) -> int:
        """Words on the stack (with device offsets: waits for the device)."""
        return int(self._height)

    def compact(self) -> None:
        """Free the stack's unused allocation (one synchronisation): call when a sequence is done."""
        height = self._read_height()
        self._height_bound = height
        if self._words.numel() > height + 1:
            self._words = self._words[: height + 1].clone()

    def words(self) -> Tensor:
        """The stacked words, oldest first (a view; int16, offset by -2**(w-1))."""
        return self._words[: self._read_height()]

    # -- state and accounting -------------------------------------------------------------------

    @property
    def pushed_steps(self) -> int:
        """Forward steps whose words are on the stack (each reverse step removes one)."""
        return self._steps

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    def nbytes(self) -> int:
        """Bytes held right now: the int32 heads plus the word stack's allocation (after
        `compact()`, exactly the pushed 16-bit words and one scratch word)."""
        return (self.head.numel() * self.head.element_size()
                + self._words.numel() * self._words.element_size())

    def is_initial(self) -> bool:
        """True when every head is back at L and no words are left: a full reversal was exact."""
        return (self._steps == 0 and self._read_height() == 0
                and bool((self.head == self.lower).all()))

    def mark(self) -> BufferMark:
        """Where the buffer stands now, in O(1) memory: a run's exact reversal returns it here."""
        height = self._height.clone() if isinstance(self._height, Tensor) else self._height
        return BufferMark(self._steps, height, head_fingerprint(self.head))

    def departure_from(self, mark: BufferMark) -> Optional[str]:
        """None when the buffer is back at `mark` (same heads, same stack height, no forward
        step left undone), else what differs (one waiting read of the stack height)."""
        return departure(mark, self._steps, self._read_height, self.head)

    def reset_counts(self) -> None:
        """Start counting pushed words and optimal bits afresh (e.g. per training step)."""
        self._pushed: Dict[str, Union[int, Tensor]] = defaultdict(int)
        self._gates: Dict[str, Tensor] = {}  # per tag: how many elements were forgotten by each n

    def pushed_words(self, tag: Optional[str] = None) -> int:
        return int(sum(self._select(self._pushed, tag)))

    def optimal_bits(self, tag: Optional[str] = None) -> float:
        """Sum of -log2(n / 2**R) over every element of every forget step counted."""
        histograms = self._select(self._gates, tag)
        if not any(isinstance(counts, Tensor) for counts in histograms):
            return 0.0
        counts = sum(histograms)
        numerators = torch.arange(counts.numel(), dtype=torch.float64, device=counts.device)
        lost_bits = self.forget_radix - torch.log2(numerators.clamp(min=1))  # -log2(n / 2**R)
        return float((counts.double() * lost_bits).sum())

    def head_bits(self) -> int:
        return _HEAD_BITS * self.num_elements

    def used_bits(self, tag: Optional[str] = None) -> int:
        """Bits this buffer holds: words pushed under `tag`, plus the heads when tag is None."""
        head = self.head_bits() if tag is None else 0
        return head + self.word_bits * self.pushed_words(tag)

    def tags(self) -> List[str]:
        return sorted(self._pushed)

    def clone(self) -> "InformationBuffer":
        other = copy.copy(self)
        other.head = self.head.clone()
        other._words = self._words.clone()
        if isinstance(self._height, Tensor):
            other._height = self._height.clone()
        other._pushed = copy.deepcopy(self._pushed)
        other._gates = {tag: counts.clone() for tag, counts in self._gates.items()}
        return other

    def equal(self, other: "InformationBuffer") -> bool:
        """Same heads and the same stack of words."""
        return (torch.equal(self.head, other.head) and self._steps == other._steps
                and torch.equal(self.words(), other.words()))

    def reorder(self, index: Tensor) -> None:
        """Select rows of the heads (beam search over a buffer that keeps no words)."""
        if self.keep_words:
            raise RuntimeError("only a buffer without words (keep_words=False) can be reordered")
        self.head = self.head.index_select(0, index)
        self.shape = tuple(self.head.shape)

    # -- helpers --------------------------------------------------------------------------------

    def _head_view(self, h: Tensor) -> Tensor:
        if h.dtype != torch.int64:
            raise ValueError(f"buffer expects an int64 fixed-point state, got {h.dtype}")
        if h.shape[:-1] != self.shape[:-1] or h.shape[-1] > self.shape[-1] or h.dim() != len(self.shape):
            raise ValueError(f"state of shape {tuple(h.shape)} does not fit a buffer of shape {self.shape}")
        if h.shape[-1] == self.shape[-1]:
            return self.head
        return self.head[..., : h.shape[-1]]

    def _count(self, pushed: Tensor, n: Tensor, tag: str) -> None:
        """pushed: words spilled by this step (a 0-dim tensor: counting never synchronises).
        The gates are counted by numerator (a histogram: cheaper per step than summing their
        log2, and exact); `optimal_bits` weighs the counts."""
        self._pushed[tag] = self._pushed[tag] + pushed
        flat = n.reshape(-1)
        self._gate_counts(tag, n.device).index_add_(
            0, flat, torch.ones((), dtype=torch.int64, device=n.device).expand(flat.numel()))

    def _gate_counts(self, tag: str, device) -> Tensor:
        """The histogram of gate numerators counted under `tag` (created empty)."""
        counts = self._gates.get(tag)
        if counts is None:
            counts = self._gates[tag] = torch.zeros(2**self.forget_radix + 1, dtype=torch.int64,
                                                    device=device)
        return counts

    @staticmethod
    def _select(counts: Dict[str, Tensor], tag: Optional[str]):
        if tag is None:
            return list(counts.values()) or [0]
        return [counts[tag]] if tag in counts else [0]


def _check_settings(word_bits: int, forget_radix: int) -> None:
    """Reject radix settings that would need two spills per step or overflow the integers."""
    if not 1 <= forget_radix <= 16:
        raise ValueError(f"forget_radix={forget_radix} must be between 1 and 16")
    if word_bits < forget_radix:
        raise ValueError(f"word_bits={word_bits} must be >= forget_radix={forget_radix} "
                         "(one spilled word per step must suffice)")
    if word_bits + forget_radix > _HEAD_BITS - 1:
        raise ValueError(f"word_bits + forget_radix = {word_bits + forget_radix} exceeds "
                         f"{_HEAD_BITS - 1}: the head would overflow its int32 storage")
    if word_bits + 2 * forget_radix > _INT64_BITS:
        raise ValueError("word_bits + 2 * forget_radix exceeds 63 bits: int64 intermediates overflow")
