"""The Triton JIT functions behind `triton_gru_products`: RevGRU half-steps that compute their own
hidden-side matrix products (FlashRNN-style), one launch per half-step and direction.

Every kernel works on row blocks of RB rows, the half's own columns padded to a power of two OP;
the products contract over the other half in chunks of KC columns (`_times_weight_t` on a (KC, OP)
weight tile at a time: whole weight tiles would not fit in registers past 64 units a half).
`_gru_preactivations` is the one code path of a row block's pre-activations: the forward, the
reverse and the tape recomputation all call it with the same block shapes, so the reverse sees the
forward's gates bit for bit. The buffer arithmetic is triton_jit's (`_push_block`, `_pop_block`)
on the block flattened row-major, so the words land in the order of the element-wise kernels.
Empty when Triton is not importable."""
from __future__ import annotations

from nmt.reversible.triton_arith import tl, triton  # (None without Triton)


if triton is not None:
    from nmt.reversible.triton_arith import (_gate, _pop_block, _push_block,
                                             _refill_block, _rint, _sigmoid, _tanh,
                                             _times_weight_t)

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
    def _times_weight_t_chunks(acc, x_ptr, x_stride, row, rows, x_cols, w_ptr, w_stride, n_size,
                               KC: tl.constexpr, NP: tl.constexpr):
        """acc + x[row] @ W^T, W (n_size, x_cols): the contraction in chunks of KC columns of x
        read from memory, one `_times_weight_t` each (a (KC, NP) weight tile at a time, so the
        kernels compile without spilling whole weight matrices)."""
        for k0 in range(0, x_cols, KC):
            chunk = _load_rows(x_ptr + k0, x_stride, row, rows, x_cols - k0, KC)
            acc += _times_weight_t(chunk, w_ptr + k0, w_stride, x_cols - k0, n_size, KC, NP)
        return acc

    @triton.jit
    def _gru_forget_logits(other_ptr, other_stride, gate_ptr, gate_stride, row, rows, wg_ptr,
                           wg_stride, own, k_size, KC: tl.constexpr, OP: tl.constexpr):
        """Forget logits (RB, OP): the gate piece plus other @ Wg[:own]^T."""
        return _times_weight_t_chunks(_load_rows(gate_ptr, gate_stride, row, rows, own, OP),
                                      other_ptr, other_stride, row, rows, k_size, wg_ptr,
                                      wg_stride, own, KC, OP)

    @triton.jit
    def _gru_reset_logits(c0, other_ptr, other_stride, gate_ptr, gate_stride, row, rows, wg_ptr,
                          wg_stride, own, k_size, KC: tl.constexpr):
        """Reset logits of columns c0 .. c0 + KC (RB, KC): piece plus other @ Wg[own + c0:]^T."""
        piece = _load_rows(gate_ptr + own + c0, gate_stride, row, rows, k_size - c0, KC)
        return _times_weight_t_chunks(piece, other_ptr, other_stride, row, rows, k_size,
                                      wg_ptr + (own + c0) * wg_stride, wg_stride, k_size - c0,
                                      KC, KC)

    @triton.jit
    def _gru_preactivations(start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, reset_ptr,
                            reset_stride, own, k_size, TAPE: tl.constexpr,
                            LIBDEVICE: tl.constexpr, RB: tl.constexpr, OP: tl.constexpr,
                            KC: tl.constexpr):
        """Rows start .. start + RB: (row indices, forget logits, candidate pre-activation);
        TAPE: the reset logits are stored at reset_ptr as they are made, KC columns at a time
        (each chunk of r * other feeds the candidate product at once). The single code path of
        forward, reverse and tape."""
        row = start + tl.arange(0, RB)
        forget = _gru_forget_logits(other_ptr, other_stride, gate_ptr, gate_stride, row, rows,
                                    wg_ptr, wg_stride, own, k_size, KC, OP)
        cand = _load_rows(cand_ptr, cand_stride, row, rows, own, OP)
        for c0 in range(0, k_size, KC):
            reset = _gru_reset_logits(c0, other_ptr, other_stride, gate_ptr, gate_stride, row,
                                      rows, wg_ptr, wg_stride, own, k_size, KC)
            reset_other = _sigmoid(reset, LIBDEVICE) * _load_rows(
                other_ptr + c0, other_stride, row, rows, k_size - c0, KC)
            cand += _times_weight_t(reset_other, wc_ptr + c0, wc_stride, k_size - c0, own, KC,
                                    OP)
            if TAPE:
                _store_rows(reset_ptr + c0, reset_stride, row, rows, k_size - c0, reset, KC)
        return row, forget, cand

    @triton.jit
    def _store_rows(ptr, stride, row, rows, cols, x, CP: tl.constexpr):
        """Store the (RB, CP) block x at rows `row` of a (rows, cols) matrix."""
        col = tl.arange(0, CP)[None, :]
        tl.store(ptr + row[:, None] * stride + col, x, mask=(row[:, None] < rows) & (col < cols))

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
            OP: tl.constexpr, KC: tl.constexpr, BLOCK: tl.constexpr):
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
            row_idx, forget, cand = _gru_preactivations(
                start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, out_ptr, 0, own, k_size, False,
                LIBDEVICE, RB, OP, KC)
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
    def _store_tape(row, forget, cand, rows, own, k_size, logits_ptr, cand_out_ptr,
                    OP: tl.constexpr):
        """The tape's forget logits (the first own columns of logits (rows, own + k_size); the
        reset logits are stored as they are made) and candidate (rows, own), contiguous."""
        _store_rows(logits_ptr, own + k_size, row, rows, own, forget, OP)
        _store_rows(cand_out_ptr, own, row, rows, own, cand, OP)

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "stored", "n_min"])
    def _gru_reverse_kernel(
            h_ptr, h_stride, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, mask_ptr, head_ptr, head_stride,
            words_ptr, top_ptr, error_ptr, restored_ptr, restored_stride, out_ptr, value_ptr,
            counts_ptr, logits_ptr, cand_out_ptr, rows, own, k_size, stored, n_min,
            HAS_MASK: tl.constexpr, TAPE: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr, RB: tl.constexpr,
            OP: tl.constexpr, KC: tl.constexpr, BLOCK: tl.constexpr):
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
            row_idx, forget, cand = _gru_preactivations(
                start, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
                cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, logits_ptr + own,
                own + k_size, own, k_size, TAPE, LIBDEVICE, RB, OP, KC)
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
                _store_tape(row_idx, forget, cand, rows, own, k_size, logits_ptr, cand_out_ptr,
                            OP)
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
        _refill_block(head_ptr, head_stride, row, col, live, words_ptr, base, error_ptr, R, W)
        if pid == 0:
            tl.store(top_ptr, top - tl.sum(counts, 0))

    @triton.jit(do_not_specialize=["rows", "own", "k_size"])
    def _gru_tape_kernel(other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr, cand_stride,
                         wg_ptr, wg_stride, wc_ptr, wc_stride, logits_ptr, cand_out_ptr, rows,
                         own, k_size, LIBDEVICE: tl.constexpr, RB: tl.constexpr,
                         OP: tl.constexpr, KC: tl.constexpr):
        """The reverse's tape without the stack: row blocks in parallel, same pre-activations."""
        row, forget, cand = _gru_preactivations(
            tl.program_id(0) * RB, rows, other_ptr, other_stride, gate_ptr, gate_stride, cand_ptr,
            cand_stride, wg_ptr, wg_stride, wc_ptr, wc_stride, logits_ptr + own, own + k_size,
            own, k_size, True, LIBDEVICE, RB, OP, KC)
        _store_tape(row, forget, cand, rows, own, k_size, logits_ptr, cand_out_ptr, OP)

    @triton.jit
    def _times_weight_chunks(acc, x_ptr, x_stride, row, rows, x_cols, w_ptr, w_stride, n_size,
                             KC: tl.constexpr, NP: tl.constexpr):
        """acc + x[row] @ W, W (x_cols, n_size) not transposed, x read in chunks of KC columns."""
        for k0 in range(0, x_cols, KC):
            chunk = _load_rows(x_ptr + k0, x_stride, row, rows, x_cols - k0, KC)
            acc += _times_weight(chunk, w_ptr + k0 * w_stride, w_stride, x_cols - k0, n_size, KC,
                                 NP)
        return acc

    @triton.jit
    def _gate_grad_chunk(acc, d_forget, d_logits_ptr, d_logits_stride, row, rows, wg_ptr,
                         wg_stride, own, k_size, c0, OP: tl.constexpr, KC: tl.constexpr):
        """acc + (d_logits @ Wg)[:, c0 .. c0 + KC]: the forget part from the (RB, OP) block
        d_forget, then the reset part from d_logits' reset columns in memory."""
        acc += _times_weight(d_forget, wg_ptr + c0, wg_stride, own, k_size - c0, OP, KC)
        return _times_weight_chunks(acc, d_logits_ptr + own, d_logits_stride, row, rows, k_size,
                                    wg_ptr + own * wg_stride + c0, wg_stride, k_size - c0, KC, KC)

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "n_min"])
    def _gru_backward_kernel(
            grad_ptr, grad_stride, logits_ptr, logits_stride, cand_ptr, cand_stride, prev_ptr,
            prev_stride, other_ptr, other_stride, d_other_ptr, d_other_stride, mask_ptr, wg_ptr,
            wg_stride, wc_ptr, wc_stride, d_half_ptr, d_logits_ptr, d_logits_stride, d_cand_ptr,
            d_cand_stride, d_other_out_ptr, reset_other_ptr, extra_own_ptr, extra_own_stride,
            extra_other_ptr, extra_other_stride, rows, own, k_size, n_min,
            HAS_MASK: tl.constexpr, HAS_EXTRA: tl.constexpr, LIBDEVICE: tl.constexpr,
            R: tl.constexpr, RB: tl.constexpr, OP: tl.constexpr, KC: tl.constexpr):
        """One row block of `_gru_backward_gates_kernel`, then per KC columns of the other half
        d_cand @ Wc and `_gru_backward_reset_kernel`, then (all reset logit gradients written)
        d_other += d_logits @ Wg per KC columns. No stack: row blocks run in parallel. HAS_EXTRA:
        grad and d_other get extra_own / extra_other added on load (the readout's gradient of
        the step, added here rather than by two torch launches)."""
        row = tl.program_id(0) * RB + tl.arange(0, RB)
        r2 = row[:, None]
        col = tl.arange(0, OP)[None, :]
        live = (r2 < rows) & (col < own)
        grad = _load_rows(grad_ptr, grad_stride, row, rows, own, OP)
        if HAS_EXTRA:
            grad = grad + _load_rows(extra_own_ptr, extra_own_stride, row, rows, own, OP)
        s = _sigmoid(_load_rows(logits_ptr, logits_stride, row, rows, own, OP), LIBDEVICE)
        cand = _tanh(_load_rows(cand_ptr, cand_stride, row, rows, own, OP), LIBDEVICE)
        prev = _load_rows(prev_ptr, prev_stride, row, rows, own, OP)
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + r2, mask=r2 < rows, other=0) != 0)
        n, z_q = _gate(s, n_min, R)
        slope = (1.0 - n_min.to(tl.float32) * (1.0 / (1 << R))) * s * (1.0 - s)
        grad_live = tl.where(real, grad, 0.0)
        _store_rows(d_half_ptr, own, row, rows, own, tl.where(real, grad * z_q, grad), OP)
        d_cand = grad_live * (1.0 - z_q) * (1.0 - cand * cand)
        _store_rows(d_cand_ptr, d_cand_stride, row, rows, own, d_cand, OP)
        d_forget = grad_live * (prev - cand) * slope
        _store_rows(d_logits_ptr, d_logits_stride, row, rows, own, d_forget, OP)
        for c0 in range(0, k_size, KC):
            d_ro = _times_weight(d_cand, wc_ptr + c0, wc_stride, own, k_size - c0, OP, KC)
            other = _load_rows(other_ptr + c0, other_stride, row, rows, k_size - c0, KC)
            reset = _sigmoid(_load_rows(logits_ptr + own + c0, logits_stride, row, rows,
                                        k_size - c0, KC), LIBDEVICE)
            _store_rows(d_logits_ptr + own + c0, d_logits_stride, row, rows, k_size - c0,
                        d_ro * other * reset * (1.0 - reset), KC)
            d_other = _load_rows(d_other_ptr + c0, d_other_stride, row, rows, k_size - c0, KC)
            if HAS_EXTRA:
                d_other = d_other + _load_rows(extra_other_ptr + c0, extra_other_stride, row,
                                               rows, k_size - c0, KC)
            _store_rows(d_other_out_ptr + c0, k_size, row, rows, k_size - c0,
                        d_other + d_ro * reset, KC)
            _store_rows(reset_other_ptr + c0, k_size, row, rows, k_size - c0, reset * other, KC)
        tl.debug_barrier()  # this program's reset gradients and partial sums, visible to all
        for c0 in range(0, k_size, KC):
            partial = _load_rows(d_other_out_ptr + c0, k_size, row, rows, k_size - c0, KC)
            total = _gate_grad_chunk(partial, d_forget, d_logits_ptr, d_logits_stride, row, rows,
                                     wg_ptr, wg_stride, own, k_size, c0, OP, KC)
            _store_rows(d_other_out_ptr + c0, k_size, row, rows, k_size - c0, total, KC)
