"""The Triton JIT functions behind `triton_lstm_products`: a RevLSTM half-step (c, then h) with
its hidden-side products computed inside the kernel, one launch per direction. Every kernel gets
a row block's gate logits from ONE function, `_lstm_logits`, with the same block shapes (RB
rows, CP columns, KC-column chunks of the other half), so forward, reverse and tape
recomputation see the same floats bit for bit. The buffer arithmetic is triton_jit's
(`_push_block`, `_pop_block`, `_gate`, ...). Empty when Triton is not importable."""
from __future__ import annotations

from nmt.reversible.triton_arith import tl, triton

if triton is not None:
    from nmt.reversible.triton_arith import (
        _gate, _pop_block, _push_block, _refill_block, _rint, _sigmoid, _tanh, _times_weight_t)

    @triton.jit
    def _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride, rb, rows,
                     own, k_size, gate, RB: tl.constexpr, CP: tl.constexpr, KC: tl.constexpr):
        """Logits of gate block `gate` for rows rb * RB ...: piece + other @ W_gate^T, (RB, CP)
        float32, the product summed over chunks of KC columns of `other` (IEEE tl.dot each: a
        chunk's operands fit in registers). The one source of pre-activations for every kernel
        here."""
        r = rb * RB + tl.arange(0, RB)[:, None]
        k = tl.arange(0, KC)[None, :]
        cc = tl.arange(0, CP)[None, :]
        acc = tl.load(piece_ptr + r * piece_stride + gate * own + cc,
                      mask=(r < rows) & (cc < own), other=0.0)
        w_gate = w_ptr + gate * own * w_stride
        for k0 in range(0, k_size, KC):
            other = tl.load(other_ptr + r * other_stride + k0 + k,
                            mask=(r < rows) & (k0 + k < k_size), other=0.0)
            acc = acc + _times_weight_t(other, w_gate + k0, w_stride, k_size - k0, own, KC, CP)
        return acc

    @triton.jit
    def _grid_of(rb, rows, own, mask_ptr, HAS_MASK: tl.constexpr, RB: tl.constexpr,
                 CP: tl.constexpr):
        """A row block's 2-D rows and columns, live elements and real (unpadded) ones."""
        r = rb * RB + tl.arange(0, RB)[:, None] + tl.zeros((RB, CP), tl.int32)
        cc = tl.arange(0, CP)[None, :] + tl.zeros((RB, CP), tl.int32)
        live = (r < rows) & (cc < own)
        real = live
        if HAS_MASK:
            real = live & (tl.load(mask_ptr + r, mask=live, other=0) != 0)
        return r, cc, live, real

    @triton.jit
    def _flat(x, RB: tl.constexpr, CP: tl.constexpr):
        """(RB, CP) -> (RB * CP,), row-major: the element order of the words."""
        return tl.reshape(x, (RB * CP,))

    @triton.jit
    def _half_gates(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride, c_val_ptr,
                    rb, rows, own, k_size, CELL: tl.constexpr, LIBDEVICE: tl.constexpr,
                    RB: tl.constexpr, CP: tl.constexpr, KC: tl.constexpr):
        """(s logits, a logits, b argument of tanh) of the c update (f, i, g) or the h update
        (p, o, c' float view), and (s, a, b) activated."""
        r = rb * RB + tl.arange(0, RB)[:, None]
        cc = tl.arange(0, CP)[None, :]
        if CELL:
            s_x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                               rb, rows, own, k_size, 0, RB, CP, KC)
            a_x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                               rb, rows, own, k_size, 1, RB, CP, KC)
            b_x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                               rb, rows, own, k_size, 4, RB, CP, KC)
        else:
            s_x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                               rb, rows, own, k_size, 3, RB, CP, KC)
            a_x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                               rb, rows, own, k_size, 2, RB, CP, KC)
            b_x = tl.load(c_val_ptr + r * own + cc, mask=(r < rows) & (cc < own), other=0.0)
        return (s_x, a_x, b_x, _sigmoid(s_x, LIBDEVICE), _sigmoid(a_x, LIBDEVICE),
                _tanh(b_x, LIBDEVICE))

    @triton.jit
    def _forward_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                      x_ptr, x_stride, c_val_ptr, mask_ptr, head_ptr, head_stride, words_ptr,
                      capacity, top, hist_ptr, out_ptr, value_ptr, stage_ptr, flag_ptr,
                      counts_ptr, rb, rows, own, k_size, stored, n_min, stage_base,
                      CELL: tl.constexpr, HAS_MASK: tl.constexpr, HALF_STORAGE: tl.constexpr,
                      COUNT: tl.constexpr, LIBDEVICE: tl.constexpr, STAGED: tl.constexpr,
                      R: tl.constexpr, W: tl.constexpr, RB: tl.constexpr, CP: tl.constexpr,
                      KC: tl.constexpr):
        """One row block of one update (the c update with CELL, else the h update), as
        `_gated_forward_kernel` does a block (MODE_PRODUCT, ACTIVATE). Returns the new top."""
        r, cc, live, real = _grid_of(rb, rows, own, mask_ptr, HAS_MASK, RB, CP)
        _, _, _, s, a, b = _half_gates(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr,
                                       w_stride, c_val_ptr, rb, rows, own, k_size, CELL,
                                       LIBDEVICE, RB, CP, KC)
        n, z_q = _gate(s, n_min, R)
        update = a * b
        h = tl.load(x_ptr + r * x_stride + cc, mask=live, other=0)
        n_applied = tl.where(real & (cc >= stored), n, 1 << R)
        step = tl.where(real, _rint(update * (1 << 23)), 0)
        local = tl.arange(0, RB)[:, None] * CP + tl.arange(0, CP)[None, :]
        offs = _flat(stage_base + rb * (RB * CP) + local, RB, CP)
        live_f, r_f, c_f = _flat(live, RB, CP), _flat(r, RB, CP), _flat(cc, RB, CP)
        out, top = _push_block(_flat(h, RB, CP), _flat(n_applied, RB, CP), _flat(step, RB, CP),
                               offs, live_f, r_f, c_f, head_ptr, head_stride, words_ptr, capacity,
                               top, stage_ptr, flag_ptr, counts_ptr, rb, STAGED, R, W)
        if STAGED:  # padding never spills: `_place_words_kernel` reads whole blocks
            tl.store(flag_ptr + offs, tl.zeros((RB * CP,), tl.int8), mask=~live_f)
        if COUNT:
            tl.atomic_add(hist_ptr + _flat(n_applied, RB, CP), 1, mask=live_f)
        # stored units (stored = 0 on the c update): the rounded float update, not the buffer
        kept = z_q * (h.to(tl.float32) * (1.0 / (1 << 23))) + update
        if HALF_STORAGE:
            kept = kept.to(tl.float16).to(tl.float32)
        kept = _flat(tl.where(real, _rint(kept * (1 << 23)), h), RB, CP)
        out = tl.where(c_f < stored, kept, out)
        tl.store(out_ptr + r_f * own + c_f, out, mask=live_f)
        tl.store(value_ptr + r_f * own + c_f, out.to(tl.float32) * (1.0 / (1 << 23)),
                 mask=live_f)
        return top

    @triton.jit(do_not_specialize=["capacity", "rows", "own", "k_size", "stored", "n_min"])
    def _lstm_forward_kernel(
            piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride, h_ptr, h_stride,
            c_ptr, c_stride, mask_ptr, head_ptr, head_stride, words_ptr, capacity, top_ptr,
            hist_ptr, pushed_ptr, h_out_ptr, h_value_ptr, c_out_ptr, c_value_ptr, stage_ptr,
            flag_ptr, counts_ptr, rows, own, k_size, stored, n_min, HAS_MASK: tl.constexpr,
            HALF_STORAGE: tl.constexpr, COUNT: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, R: tl.constexpr, W: tl.constexpr, RB: tl.constexpr,
            CP: tl.constexpr, KC: tl.constexpr):
        """The c update of every row block, then the h update of every row block (the words of
        c first, row-major, then those of h). STAGED: program pid does row block pid only,
        staging c's words in blocks [0, nb) and h's in [nb, 2 nb) of the staging (padded to
        RB * CP per block) for `_place_words_kernel` (counts[2 nb] = top)."""
        pid = tl.program_id(0)
        blocks = tl.cdiv(rows, RB)
        top = tl.load(top_ptr)
        start_top = top
        if STAGED:
            first, last = pid, pid + 1
            if pid == 0:
                tl.store(counts_ptr + 2 * blocks, top)
        else:
            first, last = 0, blocks
        for rb in range(first, last):
            top = _forward_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr,
                                w_stride, c_ptr, c_stride, c_value_ptr, mask_ptr, head_ptr,
                                head_stride, words_ptr, capacity, top, hist_ptr, c_out_ptr,
                                c_value_ptr, stage_ptr, flag_ptr, counts_ptr, rb, rows, own,
                                k_size, 0, n_min, 0, True, HAS_MASK, HALF_STORAGE, COUNT,
                                LIBDEVICE, STAGED, R, W, RB, CP, KC)
        tl.debug_barrier()  # c' float views and heads, written above, are read below
        for rb in range(first, last):
            top = _forward_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr,
                                w_stride, h_ptr, h_stride, c_value_ptr, mask_ptr, head_ptr,
                                head_stride, words_ptr, capacity, top, hist_ptr, h_out_ptr,
                                h_value_ptr, stage_ptr, flag_ptr, counts_ptr + blocks, rb, rows,
                                own, k_size, stored, n_min, blocks * (RB * CP), False, HAS_MASK,
                                HALF_STORAGE, COUNT, LIBDEVICE, STAGED, R, W, RB, CP, KC)
        if not STAGED:
            tl.store(top_ptr, top)
            if COUNT:
                tl.store(pushed_ptr, tl.load(pushed_ptr) + (top - start_top))

    @triton.jit
    def _reverse_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                      x_ptr, x_stride, c_val_ptr, mask_ptr, head_ptr, head_stride, words_ptr,
                      top, error_ptr, restored_ptr, restored_stride, out_ptr, value_ptr,
                      tape_ptr, tape_stride, counts_ptr, rb, rows, own, k_size, stored, n_min,
                      CELL: tl.constexpr, HAS_MASK: tl.constexpr, TAPE: tl.constexpr,
                      LIBDEVICE: tl.constexpr, STAGED: tl.constexpr, R: tl.constexpr,
                      W: tl.constexpr, RB: tl.constexpr, CP: tl.constexpr, KC: tl.constexpr):
        """The inverse of `_forward_pass` for one row block; with TAPE, the logits are written
        into the tape's (rows, 5 own) block. Returns the new top."""
        r, cc, live, real = _grid_of(rb, rows, own, mask_ptr, HAS_MASK, RB, CP)
        s_x, a_x, b_x, s, a, b = _half_gates(piece_ptr, piece_stride, other_ptr, other_stride,
                                             w_ptr, w_stride, c_val_ptr, rb, rows, own, k_size,
                                             CELL, LIBDEVICE, RB, CP, KC)
        n, z_q = _gate(s, n_min, R)
        h_next = tl.load(x_ptr + r * x_stride + cc, mask=live, other=0)
        n_applied = tl.where(real & (cc >= stored), n, 1 << R)
        step = tl.where(real, _rint(a * b * (1 << 23)), 0)
        live_f, r_f, c_f = _flat(live, RB, CP), _flat(r, RB, CP), _flat(cc, RB, CP)
        out, top = _pop_block(_flat(h_next, RB, CP), _flat(n_applied, RB, CP),
                              _flat(step, RB, CP), live_f, r_f, c_f, head_ptr, head_stride,
                              words_ptr, top, error_ptr, counts_ptr, rb, STAGED, R, W)
        restored = tl.load(restored_ptr + r * restored_stride + cc, mask=live & (cc < stored),
                           other=0)
        out = tl.where(c_f < stored, _flat(tl.where(real, restored, h_next), RB, CP), out)
        tl.store(out_ptr + r_f * own + c_f, out, mask=live_f)
        tl.store(value_ptr + r_f * own + c_f, out.to(tl.float32) * (1.0 / (1 << 23)),
                 mask=live_f)
        if TAPE:
            base = tape_ptr + r * tape_stride + cc
            if CELL:
                tl.store(base, s_x, mask=live)
                tl.store(base + own, a_x, mask=live)
                tl.store(base + 4 * own, b_x, mask=live)
            else:
                tl.store(base + 3 * own, s_x, mask=live)
                tl.store(base + 2 * own, a_x, mask=live)
        return top

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "stored", "n_min"])
    def _lstm_reverse_kernel(
            piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride, h_ptr, h_stride,
            c_ptr, c_stride, c_val_ptr, mask_ptr, head_ptr, head_stride, words_ptr, top_ptr,
            error_ptr, restored_ptr, restored_stride, h_out_ptr, h_value_ptr, c_out_ptr,
            c_value_ptr, tape_ptr, tape_stride, counts_ptr, rows, own, k_size, stored, n_min,
            HAS_MASK: tl.constexpr, TAPE: tl.constexpr, LIBDEVICE: tl.constexpr,
            STAGED: tl.constexpr, PASSES: tl.constexpr, R: tl.constexpr, W: tl.constexpr,
            RB: tl.constexpr, CP: tl.constexpr, KC: tl.constexpr):
        """Undo the h update (row blocks last to first), then the c update (PASSES: 3 both, 2 h
        only, 1 c only). STAGED: program pid does row block pid of one pass, leaving its heads
        before their refill and its count in counts[pid] (counts[nb] = top) for
        `_refill_rows_kernel`; the c pass then needs a launch of its own."""
        pid = tl.program_id(0)
        blocks = tl.cdiv(rows, RB)
        top = tl.load(top_ptr)
        if STAGED:
            first, last = pid, pid + 1
            if pid == 0:
                tl.store(counts_ptr + blocks, top)
        else:
            first, last = 0, blocks
        if PASSES & 2:
            for back in range(first, last):
                rb = back if STAGED else last - 1 - back  # last block first: its words on top
                top = _reverse_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr,
                                    w_stride, h_ptr, h_stride, c_val_ptr, mask_ptr, head_ptr,
                                    head_stride, words_ptr, top, error_ptr, restored_ptr,
                                    restored_stride, h_out_ptr, h_value_ptr, tape_ptr,
                                    tape_stride, counts_ptr, rb, rows, own, k_size, stored,
                                    n_min, False, HAS_MASK, TAPE, LIBDEVICE, STAGED, R, W, RB,
                                    CP, KC)
        tl.debug_barrier()  # the heads refilled above are decoded below
        if PASSES & 1:
            for back in range(first, last):
                rb = back if STAGED else last - 1 - back
                top = _reverse_pass(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr,
                                    w_stride, c_ptr, c_stride, c_val_ptr, mask_ptr, head_ptr,
                                    head_stride, words_ptr, top, error_ptr, restored_ptr,
                                    restored_stride, c_out_ptr, c_value_ptr, tape_ptr,
                                    tape_stride, counts_ptr, rb, rows, own, k_size, 0, n_min,
                                    True, HAS_MASK, TAPE, LIBDEVICE, STAGED, R, W, RB, CP, KC)
        if not STAGED:
            tl.store(top_ptr, top)

    @triton.jit(do_not_specialize=["rows", "own", "blocks"])
    def _refill_rows_kernel(head_ptr, head_stride, rows, own, counts_ptr, blocks, words_ptr,
                            top_ptr, error_ptr, R: tl.constexpr, W: tl.constexpr,
                            BLOCKS: tl.constexpr, RB: tl.constexpr, CP: tl.constexpr):
        """`_refill_heads_kernel` for row blocks of RB rows (whose flat ranges are not
        power-of-two blocks): block pid's words lie below those of the blocks after it."""
        pid = tl.program_id(0)
        index = tl.arange(0, BLOCKS)
        counts = tl.load(counts_ptr + index, mask=index < blocks, other=0)
        top = tl.load(counts_ptr + blocks)
        base = top - tl.sum(tl.where(index >= pid, counts, 0), 0)
        r, cc, live, _ = _grid_of(pid, rows, own, counts_ptr, False, RB, CP)
        live_f, r_f, c_f = _flat(live, RB, CP), _flat(r, RB, CP), _flat(cc, RB, CP)
        _refill_block(head_ptr, head_stride, r_f, c_f, live_f, words_ptr, base, error_ptr, R, W)
        if pid == 0:
            tl.store(top_ptr, top - tl.sum(counts, 0))

    @triton.jit(do_not_specialize=["rows", "own", "k_size"])
    def _lstm_tape_kernel(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                          tape_ptr, tape_stride, rows, own, k_size, RB: tl.constexpr,
                          CP: tl.constexpr, KC: tl.constexpr):
        """The five logit blocks of row block pid, as the reverse kernel writes them."""
        rb = tl.program_id(0)
        r = rb * RB + tl.arange(0, RB)[:, None]
        cc = tl.arange(0, CP)[None, :]
        live = (r < rows) & (cc < own)
        for gate in tl.static_range(5):
            x = _lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                             rb, rows, own, k_size, gate, RB, CP, KC)
            tl.store(tape_ptr + r * tape_stride + gate * own + cc, x, mask=live)

    @triton.jit
    def _d_other(d_other_ptr, d_other_stride, d_ptr, d_stride, w_ptr, w_stride, out_ptr, rb,
                 rows, own, k_size, extra_ptr, extra_stride, HAS_EXTRA: tl.constexpr,
                 RB: tl.constexpr, CC: tl.constexpr, KC: tl.constexpr):
        """out = d other (+ extra) + d gates @ Wg for rows rb * RB ..., d gates (rows, 5 own)
        read back from memory in chunks of CC columns (gates f, i, o, p, g in turn), KC output
        columns at a time (IEEE tl.dot): the one source of the other half's gradient, for the
        backward kernel and the tests."""
        r = rb * RB + tl.arange(0, RB)[:, None]
        j = tl.arange(0, CC)
        k = tl.arange(0, KC)[None, :]
        for k0 in range(0, k_size, KC):
            live_k = (r < rows) & (k0 + k < k_size)
            acc = tl.load(d_other_ptr + r * d_other_stride + k0 + k, mask=live_k, other=0.0)
            if HAS_EXTRA:
                acc = acc + tl.load(extra_ptr + r * extra_stride + k0 + k, mask=live_k, other=0.0)
            for jg in range(0, 5 * tl.cdiv(own, CC)):  # chunks of gates f, i, o, p, g in turn
                gate = jg // tl.cdiv(own, CC)
                j0 = (jg - gate * tl.cdiv(own, CC)) * CC
                jj = gate * own + j0 + j
                live_j = j0 + j < own
                d = tl.load(d_ptr + r * d_stride + jj[None, :],
                            mask=(r < rows) & live_j[None, :], other=0.0)
                w = tl.load(w_ptr + jj[:, None] * w_stride + k0 + k,
                            mask=live_j[:, None] & (k0 + k < k_size), other=0.0)
                acc = acc + tl.dot(d, w, input_precision="ieee")
            tl.store(out_ptr + r * k_size + k0 + k, acc, mask=live_k)

    @triton.jit(do_not_specialize=["rows", "own", "k_size", "n_min"])
    def _lstm_backward_products_kernel(
            grad_h_ptr, grad_h_stride, grad_c_ptr, grad_c_stride, sf_ptr, si_ptr, so_ptr, sp_ptr,
            sg_ptr, gate_stride, cell_ptr, cell_stride, prev_ptr, prev_stride, prev_cell_ptr,
            prev_cell_stride, mask_ptr, w_ptr, w_stride, d_other_ptr, d_other_stride, d_h_ptr,
            d_c_ptr, d_gates_ptr, d_gates_stride, d_other_out_ptr, extra_own_ptr,
            extra_own_stride, extra_other_ptr, extra_other_stride, rows, own, k_size, n_min,
            HAS_MASK: tl.constexpr, HAS_EXTRA: tl.constexpr, LIBDEVICE: tl.constexpr,
            R: tl.constexpr, RB: tl.constexpr, CP: tl.constexpr, CC: tl.constexpr,
            KC: tl.constexpr):
        """`_lstm_backward_kernel` (ACTIVATE) on row block pid, then d other += d gates @ Wg.
        HAS_EXTRA: the h gradients (own, other) get the readout's gradient added on load."""
        rb = tl.program_id(0)
        r, cc, live, real = _grid_of(rb, rows, own, mask_ptr, HAS_MASK, RB, CP)
        g_off = r * gate_stride + cc
        grad_h = tl.load(grad_h_ptr + r * grad_h_stride + cc, mask=live, other=0.0)
        if HAS_EXTRA:
            grad_h = grad_h + tl.load(extra_own_ptr + r * extra_own_stride + cc, mask=live,
                                      other=0.0)
        grad_c = tl.load(grad_c_ptr + r * grad_c_stride + cc, mask=live, other=0.0)
        sf = _sigmoid(tl.load(sf_ptr + g_off, mask=live, other=0.0), LIBDEVICE)
        inp = _sigmoid(tl.load(si_ptr + g_off, mask=live, other=0.0), LIBDEVICE)
        out_gate = _sigmoid(tl.load(so_ptr + g_off, mask=live, other=0.0), LIBDEVICE)
        sp = _sigmoid(tl.load(sp_ptr + g_off, mask=live, other=0.0), LIBDEVICE)
        cand = _tanh(tl.load(sg_ptr + g_off, mask=live, other=0.0), LIBDEVICE)
        tanh_cell = _tanh(tl.load(cell_ptr + r * cell_stride + cc, mask=live, other=0.0),
                          LIBDEVICE)
        prev = tl.load(prev_ptr + r * prev_stride + cc, mask=live, other=0.0)
        prev_cell = tl.load(prev_cell_ptr + r * prev_cell_stride + cc, mask=live, other=0.0)
        scale = 1.0 - n_min.to(tl.float32) * (1.0 / (1 << R))
        nf, f_q = _gate(sf, n_min, R)
        np_, p_q = _gate(sp, n_min, R)
        live_h = tl.where(real, grad_h, 0.0)
        tl.store(d_h_ptr + r * own + cc, tl.where(real, grad_h * p_q, grad_h), mask=live)
        grad_c = grad_c + live_h * out_gate * (1.0 - tanh_cell * tanh_cell)
        live_c = tl.where(real, grad_c, 0.0)
        tl.store(d_c_ptr + r * own + cc, tl.where(real, grad_c * f_q, grad_c), mask=live)
        d_f = live_c * prev_cell * (scale * sf * (1.0 - sf))
        d_i = live_c * cand * inp * (1.0 - inp)
        d_o = live_h * tanh_cell * out_gate * (1.0 - out_gate)
        d_p = live_h * prev * (scale * sp * (1.0 - sp))
        d_g = live_c * inp * (1.0 - cand * cand)
        base = d_gates_ptr + r * d_gates_stride + cc
        tl.store(base, d_f, mask=live)
        tl.store(base + own, d_i, mask=live)
        tl.store(base + 2 * own, d_o, mask=live)
        tl.store(base + 3 * own, d_p, mask=live)
        tl.store(base + 4 * own, d_g, mask=live)
        tl.debug_barrier()  # the d gates stored above are read back (in chunks) below
        _d_other(d_other_ptr, d_other_stride, d_gates_ptr, d_gates_stride, w_ptr, w_stride,
                 d_other_out_ptr, rb, rows, own, k_size, extra_other_ptr, extra_other_stride,
                 HAS_EXTRA, RB, CC, KC)
