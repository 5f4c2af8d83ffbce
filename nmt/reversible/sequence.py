"""A multi-layer reversible RNN over whole sequences, in two named memory modes (plan.py).

- `MemoryMode.REFERENCE`: plain autograd over the fixed-point steps; stores every activation
  (the correctness reference).
- `MemoryMode.REVERSIBLE`: an autograd Function that keeps only the final state, the information
  buffer and the attention storage; backward reverses the sequence step by step (top layer first
  inside each step), re-runs each step's gradient and backpropagates it (see `backprop.py`).

The time loop is written once in each direction: `run_steps` (forward, chunk by chunk) and
`reverse_chunks` (reverse, last chunk first). Reference mode, reversible forward and backward,
the reversal checks (checks.py) and the encoder's stored states all run these two, so every
mode and every check sees the same chunking, masks and arithmetic: losses are bit-identical and
gradients agree to float rounding.

Inputs: floats (batch, T, input), or ids (batch, T) with an embedding (looked up again chunk by
chunk in reverse); masks (batch, T) bool, True on real steps (a prefix of each row). Steps run in chunks of `chunk_steps`: the first layer's input projections of a chunk are one
matrix product. A readout hook (a loss on the top states, see `read_chunk`) is summed over chunks
in forward time order; in reversible mode forward evaluates it without a graph for its value and
backward again, with gradients, while the chunk is reversed (so it must be deterministic).
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from nmt.reversible.accounting import count_memory
from nmt.reversible.backprop import run_reversible
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import CELLS, State, Values, float32_math
from nmt.reversible.checks import ReversalError
from nmt.reversible.fixed_point import from_fixed, straight_through, to_fixed
from nmt.reversible.layout import StateLayout
from nmt.reversible.plan import (DEFAULT_CHUNK_STEPS, InitialState, MemoryMode, Plan,
                                 ReversedChunk, SequenceOutput, StepInputs, StepResult,
                                 auto_chunk_steps, check_chunking, restored_slice, stored_slices,
                                 unique_trainable)
from nmt.reversible.readout import read_chunk
from nmt.reversible.step_kernels import (cell_reverse, cell_step, cell_tape, check_kernels,
                                         chunk_words, is_stack_buffer, make_buffer, use_triton)
from nmt.reversible.storage import AttentionStorage, StorageKind, rounded_projection
from nmt.reversible.validation import check_run

__all__ = ["MemoryMode", "ReversibleRNN", "SequenceOutput", "DEFAULT_CHUNK_STEPS"]


class ReversibleRNN(StateLayout, nn.Module):
    """A stack of RevGRU or RevLSTM cells run over sequences.

    Args:
        cell: "revgru" or "revlstm".
        input_size, hidden_size: features of the first layer's input and of every state (H >= 2).
        num_layers: stacked layers; layer l > 0 reads layer l-1's new state.
        max_forget_bits: k in {1, 2, 3, 5, None}.
        storage: optional AttentionStorage of the top layer (slice or proj).
        chunk_steps: steps per chunk (first-layer input projections and readouts are batched
            over a chunk; reversible backward holds one chunk's graph at a time), or "auto":
            per run, the largest chunk whose estimated tape and readout fit `chunk_bytes`
            (`auto_chunk_steps`).
        kernels ("auto", "triton" or "torch"), fused_activations, fused_products: what runs
            each step (step_kernels.py). readout_steps: steps read at once (None: a chunk).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, *, num_layers: int = 1,
                 max_forget_bits: Optional[int] = 3, storage: Optional[AttentionStorage] = None,
                 chunk_steps: Union[int, str] = DEFAULT_CHUNK_STEPS,
                 chunk_bytes: Optional[int] = None, kernels: str = "auto",
                 fused_activations: bool = False, fused_products: bool = False,
                 readout_steps: Optional[int] = None):
        super().__init__()
        self.kernels = check_kernels(kernels)
        self.fused_activations, self.fused_products = fused_activations, fused_products
        check_chunking(chunk_steps, chunk_bytes, readout_steps)
        self.chunk_steps, self.chunk_bytes, self.readout_steps = chunk_steps, chunk_bytes, readout_steps
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r} is not one of {', '.join(CELLS)}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.cell_name = cell
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.cells = nn.ModuleList([
            CELLS[cell](input_size if layer == 0 else hidden_size, hidden_size,
                        max_forget_bits=max_forget_bits)
            for layer in range(num_layers)])
        self.storage = storage
        if storage is not None:
            storage.check_fits(self.half_size)
        self.projection = (nn.Linear(hidden_size, storage.units)
                           if storage is not None and storage.kind is StorageKind.PROJ else None)

    @property
    def half_size(self) -> int:
        return (self.hidden_size + 1) // 2

    @property
    def state_parts(self) -> int:
        return self.cells[0].state_parts

    @property
    def stored_slice(self) -> int:
        """Units of the top layer's h1 kept out of the buffer (slice storage), else 0."""
        if self.storage is not None and self.storage.kind is StorageKind.SLICE:
            return self.storage.units
        return 0

    def new_buffer(self, batch: int, *, device=None, keep_words: bool = True,
                   device_offsets: Optional[bool] = None) -> InformationBuffer:
        """A buffer of shape (batch, ceil(H/2)) for both halves, h and c, and every layer: a
        StackBuffer where words are kept and `kernels` selects the fused kernels."""
        return make_buffer((batch, self.half_size), device=device, keep_words=keep_words,
                           device_offsets=device_offsets, activate=self.fused_activations,
                           products=self.fused_products,
                           fused=keep_words and use_triton(self.kernels, device))

    # -- one step of the whole stack ------------------------------------------------------------

    def step(self, x: Optional[Tensor], state: List[State], values: List[Values],
             buffer: Optional[InformationBuffer], mask: Optional[Tensor], *,
             next_state: Optional[List[State]] = None, tag: str = "",
             layer_dropout: Optional[Tensor] = None, projected: Optional[Tensor] = None,
             mask_stored: bool = True):
        """All layers at one step; returns (state, values, stored_t or None).

        x: the first layer's input (batch, input), or None when `projected` gives its
        `cells[0].project_input(x)` (computed for a chunk of steps at once).
        mask: (batch,) bool, True on real rows; None when every row is real.
        layer_dropout: (layers - 1, batch, H) masks multiplied into the input of layers 1.. .
        mask_stored=False: padding rows of stored_t not zeroed (the caller zeroes them later)."""
        new_state, new_values = [], []
        layer_input = x
        for layer, cell in enumerate(self.cells):
            top = layer == self.num_layers - 1
            if layer > 0 and layer_dropout is not None:
                layer_input = layer_input * layer_dropout[layer - 1]
            if layer > 0 or projected is None:
                projected = cell.project_input(layer_input)
            exact, floats = cell_step(
                cell, projected, state[layer], values[layer], buffer, mask,
                next_state=None if next_state is None else next_state[layer],
                stored_units=self.stored_slice if top else 0,
                precision=self.storage.precision if self.storage is not None else 32, tag=tag)
            new_state.append(exact)
            new_values.append(floats)
            if not top:
                layer_input = torch.cat(floats[:2], dim=-1)
        return new_state, new_values, self.stored_value(new_values[-1],
                                                        mask if mask_stored else None)

    def stored_value(self, top_values: Values, mask: Optional[Tensor]) -> Optional[Tensor]:
        """What the storage keeps of the top layer's new state (batch, units), zero on padding."""
        if self.storage is None:
            return None
        slicing = self.storage.kind is StorageKind.SLICE  # the slice is h1's first units
        return self.stored_from_top(top_values[0] if slicing else torch.cat(top_values[:2], dim=-1),
                                    mask)

    def stored_from_top(self, top: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        """The same from the top state [h1, h2] (..., H) (or h1 alone for a slice) and a mask
        (...) (None: every row real): (..., units), for one step or a chunk of steps."""
        if self.storage is None:
            return None
        if self.storage.kind is StorageKind.SLICE:
            value = top[..., : self.storage.units]
        else:
            with float32_math(top.device):
                value = rounded_projection(self.projection(top), self.storage.precision)
        return value if mask is None else torch.where(  # (None: every row real)
            mask.unsqueeze(-1), value, torch.zeros((), device=value.device))

    def reverse_step(self, x: Optional[Tensor], state: List[State], buffer: InformationBuffer,
                     mask: Optional[Tensor], *, restored: Optional[Tensor] = None,
                     layer_dropout: Optional[Tensor] = None,
                     projected: Optional[Tensor] = None,
                     tape: Optional[list] = None, keep=None) -> List[State]:
        """Undo `step` exactly, top layer first; `restored` (batch, k) int64: the previous slice.
        x / projected: as for `step` (the same values it was given). With a `tape` (list), also
        records per layer, top first, (layer, its input or None for layer 0, the cell's tape)
        for `backward_step`."""
        with torch.no_grad():
            below = [from_fixed(torch.cat(state[layer][:2], dim=-1))
                     for layer in range(self.num_layers - 1)]
            if layer_dropout is not None:
                below = [value * drop for value, drop in zip(below, layer_dropout)]
            previous = list(state)
            for layer in reversed(range(self.num_layers)):
                top = layer == self.num_layers - 1
                if layer > 0:
                    layer_projected = self.cells[layer].project_input(below[layer - 1])
                else:
                    layer_projected = self.cells[0].project_input(x) if projected is None else projected
                cell_tape = None if tape is None else []
                previous[layer] = (keep or cell_reverse)(
                    self.cells[layer], layer_projected, state[layer], buffer, mask,
                    restored=restored if top else None, tape=cell_tape)
                if tape is not None:
                    tape.append((layer, below[layer - 1] if layer > 0 else None, cell_tape))
        return previous

    def recompute_tape(self, before: List[State], after: List[State], projected: Tensor, *,
                       layer_dropout: Optional[Tensor] = None, buffer=None) -> list:
        """The tape `reverse_step(..., tape=[])` records for the step from `before` to `after`
        (exact states per layer; projected: the first layer's projected input of the step),
        recomputed without the buffer: the same values bit for bit (in the format of `buffer`'s
        kernels, see step_kernels.py; its words are not read)."""
        tape = []
        with torch.no_grad():
            below = [from_fixed(torch.cat(after[layer][:2], dim=-1))
                     for layer in range(self.num_layers - 1)]
            if layer_dropout is not None:
                below = [value * drop for value, drop in zip(below, layer_dropout)]
            for layer in reversed(range(self.num_layers)):
                cell = self.cells[layer]
                layer_projected = cell.project_input(below[layer - 1]) if layer > 0 else projected
                tape.append((layer, below[layer - 1] if layer > 0 else None,
                             cell_tape(cell, layer_projected, before[layer], after[layer],
                                       buffer=buffer)))
        return tape

    # -- the time loop: one forward iterator, one reverse iterator --------------------------------

    def run_steps(self, plan: Plan, state: List[State], values: List[Values], *,
                  extras: Optional[Sequence[Tensor]] = None,
                  mask_stored: bool = True) -> Iterator[StepResult]:
        """Run every step of `plan`, chunk by chunk, yielding after each (see StepResult).

        The first layer's input projections of a chunk are one product. With `extras` (a
        sequence, possibly empty) and a readout in the plan, the last step of each readout block
        (plan.readout_stops) also carries its readout. Differentiable when grad is on."""
        reading = extras is not None and plan.readout is not None
        for start, stop in plan.chunks():
            if is_stack_buffer(plan.buffer):  # room for the chunk's words: no read inside it
                plan.buffer.prepare(chunk_words(self, plan.mask.shape[0], stop - start))
            x, _ = plan.inputs.chunk(start, stop)
            projected = plan.project(self.cells[0], x).unbind(1)
            tops, stops = [], plan.readout_stops(start, stop)
            for i, t in enumerate(range(start, stop)):
                state, values, stored = self.step(None, state, values, plan.buffer,
                                                  plan.step_mask(t), tag=plan.tag,
                                                  layer_dropout=plan.layer_dropout,
                                                  projected=projected[i],
                                                  mask_stored=mask_stored)
                total = None
                if reading:
                    tops.append(torch.cat(values[-1][:2], dim=-1))
                    if t + 1 in stops:
                        total, tops = read_chunk(plan.readout, tops, t + 1 - len(tops), extras), []
                yield StepResult(t, state, values, stored, total)

    def reverse_chunks(self, plan: Plan, state: List[State], *, initial_state: List[State],
                       stored: Optional[Tensor] = None, tapes: bool = False,
                       grad: bool = False) -> Iterator[ReversedChunk]:
        """Undo every step of a `run_steps` run of `plan` from its final exact `state`, last
        chunk first, yielding each chunk once reversed (see ReversedChunk).

        initial_state: the run's exact initial state and stored: its (batch, T, k) storage (the
        stored slice units are restored from them). tapes: record what each step's gradient
        needs; grad: the chunk's inputs `x` with a graph back to a grad leaf `x_leaf` (the
        same values; the projection is values only: backward rebuilds its graph from `x`). A
        failing step raises ReversalError naming the run and step."""
        keep = grad and not tapes and self.num_layers == 1 and self.cells[0].keeping(plan.buffer)
        for start, stop in reversed(plan.chunks()):
            with torch.set_grad_enabled(grad):
                x, x_leaf = plan.inputs.chunk(start, stop, leaf=grad)
            states, chunk_tapes = [state], []
            with torch.no_grad():  # values: a graph would hold the stacked input weight
                projected = plan.project(self.cells[0], x)  # (batch, C, P)
                steps = projected.unbind(1)
                kept = stored_slices(self.stored_slice, start, stop, stored)
                for t in reversed(range(start, stop)):
                    tape = [] if tapes else None
                    try:
                        state = self.reverse_step(
                            None, state, plan.buffer, plan.step_mask(t), keep=keep,
                            restored=restored_slice(self.stored_slice, t, start, kept,
                                                    initial_state),
                            layer_dropout=plan.layer_dropout, projected=steps[t - start], tape=tape)
                    except RuntimeError as error:  # e.g. more words popped than pushed
                        failure = ReversalError(f"reversing {plan.tag or 'the run'} failed at "
                                                f"step {t}: {error}")
                        failure.restored = list(zip(range(stop - 1, t, -1), states[1:]))
                        raise failure from error
                    states.append(state)
                    chunk_tapes.append(tape)
            # handed over, not kept here: the caller may drop the chunk's graph while it works
            chunk_tapes = (self.cells[0].kept_tapes(projected, states[::-1]) if keep  # (gate
                           else chunk_tapes[::-1])  # activations the reversal left in projected)
            chunk = [ReversedChunk(start, stop, states[::-1],
                                   chunk_tapes if tapes or keep else None, projected, x_leaf, x)]
            del projected, x_leaf, x, steps, kept, states, chunk_tapes
            yield chunk.pop()

    # -- whole sequences ------------------------------------------------------------------------

    def chunk_steps_for(self, batch: int, steps: int, readout: Optional[Callable] = None) -> int:
        """The chunk length of a run over (batch, steps): the fixed setting, or under "auto" the
        largest that `auto_chunk_steps` estimates to fit `chunk_bytes`."""
        if self.chunk_steps != "auto":
            return self.chunk_steps
        return auto_chunk_steps(self.chunk_bytes, batch=batch, steps=steps,
                                hidden=self.hidden_size, layers=self.num_layers,
                                readout_row_bytes=getattr(readout, "row_bytes", 0))

    def plan(self, inputs: Tensor, mask: Tensor, *, buffer: InformationBuffer,
             embedding: Optional[nn.Module] = None, input_dropout: Optional[Tensor] = None,
             layer_dropout: Optional[Tensor] = None, readout: Optional[Callable] = None,
             num_extras: int = 0, tag: str = "") -> Plan:
        """The Plan of a run over (batch, T, input) floats or (batch, T) ids with `embedding`."""
        readout_params = list(readout.parameters()) if isinstance(readout, nn.Module) else []
        return Plan(inputs=StepInputs(inputs, embedding, input_dropout), mask=mask, buffer=buffer,
                    tag=tag, readout=readout, num_extras=num_extras, layer_dropout=layer_dropout,
                    chunk_steps=self.chunk_steps_for(mask.shape[0], mask.shape[1], readout),
                    readout_steps=self.readout_steps,
                    parameters=unique_trainable(list(self.parameters()) + readout_params
                                       + (list(embedding.parameters()) if embedding else [])))

    def forward(self, inputs: Tensor, mask: Optional[Tensor] = None, *,
                mode: MemoryMode = MemoryMode.REVERSIBLE,
                initial_state: Optional[InitialState] = None,
                buffer: Optional[InformationBuffer] = None,
                embedding: Optional[nn.Module] = None, input_dropout: Optional[Tensor] = None,
                layer_dropout: Optional[Tensor] = None,
                readout: Optional[Callable] = None, readout_extras: Sequence[Tensor] = (),
                tag: str = "", outputs: bool = False) -> SequenceOutput:
        """Run the stack over (batch, T, input) floats or (batch, T) ids (with `embedding`).

        readout: a loss on the top layer's states (see `read_chunk`): fn(h_t (batch, H) float, t,
            *readout_extras) -> scalar, or with `reads_chunks = True` fn(h (batch, C, H), start,
            *readout_extras) for C steps at once; if it is an nn.Module its parameters get
            gradients; a plain function must receive trainable tensors through `readout_extras`.
            Reversible mode evaluates it once per chunk, with gradient, while the chunk is
            reversed in backward (so `readout` of the result is known after backward).
        input_dropout: (batch, input) mask for the first layer's input, fixed for the sequence;
        layer_dropout: (layers - 1, batch, H) masks for the inputs of the layers above.
        buffer: shared with other runs of the same batch, or None for a fresh one.
        outputs: also return every top-layer state (reference mode only: it stores them).

        Under torch.no_grad() nothing will be reversed, so the reversible mode just runs the
        steps (same values; a fresh buffer then drops its words).
        """
        mask = check_run(self, inputs, mask, mode=mode, initial_state=initial_state,
                         buffer=buffer, embedding=embedding, input_dropout=input_dropout,
                         layer_dropout=layer_dropout, readout=readout, readout_extras=readout_extras)
        batch = inputs.shape[0]
        reversing = mode is MemoryMode.REVERSIBLE and torch.is_grad_enabled()
        if outputs and reversing:
            raise ValueError("outputs=True stores every state: only in MemoryMode.REFERENCE")
        if buffer is None:
            buffer = self.new_buffer(batch, device=inputs.device, keep_words=reversing)
        plan = self.plan(inputs, mask, buffer=buffer, embedding=embedding,
                         input_dropout=input_dropout, layer_dropout=layer_dropout,
                         readout=readout, num_extras=len(readout_extras), tag=tag)
        initial = self.initial_halves(initial_state, batch, inputs.device)
        if reversing:
            run = run_reversible(self, plan, initial, readout_extras)
            return SequenceOutput(final=self.join(run.final_values), final_state=run.final_state,
                                  stored=run.stored, readout=run.total, buffer=buffer,
                                  memory=count_memory(self, mask, buffer, tag=tag),
                                  kept_bytes=run.kept_bytes, pending=run.pending)
        final_state, final_values, stored, total, tops = self._run_reference(
            plan, initial, readout_extras, outputs=outputs)
        return SequenceOutput(final=self.join(final_values), final_state=final_state,
                              stored=stored, readout=total, buffer=buffer,
                              memory=count_memory(self, mask, buffer, tag=tag), outputs=tops)

    def _run_reference(self, plan: Plan, initial: List[Values], extras: Sequence[Tensor], *,
                       outputs: bool = False):
        state = [tuple(to_fixed(part) for part in layer) for layer in initial]
        values = [tuple(straight_through(part, from_fixed(exact)) for part, exact in zip(layer, ex))
                  for layer, ex in zip(initial, state)]
        stored, losses, tops = [], [], []
        for step in self.run_steps(plan, state, values, extras=extras):
            state, values = step.state, step.values
            stored.append(step.stored)
            if step.readout is not None:
                losses.append(step.readout)
            if outputs:
                top = torch.cat(values[-1][:2], dim=-1)
                real = plan.mask[:, step.t].view(-1, 1)
                tops.append(torch.where(real, top, torch.zeros((), device=top.device)))
        stored = torch.stack(stored, dim=1) if self.storage is not None else None
        total = torch.stack(losses).sum() if plan.readout is not None else None
        return state, values, stored, total, torch.stack(tops, dim=1) if outputs else None

    # -- step by step (decoding) ----------------------------------------------------------------

    def inference_step(self, x: Tensor, state: List[State], buffer: InformationBuffer,
                       mask: Optional[Tensor] = None, *, tag: str = ""):
        """One step of the whole stack without gradient, e.g. for search.

        x: (batch, input); buffer: typically keep_words=False (rows reorder with
        buffer.reorder). Returns (state, top h (batch, H) float, stored (batch, units) or None):
        the arithmetic of the same step inside a full run, except that the input projection is
        one step's matrix product rather than a chunk's (bit-identical on one CPU thread, else
        possibly not in the last bit of a pre-activation)."""
        with torch.no_grad():
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, values, stored = self.step(x, state, values, buffer, mask, tag=tag)
        return state, torch.cat(values[-1][:2], dim=-1), stored

