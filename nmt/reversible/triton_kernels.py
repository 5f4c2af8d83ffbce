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
from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
except ImportError:  # the tensor path and the C loops serve; callers check `available()`
    triton = None

from nmt.reversible import triton_jit as _jit  # noqa: E402
from nmt.reversible.word_stack import WordStack  # noqa: E402,F401  (public here)

MODE_GRU = 0  # update = (1 - n / 2**R) * b
MODE_PRODUCT = 1  # update = a * b

_MAX_BLOCK = 4096  # elements per block (and per program, when several run)
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
    _launch(_jit._gated_forward_kernel, (blocks if staged else 1,),
            h, _row_stride(h), s, _row_stride(s), a, _row_stride(a), b, _row_stride(b), mask_t,
            stack.head, stack.head.stride(0), stack.words, stack.words.numel(), stack.top,
            hist, pushed, out, value, stage, flags, counts, rows, cols, stored, n_min,
            MODE=mode, HAS_MASK=has_mask, HALF_STORAGE=precision == 16, COUNT=stack.count,
            ACTIVATE=activate, STAGED=staged, R=stack.forget_radix, W=stack.word_bits,
            BLOCK=block, warps=_GPU_WARPS)
    if staged:
        _launch(_jit._place_words_kernel, (blocks,), stage, flags, counts, blocks, stack.words,
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
    _launch(_jit._gated_reverse_kernel, (blocks if staged else 1,),
            h_next, _row_stride(h_next), s, _row_stride(s), a, _row_stride(a), b, _row_stride(b),
            mask_t, stack.head, stack.head.stride(0), stack.words, stack.top, stack.error,
            restored_t, _row_stride(restored_t), out, value, counts, rows, cols, stored, n_min,
            MODE=mode, HAS_MASK=has_mask, ACTIVATE=activate, STAGED=staged,
            R=stack.forget_radix, W=stack.word_bits, BLOCK=block, warps=_GPU_WARPS)
    if staged:
        _launch(_jit._refill_heads_kernel, (blocks,), stack.head, stack.head.stride(0), rows, cols,
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
    _launch(_jit._activation_kernel, _grid(rows * cols), x, _row_stride(x), y, other, rows, cols,
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
    _launch(_jit._gru_backward_gates_kernel, _grid(rows * cols),
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
    _launch(_jit._gru_backward_reset_kernel, _grid(rows * cols),
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
    _launch(_jit._lstm_backward_kernel, _grid(rows * cols),
            grad_h, grad_c, *gates, stride, tanh_cell, previous, previous_cell, mask_t, d_h,
            d_c, d_gates, _row_stride(d_gates), rows, cols, n_min, HAS_MASK=has_mask,
            ACTIVATE=activate, R=forget_radix, BLOCK=1024)
    return d_h, d_c, d_gates


# -- ahead-of-time compilation (no GPU needed) ----------------------------------------------------

_POINTER_TYPES = {"h_ptr": "*i64", "out_ptr": "*i64", "restored_ptr": "*i64", "head_ptr": "*i32",
                  "words_ptr": "*i16", "top_ptr": "*i64", "hist_ptr": "*i64",
                  "pushed_ptr": "*i64", "mask_ptr": "*u8", "stage_ptr": "*i16",
                  "flag_ptr": "*i8", "counts_ptr": "*i64", "error_ptr": "*i32", "c_ptr": "*i64",
                  "h_out_ptr": "*i64", "c_out_ptr": "*i64"}


def _product_variants() -> list:
    """(kernel, constexprs, warps) of the fused-products kernels (triton_gru_products.py,
    triton_lstm_products.py) at halves of 64 units, with the warps their wrappers launch."""
    from nmt.reversible import triton_gru_products as gru, triton_lstm_products as lstm

    variants = []
    for kernel, constants in gru.compile_variants(128):
        variants.append((kernel, constants, gru.launch_warps(constants["OP"])
                         if "OP" in constants else _GPU_WARPS))
    for kernel, constants in lstm.compile_variants(64):
        variants.append((kernel, constants, lstm._warps(constants["CP"])))
    return variants


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
            variants.append((_jit._gated_forward_kernel, dict(
                MODE=mode, HAS_MASK=True, HALF_STORAGE=mode == MODE_GRU, COUNT=True,
                ACTIVATE=activate, LIBDEVICE=True, STAGED=staged, R=10, W=16,
                BLOCK=_GPU_BLOCK)))
            variants.append((_jit._gated_reverse_kernel, dict(
                MODE=mode, HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True, STAGED=staged,
                R=10, W=16, BLOCK=_GPU_BLOCK)))
        variants += [
            (_jit._gru_backward_gates_kernel, dict(HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True,
                                              R=10, BLOCK=1024)),
            (_jit._gru_backward_reset_kernel, dict(ACTIVATE=activate, LIBDEVICE=True, BLOCK=1024)),
            (_jit._lstm_backward_kernel, dict(HAS_MASK=True, ACTIVATE=activate, LIBDEVICE=True, R=10,
                                         BLOCK=1024)),
            (_jit._activation_kernel, dict(TANH=activate, PRODUCT=True, LIBDEVICE=True, BLOCK=1024))]
    variants += [(_jit._place_words_kernel, dict(COUNT=True, BLOCKS=64, BLOCK=_GPU_BLOCK)),
                 (_jit._refill_heads_kernel, dict(R=10, W=16, BLOCKS=64, BLOCK=_GPU_BLOCK))]
    many_warps = (_jit._gated_forward_kernel, _jit._gated_reverse_kernel, _jit._place_words_kernel,
                  _jit._refill_heads_kernel)
    variants = [(kernel, constants, _GPU_WARPS if kernel in many_warps else None)
                for kernel, constants in variants] + _product_variants()
    lines = []
    for kernel, constants, warps in variants:
        signature = {}
        for name in kernel.arg_names:
            if name in constants:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = _POINTER_TYPES.get(name, "*fp32")
            else:
                signature[name] = "i64" if name in ("capacity", "total") else "i32"
        options = {"enable_fp_fusion": False}
        if warps is not None:
            options["num_warps"] = warps
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
