"""Which kernels run the element-wise part of each step: the switch `kernels`.

- "torch": the tensor path (cells.py, gated.py, buffer.py; the C loops of native.py on a CPU).
- "triton": the fused Triton kernels (fused.py, triton_kernels.py) with the buffer in a device-side
  word stack (stack_buffer.py). On CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests).
  With `fused_activations` (the StackBuffer's `activate`) the kernels also apply sigmoid and tanh
  (their own formula, the same in forward, reverse and backward: reversal stays exact, but values
  are no longer the tensor path's bit for bit) and fewer ops run per step. With `fused_products`
  (the StackBuffer's `products`) the kernels also compute the recurrent products
  (triton_gru_products.py, triton_lstm_products.py): one launch per half-step and direction.
- "auto": "triton" on CUDA tensors when Triton is importable, else "torch".

The choice is made when a run's buffer is made (`make_buffer`: a StackBuffer for the fused path)
and every step follows its buffer: `cell_step`, `cell_reverse`, `cell_tape` and `cell_backward`
below are what `ReversibleRNN.run_steps` / `reverse_chunks` and backprop.py call per layer and
step, the one loop pair for both paths. By default matrix products and activations stay in torch
on both, so the fused path gives the tensor path's integers and losses bit for bit, and its gradients to float
rounding (the fused backward folds the same sums in another order). The fused path
has no autograd graph: it serves reversible training and forward runs without gradient; a
reference (autograd) run keeps the tensor path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nmt.reversible.stack_buffer import StackBuffer, is_stack_buffer, make_buffer  # noqa: F401

KERNEL_CHOICES = ("auto", "triton", "torch")


class KernelsUnavailable(RuntimeError):
    """kernels "triton" was asked for where the fused kernels cannot run."""


def check_kernels(setting: str) -> str:
    if setting not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {setting!r}")
    return setting


def use_triton(setting: str, device=None) -> bool:
    """Whether runs on `device` take the fused kernels under `setting` (raises
    KernelsUnavailable when "triton" cannot run there)."""
    device = torch.device(device if device is not None else "cpu")
    if check_kernels(setting) == "torch" or (setting == "auto" and device.type != "cuda"):
        return False  # (without importing Triton)
    from nmt.reversible import triton_kernels

    if setting == "auto":
        return triton_kernels.available()
    if not triton_kernels.available():
        raise KernelsUnavailable("kernels 'triton': Triton is not importable here "
                                 "(install triton, or use kernels 'auto' or 'torch')")
    if device.type == "cpu" and not triton_kernels.interpreting():
        raise KernelsUnavailable("kernels 'triton' on CPU tensors runs only under Triton's "
                                 "interpreter (TRITON_INTERPRET=1, for tests); use 'auto' or "
                                 "'torch' on a CPU")
    if device.type not in ("cpu", "cuda"):
        raise KernelsUnavailable(f"kernels 'triton': no fused kernels for {device.type} tensors")
    return True


def _no_graph(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("the fused kernels (a StackBuffer) run without autograd: a reference "
                           "run with gradients needs the tensor path (kernels 'torch')")


def cell_step(cell, projected: Tensor, state, values, buffer, mask: Optional[Tensor], *,
              next_state=None, stored_units: int = 0, precision: int = 32, tag: str = ""):
    """`cell.step` on the buffer's path: returns (state, float views)."""
    if not is_stack_buffer(buffer):
        return cell.step(projected, state, values, buffer, mask, next_state=next_state,
                         stored_units=stored_units, precision=precision, tag=tag)
    from nmt.reversible import fused

    _no_graph(projected, *values)
    if next_state is not None:
        raise ValueError("next_state: not supported by the fused kernels")
    return fused.step(cell, projected, state, buffer.pushed_step(), mask, values=values,
                      stored_units=stored_units, precision=precision, activate=buffer.activate,
                      products=buffer.products, tag=tag)


def cell_reverse(cell, projected: Tensor, state, buffer, mask: Optional[Tensor], *,
                 restored: Optional[Tensor] = None, tape: Optional[list] = None):
    """`cell.reverse` on the buffer's path (a tape in that path's format): the previous state."""
    if not is_stack_buffer(buffer):
        return cell.reverse(projected, state, buffer, mask, restored=restored, tape=tape)
    from nmt.reversible import fused

    views = buffer.views.pop(id(state[0]), None)  # this state's float views, if a reverse step
    known = views is not None and all(a is b for a, b in zip(views[0], state))  # returned them
    if len(buffer.views) > 64:  # left over from abandoned reversals
        buffer.views.clear()
    exact, floats = fused.reverse(cell, projected, state, buffer.popped_step(), mask,
                                  values=views[1] if known else None, restored=restored,
                                  tape=tape, activate=buffer.activate,
                                  products=buffer.products)
    buffer.views[id(exact[0])] = (exact, floats)
    return exact


def cell_tape(cell, projected: Tensor, before, after, *, buffer=None) -> list:
    """`cell.recompute_tape` in the format of the `cell_backward` of `buffer`'s path."""
    if not is_stack_buffer(buffer):
        return cell.recompute_tape(projected, before, after)
    from nmt.reversible import fused

    return fused.recompute_tape(cell, projected, before, after, activate=buffer.activate,
                                products=buffer.products)


def cell_backward(cell, tape: list, grads, mask: Optional[Tensor], *, buffer=None,
                  extra: Optional[Tensor] = None):
    """`cell.backward_step` on `buffer`'s path: (state grads before the step, d projected, the
    inputs of the recurrent products), from a tape of that path. `extra` (batch, H), added to
    the h gradients inside the first kernel: fused products only (ValueError elsewhere)."""
    if not is_stack_buffer(buffer):
        if extra is not None:
            raise ValueError("cell_backward: extra needs the fused products")
        return cell.backward_step(tape, grads, mask)
    from nmt.reversible import fused

    return fused.backward_step(cell, tape, grads, mask, activate=buffer.activate,
                               products=buffer.products, extra=extra)


def chunk_words(rnn, batch: int, steps: int) -> int:
    """At most how many words `steps` steps of `rnn` push: one per element per forget."""
    return steps * rnn.num_layers * rnn.state_parts * batch * rnn.half_size
