"""Triton helpers every kernel of the reversible core shares: integer arithmetic Triton lacks
(floor division, round-half-even), the activations' one formula, the quantised gate, the IEEE
product of a register block by a weight, and the buffer's bijection on a block of elements (push,
pop, the staged refill). One definition each, so forward and reverse kernels compute alike.
Empty when Triton is not importable."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # nothing to define: triton_kernels.available() is False
    triton = None
    tl = None


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
    def _times_weight_t(a, w_ptr, w_stride, k_size, n_size, KP: tl.constexpr,
                        NP: tl.constexpr):
        """a @ W^T for a register block a (RB, KP) (zero past column k_size) and W (n_size,
        k_size) in memory with row stride w_stride: (RB, NP) float32, zero past column n_size.
        IEEE float32 products (no TF32), one code path for every kernel that calls it, so a
        forward kernel and its reverse compute the same pre-activations bit for bit."""
        k = tl.arange(0, KP)
        n = tl.arange(0, NP)
        w = tl.load(w_ptr + n[None, :] * w_stride + k[:, None],
                    mask=(k[:, None] < k_size) & (n[None, :] < n_size), other=0.0)
        return tl.dot(a, w, input_precision="ieee")

    @triton.jit
    def _refill_block(head_ptr, head_stride, row, col, live, words_ptr, base, error_ptr,
                      R: tl.constexpr, W: tl.constexpr):
        """The second half of a staged pop: the heads of a 1-D block (row-major) below 2**R take
        their words back, the block's words lying from `base` up, in element order."""
        state = tl.load(head_ptr + row * head_stride + col, mask=live, other=1 << R).to(tl.int64)
        refill = (state < (1 << R)) & live
        slot = base + tl.cumsum(refill.to(tl.int32), 0) - 1
        _flag_underflow(refill, slot, error_ptr)
        word = tl.load(words_ptr + slot, mask=refill & (slot >= 0), other=0).to(tl.int64)
        state = tl.where(refill, (state << W) | (word + (1 << (W - 1))), state)
        tl.store(head_ptr + row * head_stride + col, state.to(tl.int32), mask=live)

    @triton.jit
    def _push_block(h, n_applied, step, offs, live, row, col, head_ptr, head_stride, words_ptr,
                    capacity, top, stage_ptr, flag_ptr, counts_ptr, pid, STAGED: tl.constexpr,
                    R: tl.constexpr, W: tl.constexpr):
        """The forward bijection of a 1-D block of elements (flat indices `offs`, row-major):
        spill the heads that would overflow (words in element order from `top`, or staged at
        `offs` with this block's count in counts[pid]), code h's low R bits into the heads and
        add the rounded update `step`. Returns (new exact values, new top)."""
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
        return out, top

    @triton.jit
    def _pop_block(h_next, n_applied, step, live, row, col, head_ptr, head_stride, words_ptr, top,
                   error_ptr, counts_ptr, pid, STAGED: tl.constexpr, R: tl.constexpr,
                   W: tl.constexpr):
        """The inverse of `_push_block` for one block: h_next minus `step`, decoded from the
        heads, and the heads refilled from the words on top (STAGED: left before the refill,
        the refill count in counts[pid]). Returns (previous exact values, new top)."""
        h = h_next - step
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
        return out, top
