"""The Triton JIT functions behind `triton_gru_products`: RevGRU half-steps that compute their own
hidden-side matrix products (FlashRNN-style), one launch per half-step and direction.

Every kernel works on row blocks of RB rows, each half's columns padded to a power of two (OP for
the half's own units, KP for the other half's). `_gru_preactivations` is the one code path of a
row block's pre-activations: the forward, the reverse and the tape recomputation all call it with
the same block shapes, so the reverse sees the forward's gates bit for bit. The buffer arithmetic
is triton_jit's (`_push_block`, `_pop_block`) on the block flattened row-major, so the words land
in the order of the element-wise kernels. Empty when Triton is not importable."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # nothing to define: triton_kernels.available() is False
    triton = None
    tl = None


if triton is not None:
    from nmt.reversible.triton_jit import (_flag_underflow, _gate, _pop_block, _push_block,
                                           _rint, _sigmoid, _tanh, _times_weight_t)

    @triton.jit
    def _times_weight(a, w_ptr, w_stride, k_size, n_size, KP: tl.constexpr, NP: tl.constexpr):
        """a @ W (not transposed: the backward's d_candidate @ W_c) for a (RB, KP) zero past
        column k_size and W (k_size, n_size) in memory: (RB, NP), IEEE float32 products."""
        k = tl.arange(0, KP)
        n = tl.arange(0, NP)
        w = tl.load(w_ptr + k[:, None] * w_stride + n[None, :],
                    mask=(k[:, None] < k_size) & (n[None, :] < n_size), other=0.0)
        return tl.dot(a, w, input_precision="ieee")

    @triton.jit
    def _load_rows(ptr, stride, row, rows, cols, CP: tl.constexpr):
        """The (RB, CP) float block of rows `row` of a (rows, cols) matrix, zero outside it."""
        col = tl.arange(0, CP)[None, :]
        return tl.load(ptr + row[:, None] * stride + col,
                       mask=(row[:, None] < rows) & (col < cols), other=0.0)

    @triton.jit
    def _gru_gate_logits(other, gate_ptr, gate_stride, row, rows, wg_ptr, wg_stride, own, k_size,
                         OP: tl.constexpr, KP: tl.constexpr):
        """Forget logits (RB, OP) and reset logits (RB, KP): the gate piece plus other @ Wg^T,
        Wg (own + k_size, k_size); the two column groups are two products."""
        forget = _times_weight_t(other, wg_ptr, wg_stride, k_size, own, KP, OP)
        forget += _load_rows(gate_ptr, gate_stride, row, rows, own, OP)
        reset = _times_weight_t(other, wg_ptr + own * wg_stride, wg_stride, k_size, k_size, KP, KP)
        reset += _load_rows(gate_ptr + own, gate_stride, row, rows, k_size, KP)
        return forget, reset

    @triton.jit
    def _gru_candidate(reset_other, cand_ptr, cand_stride, row, rows, wc_ptr, wc_stride, own,
                       k_size, OP: tl.constexpr, KP: tl.constexpr):
        """Candidate pre-activation (RB, OP): its piece plus (r * other) @ Wc^T."""
        cand = _times_weight_t(reset_other, wc_ptr, wc_stride, k_size, own, KP, OP)
        return cand + _load_rows(cand_ptr, cand_stride, row, rows, own, OP)

    @triton.jit
    def _gru_preactivations(start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, own, k_size,
                            LIBDEVICE: tl.constexpr, RB: tl.constexpr, OP: tl.constexpr,
                            KP: tl.constexpr):
        """Rows start .. start + RB: (row indices, forget logits, reset logits, candidate
        pre-activation). The single code path of forward, reverse and tape."""
        row = start + tl.arange(0, RB)
        other = _load_rows(other_ptr, other_stride, row, rows, k_size, KP)
        forget, reset = _gru_gate_logits(other, gate_ptr, gate_stride, row, rows, wg_ptr,
                                         wg_stride, own, k_size, OP, KP)
        reset_other = _sigmoid(reset, LIBDEVICE) * other
        cand = _gru_candidate(reset_other, cand_ptr, cand_stride, row, rows, wc_ptr, wc_stride,
                              own, k_size, OP, KP)
        return row, forget, reset, cand

    @triton.jit
    def _gru_elements(row, forget, cand, rows, own, h_ptr, h_stride, mask_ptr, stored, n_min,
                      HAS_MASK: tl.constexpr, LIBDEVICE: tl.constexpr, R: tl.constexpr,
                      OP: tl.constexpr, BLOCK: tl.constexpr):
        """`_element` of a row block, flattened row-major to (BLOCK,) = (RB * OP,): live, row,
        col, state, z_q, update, real, applied numerator, rounded step."""
        col = tl.arange(0, OP)[None, :] + 0 * row[:, None]
        row2 = row[:, None] + 0 * col
        live = (row2 < rows) & (col < own)
        s = _sigmoid(forget, LIBDEVICE)
        b = _tanh(cand, LIBDEVICE)
        n, z_q = _gate(s, n_min, R)
        update = (1.0 - z_q) * b
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + row2, mask=live, other=0) != 0)
        n_applied = tl.where(real & (col >= stored), n, 1 << R)
        h = tl.load(h_ptr + row2 * h_stride + col, mask=live, other=0)
        step = tl.where(real, _rint(update * (1 << 23)), 0)
        return (tl.reshape(live, [BLOCK]), tl.reshape(row2, [BLOCK]), tl.reshape(col, [BLOCK]),
                tl.reshape(h, [BLOCK]), tl.reshape(z_q, [BLOCK]), tl.reshape(update, [BLOCK]),
                tl.reshape(real, [BLOCK]), tl.reshape(n_applied, [BLOCK]),
                tl.reshape(step, [BLOCK]))

    @triton.jit(do_not_specialize=["capacity", "rows", "own", "k_size", "stored", "n_min"])
    def _gru_forward_kernel(
            h_ptr, h_stride, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, mask_ptr, head_ptr, head_stride,
            words_ptr, capacity, top_ptr, hist_ptr, pushed_ptr, out_ptr, value_ptr, stage_ptr,
            flag_ptr, counts_ptr, rows, own, k_size, stored, n_min, HAS_MASK: tl.constexpr,
            HALF_STORAGE: tl.constexpr, COUNT: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr, RB: tl.constexpr,
            OP: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
        """`_gated_forward_kernel` (MODE_GRU, ACTIVATE) with its own products. STAGED: one
        program per row block, staging at padded offsets pid * BLOCK + r * OP + c (padding
        flagged 0 here, so `_place_words_kernel` with this BLOCK places the words)."""
        pid = tl.program_id(0)
        top = tl.load(top_ptr)
        start_top = top
        if STAGED:
            first, step_size = pid * RB, rows  # one row block per program
            if pid == 0:
                tl.store(counts_ptr + tl.num_programs(0), top)
        else:
            first, step_size = 0, RB
        for start in range(first, rows, step_size):
            row_idx, forget, reset, cand = _gru_preactivations(
                start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, own, k_size, LIBDEVICE, RB, OP,
                KP)
            live, row, col, h, z_q, update, real, n_applied, step = _gru_elements(
                row_idx, forget, cand, rows, own, h_ptr, h_stride, mask_ptr, stored, n_min,
                HAS_MASK, LIBDEVICE, R, OP, BLOCK)
            offs = (start // RB) * BLOCK + tl.arange(0, BLOCK)
            if STAGED:
                tl.store(flag_ptr + offs, tl.zeros([BLOCK], tl.int8), mask=~live)
            out, top = _push_block(h, n_applied, step, offs, live, row, col, head_ptr,
                                   head_stride, words_ptr, capacity, top, stage_ptr, flag_ptr,
                                   counts_ptr, pid, STAGED, R, W)
            if COUNT:
                tl.atomic_add(hist_ptr + n_applied, 1, mask=live)
            value = h.to(tl.float32) * (1.0 / (1 << 23))  # stored units: the float update
            kept = z_q * value + update
            if HALF_STORAGE:
                kept = kept.to(tl.float16).to(tl.float32)
            kept = tl.where(real, _rint(kept * (1 << 23)), h)
            out = tl.where(col < stored, kept, out)
            tl.store(out_ptr + row * own + col, out, mask=live)
            tl.store(value_ptr + row * own + col, out.to(tl.float32) * (1.0 / (1 << 23)),
                     mask=live)
        if not STAGED:
            tl.store(top_ptr, top)
            if COUNT:
                tl.store(pushed_ptr, tl.load(pushed_ptr) + (top - start_top))

    @triton.jit
    def _store_tape(row, forget, reset, cand, rows, own, k_size, logits_ptr, cand_out_ptr,
                    OP: tl.constexpr, KP: tl.constexpr):
        """The tape's logits (rows, own + k_size) and candidate (rows, own), contiguous."""
        col = tl.arange(0, OP)[None, :]
        k = tl.arange(0, KP)[None, :]
        r2 = row[:, None]
        tl.store(logits_ptr + r2 * (own + k_size) + col, forget, mask=(r2 < rows) & (col < own))
        tl.store(logits_ptr + r2 * (own + k_size) + own + k, reset,
                 mask=(r2 < rows) & (k < k_size))
        tl.store(cand_out_ptr + r2 * own + col, cand, mask=(r2 < rows) & (col < own))

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "stored", "n_min"])
    def _gru_reverse_kernel(
            h_ptr, h_stride, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, mask_ptr, head_ptr, head_stride,
            words_ptr, top_ptr, error_ptr, restored_ptr, restored_stride, out_ptr, value_ptr,
            counts_ptr, logits_ptr, cand_out_ptr, rows, own, k_size, stored, n_min,
            HAS_MASK: tl.constexpr, TAPE: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr, RB: tl.constexpr,
            OP: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
        """`_gated_reverse_kernel` with its own products: row blocks last to first (STAGED: one
        per program, then `_refill_rows_kernel`); TAPE: also writes the logits it computed."""
        pid = tl.program_id(0)
        top = tl.load(top_ptr)
        if STAGED:
            first, last = pid, pid + 1
            if pid == 0:
                tl.store(counts_ptr + tl.num_programs(0), top)
        else:
            first, last = 0, tl.cdiv(rows, RB)
        for back in range(first, last):  # last block first: its words are on top
            if STAGED:
                start = pid * RB
            else:
                start = (last - 1 - back) * RB
            row_idx, forget, reset, cand = _gru_preactivations(
                start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, own, k_size, LIBDEVICE, RB, OP,
                KP)
            live, row, col, h_next, z_q, update, real, n_applied, step = _gru_elements(
                row_idx, forget, cand, rows, own, h_ptr, h_stride, mask_ptr, stored, n_min,
                HAS_MASK, LIBDEVICE, R, OP, BLOCK)
            out, top = _pop_block(h_next, n_applied, step, live, row, col, head_ptr, head_stride,
                                  words_ptr, top, error_ptr, counts_ptr, pid, STAGED, R, W)
            restored = tl.load(restored_ptr + row * restored_stride + col,
                               mask=live & (col < stored), other=0)
            out = tl.where(col < stored, tl.where(real, restored, h_next), out)
            tl.store(out_ptr + row * own + col, out, mask=live)
            tl.store(value_ptr + row * own + col, out.to(tl.float32) * (1.0 / (1 << 23)),
                     mask=live)
            if TAPE:
                _store_tape(row_idx, forget, reset, cand, rows, own, k_size, logits_ptr,
                            cand_out_ptr, OP, KP)
        if not STAGED:
            tl.store(top_ptr, top)

    @triton.jit(do_not_specialize=["rows", "cols", "blocks"])
    def _refill_rows_kernel(head_ptr, head_stride, rows, cols, counts_ptr, blocks, words_ptr,
                            top_ptr, error_ptr, R: tl.constexpr, W: tl.constexpr,
                            BLOCKS: tl.constexpr, RB: tl.constexpr, OP: tl.constexpr,
                            BLOCK: tl.constexpr):
        """`_refill_heads_kernel` for row blocks (RB rows of OP padded columns): the element
        blocks of the staged reverse are not the flat power-of-two blocks that one assumes."""
        pid = tl.program_id(0)
        index = tl.arange(0, BLOCKS)
        counts = tl.load(counts_ptr + index, mask=index < blocks, other=0)
        top = tl.load(counts_ptr + blocks)
        base = top - tl.sum(tl.where(index >= pid, counts, 0), 0)
        col = tl.arange(0, OP)[None, :] + 0 * tl.arange(0, RB)[:, None]
        row = pid * RB + tl.arange(0, RB)[:, None] + 0 * col
        row, col = tl.reshape(row, [BLOCK]), tl.reshape(col, [BLOCK])
        live = (row < rows) & (col < cols)
        state = tl.load(head_ptr + row * head_stride + col, mask=live, other=1 << R).to(tl.int64)
        refill = (state < (1 << R)) & live
        slot = base + tl.cumsum(refill.to(tl.int32), 0) - 1
        _flag_underflow(refill, slot, error_ptr)
        word = tl.load(words_ptr + slot, mask=refill & (slot >= 0), other=0).to(tl.int64)
        state = tl.where(refill, (state << W) | (word + (1 << (W - 1))), state)
        tl.store(head_ptr + row * head_stride + col, state.to(tl.int32), mask=live)
        if pid == 0:
            tl.store(top_ptr, top - tl.sum(counts, 0))

    @triton.jit(do_not_specialize=["rows", "own", "k_size"])
    def _gru_tape_kernel(other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr, cand_stride,
                         wg_ptr, wg_stride, wc_ptr, wc_stride, logits_ptr, cand_out_ptr, rows,
                         own, k_size, LIBDEVICE: tl.constexpr, RB: tl.constexpr,
                         OP: tl.constexpr, KP: tl.constexpr):
        """The reverse's tape without the stack: row blocks in parallel, same pre-activations."""
        row, forget, reset, cand = _gru_preactivations(
            tl.program_id(0) * RB, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, own, k_size, LIBDEVICE, RB, OP, KP)
        _store_tape(row, forget, reset, cand, rows, own, k_size, logits_ptr, cand_out_ptr, OP, KP)

    @triton.jit
    def _gate_grad_product(d_forget, d_reset, wg_ptr, wg_stride, own, k_size, OP: tl.constexpr,
                           KP: tl.constexpr):
        """d_logits @ Wg (RB, KP) for the logit gradients split as the forward splits them."""
        product = _times_weight(d_forget, wg_ptr, wg_stride, own, k_size, OP, KP)
        return product + _times_weight(d_reset, wg_ptr + own * wg_stride, wg_stride, k_size,
                                       k_size, KP, KP)

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "n_min"])
    def _gru_backward_kernel(
            grad_ptr, grad_stride, logits_ptr, logits_stride, cand_ptr, cand_stride, prev_ptr,
            prev_stride, other_ptr, other_stride, d_other_ptr, d_other_stride, mask_ptr, wg_ptr,
            wg_stride, wc_ptr, wc_stride, d_half_ptr, d_logits_ptr, d_logits_stride, d_cand_ptr,
            d_cand_stride, d_other_out_ptr, reset_other_ptr, rows, own, k_size, n_min,
            HAS_MASK: tl.constexpr, LIBDEVICE: tl.constexpr, R: tl.constexpr, RB: tl.constexpr,
            OP: tl.constexpr, KP: tl.constexpr):
        """One row block of `_gru_backward_gates_kernel` + d_cand @ Wc +
        `_gru_backward_reset_kernel` + d_logits @ Wg (no stack: blocks run in parallel)."""
        row = tl.program_id(0) * RB + tl.arange(0, RB)
        r2 = row[:, None]
        col = tl.arange(0, OP)[None, :]
        k = tl.arange(0, KP)[None, :]
        live = (r2 < rows) & (col < own)
        live_k = (r2 < rows) & (k < k_size)
        grad = _load_rows(grad_ptr, grad_stride, row, rows, own, OP)
        s = _sigmoid(_load_rows(logits_ptr, logits_stride, row, rows, own, OP), LIBDEVICE)
        cand = _tanh(_load_rows(cand_ptr, cand_stride, row, rows, own, OP), LIBDEVICE)
        prev = _load_rows(prev_ptr, prev_stride, row, rows, own, OP)
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + r2, mask=r2 < rows, other=0) != 0)
        n, z_q = _gate(s, n_min, R)
        slope = (1.0 - n_min.to(tl.float32) * (1.0 / (1 << R))) * s * (1.0 - s)
        grad_live = tl.where(real, grad, 0.0)
        tl.store(d_half_ptr + r2 * own + col, tl.where(real, grad * z_q, grad), mask=live)
        d_cand = grad_live * (1.0 - z_q) * (1.0 - cand * cand)
        tl.store(d_cand_ptr + r2 * d_cand_stride + col, d_cand, mask=live)
        d_forget = grad_live * (prev - cand) * slope
        tl.store(d_logits_ptr + r2 * d_logits_stride + col, d_forget, mask=live)
        d_ro = _times_weight(d_cand, wc_ptr, wc_stride, own, k_size, OP, KP)
        other = _load_rows(other_ptr, other_stride, row, rows, k_size, KP)
        reset = _sigmoid(_load_rows(logits_ptr + own, logits_stride, row, rows, k_size, KP),
                         LIBDEVICE)
        d_reset = d_ro * other * reset * (1.0 - reset)
        tl.store(d_logits_ptr + r2 * d_logits_stride + own + k, d_reset, mask=live_k)
        d_other = _load_rows(d_other_ptr, d_other_stride, row, rows, k_size, KP) + d_ro * reset
        d_other += _gate_grad_product(d_forget, d_reset, wg_ptr, wg_stride, own, k_size, OP, KP)
        tl.store(d_other_out_ptr + r2 * k_size + k, d_other, mask=live_k)
        tl.store(reset_other_ptr + r2 * k_size + k, reset * other, mask=live_k)
