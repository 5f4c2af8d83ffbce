"""The Triton JIT functions behind `triton_kernels`: one kernel per direction of a gated
half-step, the element-wise backward kernels and the staged pushes' and pops' second launches (the
helpers they share with the fused-products kernels are in triton_arith.py). Launch them through
`triton_kernels`, which counts launches and picks blocks; see its docstring for the algorithm.
Empty when Triton is not importable."""
from __future__ import annotations

from nmt.reversible.triton_arith import tl, triton  # (None without Triton)


if triton is not None:
    from nmt.reversible.triton_arith import (
        _gate, _pop_block, _push_block, _refill_block, _rint, _sigmoid, _tanh)

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

    @triton.jit
    def _element(offs, total, cols, h_ptr, h_stride, s_ptr, s_stride, a_ptr, a_stride, b_ptr,
                 b_stride, mask_ptr, stored, n_min, MODE: tl.constexpr, HAS_MASK: tl.constexpr,
                 R: tl.constexpr, ACTIVATE: tl.constexpr, LIBDEVICE: tl.constexpr):
        """What both directions read of elements `offs` of a (rows, cols) half-state: which are
        live and real (not padding), the state, the gate numerator and the update, and the
        numerator applied (2**R, the identity, on padding and stored units)."""
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
        return live, row, col, h, n, z_q, update, real, n_applied

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
            live, row, col, h, n, z_q, update, real, n_applied = _element(
                offs, total, cols, h_ptr, h_stride, s_ptr, s_stride, a_ptr, a_stride, b_ptr,
                b_stride, mask_ptr, stored, n_min, MODE, HAS_MASK, R, ACTIVATE, LIBDEVICE)
            step = tl.where(real, _rint(update * (1 << 23)), 0)
            out, top = _push_block(h, n_applied, step, offs, live, row, col, head_ptr,
                                   head_stride, words_ptr, capacity, top, stage_ptr, flag_ptr,
                                   counts_ptr, pid, STAGED, R, W)
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
        _refill_block(head_ptr, head_stride, row, col, live, words_ptr, base, error_ptr, R, W)
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
            live, row, col, h_next, n, z_q, update, real, n_applied = _element(
                offs, total, cols, h_ptr, h_stride, s_ptr, s_stride, a_ptr, a_stride, b_ptr,
                b_stride, mask_ptr, stored, n_min, MODE, HAS_MASK, R, ACTIVATE, LIBDEVICE)
            out, top = _pop_block(h_next, n_applied, tl.where(real, _rint(update * (1 << 23)), 0),
                                  live, row, col, head_ptr, head_stride, words_ptr, top, error_ptr,
                                  counts_ptr, pid, STAGED, R, W)
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

