"""Reversible backprop: an autograd Function that keeps no per-step activations.

Forward runs the steps without a graph, chunk by chunk (see `Plan.chunks`), and keeps the final
exact state, the information buffer and the attention storage. Backward walks the chunks from
last to first:

1. it reverses the chunk's steps exactly (no grad), keeping the chunk's few exact states (the
   gate values are not kept: each step's tape is recomputed from its states just before that
   step's gradient, so one step's tape lives at a time, not the chunk's; on the fused kernels'
   path the reversal's own tapes are kept for the chunk instead, which saves recomputing every
   gate: fewer launches per step for a chunk's tapes of memory, see step_kernels.py);
2. it evaluates the chunk's readout (e.g. the decoder's attention, output layer and loss) and
   storage on the chunk's top states, as one leaf, by autograd: the readout is evaluated once,
   with gradient, while its chunk is reversed (the output layer's weight gradient and the
   attention keys' and values' gradients go into one running total each, in blocks:
   readout.WeightGradSink, readout.TensorGradSink);
3. it backpropagates through the steps by hand (`backward_step` of the cells: the paper's update
   equations differentiated, gradients straight through every rounding), recording the
   recurrent weights' (input, gradient) pairs for one product per chunk, added into the running
   totals in row blocks;
4. it backpropagates the chunk's first-layer input projection by hand (autograd's products):
   the inputs' gradients (looked-up embeddings: into the table's running total, the rows the
   chunk's ids touch), the biases', and the weights' x columns into their running totals, in
   row blocks.

The parameters are inputs of the Function, so their gradients arrive through autograd's normal
accumulation (DDP hooks fire), scaled by the incoming gradients like any other node's. Forward
returns the readout total as a placeholder (NaN) that backward fills in, so the value is there
once the training step's backward is done; only when nothing will be differentiated (no input
requires grad) does forward evaluate the readout itself. Plain autograd over the same steps
(`MemoryMode.REFERENCE`) is the reference the tests compare this backward with.

At the end of every backward, an O(1) check (in T) that the reversal was exact: the restored
initial state matches the fingerprint of the one forward started from (no copy of it is kept;
nmt/reversible/kept.py, which also narrows the kept final state where that is exact), and the
buffer is back where this run found it (same heads, no words of this run left). Otherwise
`ReversalError` names the run, layer and step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from nmt.reversible.checks import check_restored
from nmt.reversible.deferred import DeferredWeightGrads
from nmt.reversible.fixed_point import from_fixed, to_fixed
from nmt.reversible.grad_totals import (BiasTotal, accumulate, add_embedding_grads,
                                       add_projection_grads, add_weight_grads, grads_of,
                                       projection_grads, projection_weights, table_weight_index)
from nmt.reversible.kept import KeptStates
from nmt.reversible.layout import stacked_tops
from nmt.reversible.step_kernels import cell_backward, is_stack_buffer
from nmt.reversible.readout import (PendingTotal, TensorGradSink, WeightGradSink, read_chunk,
                                   tensor_grad_sink, weight_grad_sink)

CHECK_END_OF_BACKWARD = True  # the exactness check after every reversal (off only to time it)


@dataclass
class ReversibleResult:
    """What a reversible run returns: the exact final state, its float views per layer (with
    gradients through the Function), the storage, the readout total (a placeholder until
    backward when `pending` is set), and the bytes held once forward was done."""

    final_state: list
    final_values: list
    stored: Optional[Tensor]
    total: Optional[Tensor]
    pending: Optional[PendingTotal]
    kept_bytes: dict


@dataclass
class _Forward:
    """What backward needs of its forward besides the saved tensors."""

    kept: KeptStates  # the final state (at its kept width), the initial state's fingerprint
    mark: object  # the buffer's mark before the run (InformationBuffer.mark)


def run_reversible(rnn, plan, initial, extras: Sequence[Tensor]) -> ReversibleResult:
    """Run `plan` in reversible mode from the float halves `initial` (per layer)."""
    flat_initial = [part for layer in initial for part in layer]
    raw_inputs = [plan.inputs.inputs] if plan.inputs.embedding is None else []
    tensors = flat_initial + raw_inputs + list(plan.parameters) + list(extras)
    record: dict = {}
    outputs = list(_ReversibleRun.apply(rnn, plan, record, *tensors))
    total = outputs.pop(0) if plan.readout is not None else None
    parts = rnn.state_parts
    flat_values = outputs[: len(flat_initial)]
    values = [tuple(flat_values[i: i + parts]) for i in range(0, len(flat_values), parts)]
    stored = outputs[len(flat_initial)] if rnn.storage is not None else None
    return ReversibleResult(final_state=record["final_state"], final_values=values, stored=stored,
                            total=total, pending=record.get("pending"),
                            kept_bytes=record["kept_bytes"])


def _forward_pass(rnn, plan, flat_initial: Sequence[Tensor], extras: Sequence[Tensor], *,
                  read: bool):
    """The recurrence without a graph; returns (initial exact state, final exact state, storage
    or None, readout total or None when not `read`)."""
    initial = _unflatten([to_fixed(part) for part in flat_initial], rnn.state_parts)
    stored, kept = None, []  # the storage; a chunk's stored values, copied in at its end
    if rnn.storage is not None:
        stored = torch.empty(plan.mask.shape[0], plan.steps, rnn.storage.units,
                             dtype=rnn.storage.dtype, device=plan.mask.device)
    ends, losses = {stop for _, stop in plan.chunks()}, []
    state = initial
    values = [tuple(from_fixed(part) for part in layer) for layer in state]  # then the steps'
    with torch.no_grad():
        for step in rnn.run_steps(plan, state, values, extras=extras if read else None,
                                  mask_stored=False):  # padding zeroed once, below
            state, values = step.state, step.values
            if stored is not None:
                kept.append(step.stored)
                if step.t + 1 in ends:  # one stack and copy (dtype included) per chunk
                    stored[:, step.t + 1 - len(kept): step.t + 1] = torch.stack(kept, dim=1)
                    kept = []
            if step.readout is not None:
                losses.append(step.readout)
        if stored is not None:
            stored.masked_fill_(~plan.mask.unsqueeze(-1), 0)
    plan.buffer.compact()
    plan.stacked_input = None  # (made again by the reverse pass)
    return initial, state, stored, torch.stack(losses).sum() if read else None


def _reverse_pass(rnn, plan, forward: _Forward, stored: Optional[Tensor],
                  grad_values: List[Tensor], grad_stored: Optional[Tensor],
                  extras: Sequence[Tensor], grad_total: Optional[Tensor]):
    """Reverse every chunk, backpropagating one chunk at a time.

    Returns (grads of the initial float halves, of the float inputs or None, of the parameters,
    of the extras, the readout total or None).
    """
    mask = plan.mask
    params = list(plan.parameters)
    raw = plan.inputs.inputs if plan.inputs.embedding is None else None
    input_grad = torch.zeros_like(raw) if raw is not None and raw.requires_grad else None
    embedded_grad = None  # (batch, T, input): gradients of the looked-up embeddings
    table = None  # or: their table's gradient is added chunk by chunk (a plain nn.Embedding)
    if plan.inputs.embedding is not None and plan.inputs.embedding_trainable:
        table = table_weight_index(plan.inputs.embedding, params)
    if plan.inputs.embedding is not None and plan.inputs.embedding_trainable and table is None:
        embedded_grad = torch.zeros(*plan.inputs.inputs.shape, rnn.input_size,
                                    device=plan.inputs.inputs.device)
    extras = [extra.detach().requires_grad_(extra.requires_grad) for extra in extras]
    param_grads: List[Optional[Tensor]] = [None] * len(params)
    extra_grads: List[Optional[Tensor]] = [None] * len(extras)
    reading = plan.readout is not None
    if reading and grad_total is None:  # the total was not used: its value is still wanted
        grad_total = torch.zeros((), device=mask.device)
    storing = stored is not None and grad_stored is not None
    chunk_totals = []  # readout of each chunk, last chunk first
    sink, biases = WeightGradSink(params), BiasTotal()
    extra_sink = TensorGradSink([extra for extra in extras if extra.requires_grad])
    grads = [list(layer) for layer in _unflatten(list(grad_values), rnn.state_parts)]
    state = forward.kept.widened_final()
    for chunk in rnn.reverse_chunks(plan, state, initial_state=forward.kept.reversal_initial(),
                                    stored=stored, tapes=is_stack_buffer(plan.buffer), grad=True):
        start, stop, state = chunk.start, chunk.stop, chunk.states[0]
        # the chunk's readout and storage, by autograd on its top states, block by block (the
        # plan's readout blocks, last first: one block's graph at a time)
        block_grads = []
        for first, last in plan.readout_blocks(start, stop)[::-1]:
            block_grads.append(_read_block(rnn, plan, chunk, first, last, storing, grad_stored,
                                           reading, grad_total, extras, params, sink, extra_sink,
                                           param_grads, extra_grads, chunk_totals))
        top_grads = (block_grads[0] if len(block_grads) == 1 or block_grads[0] is None
                     else torch.cat(block_grads[::-1], dim=1))
        del block_grads
        weight_grads, bias_grads = DeferredWeightGrads(), []
        grads, d_projected = _backprop_steps(rnn, plan, chunk, grads, top_grads,
                                             weight_grads, bias_grads)
        del top_grads
        # the first layer's input projection of the chunk (values: no graph holds the stacked
        # input weight): its inputs' and biases' gradients as autograd computes them, by hand
        # where the projection is plain (else by autograd over the projection rebuilt now); its
        # weights' x columns by hand into their totals (autograd: a zero-filled weight each)
        input_slot = [chunk.x_leaf] if chunk.x_leaf is not None else []
        by_hand = projection_weights(rnn, chunk)
        chunk_grads = projection_grads(rnn, chunk, d_projected, input_slot + params, biases,
                                       stacked=plan.stacked_input)
        if chunk_grads is None:
            with torch.enable_grad():
                chunk = chunk._replace(projected=rnn.cells[0].project_input(chunk.inputs))
                chunk_grads = grads_of([chunk.projected], [d_projected], input_slot + params,
                                       skip=set(by_hand))
        if input_slot and chunk_grads[0] is not None and table is not None:
            # into the running total of the table (the output layer's, when tied to it)
            add_embedding_grads(plan.inputs.embedding, plan.inputs.inputs[:, start:stop],
                                chunk_grads[0], _table_total(sink, param_grads, params, table))
        elif input_slot and chunk_grads[0] is not None:
            (input_grad if input_grad is not None else embedded_grad)[:, start:stop] = chunk_grads[0]
        accumulate(param_grads, chunk_grads[len(input_slot):], foreign=[d_projected])
        if by_hand:
            add_projection_grads(rnn, chunk, d_projected, param_grads, params)
        add_weight_grads(param_grads, params, weight_grads, bias_grads, d_projected)
        # this chunk's graph, states and gradients go before the next chunk is reversed
        del chunk, chunk_grads, d_projected, weight_grads, bias_grads, input_slot
    biases.into(rnn, param_grads, params)
    plan.stacked_input = None
    if CHECK_END_OF_BACKWARD:
        check_restored(state, forward.kept, plan.buffer, forward.mark, tag=plan.tag)
    for i, param in enumerate(params):  # what the readout's sink_linear layers accumulated
        total = sink.total(param)
        if total is not None:
            param_grads[i] = total if param_grads[i] is None else param_grads[i].add_(total)
    del sink
    for i, extra in enumerate(extras):  # what the readout's sink_bmm products accumulated
        total = extra_sink.total(extra)
        if total is not None:
            extra_grads[i] = total if extra_grads[i] is None else extra_grads[i].add_(total)
    del extra_sink
    if embedded_grad is not None:  # one embedding backward for all steps
        with torch.enable_grad():
            accumulate(param_grads, grads_of([plan.inputs.embedding(plan.inputs.inputs)],
                                           [embedded_grad], params), foreign=[embedded_grad])
    total = torch.stack(chunk_totals[::-1]).sum() if reading else None  # forward's order
    return _flatten(grads), input_grad, param_grads, extra_grads, total


def _read_block(rnn, plan, chunk, first: int, last: int, storing: bool, grad_stored, reading: bool,
                grad_total, extras, params, sink, extra_sink, param_grads, extra_grads,
                block_totals: list) -> Optional[Tensor]:
    """The readout and storage of steps [first, last) of `chunk`, by autograd, on their top
    states as one leaf: their gradients into the running totals (the output layer's weight and
    the attention keys' and values' through the sinks, in blocks), the block's readout onto
    `block_totals`; returns d loss / d those top states (batch, last - first, H) or None."""
    mask, offset = plan.mask, chunk.start
    tops = from_fixed(stacked_tops(chunk.states[1 + first - offset: 1 + last - offset]))
    tops.requires_grad_()
    outputs, out_grads = [], []
    with torch.enable_grad():
        if storing:
            outputs.append(rnn.stored_from_top(tops, mask[:, first:last]))
            out_grads.append(grad_stored[:, first:last])
        if reading:
            with weight_grad_sink(sink), tensor_grad_sink(extra_sink):
                outputs.append(read_chunk(plan.readout, tops, first, extras))
            out_grads.append(grad_total)
            block_totals.append(outputs[-1].detach())
        read_grads = grads_of(outputs, out_grads, [tops] + params + extras)
    param_part, extra_part = read_grads[1: 1 + len(params)], read_grads[1 + len(params):]
    accumulate(param_grads, param_part, foreign=[read_grads[0]] + extra_part + out_grads)
    accumulate(extra_grads, extra_part, foreign=[read_grads[0]] + param_part + out_grads)
    return read_grads[0]


def _table_total(sink: WeightGradSink, param_grads: List[Optional[Tensor]], params, i: int):
    """The running total of params[i]'s gradient: the readout sink's if it has one, else
    param_grads[i] (made on first use)."""
    total = sink.total(params[i])
    if total is None:
        if param_grads[i] is None:
            param_grads[i] = torch.zeros_like(params[i])
        total = param_grads[i]
    return total


def _backprop_steps(rnn, plan, chunk, grads: List[List[Tensor]],
                    top_grads: Optional[Tensor], weight_grads: DeferredWeightGrads,
                    bias_grads: list):
    """Backpropagate a chunk's steps by hand, last step first. grads: per layer, d loss / d the
    float halves after the chunk; top_grads (batch, C, H): what the readout and storage send to
    the top layer's states. Each step's tape (the gate values its gradient needs) is recomputed
    from the chunk's exact states just before it is used and dropped after: one step's tape is
    live at a time, not the chunk's. Returns (the grads before the chunk, d loss / d the first
    layer's projected inputs (batch, C, P))."""
    first_half = rnn.cells[-1].half_sizes[0]
    first_projected = []
    start, states = chunk.start, chunk.states
    projected = chunk.projected.detach().unbind(1)
    # fused products: the top layer's first kernel adds top_grads[:, i] (two launches less)
    in_kernel = top_grads is not None and is_stack_buffer(plan.buffer) and plan.buffer.products
    for i in reversed(range(chunk.stop - start)):
        if top_grads is not None and not in_kernel:
            top = grads[-1]
            top[0] = top[0] + top_grads[:, i, :first_half]
            top[1] = top[1] + top_grads[:, i, first_half:]
        tape = chunk.tapes[i] if chunk.tapes is not None else rnn.recompute_tape(
            states[i], states[i + 1], projected[i], layer_dropout=plan.layer_dropout,
            buffer=plan.buffer)
        if chunk.tapes is not None:
            chunk.tapes[i] = None  # one step's tape less held from here on
        grads, d_projected = _backward_step(rnn, tape, grads, plan.step_mask(start + i),
                                            layer_dropout=plan.layer_dropout, buffer=plan.buffer,
                                            weight_grads=weight_grads, bias_grads=bias_grads,
                                            extra=top_grads[:, i] if in_kernel else None)
        first_projected.append(d_projected)
    return grads, torch.stack(first_projected[::-1], dim=1)


def _backward_step(rnn, tape: list, grads: List[List[Tensor]], mask: Optional[Tensor], *,
                   layer_dropout: Optional[Tensor], weight_grads: DeferredWeightGrads,
                   bias_grads: list, buffer=None, extra: Optional[Tensor] = None):
    """The gradient of one step of the stack, by hand, from its reversal's `tape`.

    grads: per layer, d loss / d each float half after the step. Returns the same before the
    step and d loss / d the first layer's projected input (batch, P). Weight gradients are
    recorded in `weight_grads` (one product per chunk later); biases of layers above the first
    (whose inputs are projected per step) append (bias, gradient) to `bias_grads`. `extra`:
    the top layer's readout gradient, added inside its first kernel (`cell_backward`)."""
    grads = [list(layer_grads) for layer_grads in grads]
    first_projected = None
    with torch.no_grad():
        for layer, layer_input, cell_tape in tape:  # top layer first
            cell = rnn.cells[layer]
            grads[layer], d_projected, inputs = cell_backward(cell, cell_tape, grads[layer], mask,
                                                              buffer=buffer, extra=extra)
            extra = None  # the top layer's only
            pieces, offset = cell.split_projection(d_projected), 0
            for linear, piece, own_input in zip(cell.input_layers(), pieces, inputs):
                if layer == 0:  # its d: a slice of the chunk's d projected; x columns: elsewhere
                    weight_grads.record_sliced((linear, cell.input_size), offset, own_input)
                    offset += linear.out_features
                else:
                    weight_grads.record((linear, 0), torch.cat([layer_input, own_input], -1), piece)
                    bias_grads.append((linear.bias, piece.sum(0)))
            if layer == 0:
                first_projected = d_projected
                continue
            d_input = d_projected.mm(cell.input_weight())
            if layer_dropout is not None:
                d_input = d_input * layer_dropout[layer - 1]
            below, first_half = grads[layer - 1], rnn.cells[layer - 1].half_sizes[0]
            below[0] = below[0] + d_input[:, :first_half]
            below[1] = below[1] + d_input[:, first_half:]
    return grads, first_projected


class _ReversibleRun(torch.autograd.Function):
    """Outputs: the readout total (if a readout is given; a placeholder until backward fills it
    in when anything is to be differentiated), the final float halves (flat, per layer) and the
    storage (batch, T, k) if any. `record` receives what forward returns besides tensors."""

    @staticmethod
    def forward(ctx, rnn, plan, record, *tensors):
        num_initial = rnn.num_layers * rnn.state_parts
        extras = tensors[len(tensors) - plan.num_extras:]
        settle_in_backward = plan.readout is not None and any(ctx.needs_input_grad)
        mark = plan.buffer.mark()
        initial, state, stored, total = _forward_pass(
            rnn, plan, tensors[:num_initial], extras,
            read=plan.readout is not None and not settle_in_backward)
        kept = KeptStates.keep(rnn, initial, state)
        record.update(final_state=state, kept_bytes=_kept_bytes(plan, kept, stored))
        ctx.pending = None
        if settle_in_backward:
            total = torch.full((), float("nan"), device=plan.mask.device)
            ctx.pending = record["pending"] = PendingTotal(total, plan.tag)
        ctx.rnn, ctx.plan, ctx.num_initial = rnn, plan, num_initial
        ctx.forward = _Forward(kept=kept, mark=mark)
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
        final_state = ctx.forward.kept.final_state
        grad_values = [g if g is not None else torch.zeros(part.shape, dtype=torch.float32,
                                                              device=part.device)
                       for g, part in zip(grad_outputs[: ctx.num_initial], _flatten(final_state))]
        grad_stored = grad_outputs[ctx.num_initial] if stored is not None else None
        init_grads, input_grad, param_grads, extra_grads, total = _reverse_pass(
            ctx.rnn, plan, ctx.forward, stored, grad_values, grad_stored, extras, grad_total)
        if ctx.pending is not None:
            ctx.pending.fill(total)
        raw = [input_grad] if plan.inputs.embedding is None else []
        return (None, None, None, *init_grads, *raw, *param_grads, *extra_grads)


def _flatten(layers) -> List[Tensor]:
    return [part for layer in layers for part in layer]


def _unflatten(parts: List[Tensor], per_layer: int):
    return [tuple(parts[i: i + per_layer]) for i in range(0, len(parts), per_layer)]


def _kept_bytes(plan, kept: KeptStates, stored: Optional[Tensor]) -> dict:
    """Bytes the reversible mode holds once the forward recurrence is done (buffer at its peak;
    state: the final state as kept; initial: the initial state's fingerprint and slice)."""
    return {
        "buffer": plan.buffer.nbytes(),
        "stored": 0 if stored is None else stored.numel() * stored.element_size(),
        **kept.nbytes(),
    }
