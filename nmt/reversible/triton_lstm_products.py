"""A RevLSTM half-step with its hidden-side matrix products inside the Triton kernels: one launch
per half-step and direction (forward, reverse with or without a tape, tape recomputation,
backward) where `fused.py` runs an addmm and two element-wise kernels.

Semantics are `fused`'s activate=True path (logits in, sigmoid and tanh by the kernels' own
formula), with the logits piece + other @ W_h^T computed per row block of RB rows by one jit
function (IEEE float32 tl.dot), so that forward, reverse and tape recomputation get the same
floats bit for bit. The words on the stack are those of `fused._lstm_forward_half`: all of the c
update's (row-major), then all of the h update's. Past triton_kernels._SINGLE_PROGRAM_LIMIT
elements one program per row block stages its words: the forward then takes 2 launches
(`_place_words_kernel` places them); the reverse 4 (h pass, refill, c pass, refill), since the c
pass decodes heads that the h pass's refill restores.

In place on the lists of `fused`'s drivers (`exact`, `floats`, `d`, `inputs`); `pieces` are
cell.split_projection(projected), and in backward the d projected views to write into. The
x-side products (`pieces`) stay outside: one product per chunk of steps.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from nmt.reversible import triton_kernels as _tk
from nmt.reversible import triton_lstm_products_jit as _jit
from nmt.reversible.fixed_point import FORGET_RADIX
from nmt.reversible.triton_gru_products import extra_views
from nmt.reversible.triton_kernels import WordStack, _launch, _mask_arg, _row_stride

ROWS_PER_BLOCK = 16  # RB: rows per block of the in-kernel products (tl.dot needs >= 16)
CHUNK = 16  # at most this many columns of a product's reduced or output side per tl.dot


def _width(n: int, limit: int = 1 << 30) -> int:
    return min(limit, max(16, _tk.triton.next_power_of_2(max(n, 1))))


def block_shapes(rows: int, own: int, k_size: int) -> Tuple[int, int, int]:
    """(RB, CP, KC): rows per block, the own half's padded width and the other half's chunk per
    tl.dot (small operands stay in registers on a GPU). Every kernel of a half-step (and the
    tests' reference) uses these, so the products agree bit for bit."""
    return ROWS_PER_BLOCK, _width(own), _width(k_size, CHUNK)


def _warps(cp: int) -> int:
    """Warps per program on a GPU: 8, or 16 past 128 own columns (ptxas -v, sm_90, CHUNK 16: no
    spills up to 128 but ~136 B in the staged forward; ~2-3 KB at 256)."""
    return 8 if cp <= 128 else 16


def _geometry(cell, half: int, other: Tensor):
    own = cell.half_sizes[half]
    weight = cell.hidden_weight(cell.gates[half])
    rows, k_size = other.shape
    rb, cp, kc = block_shapes(rows, own, k_size)
    blocks = _tk.triton.cdiv(rows, rb)
    staged = rows * own > _tk._SINGLE_PROGRAM_LIMIT and blocks > 1
    return own, weight, rows, k_size, rb, cp, kc, blocks, staged


def _product_args(piece: Tensor, other: Tensor, weight: Tensor) -> tuple:
    return (piece, _row_stride(piece), other, _row_stride(other), weight, _row_stride(weight))


def lstm_forward_half(cell, half: int, pieces, exact: list, floats: list, stack: WordStack,
                      mask: Optional[Tensor], *, n_min: int, stored: int, precision: int,
                      tag: str) -> None:
    """`fused._lstm_forward_half(..., activate=True)` in one launch (two when staged)."""
    c = 2 + half
    other = floats[1 - half]
    own, weight, rows, k_size, rb, cp, kc, blocks, staged = _geometry(cell, half, other)
    hist, pushed = stack.counters(tag) if stack.count else (stack.top, stack.top)
    stack.reserve(2 * rows * own)
    h, c_state = exact[half], exact[c]
    device = h.device
    h_out, c_out = (torch.empty((rows, own), dtype=torch.int64, device=device) for _ in "hc")
    h_value, c_value = (torch.empty((rows, own), dtype=torch.float32, device=device)
                        for _ in "hc")
    mask_t, has_mask = _mask_arg(mask, stack.top)
    padded = 2 * blocks * rb * cp
    stage, flags, counts = (stack.staging(padded, 2 * blocks) if staged
                            else (h_out, h_out, h_out))
    _launch(_jit._lstm_forward_kernel, (blocks if staged else 1,),
            *_product_args(pieces[half], other, weight), h, _row_stride(h), c_state,
            _row_stride(c_state), mask_t, stack.head, stack.head.stride(0), stack.words,
            stack.words.numel(), stack.top, hist, pushed, h_out, h_value, c_out, c_value, stage,
            flags, counts, rows, own, k_size, stored, n_min, HAS_MASK=has_mask,
            HALF_STORAGE=precision == 16, COUNT=stack.count, STAGED=staged,
            R=stack.forget_radix, W=stack.word_bits, RB=rb, CP=cp, KC=kc, warps=_warps(cp))
    if staged:
        _launch(_tk._jit._place_words_kernel, (2 * blocks,), stage, flags, counts, 2 * blocks,
                stack.words, stack.words.numel(), stack.top, pushed, padded, COUNT=stack.count,
                BLOCKS=_tk.triton.next_power_of_2(2 * blocks), BLOCK=rb * cp, warps=_warps(cp))
    exact[half], floats[half], exact[c], floats[c] = h_out, h_value, c_out, c_value


def lstm_reverse_half(cell, half: int, pieces, exact: list, floats: list, stack: WordStack,
                      mask: Optional[Tensor], *, n_min: int, restored: Optional[Tensor],
                      tape: Optional[list]) -> None:
    """Undo `lstm_forward_half` (h, then c) in one launch (four when staged); with a `tape`,
    append the entry of `fused._lstm_reverse_half(..., activate=True)`: (half, other, h before,
    c before, c' (the kernels take c' itself), the five logit blocks f, i, o, p, g)."""
    c = 2 + half
    other, cell_after = floats[1 - half], floats[c]
    own, weight, rows, k_size, rb, cp, kc, blocks, staged = _geometry(cell, half, other)
    h_next, c_next = exact[half], exact[c]
    device = h_next.device
    h_out, c_out = (torch.empty((rows, own), dtype=torch.int64, device=device) for _ in "hc")
    h_value, c_value = (torch.empty((rows, own), dtype=torch.float32, device=device)
                        for _ in "hc")
    logits = (torch.empty((rows, 5 * own), dtype=torch.float32, device=device)
              if tape is not None else h_value)
    mask_t, has_mask = _mask_arg(mask, stack.top)
    stored = 0 if restored is None else restored.shape[1]
    restored_t = h_next if restored is None else restored
    counts = stack.staging(0, blocks)[2] if staged else h_out
    args = (*_product_args(pieces[half], other, weight), h_next, _row_stride(h_next), c_next,
            _row_stride(c_next), cell_after, mask_t, stack.head, stack.head.stride(0),
            stack.words, stack.top, stack.error, restored_t, _row_stride(restored_t), h_out,
            h_value, c_out, c_value, logits, _row_stride(logits), counts, rows, own, k_size,
            stored, n_min)
    constants = dict(HAS_MASK=has_mask, TAPE=tape is not None, STAGED=staged,
                     R=stack.forget_radix, W=stack.word_bits, RB=rb, CP=cp, KC=kc)
    for passes in ((2, 1) if staged else (3,)):
        _launch(_jit._lstm_reverse_kernel, (blocks if staged else 1,), *args, PASSES=passes,
                warps=_warps(cp), **constants)
        if staged:
            _launch(_jit._refill_rows_kernel, (blocks,), stack.head, stack.head.stride(0), rows,
                    own, counts, blocks, stack.words, stack.top, stack.error,
                    R=stack.forget_radix, W=stack.word_bits,
                    BLOCKS=_tk.triton.next_power_of_2(blocks), RB=rb, CP=cp, warps=_warps(cp))
    exact[half], floats[half], exact[c], floats[c] = h_out, h_value, c_out, c_value
    if tape is not None:
        tape.append((half, other, h_value, c_value, cell_after, logits.split(own, -1)))


def lstm_tape_entry(cell, half: int, pieces, other: Tensor, previous_h: Tensor,
                    previous_c: Tensor, cell_after: Tensor) -> tuple:
    """The tape entry `lstm_reverse_half` appends, recomputed without the stack (one launch, the
    same logits function and block shapes)."""
    own, weight, rows, k_size, rb, cp, kc, blocks, _ = _geometry(cell, half, other)
    logits = torch.empty((rows, 5 * own), dtype=torch.float32, device=other.device)
    _launch(_jit._lstm_tape_kernel, (blocks,), *_product_args(pieces[half], other, weight),
            logits, _row_stride(logits), rows, own, k_size, RB=rb, CP=cp, KC=kc, warps=_warps(cp))
    return (half, other, previous_h, previous_c, cell_after, logits.split(own, -1))


def lstm_backward_half(cell, entry: tuple, d: list, inputs: list, pieces,
                       mask: Optional[Tensor], *, n_min: int, extra: Optional[Tensor] = None
                       ) -> None:
    """`fused._lstm_backward_half(..., activate=True)` in one launch: d h and d c before the
    step, the d gate logits written into pieces[half] (f, i, o, p, g), d other += d gates @ Wg
    (in the kernel), inputs[half] = other. `extra` (rows, both h halves, as
    `triton_gru_products.extra_views`): added to the h gradients before, inside the launch."""
    half, other, previous, previous_cell, cell_after, gates = entry
    c = 2 + half
    own, weight, rows, k_size, rb, cp, kc, blocks, _ = _geometry(cell, half, other)
    grad_h, grad_c, d_other = d[half], d[c], d[1 - half]
    d_h, d_c = (torch.empty((rows, own), dtype=torch.float32, device=other.device)
                for _ in "hc")
    d_other_out = torch.empty((rows, k_size), dtype=torch.float32, device=other.device)
    stride = _row_stride(gates[0])
    if any(_row_stride(gate) != stride for gate in gates):
        raise ValueError("lstm_backward_half: the gates must share one row stride")
    mask_t, has_mask = _mask_arg(mask, grad_h)
    d_gates = pieces[half]
    extra_own, extra_other = extra_views(cell, half, extra, grad_h)
    _launch(_jit._lstm_backward_products_kernel, (blocks,), grad_h, _row_stride(grad_h), grad_c,
            _row_stride(grad_c), *gates, stride, cell_after, _row_stride(cell_after), previous,
            _row_stride(previous), previous_cell, _row_stride(previous_cell), mask_t, weight,
            _row_stride(weight), d_other, _row_stride(d_other), d_h, d_c, d_gates,
            _row_stride(d_gates), d_other_out, extra_own, _row_stride(extra_own), extra_other,
            _row_stride(extra_other), rows, own, k_size, n_min, HAS_MASK=has_mask,
            HAS_EXTRA=extra is not None, R=FORGET_RADIX, RB=rb, CP=cp, CC=_width(own, CHUNK), KC=kc, warps=_warps(cp))
    d[half], d[c], d[1 - half] = d_h, d_c, d_other_out
    inputs[half] = other


def compile_variants(cp: int = 128) -> list:
    """(kernel, constants) pairs for `triton_kernels.compile_for_gpu`: every kernel of this
    module, for halves of up to `cp` units (pointer types to add to its _POINTER_TYPES: c_ptr,
    h_out_ptr, c_out_ptr "*i64")."""
    shapes = dict(RB=ROWS_PER_BLOCK, CP=cp, KC=CHUNK)
    variants = []
    for staged in (False, True):
        variants.append((_jit._lstm_forward_kernel, dict(
            HAS_MASK=True, HALF_STORAGE=True, COUNT=True, LIBDEVICE=True, STAGED=staged, R=10,
            W=16, **shapes)))
        variants.append((_jit._lstm_reverse_kernel, dict(
            HAS_MASK=True, TAPE=True, LIBDEVICE=True, STAGED=staged, PASSES=2 if staged else 3,
            R=10, W=16, **shapes)))
    variants += [
        (_jit._refill_rows_kernel, dict(R=10, W=16, BLOCKS=64, RB=ROWS_PER_BLOCK, CP=cp)),
        (_jit._lstm_tape_kernel, dict(shapes)),
        (_jit._lstm_backward_products_kernel, dict(HAS_MASK=True, HAS_EXTRA=True,
                                                   LIBDEVICE=True, R=10, CC=CHUNK, **shapes))]
    return variants
