"""RevGRU half-steps whose hidden-side matrix products run inside the Triton kernels.

`fused.py` computes W_h @ h_j with torch (addmm) and then launches one element-wise kernel: per
layer-step 12 products and 12 kernels across forward, reverse and backward. Here each half-step
and direction is ONE launch (two past triton_kernels._SINGLE_PROGRAM_LIMIT elements, by the same
staged scheme): the kernels take the x-side pieces of the projected input (biases included, one
product per chunk of steps, outside) and the recurrent weights, and compute the gate logits, the
reset product and the candidate pre-activation on row blocks of _ROW_BLOCK rows (IEEE float32
tl.dot, _K_CHUNK columns of the other half at a time), then the `activate=True` element math of
`triton_kernels.gated_forward` (MODE_GRU). No aten compute op runs between the launches (outputs
come from torch.empty; the stack grows only as `WordStack.reserve` says).

Forward, reverse and tape recomputation call one jit function for a row block's pre-activations
(`_gru_preactivations`) with the same block shapes, so the reverse recomputes the forward's
integers exactly. The words are pushed in row-major element order, as by the element-wise
kernels. The functions work in place on the driver's lists, as `fused._gru_*_half` do.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nmt.reversible import triton_jit, triton_kernels as _tk
from nmt.reversible.fixed_point import FORGET_RADIX
from nmt.reversible.triton_kernels import WordStack, _launch, _mask_arg, _row_stride

try:
    import triton
except ImportError:
    triton = None

from nmt.reversible import triton_gru_products_jit as _jit  # noqa: E402

_ROW_BLOCK = 16  # rows per block (tl.dot needs at least 16)
_K_CHUNK = 16  # columns of the other half per product: a (16, own) weight tile at a time


def launch_warps(op: int) -> int:
    """Warps per program for a half padded to `op` columns: fewest spills in ptxas -v for
    sm_90 (hidden 64 .. 512, see compile_variants)."""
    return 4 if op <= 32 else 8 if op <= 128 else 16


def _pad(size: int) -> int:
    return max(16, triton.next_power_of_2(max(size, 1)))


def _geometry(cell, half: int):
    """(own units, other units, padded own, KC, RB, BLOCK = RB * padded own)."""
    own, k_size = cell.half_sizes[half], cell.half_sizes[1 - half]
    op = _pad(own)
    return own, k_size, op, _K_CHUNK, _ROW_BLOCK, _ROW_BLOCK * op


def _weights(cell, half: int):
    """(Wg, its row stride, Wc, its row stride): the hidden columns of the gate and candidate
    Linears (views, unit column stride)."""
    wg = cell.hidden_weight(cell.gates[half])
    wc = cell.hidden_weight(cell.candidates[half])
    return wg, _row_stride(wg), wc, _row_stride(wc)


def _staged(rows: int, own: int, blocks: int) -> bool:
    return rows * own > _tk._SINGLE_PROGRAM_LIMIT and blocks > 1


def gru_forward_half(cell, half: int, pieces, exact: list, floats: list, stack: WordStack,
                     mask: Optional[Tensor], *, n_min: int, stored: int = 0, precision: int = 32,
                     tag: str = "") -> None:
    """Half `half` of `RevGRUCell.step` in one launch (two when staged): sets exact[half] and
    floats[half] as `fused._gru_forward_half(..., activate=True)` does."""
    own, k_size, op, kc, rb, block = _geometry(cell, half)
    h, other = exact[half], floats[1 - half]
    rows = h.shape[0]
    wg, wg_stride, wc, wc_stride = _weights(cell, half)
    hist, pushed = stack.counters(tag) if stack.count else (stack.top, stack.top)
    stack.reserve(rows * own)
    out = torch.empty((rows, own), dtype=torch.int64, device=h.device)
    value = torch.empty((rows, own), dtype=torch.float32, device=h.device)
    mask_t, has_mask = _mask_arg(mask, stack.top)
    blocks = triton.cdiv(rows, rb)
    staged = _staged(rows, own, blocks)
    stage, flags, counts = stack.staging(blocks * block, blocks) if staged else (out, out, out)
    gate, cand = pieces[2 * half], pieces[2 * half + 1]
    _launch(_jit._gru_forward_kernel, (blocks if staged else 1,),
            h, _row_stride(h), other, _row_stride(other), gate, _row_stride(gate), cand,
            _row_stride(cand), wg, wg_stride, wc, wc_stride, mask_t, stack.head,
            stack.head.stride(0), stack.words, stack.words.numel(), stack.top, hist, pushed, out,
            value, stage, flags, counts, rows, own, k_size, stored, n_min, HAS_MASK=has_mask,
            HALF_STORAGE=precision == 16, COUNT=stack.count, STAGED=staged,
            R=stack.forget_radix, W=stack.word_bits, RB=rb, OP=op, KC=kc, BLOCK=block,
            warps=launch_warps(op))
    if staged:
        _launch(triton_jit._place_words_kernel, (blocks,), stage, flags, counts, blocks,
                stack.words, stack.words.numel(), stack.top, pushed, blocks * block,
                COUNT=stack.count, BLOCKS=triton.next_power_of_2(blocks), BLOCK=block,
                warps=_tk._GPU_WARPS)
    exact[half], floats[half] = out, value


def _tape_tensors(rows: int, own: int, k_size: int, like: Tensor):
    logits = torch.empty((rows, own + k_size), dtype=torch.float32, device=like.device)
    cand = torch.empty((rows, own), dtype=torch.float32, device=like.device)
    return logits, cand


def gru_reverse_half(cell, half: int, pieces, exact: list, floats: list, stack: WordStack,
                     mask: Optional[Tensor], *, n_min: int, restored: Optional[Tensor] = None,
                     tape: Optional[list] = None) -> None:
    """Undo `gru_forward_half` in one launch (two when staged); with a `tape`, append
    (half, other, previous float h_i, forget logits, reset logits, candidate pre-activation),
    the entry of `fused._gru_reverse_half(..., activate=True)`, written by the same launch."""
    own, k_size, op, kc, rb, block = _geometry(cell, half)
    h_next, other = exact[half], floats[1 - half]
    rows = h_next.shape[0]
    wg, wg_stride, wc, wc_stride = _weights(cell, half)
    out = torch.empty((rows, own), dtype=torch.int64, device=h_next.device)
    value = torch.empty((rows, own), dtype=torch.float32, device=h_next.device)
    mask_t, has_mask = _mask_arg(mask, stack.top)
    stored = 0 if restored is None else restored.shape[1]
    restored_t = h_next if restored is None else restored
    blocks = triton.cdiv(rows, rb)
    staged = _staged(rows, own, blocks)
    counts = stack.staging(0, blocks)[2] if staged else out
    logits, cand_out = _tape_tensors(rows, own, k_size, other) if tape is not None else (
        value, value)
    gate, cand = pieces[2 * half], pieces[2 * half + 1]
    _launch(_jit._gru_reverse_kernel, (blocks if staged else 1,),
            h_next, _row_stride(h_next), other, _row_stride(other), gate, _row_stride(gate), cand,
            _row_stride(cand), wg, wg_stride, wc, wc_stride, mask_t, stack.head,
            stack.head.stride(0), stack.words, stack.top, stack.error, restored_t,
            _row_stride(restored_t), out, value, counts, logits, cand_out, rows, own, k_size,
            stored, n_min, HAS_MASK=has_mask, TAPE=tape is not None, STAGED=staged,
            R=stack.forget_radix, W=stack.word_bits, RB=rb, OP=op, KC=kc, BLOCK=block,
            warps=launch_warps(op))
    if staged:
        _launch(_jit._refill_rows_kernel, (blocks,), stack.head, stack.head.stride(0), rows, own,
                counts, blocks, stack.words, stack.top, stack.error, R=stack.forget_radix,
                W=stack.word_bits, BLOCKS=triton.next_power_of_2(blocks), RB=rb, OP=op,
                BLOCK=block, warps=launch_warps(op))
    exact[half], floats[half] = out, value
    if tape is not None:
        tape.append((half, other, value, logits[:, :own], logits[:, own:], cand_out))


def gru_tape_entry(cell, half: int, pieces, other: Tensor, previous: Tensor) -> tuple:
    """The tape entry `gru_reverse_half` records, recomputed without the stack (one launch,
    row blocks in parallel, the same pre-activation code): other = the other half's float view
    the gates read, previous = the float h_i before the step."""
    own, k_size, op, kc, rb, _ = _geometry(cell, half)
    rows = other.shape[0]
    wg, wg_stride, wc, wc_stride = _weights(cell, half)
    logits, cand_out = _tape_tensors(rows, own, k_size, other)
    gate, cand = pieces[2 * half], pieces[2 * half + 1]
    _launch(_jit._gru_tape_kernel, (triton.cdiv(rows, rb),), other, _row_stride(other), gate,
            _row_stride(gate), cand, _row_stride(cand), wg, wg_stride, wc, wc_stride, logits,
            cand_out, rows, own, k_size, RB=rb, OP=op, KC=kc, warps=launch_warps(op))
    return (half, other, previous, logits[:, :own], logits[:, own:], cand_out)


def extra_views(cell, half: int, extra: Optional[Tensor], like: Tensor):
    """(own, other) column views of `extra` (rows, H: half 0's columns, then half 1's) for the
    backward kernel of `half`; (like, like) without extra (HAS_EXTRA off: never read)."""
    if extra is None:
        return like, like
    first = cell.half_sizes[0]
    halves = (extra[:, :first], extra[:, first:])
    return halves[half], halves[1 - half]


def gru_backward_half(cell, entry: tuple, d: list, inputs: list, pieces,
                      mask: Optional[Tensor], *, n_min: int, extra: Optional[Tensor] = None
                      ) -> None:
    """Backpropagate one tape entry in one launch, in place as `fused._gru_backward_half`
    (activate=True): d gate logits into pieces[2 half] (forget, then reset columns), d candidate
    into pieces[2 half + 1], d[half] (before the step), d[1 - half] += the gates' and the
    candidate's paths, inputs[2 half] = other, inputs[2 half + 1] = r * other. `extra`
    (rows, both halves, as `extra_views`): added to d before, inside the launch."""
    half, other, previous, forget, _, cand = entry
    own, k_size, op, kc, rb, _ = _geometry(cell, half)
    rows = other.shape[0]
    wg, wg_stride, wc, wc_stride = _weights(cell, half)
    grad, d_other = d[half], d[1 - half]
    d_logits, d_cand = pieces[2 * half], pieces[2 * half + 1]
    d_half = torch.empty((rows, own), dtype=torch.float32, device=other.device)
    d_other_out = torch.empty((rows, k_size), dtype=torch.float32, device=other.device)
    reset_other = torch.empty((rows, k_size), dtype=torch.float32, device=other.device)
    mask_t, has_mask = _mask_arg(mask, d_half)
    extra_own, extra_other = extra_views(cell, half, extra, d_half)
    _launch(_jit._gru_backward_kernel, (triton.cdiv(rows, rb),), grad, _row_stride(grad), forget,
            _row_stride(forget), cand, _row_stride(cand), previous, _row_stride(previous), other,
            _row_stride(other), d_other, _row_stride(d_other), mask_t, wg, wg_stride, wc,
            wc_stride, d_half, d_logits, _row_stride(d_logits), d_cand, _row_stride(d_cand),
            d_other_out, reset_other, extra_own, _row_stride(extra_own), extra_other,
            _row_stride(extra_other), rows, own, k_size, n_min, HAS_MASK=has_mask,
            HAS_EXTRA=extra is not None, R=FORGET_RADIX, RB=rb, OP=op, KC=kc, warps=launch_warps(op))
    d[half], d[1 - half] = d_half, d_other_out
    inputs[2 * half], inputs[2 * half + 1] = other, reset_other


def compile_variants(hidden: int = 1024) -> list:
    """(kernel, constexprs) pairs of this module's kernels for `triton_kernels.compile_for_gpu`
    (halves of hidden / 2 units). Compile them with num_warps = launch_warps(constants["OP"]),
    `_place_words_kernel` with triton_kernels._GPU_WARPS, as the wrappers launch them."""
    rb, op, kc = _ROW_BLOCK, _pad(hidden // 2), _K_CHUNK
    common = dict(HAS_MASK=True, LIBDEVICE=True, R=10, RB=rb, OP=op, KC=kc)
    variants = []
    for staged in (False, True):
        variants.append((_jit._gru_forward_kernel, dict(
            common, HALF_STORAGE=True, COUNT=True, STAGED=staged, W=16, BLOCK=rb * op)))
        variants.append((_jit._gru_reverse_kernel, dict(
            common, TAPE=True, STAGED=staged, W=16, BLOCK=rb * op)))
    variants += [
        (_jit._refill_rows_kernel, dict(R=10, W=16, BLOCKS=64, RB=rb, OP=op, BLOCK=rb * op)),
        (_jit._gru_tape_kernel, dict(LIBDEVICE=True, RB=rb, OP=op, KC=kc)),
        (_jit._gru_backward_kernel, dict(common, HAS_EXTRA=True)),
        (triton_jit._place_words_kernel, dict(COUNT=True, BLOCKS=64, BLOCK=rb * op))]
    return variants
