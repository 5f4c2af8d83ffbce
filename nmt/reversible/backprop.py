"""Reversible backprop: an autograd Function that keeps no per-step activations.

Forward runs the steps without a graph, chunk by chunk (see `Plan.chunks`), and keeps the final
exact state, the information buffer and the attention storage. Backward walks the chunks from
last to first: it reverses the chunk's steps exactly (no grad), keeping the chunk's few exact
states, re-runs them with grad from float leaves of the chunk's first state (each step's exact
result is already known, so the buffer is not touched), evaluates the chunk's readout on the
re-run states, and backpropagates the whole chunk at once: the gradient of its last state (from
the chunk after it), of its storage and of its readout. Then the graph is dropped. The
parameters are inputs of the Function, so their gradients arrive through autograd's normal
accumulation (DDP hooks fire), scaled by the incoming gradients like any other node's.

The readout (e.g. attention, output layer and loss of the decoder) is evaluated once, with
gradient, while its chunk is reversed: forward returns its total as a placeholder (NaN) that
backward fills in, so the value is there once the training step's backward is done. Only when
nothing will be differentiated (no input requires grad) does forward evaluate it itself.
"""
from __future__ import annotations

import weakref
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from nmt.reversible.deferred import DeferredWeightGrads, deferred_weight_grads
from nmt.reversible.fixed_point import from_fixed, to_fixed
from nmt.reversible.readout import read_chunk


def run_reversible(plan, initial, extras: Sequence[Tensor]):
    """Run `plan` in reversible mode; returns (final_state, final_values, stored, readout_total)."""
    flat_initial = [part for layer in initial for part in layer]
    raw_inputs = [plan.inputs.inputs] if plan.inputs.embedding is None else []
    tensors = flat_initial + raw_inputs + list(plan.parameters) + list(extras)
    outputs = list(_ReversibleRun.apply(plan, *tensors))
    total = outputs.pop(0) if plan.readout is not None else None
    parts = plan.rnn.state_parts
    flat_values = outputs[: len(flat_initial)]
    values = [tuple(flat_values[i: i + parts]) for i in range(0, len(flat_values), parts)]
    stored = outputs[len(flat_initial)] if plan.rnn.storage is not None else None
    return plan.final_state, values, stored, total


def _forward_pass(plan, flat_initial: Sequence[Tensor], extras: Sequence[Tensor], *, read: bool):
    """The recurrence without a graph; returns (final exact state, storage or None, readout
    total, or None when not `read`)."""
    rnn, mask = plan.rnn, plan.mask
    state = _unflatten([to_fixed(part) for part in flat_initial], rnn.state_parts)
    plan.initial_state = state
    stored = None
    if rnn.storage is not None:
        stored = torch.zeros(mask.shape[0], plan.steps, rnn.storage.units,
                             dtype=rnn.storage.dtype, device=mask.device)
    losses = []
    with torch.no_grad():
        for start, stop in plan.chunks():
            x, _ = plan.inputs.chunk(start, stop)
            projected = rnn.cells[0].project_input(x).unbind(1)
            tops = []
            for i, t in enumerate(range(start, stop)):
                values = [tuple(from_fixed(part) for part in layer) for layer in state]
                state, values, stored_t = rnn.step(None, state, values, plan.buffer, mask[:, t],
                                                   tag=plan.tag, layer_dropout=plan.layer_dropout,
                                                   projected=projected[i])
                if stored is not None:
                    stored[:, t] = stored_t.to(stored.dtype)
                if read:
                    tops.append(torch.cat(values[-1][:2], dim=-1))
            if read:
                losses.append(read_chunk(plan.readout, tops, start, extras))
    plan.final_state = state
    plan.kept_bytes = _kept_bytes(plan, state, stored)
    return state, stored, torch.stack(losses).sum() if read else None


def _reverse_pass(plan, state, stored: Optional[Tensor], grad_values: List[Tensor],
                  grad_stored: Optional[Tensor], extras: Sequence[Tensor],
                  grad_total: Optional[Tensor]):
    """Reverse every chunk, backpropagating one chunk at a time.

    Returns (grads of the initial float halves, of the float inputs or None, of the parameters,
    of the extras, the readout total or None).
    """
    rnn, mask = plan.rnn, plan.mask
    params = list(plan.parameters)
    raw = plan.inputs.inputs if plan.inputs.embedding is None else None
    input_grad = torch.zeros_like(raw) if raw is not None and raw.requires_grad else None
    embedded_grad = None  # (batch, T, input): gradients of the looked-up embeddings
    if plan.inputs.embedding is not None and plan.inputs.embedding_trainable:
        embedded_grad = torch.zeros(*plan.inputs.inputs.shape, rnn.input_size,
                                    device=plan.inputs.inputs.device)
    extras = [extra.detach().requires_grad_(extra.requires_grad) for extra in extras]
    param_grads: List[Optional[Tensor]] = [None] * len(params)
    extra_grads: List[Optional[Tensor]] = [None] * len(extras)
    reading = plan.readout is not None
    if reading and grad_total is None:  # the total was not used: its value is still wanted
        grad_total = torch.zeros((), device=mask.device)
    chunk_totals = []  # readout of each chunk, last chunk first
    grads = list(grad_values)
    for start, stop in reversed(plan.chunks()):
        with torch.enable_grad():
            x, x_leaf = plan.inputs.chunk(start, stop, leaf=True)
            # per-step views by unbind: their backward is one stack, not a zero-filled copy each
            projected = rnn.cells[0].project_input(x).unbind(1)
        states = [state]  # exact states, from the one after step stop - 1 back to before start
        with torch.no_grad():
            exact_projected = [step.detach() for step in projected]
            for t in reversed(range(start, stop)):
                state = rnn.reverse_step(None, state, plan.buffer, mask[:, t],
                                         restored=_restored_slice(plan, stored, t),
                                         layer_dropout=plan.layer_dropout,
                                         projected=exact_projected[t - start])
                states.append(state)
        states.reverse()  # states[i]: before step start + i
        with torch.enable_grad(), deferred_weight_grads() as deferred:
            leaves = [tuple(from_fixed(part).requires_grad_() for part in layer)
                      for layer in states[0]]
            values, tops, stored_steps = leaves, [], []
            for i, t in enumerate(range(start, stop)):
                _, values, stored_t = rnn.step(None, states[i], values, None, mask[:, t],
                                               next_state=states[i + 1],
                                               layer_dropout=plan.layer_dropout,
                                               projected=projected[i])
                stored_steps.append(stored_t)
                if reading:
                    tops.append(torch.cat(values[-1][:2], dim=-1))
            outputs, out_grads = _flatten(values), list(grads)
            if stored is not None and grad_stored is not None:
                outputs.append(torch.stack(stored_steps, dim=1))
                out_grads.append(grad_stored[:, start:stop])
            if reading:
                outputs.append(read_chunk(plan.readout, tops, start, extras))
                out_grads.append(grad_total)
                chunk_totals.append(outputs[-1].detach())
            flat_leaves = _flatten(leaves)
            input_slot = [x_leaf] if x_leaf is not None else []
            chunk_grads = _grad(outputs, out_grads, flat_leaves + input_slot + params + extras)
        grads = [g if g is not None else torch.zeros_like(leaf)
                 for g, leaf in zip(chunk_grads[: len(flat_leaves)], flat_leaves)]
        chunk_input_grad = chunk_grads[len(flat_leaves)] if input_slot else None
        if chunk_input_grad is not None:
            (input_grad if input_grad is not None else embedded_grad)[:, start:stop] = chunk_input_grad
        offset = len(flat_leaves) + len(input_slot)
        _accumulate(param_grads, chunk_grads[offset: offset + len(params)])
        _accumulate(extra_grads, chunk_grads[offset + len(params):])
        _add_weight_grads(param_grads, params, deferred)
    if embedded_grad is not None:  # one embedding backward for all steps
        with torch.enable_grad():
            _accumulate(param_grads, _grad([plan.inputs.embedding(plan.inputs.inputs)],
                                           [embedded_grad], params))
    total = torch.stack(chunk_totals[::-1]).sum() if reading else None  # forward's order
    return grads, input_grad, param_grads, extra_grads, total


class _ReversibleRun(torch.autograd.Function):
    """Outputs: the readout total (if a readout is given; NaN until backward fills it in when
    anything is to be differentiated), the final float halves (flat, per layer) and the
    storage (batch, T, k) if any."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        num_initial = plan.rnn.num_layers * plan.rnn.state_parts
        extras = tensors[len(tensors) - plan.num_extras:]
        settle_in_backward = plan.readout is not None and any(ctx.needs_input_grad)
        state, stored, total = _forward_pass(plan, tensors[:num_initial], extras,
                                             read=plan.readout is not None and not settle_in_backward)
        ctx.pending_total = None
        if settle_in_backward:
            total = torch.full((), float("nan"), device=plan.mask.device)
            ctx.pending_total = weakref.ref(total)  # weak: the output must not keep itself alive
        ctx.plan, ctx.final_state, ctx.num_initial = plan, state, num_initial
        ctx.has_stored = stored is not None
        ctx.save_for_backward(*([stored] if stored is not None else []), *extras)
        outputs = [from_fixed(part) for part in _flatten(state)]
        if stored is not None:
            outputs.append(stored if stored.dtype == torch.float32 else stored.float())
        return tuple(([total] if total is not None else []) + outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        plan = ctx.plan
        saved = list(ctx.saved_tensors)
        stored = saved.pop(0) if ctx.has_stored else None
        extras = saved
        grad_outputs = list(grad_outputs)
        grad_total = grad_outputs.pop(0) if plan.readout is not None else None
        grad_values = [g if g is not None else torch.zeros_like(from_fixed(part))
                       for g, part in zip(grad_outputs[: ctx.num_initial], _flatten(ctx.final_state))]
        grad_stored = grad_outputs[ctx.num_initial] if stored is not None else None
        init_grads, input_grad, param_grads, extra_grads, total = _reverse_pass(
            plan, ctx.final_state, stored, grad_values, grad_stored, extras, grad_total)
        pending = ctx.pending_total() if ctx.pending_total is not None else None
        if pending is not None:
            pending.copy_(total)
        raw = [input_grad] if plan.inputs.embedding is None else []
        return (None, *init_grads, *raw, *param_grads, *extra_grads)


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


def _add_weight_grads(param_grads: List[Optional[Tensor]], params: List[Tensor],
                      deferred: DeferredWeightGrads) -> None:
    """Add the chunk's deferred recurrent-weight gradients into the columns they belong to."""
    index = {id(param): i for i, param in enumerate(params)}
    for layer, first, grad in deferred.weight_grads():
        i = index[id(layer.weight)]
        if param_grads[i] is None:
            param_grads[i] = torch.zeros_like(layer.weight)
        param_grads[i][:, first:] += grad


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
