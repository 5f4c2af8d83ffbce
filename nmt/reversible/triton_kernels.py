"""Fused Triton kernels for one gated half-step of an exact reversible recurrence.

A half-step of RevGRU or RevLSTM is h <- forget(h, n) + round(update * 2**23) on an int64
fixed-point state, where n / 2**R is a quantised gate and `forget` codes the lost bits into a
per-element head N with rANS-like arithmetic, spilling 16-bit words to a stack (see buffer.py for
the algorithm). Each direction of a half-step is one kernel launch (two past
_SINGLE_PROGRAM_LIMIT elements, see below):

- `gated_forward`: from the gate's sigmoid `s` and the update's factors, the quantised numerator
  n = clamp(rint(((1 - 2**-k) s + 2**-k) 2**R), n_min, 2**R), the update
  ((1 - n / 2**R) * b, or a * b), the buffer push (heads and spilled words), the exact state and
  its float32 view; padded rows (mask False) and the first `stored` units use n = 2**R (identity,
  never spills), stored units take round_to_storage(z h + update) at 16 or 32 bits.
- `gated_reverse`: the exact inverse: the same gates, the inverse bijection, the words popped.
- `gru_backward_gates`, `gru_backward_reset`, `lstm_backward`: the element-wise parts of the
  hand-written backward step (the matrix products around them stay in cuBLAS).
- `activation`: sigmoid or tanh (times a tensor) by the kernels' own formula.

Exactness. By default only IEEE basic arithmetic (+, -, *, conversions) and integer arithmetic
run inside the kernels: the activations (sigmoid, tanh) come in as tensors computed by torch on
the very views the cells use, so the kernels give the tensor path's integers bit for bit on every
backend (the interpreter; a GPU with fp fusion off, which the launches ask for). torch's own CPU
sigmoid is not even position-independent (a vectorised body and a scalar tail), so no in-kernel
formula could match it on a CPU. With ACTIVATE (`activate=True`) the kernels take logits and apply
sigmoid = 1 / (1 + exp(-x)) (IEEE division) and tanh themselves -- libdevice's expf/tanhf on a
GPU, which is what torch's CUDA kernels compute, so the integers should match there too (a test
that only a GPU runs); under the interpreter they use numpy's exp. Rounding is round-half-even
written out with integer arithmetic, and Triton's integer // and % (which truncate toward zero)
are corrected to floor where the operand can be negative.

The word stack (`WordStack`): `words` (int16, preallocated capacity grown from a host-side upper
bound of the height) and `top` (a 1-element int64 tensor on the device). Up to
_SINGLE_PROGRAM_LIMIT elements, one program walks the elements in row-major order in blocks, ranks
each block's spills with tl.cumsum and writes them at top + rank: the words land in exactly the
tensor path's order (masked_select per step, element order) and the host never reads a count. The
reverse walks the blocks last to first and pops each block's words from the top. Past the limit,
one program per block computes everything but the word positions (staging its words and spill
flags, counting them per block), and a second launch places each block's words after those of the
blocks before it (a prefix sum of the block counts in each program): the same stack, with no
spin-waits or atomics across blocks, so it is also safe to capture in a CUDA graph. The reverse
likewise leaves the heads before their refill, then a second launch pops each block's words from
below those of the blocks after it. A pop below the bottom sets `error` on the device (`check`).

This module knows nothing of cells or models; `nmt/reversible/fused.py` drives it.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # the tensor path and the C loops serve; callers check `available()`
    triton = None
    tl = None

MODE_GRU = 0  # update = (1 - n / 2**R) * b
MODE_PRODUCT = 1  # update = a * b

_MAX_BLOCK = 4096  # elements per block (and per program, when several run)
_SPARE_STEPS = 16  # a growing stack leaves room for this many more worst-case steps
_GPU_BLOCK, _GPU_WARPS = 2048, 16  # on a GPU: no register spills in ptxas -v for sm_90
_SINGLE_PROGRAM_LIMIT = 16384  # up to this many elements one program walks all blocks
LAUNCHES = [0]  # kernel launches so far (a counter for launch-count measurements)


def available() -> bool:
    """True when Triton is importable."""
    return triton is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _options() -> dict:
    """No fused multiply-add on a GPU: every a * b + c rounds twice, as in torch's eager ops.
    Activations (ACTIVATE kernels) call libdevice on a GPU (the interpreter has no libdevice)."""
    if interpreting():
        return {"LIBDEVICE": False}
    return {"enable_fp_fusion": False, "LIBDEVICE": True}


def _launch(kernel, grid, *args, warps: Optional[int] = None, **kwargs) -> None:
    """Launch `kernel` and count it. Under the interpreter, the launch's own host-side tensor
    copies (how it emulates device memory) are hidden from dispatch modes: a GPU launch issues no
    aten op, so op counters see only what the caller does."""
    LAUNCHES[0] += 1
    kwargs.update(_options())
    if "LIBDEVICE" not in kernel.arg_names:
        del kwargs["LIBDEVICE"]
    if warps is not None and not interpreting():
        kwargs["num_warps"] = warps
    if interpreting():
        from torch.utils._python_dispatch import _disable_current_modes
        with _disable_current_modes():
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def _block(count: int) -> int:
    """Elements per block of the gated kernels: the interpreter runs big blocks fastest; a GPU
    takes _GPU_BLOCK with _GPU_WARPS warps (more registers per element would spill)."""
    limit = _MAX_BLOCK if interpreting() else min(_MAX_BLOCK, _GPU_BLOCK)
    return max(16, min(limit, triton.next_power_of_2(max(count, 1))))


if triton is not None:

    @triton.jit
    def _floor_div(a, n):
        """floor(a / n) for n > 0 (Triton's // truncates toward zero)."""
        q = a // n
        return q - (((a - q * n) != 0) & (a < 0)).to(tl.int64)

    @triton.jit
    def _rint(y):
        """y (float32) rounded half to even, as int64 (torch.round), with integer arithmetic."""
        t = y.to(tl.int64)  # truncated toward zero; exact where y is already whole
        rest = y - t.to(tl.float32)  # exact: the fraction of y
        odd = (t & 1) != 0
        up = (rest > 0.5) | ((rest == 0.5) & odd)
        down = (rest < -0.5) | ((rest == -0.5) & odd)
        return t + up.to(tl.int64) - down.to(tl.int64)

    @triton.jit
    def _sigmoid(x, LIBDEVICE: tl.constexpr):
        """1 / (1 + exp(-x)) in float32 with an IEEE division: torch's CUDA formula (libdevice
        expf on a GPU; numpy's exp under the interpreter)."""
        if LIBDEVICE:
            e = libdevice.exp(-x)
        else:
            e = tl.exp(-x)
        return tl.math.div_rn(1.0, 1.0 + e)

    @triton.jit
    def _tanh(x, LIBDEVICE: tl.constexpr):
        """tanh in float32 (libdevice tanhf on a GPU; from exp under the interpreter)."""
        if LIBDEVICE:
            y = libdevice.tanh(x)
        else:
            e = tl.exp(-2.0 * tl.abs(x))
            y = tl.math.div_rn(1.0 - e, 1.0 + e)
            y = tl.where(x < 0, -y, y)
        return y

    @triton.jit
    def _activation_kernel(x_ptr, x_stride, y_ptr, other_ptr, rows, cols, TANH: tl.constexpr,
                           PRODUCT: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr):
        """y = sigmoid(x) or tanh(x) (times `other` with PRODUCT), y contiguous."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < rows * cols
        row = offs // cols
        col = offs - row * cols
        x = tl.load(x_ptr + row * x_stride + col, mask=live, other=0.0)
        if TANH:
            y = _tanh(x, LIBDEVICE)
        else:
            y = _sigmoid(x, LIBDEVICE)
        if PRODUCT:
            y = y * tl.load(other_ptr + offs, mask=live, other=0.0)
        tl.store(y_ptr + offs, y, mask=live)

    @triton.jit
    def _flag_underflow(refill, slot, error_ptr):
        """A pop below the stack's bottom: the reverse step was not this stack's forward step
        (more reverse steps than forward, or other gates). Flagged on the device; `check` reads
        it."""
        if tl.sum((refill & (slot < 0)).to(tl.int32), 0) > 0:
            tl.store(error_ptr, 1)

    @triton.jit
    def _gate(s, n_min, R: tl.constexpr):
        """The quantised numerator n (int64) and z_q = n / 2**R of sigmoid value s."""
        floor = n_min.to(tl.float32) * (1.0 / (1 << R))
        z = (1.0 - floor) * s + floor
        n = _rint(z * (1 << R))
        n = tl.minimum(tl.maximum(n, n_min), 1 << R)
        return n, n.to(tl.float32) * (1.0 / (1 << R))

    @triton.jit
    def _update(s_ptr, s_stride, a_ptr, a_stride, b_ptr, b_stride, row, col, live, n_min,
                MODE: tl.constexpr, R: tl.constexpr, ACTIVATE: tl.constexpr,
                LIBDEVICE: tl.constexpr):
        """n, z_q and the float32 update of the elements at (row, col). ACTIVATE: s and a are
        logits (sigmoid applied here), b the argument of tanh."""
        s = tl.load(s_ptr + row * s_stride + col, mask=live, other=1.0)
        b = tl.load(b_ptr + row * b_stride + col, mask=live, other=0.0)
        if ACTIVATE:
            s = _sigmoid(s, LIBDEVICE)
            b = _tanh(b, LIBDEVICE)
        n, z_q = _gate(s, n_min, R)
        if MODE == 0:
            update = (1.0 - z_q) * b
        else:
            a = tl.load(a_ptr + row * a_stride + col, mask=live, other=0.0)
            if ACTIVATE:
                a = _sigmoid(a, LIBDEVICE)
            update = a * b
        return n, z_q, update

    @triton.jit(do_not_specialize=["capacity", "rows", "cols", "stored", "n_min"])
    def _gated_forward_kernel(
            h_ptr, h_stride, s_ptr, s_stride, a_ptr, a_stride, b_ptr, b_stride, mask_ptr,
            head_ptr, head_stride, words_ptr, capacity, top_ptr, hist_ptr, pushed_ptr,
            out_ptr, value_ptr, stage_ptr, flag_ptr, counts_ptr, rows, cols, stored, n_min,
            MODE: tl.constexpr, HAS_MASK: tl.constexpr, HALF_STORAGE: tl.constexpr,
            COUNT: tl.constexpr, ACTIVATE: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr):
        """STAGED=False: one program walks every block in order and pushes the words itself.
        STAGED=True: one program per block; each stages its words and spill flags at the
        elements' own offsets and its count in counts[pid] (program 0 also copies top to
        counts[nprog]); `_place_words_kernel` then writes them onto the stack."""
        pid = tl.program_id(0)
        total = rows * cols
        top = tl.load(top_ptr)
        start_top = top
        if STAGED:
            first, step_size = pid * BLOCK, total  # one block per program
            if pid == 0:
                tl.store(counts_ptr + tl.num_programs(0), top)
        else:
            first, step_size = 0, BLOCK
        for start in range(first, total, step_size):
            offs = start + tl.arange(0, BLOCK)
            live = offs < total
            row = offs // cols  # offs >= 0: truncation is floor
            col = offs - row * cols
            h = tl.load(h_ptr + row * h_stride + col, mask=live, other=0)
            n, z_q, update = _update(s_ptr, s_stride, a_ptr, a_stride, b_ptr, b_stride, row, col,
                                     live, n_min, MODE, R, ACTIVATE, LIBDEVICE)
            real = live
            if HAS_MASK:
                real = live & (tl.load(mask_ptr + row, mask=live, other=0) != 0)
            n_applied = tl.where(real & (col >= stored), n, 1 << R)
            step = tl.where(real, _rint(update * (1 << 23)), 0)
            # spill the heads that would overflow: words in element order from top
            state = tl.load(head_ptr + row * head_stride + col, mask=live, other=1 << R).to(tl.int64)
            spill = (state >= (n_applied << W)) & live
            word = ((state & ((1 << W) - 1)) - (1 << (W - 1))).to(tl.int16)
            if STAGED:
                tl.store(stage_ptr + offs, word, mask=live)
                tl.store(flag_ptr + offs, spill.to(tl.int8), mask=live)
                tl.store(counts_ptr + pid, tl.sum(spill.to(tl.int64), 0))
            else:
                slot = top + tl.cumsum(spill.to(tl.int32), 0) - 1
                tl.store(words_ptr + slot, word, mask=spill & (slot < capacity))
                top += tl.sum(spill.to(tl.int64), 0)
            state = tl.where(spill, state >> W, state)
            # the bijection: state < 2**36 is non-negative, so // is floor here
            state = (state << R) | (h & ((1 << R) - 1))
            quotient = state // n_applied
            out = (h >> R) * n_applied + (state - quotient * n_applied) + step
            tl.store(head_ptr + row * head_stride + col, quotient.to(tl.int32), mask=live)
            if COUNT:
                tl.atomic_add(hist_ptr + n_applied, 1, mask=live)
            # stored units: the rounded float update, not the buffer
            value = h.to(tl.float32) * (1.0 / (1 << 23))
            kept = z_q * value + update
            if HALF_STORAGE:
                kept = kept.to(tl.float16).to(tl.float32)
            kept = tl.where(real, _rint(kept * (1 << 23)), h)
            out = tl.where(col < stored, kept, out)
            tl.store(out_ptr + row * cols + col, out, mask=live)
            tl.store(value_ptr + row * cols + col, out.to(tl.float32) * (1.0 / (1 << 23)),
                     mask=live)
        if not STAGED:
            tl.store(top_ptr, top)
            if COUNT:
                tl.store(pushed_ptr, tl.load(pushed_ptr) + (top - start_top))

    @triton.jit(do_not_specialize=["capacity", "total", "blocks"])
    def _place_words_kernel(stage_ptr, flag_ptr, counts_ptr, blocks, words_ptr, capacity, top_ptr,
                            pushed_ptr, total, COUNT: tl.constexpr, BLOCKS: tl.constexpr,
                            BLOCK: tl.constexpr):
        """Second launch of a STAGED forward: block pid's words go to top + the words of blocks
        before it, in element order (so the stack is laid out as by one program in order)."""
        pid = tl.program_id(0)
        index = tl.arange(0, BLOCKS)
        counts = tl.load(counts_ptr + index, mask=index < blocks, other=0)
        top = tl.load(counts_ptr + blocks)
        base = top + tl.sum(tl.where(index < pid, counts, 0), 0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        live = offs < total
        spill = (tl.load(flag_ptr + offs, mask=live, other=0) != 0) & live
        slot = base + tl.cumsum(spill.to(tl.int32), 0) - 1
        word = tl.load(stage_ptr + offs, mask=spill, other=0)
        tl.store(words_ptr + slot, word, mask=spill & (slot < capacity))
        if pid == blocks - 1:
            pushed = tl.sum(counts, 0)
            tl.store(top_ptr, top + pushed)
            if COUNT:
                tl.store(pushed_ptr, tl.load(pushed_ptr) + pushed)

    @triton.jit(do_not_specialize=["rows", "cols", "blocks"])
    def _refill_heads_kernel(head_ptr, head_stride, rows, cols, counts_ptr, blocks, words_ptr,
                             top_ptr, error_ptr, R: tl.constexpr, W: tl.constexpr, BLOCKS: tl.constexpr,
                             BLOCK: tl.constexpr):
        """Second launch of a STAGED reverse: the heads below L (those that spilled) take their
        words back; block pid's words lie below those of the blocks after it."""
        pid = tl.program_id(0)
        index = tl.arange(0, BLOCKS)
        counts = tl.load(counts_ptr + index, mask=index < blocks, other=0)
        top = tl.load(counts_ptr + blocks)
        base = top - tl.sum(tl.where(index >= pid, counts, 0), 0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        live = offs < rows * cols
        row = offs // cols
        col = offs - row * cols
        state = tl.load(head_ptr + row * head_stride + col, mask=live, other=1 << R).to(tl.int64)
        refill = (state < (1 << R)) & live
        slot = base + tl.cumsum(refill.to(tl.int32), 0) - 1
        _flag_underflow(refill, slot, error_ptr)
        word = tl.load(words_ptr + slot, mask=refill & (slot >= 0), other=0).to(tl.int64)
        word += 1 << (W - 1)
        state = tl.where(refill, (state << W) | word, state)
        tl.store(head_ptr + row * head_stride + col, state.to(tl.int32), mask=live)
        if pid == 0:
            tl.store(top_ptr, top - tl.sum(counts, 0))

    @triton.jit(do_not_specialize=["rows", "cols", "stored", "n_min"])
    def _gated_reverse_kernel(
            h_ptr, h_stride, s_ptr, s_stride, a_ptr, a_stride, b_ptr, b_stride, mask_ptr,
            head_ptr, head_stride, words_ptr, top_ptr, error_ptr, restored_ptr, restored_stride,
            out_ptr, value_ptr, counts_ptr, rows, cols, stored, n_min,
            MODE: tl.constexpr, HAS_MASK: tl.constexpr, ACTIVATE: tl.constexpr,
            LIBDEVICE: tl.constexpr, STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr,
            BLOCK: tl.constexpr):
        """STAGED=False: one program walks the blocks last to first, popping each block's words
        from the top. STAGED=True: one program per block leaves its heads before the refill
        and its refill count in counts[pid] (program 0 copies top to counts[nprog]);
        `_refill_heads_kernel` then pops the words."""
        pid = tl.program_id(0)
        top = tl.load(top_ptr)
        total = rows * cols
        if STAGED:
            first, last = pid, pid + 1
            if pid == 0:
                tl.store(counts_ptr + tl.num_programs(0), top)
        else:
            first, last = 0, tl.cdiv(total, BLOCK)
        for back in range(first, last):  # last block first: its words are on top
            if STAGED:
                offs = pid * BLOCK + tl.arange(0, BLOCK)
            else:
                offs = (last - 1 - back) * BLOCK + tl.arange(0, BLOCK)
            live = offs < total
            row = offs // cols
            col = offs - row * cols
            h_next = tl.load(h_ptr + row * h_stride + col, mask=live, other=0)
            n, z_q, update = _update(s_ptr, s_stride, a_ptr, a_stride, b_ptr, b_stride, row, col,
                                     live, n_min, MODE, R, ACTIVATE, LIBDEVICE)
            real = live
            if HAS_MASK:
                real = live & (tl.load(mask_ptr + row, mask=live, other=0) != 0)
            n_applied = tl.where(real & (col >= stored), n, 1 << R)
            h = h_next - tl.where(real, _rint(update * (1 << 23)), 0)
            quotient = _floor_div(h, n_applied)  # h may be negative
            state = tl.load(head_ptr + row * head_stride + col, mask=live,
                            other=1 << R).to(tl.int64) * n_applied + (h - quotient * n_applied)
            out = (quotient << R) | (state & ((1 << R) - 1))
            state = state >> R
            refill = (state < (1 << R)) & live
            count = tl.sum(refill.to(tl.int64), 0)
            if STAGED:
                tl.store(counts_ptr + pid, count)
            else:
                slot = top - count + tl.cumsum(refill.to(tl.int32), 0) - 1
                _flag_underflow(refill, slot, error_ptr)
                word = tl.load(words_ptr + slot, mask=refill & (slot >= 0), other=0).to(tl.int64)
                state = tl.where(refill, (state << W) | (word + (1 << (W - 1))), state)
                top -= count
            tl.store(head_ptr + row * head_stride + col, state.to(tl.int32), mask=live)
            restored = tl.load(restored_ptr + row * restored_stride + col,
                               mask=live & (col < stored), other=0)
            out = tl.where(col < stored, tl.where(real, restored, h_next), out)
            tl.store(out_ptr + row * cols + col, out, mask=live)
            tl.store(value_ptr + row * cols + col, out.to(tl.float32) * (1.0 / (1 << 23)),
                     mask=live)
        if not STAGED:
            tl.store(top_ptr, top)

    @triton.jit(do_not_specialize=["n_min"])
    def _gru_backward_gates_kernel(
            grad_ptr, s_ptr, s_stride, cand_ptr, cand_stride, prev_ptr, mask_ptr,
            d_half_ptr, d_cand_ptr, d_cand_stride, d_logits_ptr, d_logits_stride, rows, cols,
            n_min, HAS_MASK: tl.constexpr, ACTIVATE: tl.constexpr, LIBDEVICE: tl.constexpr,
            R: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < rows * cols
        row = offs // cols
        col = offs - row * cols
        grad = tl.load(grad_ptr + offs, mask=live, other=0.0)
        s = tl.load(s_ptr + row * s_stride + col, mask=live, other=0.0)
        cand = tl.load(cand_ptr + row * cand_stride + col, mask=live, other=0.0)
        prev = tl.load(prev_ptr + offs, mask=live, other=0.0)
        if ACTIVATE:
            s = _sigmoid(s, LIBDEVICE)
            cand = _tanh(cand, LIBDEVICE)
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + row, mask=live, other=0) != 0)
        n, z_q = _gate(s, n_min, R)
        slope = (1.0 - n_min.to(tl.float32) * (1.0 / (1 << R))) * s * (1.0 - s)
        grad_live = tl.where(real, grad, 0.0)
        tl.store(d_half_ptr + offs, tl.where(real, grad * z_q, grad), mask=live)
        tl.store(d_cand_ptr + row * d_cand_stride + col, grad_live * (1.0 - z_q) * (1.0 - cand * cand), mask=live)
        tl.store(d_logits_ptr + row * d_logits_stride + col, grad_live * (prev - cand) * slope,
                 mask=live)

    @triton.jit
    def _gru_backward_reset_kernel(
            d_ro_ptr, other_ptr, reset_ptr, reset_stride, d_other_ptr, d_logits_ptr,
            d_logits_stride, d_other_out_ptr, reset_other_ptr, rows, cols,
            ACTIVATE: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < rows * cols
        row = offs // cols
        col = offs - row * cols
        d_ro = tl.load(d_ro_ptr + offs, mask=live, other=0.0)
        other = tl.load(other_ptr + offs, mask=live, other=0.0)
        reset = tl.load(reset_ptr + row * reset_stride + col, mask=live, other=0.0)
        if ACTIVATE:
            reset = _sigmoid(reset, LIBDEVICE)
        d_other = tl.load(d_other_ptr + offs, mask=live, other=0.0)
        tl.store(d_logits_ptr + row * d_logits_stride + col,
                 d_ro * other * reset * (1.0 - reset), mask=live)
        tl.store(d_other_out_ptr + offs, d_other + d_ro * reset, mask=live)
        tl.store(reset_other_ptr + offs, reset * other, mask=live)

    @triton.jit(do_not_specialize=["n_min"])
    def _lstm_backward_kernel(
            grad_h_ptr, grad_c_ptr, sf_ptr, si_ptr, so_ptr, sp_ptr, cand_ptr, gate_stride,
            tanh_ptr, prev_ptr, prev_cell_ptr, mask_ptr, d_h_ptr, d_c_ptr, d_gates_ptr,
            d_gates_stride, rows, cols, n_min, HAS_MASK: tl.constexpr, ACTIVATE: tl.constexpr,
            LIBDEVICE: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < rows * cols
        row = offs // cols
        col = offs - row * cols
        g_off = row * gate_stride + col
        grad_h = tl.load(grad_h_ptr + offs, mask=live, other=0.0)
        grad_c = tl.load(grad_c_ptr + offs, mask=live, other=0.0)
        sf = tl.load(sf_ptr + g_off, mask=live, other=0.0)
        inp = tl.load(si_ptr + g_off, mask=live, other=0.0)
        out_gate = tl.load(so_ptr + g_off, mask=live, other=0.0)
        sp = tl.load(sp_ptr + g_off, mask=live, other=0.0)
        cand = tl.load(cand_ptr + g_off, mask=live, other=0.0)
        tanh_cell = tl.load(tanh_ptr + offs, mask=live, other=0.0)
        prev = tl.load(prev_ptr + offs, mask=live, other=0.0)
        prev_cell = tl.load(prev_cell_ptr + offs, mask=live, other=0.0)
        if ACTIVATE:  # logits, tanh's argument g and c' in place of their activations
            sf = _sigmoid(sf, LIBDEVICE)
            inp = _sigmoid(inp, LIBDEVICE)
            out_gate = _sigmoid(out_gate, LIBDEVICE)
            sp = _sigmoid(sp, LIBDEVICE)
            cand = _tanh(cand, LIBDEVICE)
            tanh_cell = _tanh(tanh_cell, LIBDEVICE)
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + row, mask=live, other=0) != 0)
        scale = 1.0 - n_min.to(tl.float32) * (1.0 / (1 << R))
        nf, f_q = _gate(sf, n_min, R)
        np_, p_q = _gate(sp, n_min, R)
        live_h = tl.where(real, grad_h, 0.0)
        tl.store(d_h_ptr + offs, tl.where(real, grad_h * p_q, grad_h), mask=live)
        grad_c = grad_c + live_h * out_gate * (1.0 - tanh_cell * tanh_cell)
        live_c = tl.where(real, grad_c, 0.0)
        tl.store(d_c_ptr + offs, tl.where(real, grad_c * f_q, grad_c), mask=live)
        base = d_gates_ptr + row * d_gates_stride + col
        tl.store(base, live_c * prev_cell * (scale * sf * (1.0 - sf)), mask=live)
        tl.store(base + cols, live_c * cand * inp * (1.0 - inp), mask=live)
        tl.store(base + 2 * cols, live_h * tanh_cell * out_gate * (1.0 - out_gate), mask=live)
        tl.store(base + 3 * cols, live_h * prev * (scale * sp * (1.0 - sp)), mask=live)
        tl.store(base + 4 * cols, live_c * inp * (1.0 - cand * cand), mask=live)


# -- launch wrappers ------------------------------------------------------------------------------

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


def _mask_arg(mask: Optional[Tensor], like: Tensor) -> Tuple[Tensor, bool]:
    if mask is None:
        return like, False
    return (mask.view(torch.uint8) if mask.dtype == torch.bool else mask), True


def _row_stride(x: Tensor) -> int:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError("kernel inputs must be 2-D with unit column stride")
    return x.stride(0)


def gated_forward(h: Tensor, s: Tensor, b: Tensor, stack: WordStack, *, mode: int,
                  a: Optional[Tensor] = None, mask: Optional[Tensor] = None, n_min: int,
                  stored: int = 0, precision: int = 32, activate: bool = False, tag: str = ""
                  ) -> Tuple[Tensor, Tensor]:
    """One forward half-step in one launch (two past _SINGLE_PROGRAM_LIMIT elements). h: int64 (rows, cols) (row stride free, unit column
    stride); s: the gate's sigmoid; b (and a, MODE_PRODUCT): the update's factors, float32 of h's
    shape; with `activate`, s and a are logits and b tanh's argument (the kernel applies them);
    mask: (rows,) bool or uint8; tag: what the gates and words are counted under. Returns (new
    exact state, its float32 view), both contiguous."""
    rows, cols = h.shape
    hist, pushed = stack.counters(tag) if stack.count else (stack.top, stack.top)
    stack.reserve(rows * cols)
    out = torch.empty((rows, cols), dtype=torch.int64, device=h.device)
    value = torch.empty((rows, cols), dtype=torch.float32, device=h.device)
    a = b if a is None else a
    mask_t, has_mask = _mask_arg(mask, stack.top)
    total, block = rows * cols, _block(rows * cols)
    blocks = triton.cdiv(total, block)
    staged = total > _SINGLE_PROGRAM_LIMIT and blocks > 1
    stage, flags, counts = stack.staging(total, blocks) if staged else (out, out, out)
    _launch(_gated_forward_kernel, (blocks if staged else 1,),
            h, _row_stride(h), s, _row_stride(s), a, _row_stride(a), b, _row_stride(b), mask_t,
            stack.head, stack.head.stride(0), stack.words, stack.words.numel(), stack.top,
            hist, pushed, out, value, stage, flags, counts, rows, cols, stored, n_min,
            MODE=mode, HAS_MASK=has_mask, HALF_STORAGE=precision == 16, COUNT=stack.count,
            ACTIVATE=activate, STAGED=staged, R=stack.forget_radix, W=stack.word_bits,
            BLOCK=block, warps=_GPU_WARPS)
    if staged:
        _launch(_place_words_kernel, (blocks,), stage, flags, counts, blocks, stack.words,
                stack.words.numel(), stack.top, pushed, total, COUNT=stack.count,
                BLOCKS=triton.next_power_of_2(blocks), BLOCK=block, warps=_GPU_WARPS)
    return out, value


def gated_reverse(h_next: Tensor, s: Tensor, b: Tensor, stack: WordStack, *, mode: int,
                  a: Optional[Tensor] = None, mask: Optional[Tensor] = None, n_min: int,
                  restored: Optional[Tensor] = None, activate: bool = False
                  ) -> Tuple[Tensor, Tensor]:
    """The exact inverse of `gated_forward` with the same s, a, b, mask and `activate`;
    `restored` (rows, k) int64: the stored units' previous values. Returns (previous exact
    state, its float view)."""
    rows, cols = h_next.shape
    out = torch.empty((rows, cols), dtype=torch.int64, device=h_next.device)
    value = torch.empty((rows, cols), dtype=torch.float32, device=h_next.device)
    a = b if a is None else a
    mask_t, has_mask = _mask_arg(mask, stack.top)
    stored = 0 if restored is None else restored.shape[1]
    restored_t = h_next if restored is None else restored
    total, block = rows * cols, _block(rows * cols)
    blocks = triton.cdiv(total, block)
    staged = total > _SINGLE_PROGRAM_LIMIT and blocks > 1
    counts = stack.staging(0, blocks)[2] if staged else out
    _launch(_gated_reverse_kernel, (blocks if staged else 1,),
            h_next, _row_stride(h_next), s, _row_stride(s), a, _row_stride(a), b, _row_stride(b),
            mask_t, stack.head, stack.head.stride(0), stack.words, stack.top, stack.error,
            restored_t, _row_stride(restored_t), out, value, counts, rows, cols, stored, n_min,
            MODE=mode, HAS_MASK=has_mask, ACTIVATE=activate, STAGED=staged,
            R=stack.forget_radix, W=stack.word_bits, BLOCK=block, warps=_GPU_WARPS)
    if staged:
        _launch(_refill_heads_kernel, (blocks,), stack.head, stack.head.stride(0), rows, cols,
                counts, blocks, stack.words, stack.top, stack.error, R=stack.forget_radix,
                W=stack.word_bits, BLOCKS=triton.next_power_of_2(blocks), BLOCK=block,
                warps=_GPU_WARPS)
    return out, value


def _grid(count: int, block: int = 1024):
    return (triton.cdiv(count, block),)


def activation(x: Tensor, *, tanh: bool = False, times: Optional[Tensor] = None) -> Tensor:
    """sigmoid(x) (or tanh(x)) as the ACTIVATE kernels compute it, times `times` if given; x
    (rows, cols) with unit column stride. Returns a contiguous float32 tensor."""
    rows, cols = x.shape
    y = torch.empty((rows, cols), dtype=torch.float32, device=x.device)
    other = y if times is None else times.contiguous()
    _launch(_activation_kernel, _grid(rows * cols), x, _row_stride(x), y, other, rows, cols,
            TANH=tanh, PRODUCT=times is not None, BLOCK=1024)
    return y


def gru_backward_gates(grad: Tensor, s: Tensor, cand: Tensor, previous: Tensor, d_logits: Tensor,
                       *, mask: Optional[Tensor], n_min: int, forget_radix: int = 10,
                       d_cand: Optional[Tensor] = None, activate: bool = False
                       ) -> Tuple[Tensor, Tensor]:
    """RevGRU backward, before the candidate product: writes d_logits[:, :cols] (the forget
    gate's logit gradient; pass the view) and d_candidate (into `d_cand` if given, a (rows,
    cols) view with unit column stride) and returns (gradient of h_i before the step,
    d_candidate). With `activate`, s and cand are the logit and the tanh argument."""
    rows, cols = grad.shape
    grad, previous = grad.contiguous(), previous.contiguous()
    d_half = torch.empty_like(grad)
    if d_cand is None:
        d_cand = torch.empty_like(grad)
    mask_t, has_mask = _mask_arg(mask, grad)
    _launch(_gru_backward_gates_kernel, _grid(rows * cols),
            grad, s, _row_stride(s), cand, _row_stride(cand), previous, mask_t, d_half, d_cand,
            _row_stride(d_cand), d_logits, _row_stride(d_logits), rows, cols, n_min,
            HAS_MASK=has_mask, ACTIVATE=activate, R=forget_radix, BLOCK=1024)
    return d_half, d_cand


def gru_backward_reset(d_reset_other: Tensor, other: Tensor, reset: Tensor, d_other: Tensor,
                       d_logits: Tensor, *, activate: bool = False) -> Tuple[Tensor, Tensor]:
    """RevGRU backward, after the candidate product: writes d_logits (the reset gate's columns;
    pass the view) and returns (d_other + d_reset_other * reset, reset * other). With
    `activate`, reset holds the reset gate's logits."""
    rows, cols = other.shape
    d_reset_other, other, d_other = (x.contiguous() for x in (d_reset_other, other, d_other))
    d_other_out = torch.empty_like(other)
    reset_other = torch.empty_like(other)
    _launch(_gru_backward_reset_kernel, _grid(rows * cols),
            d_reset_other, other, reset, _row_stride(reset), d_other, d_logits,
            _row_stride(d_logits), d_other_out, reset_other, rows, cols, ACTIVATE=activate,
            BLOCK=1024)
    return d_other_out, reset_other


def lstm_backward(grad_h: Tensor, grad_c: Tensor, gates: Tuple[Tensor, ...], tanh_cell: Tensor,
                  previous: Tensor, previous_cell: Tensor, *, mask: Optional[Tensor], n_min: int,
                  forget_radix: int = 10, d_gates: Optional[Tensor] = None,
                  activate: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """RevLSTM backward of one half: `gates` = (sigmoid f, sigmoid i, sigmoid o, sigmoid p,
    tanh g), (rows, cols) each with one common row stride; grads, tanh(c'), h and c before the
    step (rows, cols). With `activate`, gates are the five logit blocks and tanh_cell is c'.
    Returns (d h, d c before the step, d gate logits (rows, 5 cols) in the order f, i, o, p, g;
    written into `d_gates` if given, a view with unit column stride)."""
    rows, cols = grad_h.shape
    grad_h, grad_c, tanh_cell, previous, previous_cell = (
        x.contiguous() for x in (grad_h, grad_c, tanh_cell, previous, previous_cell))
    d_h, d_c = torch.empty_like(grad_h), torch.empty_like(grad_h)
    if d_gates is None:
        d_gates = torch.empty((rows, 5 * cols), dtype=grad_h.dtype, device=grad_h.device)
    mask_t, has_mask = _mask_arg(mask, grad_h)
    stride = _row_stride(gates[0])
    if any(_row_stride(gate) != stride for gate in gates):
        raise ValueError("lstm_backward: the gates must share one row stride")
    _launch(_lstm_backward_kernel, _grid(rows * cols),
            grad_h, grad_c, *gates, stride, tanh_cell, previous, previous_cell, mask_t, d_h,
            d_c, d_gates, _row_stride(d_gates), rows, cols, n_min, HAS_MASK=has_mask,
            ACTIVATE=activate, R=forget_radix, BLOCK=1024)
    return d_h, d_c, d_gates


# -- ahead-of-time compilation (no GPU needed) ----------------------------------------------------

_POINTER_TYPES = {"h_ptr": "*i64", "out_ptr": "*i64", "restored_ptr": "*i64", "head_ptr": "*i32",
                  "words_ptr": "*i16", "top_ptr": "*i64", "hist_ptr": "*i64",
                  "pushed_ptr": "*i64", "mask_ptr": "*u8", "stage_ptr": "*i16",
                  "flag_ptr": "*i8", "counts_ptr": "*i64", "error_ptr": "*i32"}


def compile_for_gpu(arch: int = 90) -> list:
    """Compile every kernel (each constexpr choice that changes code) for CUDA sm_`arch` as the
    launch wrappers would on that GPU (libdevice, no fp fusion), without a GPU: Triton's bundled
    LLVM and ptxas. Returns one line per variant: name, constexprs, cubin size, registers and
    spilled bytes (ptxas -v). Must run where TRITON_INTERPRET is unset (the kernels are then
    real JIT functions)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    if interpreting():
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET unset")
    target = GPUTarget("cuda", arch, 32)
    variants = []
    for activate in (False, True):
        for mode, staged in ((MODE_GRU, False), (MODE_PRODUCT, True)):
            variants.append((_gated_forward_kernel, dict(
                MODE=mode, HAS_MASK=True, HALF_STORAGE=mode == MODE_GRU, COUNT=True,
                ACTIVATE=activate, LIBDEVICE=True, STAGED=staged, R=10, W=16,
                BLOCK=_GPU_BLOCK)))
            variants.append((_gated_reverse_kernel, dict(
                MODE=mode, HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True, STAGED=staged,
                R=10, W=16, BLOCK=_GPU_BLOCK)))
        variants += [
            (_gru_backward_gates_kernel, dict(HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True,
                                              R=10, BLOCK=1024)),
            (_gru_backward_reset_kernel, dict(ACTIVATE=activate, LIBDEVICE=True, BLOCK=1024)),
            (_lstm_backward_kernel, dict(HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True, R=10,
                                         BLOCK=1024)),
            (_activation_kernel, dict(TANH=activate, PRODUCT=True, LIBDEVICE=True, BLOCK=1024))]
    variants += [(_place_words_kernel, dict(COUNT=True, BLOCKS=64, BLOCK=_GPU_BLOCK)),
                 (_refill_heads_kernel, dict(R=10, W=16, BLOCKS=64, BLOCK=_GPU_BLOCK))]
    many_warps = (_gated_forward_kernel, _gated_reverse_kernel, _place_words_kernel,
                  _refill_heads_kernel)
    lines = []
    for kernel, constants in variants:
        signature = {}
        for name in kernel.arg_names:
            if name in constants:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = _POINTER_TYPES.get(name, "*fp32")
            else:
                signature[name] = "i64" if name in ("capacity", "total") else "i32"
        options = {"enable_fp_fusion": False}
        if kernel in many_warps:
            options["num_warps"] = _GPU_WARPS
        compiled = triton.compile(triton.compiler.ASTSource(kernel, signature, constants),
                                  target=target, options=options)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
            ptx.write(compiled.asm["ptx"])
            ptx.flush()
            report = subprocess.run([get_ptxas(arch).path, "-v", "--gpu-name", f"sm_{arch}a",
                                     ptx.name, "-o", os.devnull], capture_output=True, text=True)
        registers = re.search(r"Used (\d+) registers", report.stderr)
        spills = re.findall(r"(\d+) bytes spill", report.stderr)
        lines.append(f"{kernel.__name__} {constants} warps={options.get('num_warps', 4)} "
                     f"cubin={len(compiled.asm['cubin'])} "
                     f"registers={registers.group(1) if registers else '?'} "
                     f"spilled={sum(int(n) for n in spills) if spills else '?'}")
    return lines


if __name__ == "__main__":  # python -m nmt.reversible.triton_kernels [arch]: compile for a GPU
    import sys

    for line in compile_for_gpu(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print(line)
