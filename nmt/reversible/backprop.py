"""Reversible backprop: autograd Functions that keep no per-step activations.

Forward runs the steps without a graph and keeps the final exact state, the information buffer and
the attention storage. Backward walks t = T-1 .. 0: reverse step t exactly (no grad) to get the
previous state, re-run step t with grad from float leaves of that state (its exact result is
already known, so the buffer is not touched), backpropagate the gradient of the state after step t
(plus the storage's and the readout's), and drop the graph. The parameters are inputs of the
Function, so their gradients arrive through autograd's normal accumulation (DDP hooks fire).

With a per-step readout the reversal must happen before the summed readout exists, so
`_ReversibleReadout` runs the recurrence and the whole reversal inside its forward, keeps the
gathered gradients, and its backward scales them by the incoming gradient.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from nmt.reversible.fixed_point import from_fixed, to_fixed


def run_reversible(plan, initial, extras: Sequence[Tensor]):
    """Run `plan` in reversible mode; returns (final_state, final_values, stored, readout_total)."""
    flat_initial = [part for layer in initial for part in layer]
    raw_inputs = [plan.inputs.inputs] if plan.inputs.embedding is None else []
    tensors = flat_initial + raw_inputs + list(plan.parameters) + list(extras)
    parts = plan.rnn.state_parts
    if plan.readout is None:
        outputs = _ReversibleSequence.apply(plan, *tensors)
        total = None
    else:
        total, *outputs = _ReversibleReadout.apply(plan, *tensors)
    flat_values = outputs[: len(flat_initial)]
    values = [tuple(flat_values[i: i + parts]) for i in range(0, len(flat_values), parts)]
    stored = outputs[len(flat_initial)] if plan.rnn.storage is not None else None
    return plan.final_state, values, stored, total


def _forward_pass(plan, flat_initial: Sequence[Tensor]):
    """The recurrence without a graph; returns (final exact state, storage or None)."""
    rnn, mask = plan.rnn, plan.mask
    state = _unflatten([to_fixed(part) for part in flat_initial], rnn.state_parts)
    plan.initial_state = state
    stored = None
    if rnn.storage is not None:
        stored = torch.zeros(mask.shape[0], plan.steps, rnn.storage.units,
                             dtype=rnn.storage.dtype, device=mask.device)
    with torch.no_grad():
        for t in range(plan.steps):
            x, _ = plan.inputs.at(t)
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, _, stored_t = rnn.step(x, state, values, plan.buffer, mask[:, t], tag=plan.tag,
                                          layer_dropout=plan.layer_dropout)
            if stored is not None:
                stored[:, t] = stored_t.to(stored.dtype)
    plan.final_state = state
    plan.kept_bytes = _kept_bytes(plan, state, stored)
    return state, stored


def _reverse_pass(plan, state, stored: Optional[Tensor], grad_values: List[Tensor],
                  grad_stored: Optional[Tensor], extras: Sequence[Tensor]):
    """Reverse every step, backpropagating one step at a time.

    Returns (grads of the initial float halves, of the float inputs or None, of the parameters,
    of the extras, per-step readout values or None).
    """
    rnn, mask = plan.rnn, plan.mask
    params = list(plan.parameters)
    raw = plan.inputs.inputs if plan.inputs.embedding is None else None
    input_grad = torch.zeros_like(raw) if raw is not None and raw.requires_grad else None
    embedded_grad = None  # (batch, T, input): gradients of the looked-up embeddings
    if plan.inputs.embedding is not None and plan.inputs.embedding_trainable:
        embedded_grad = torch.zeros(*plan.inputs.inputs.shape, rnn.input_size,
                                    device=plan.inputs.inputs.device)
    param_grads: List[Optional[Tensor]] = [None] * len(params)
    extra_grads: List[Optional[Tensor]] = [None] * len(extras)
    losses: List[Optional[Tensor]] = [None] * plan.steps
    grads = list(grad_values)
    for t in reversed(range(plan.steps)):
        with torch.no_grad():
            x, _ = plan.inputs.at(t)
            previous = rnn.reverse_step(x, state, plan.buffer, mask[:, t],
                                        restored=_restored_slice(plan, stored, t),
                                        layer_dropout=plan.layer_dropout)
        with torch.enable_grad():
            leaves = [tuple(from_fixed(part).requires_grad_() for part in layer) for layer in previous]
            x, x_leaf = plan.inputs.at(t, leaf=True)
            _, values, stored_t = rnn.step(x, previous, leaves, None, mask[:, t], next_state=state,
                                           layer_dropout=plan.layer_dropout)
            outputs, out_grads = _flatten(values), list(grads)
            if stored_t is not None and grad_stored is not None:
                outputs.append(stored_t)
                out_grads.append(grad_stored[:, t])
            if plan.readout is not None:
                loss = plan.readout(torch.cat(values[-1][:2], dim=-1), t, *extras)
                losses[t] = loss.detach()
                outputs.append(loss)
                out_grads.append(torch.ones_like(loss))
            flat_leaves = _flatten(leaves)
            input_slot = [x_leaf] if x_leaf is not None else []
            step_grads = _grad(outputs, out_grads, flat_leaves + input_slot + params + list(extras))
        grads = [g if g is not None else torch.zeros_like(leaf)
                 for g, leaf in zip(step_grads[: len(flat_leaves)], flat_leaves)]
        step_input_grad = step_grads[len(flat_leaves)] if input_slot else None
        if step_input_grad is not None:
            (input_grad if input_grad is not None else embedded_grad)[:, t] = step_input_grad
        offset = len(flat_leaves) + len(input_slot)
        _accumulate(param_grads, step_grads[offset: offset + len(params)])
        _accumulate(extra_grads, step_grads[offset + len(params):])
        state = previous
    if embedded_grad is not None:  # one embedding backward for all steps
        with torch.enable_grad():
            _accumulate(param_grads, _grad([plan.inputs.embedding(plan.inputs.inputs)],
                                           [embedded_grad], params))
    return grads, input_grad, param_grads, extra_grads, losses


class _ReversibleSequence(torch.autograd.Function):
    """Outputs: the final float halves (flat, per layer) and the storage (batch, T, k) if any."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        num_initial = plan.rnn.num_layers * plan.rnn.state_parts
        state, stored = _forward_pass(plan, tensors[:num_initial])
        ctx.plan, ctx.final_state, ctx.num_initial = plan, state, num_initial
        outputs = [from_fixed(part) for part in _flatten(state)]
        if stored is not None:
            as_float = stored if stored.dtype == torch.float32 else stored.float()
            outputs.append(as_float)
        ctx.save_for_backward(stored)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        plan = ctx.plan
        (stored,) = ctx.saved_tensors
        grad_values = [g if g is not None else torch.zeros_like(from_fixed(part))
                       for g, part in zip(grad_outputs[: ctx.num_initial], _flatten(ctx.final_state))]
        grad_stored = grad_outputs[ctx.num_initial] if stored is not None else None
        init_grads, input_grad, param_grads, _, _ = _reverse_pass(
            plan, ctx.final_state, stored, grad_values, grad_stored, extras=())
        raw = [input_grad] if plan.inputs.embedding is None else []
        return (None, *init_grads, *raw, *param_grads)


class _ReversibleReadout(torch.autograd.Function):
    """Outputs: the summed readout (differentiable), then the final float halves and the storage
    (both without gradient: every gradient has been gathered through the readout already)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        num_initial = plan.rnn.num_layers * plan.rnn.state_parts
        extras = [tensor.detach().requires_grad_(tensor.requires_grad)
                  for tensor in tensors[len(tensors) - plan.num_extras:]]
        state, stored = _forward_pass(plan, tensors[:num_initial])
        final = [from_fixed(part) for part in _flatten(state)]
        zero = [torch.zeros_like(value) for value in final]
        init_grads, input_grad, param_grads, extra_grads, losses = _reverse_pass(
            plan, state, stored, zero, None, extras)
        gathered = list(init_grads) + ([input_grad] if plan.inputs.embedding is None else [])
        gathered += list(param_grads) + list(extra_grads)
        ctx.has_grad = [g is not None for g in gathered]
        ctx.save_for_backward(*[g for g in gathered if g is not None])
        outputs = final + ([stored.float()] if stored is not None else [])
        ctx.mark_non_differentiable(*outputs)
        return (torch.stack(losses).sum(), *outputs)

    @staticmethod
    def backward(ctx, grad_total, *ignored):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_total if present else None for present in ctx.has_grad]
        return (None, *grads)


def _restored_slice(plan, stored: Optional[Tensor], t: int) -> Optional[Tensor]:
    """The exact stored units of the top h1 before step t (from storage, or the initial state)."""
    units = plan.rnn.stored_slice
    if not units:
        return None
    if t == 0:
        return plan.initial_state[-1][0][:, :units]
    return to_fixed(stored[:, t - 1].float())


def _grad(outputs, out_grads, wrt):
    """torch.autograd.grad over the outputs that carry a graph; None for unreachable inputs."""
    pairs = [(o, g) for o, g in zip(outputs, out_grads) if o.requires_grad]
    needs = [i for i, tensor in enumerate(wrt) if tensor.requires_grad]
    result: List[Optional[Tensor]] = [None] * len(wrt)
    if not pairs or not needs:
        return result
    found = torch.autograd.grad([o for o, _ in pairs], [wrt[i] for i in needs],
                                [g for _, g in pairs], allow_unused=True)
    for i, g in zip(needs, found):
        result[i] = g
    return result


def _accumulate(totals: List[Optional[Tensor]], new: Sequence[Optional[Tensor]]) -> None:
    """totals[i] += new[i] (in place after the first, which is copied: grads may alias)."""
    for i, g in enumerate(new):
        if g is not None:
            if totals[i] is None:
                totals[i] = g.clone()
            else:
                totals[i].add_(g)


def _flatten(layers) -> List[Tensor]:
    return [part for layer in layers for part in layer]


def _unflatten(parts: List[Tensor], per_layer: int):
    return [tuple(parts[i: i + per_layer]) for i in range(0, len(parts), per_layer)]


def _kept_bytes(plan, state, stored: Optional[Tensor]) -> dict:
    """Bytes the reversible mode holds once the forward recurrence is done (buffer at its peak)."""
    return {
        "buffer": plan.buffer.nbytes(),
        "stored": 0 if stored is None else stored.numel() * stored.element_size(),
        "state": sum(part.numel() * part.element_size() for part in _flatten(state)),
    }
