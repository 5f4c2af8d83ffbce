"""A multi-layer reversible RNN over whole sequences, in two named memory modes.

- `MemoryMode.REFERENCE`: plain autograd over the fixed-point steps; stores every activation.
  The correctness reference.
- `MemoryMode.REVERSIBLE`: an autograd Function that keeps only the final state, the information
  buffer and the attention storage; backward reverses the sequence step by step (top layer first
  inside each step), re-runs each step with grad and backpropagates it (see `backprop.py`).

Both modes run the same steps, so losses are bit-identical and gradients agree to float rounding.
Inputs are floats (batch, T, input) or token ids (batch, T) with an embedding module, looked up
again step by step in reverse. Masks are (batch, T) bool, True on real steps (a prefix of each row).
Steps run in chunks of `chunk_steps`: the first layer's input projections of a chunk are one
matrix product. A readout hook (a loss on the top states, see `read_chunk`) is summed over chunks
in forward time order; in reversible mode forward evaluates it without a graph for its value and
backward again, with gradients, while the chunk is reversed (so it must be deterministic).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from nmt.reversible.accounting import MemoryAccount, count_memory
from nmt.reversible.backprop import run_reversible
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.readout import read_chunk
from nmt.reversible.cells import CELLS, State, Values, float32_math
from nmt.reversible.deferred import DeferredWeightGrads
from nmt.reversible.fixed_point import from_fixed, straight_through, to_fixed
from nmt.reversible.storage import AttentionStorage, StorageKind, rounded_projection
from nmt.reversible.validation import check_run

DEFAULT_CHUNK_STEPS = 16
InitialState = Union[Tensor, Tuple[Tensor, Tensor]]  # (layers, batch, H); (h, c) for RevLSTM


class MemoryMode(enum.Enum):
    REFERENCE = "reference"
    REVERSIBLE = "reversible"


@dataclass
class SequenceOutput:
    """What a run returns.

    final: float (layers, batch, H), or (h, c) for RevLSTM; differentiable.
    final_state: the exact int64 state per layer (tuples of halves).
    stored: (batch, T, units) float32 attention storage (zero on padded steps), or None;
        differentiable like `final`.
    readout: the summed readout (scalar), or None. In reversible mode, when anything is to be
        differentiated, the readout is evaluated during backward and this scalar is NaN until
        backward has filled it in: read it after `backward()`.
    memory: counted bits of this run (accounting.py; heads charged to this run: recount with
        count_memory(..., charge_head=False) for all but one run sharing a buffer).
    kept_bytes: measured bytes the reversible mode held once its forward recurrence was done
        ({"buffer", "stored", "state"}; the buffer's figure includes other runs sharing it);
        empty in reference mode.
    """

    final: InitialState
    final_state: List[State]
    stored: Optional[Tensor]
    readout: Optional[Tensor]
    buffer: InformationBuffer
    memory: MemoryAccount
    kept_bytes: dict = field(default_factory=dict)


class StepInputs:
    """The first layer's input over a range of steps: inputs[:, start:stop], or
    embedding(ids[:, start:stop]), times a fixed per-sequence dropout mask (batch, input) if given.
    Nothing (batch, T, input) is built: runs take one chunk of steps at a time."""

    def __init__(self, inputs: Tensor, embedding: Optional[nn.Module], dropout: Optional[Tensor]):
        self.inputs, self.embedding, self.dropout = inputs, embedding, dropout
        self.embedding_trainable = embedding is not None and any(
            p.requires_grad for p in embedding.parameters())

    def chunk(self, start: int, stop: int, *, leaf: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """(x (batch, stop - start, input), leaf): with leaf=True the float inputs, or the
        looked-up embeddings, are cut from their graph as a grad leaf (backward then runs the
        embedding once for all steps, instead of a dense embedding-table gradient per chunk)."""
        source = None
        if self.embedding is not None:
            if leaf:
                with torch.no_grad():
                    x = self.embedding(self.inputs[:, start:stop])
                x = source = x.requires_grad_(self.embedding_trainable)
            else:
                x = self.embedding(self.inputs[:, start:stop])
        else:
            x = self.inputs[:, start:stop]
            if leaf:
                x = source = x.detach().requires_grad_(self.inputs.requires_grad)
        if self.dropout is not None:
            x = x * self.dropout.unsqueeze(1)
        return x, source


@dataclass
class Plan:
    """Everything one run needs besides its tensors; shared with the reversible Function."""

    rnn: "ReversibleRNN"
    inputs: StepInputs
    mask: Tensor  # (batch, T) bool
    buffer: InformationBuffer
    tag: str
    readout: Optional[Callable] = None
    num_extras: int = 0
    layer_dropout: Optional[Tensor] = None  # (layers - 1, batch, H) fixed masks between layers
    chunk_steps: int = DEFAULT_CHUNK_STEPS
    parameters: List[Tensor] = field(default_factory=list)
    initial_state: Optional[List[State]] = None  # set by the reversible forward
    final_state: Optional[List[State]] = None
    kept_bytes: dict = field(default_factory=dict)
    _full_steps: Optional[int] = None

    @property
    def steps(self) -> int:
        return self.mask.shape[1]

    def step_mask(self, t: int) -> Optional[Tensor]:
        """The mask of step t for the cells, or None where every row is real (then the cells
        skip their padding selects, which on a CPU cost as much as the arithmetic they guard)."""
        if self._full_steps is None:
            self._full_steps = _leading_full_steps(self.mask)
        return None if t < self._full_steps else self.mask[:, t]

    def chunks(self) -> List[Tuple[int, int]]:
        """[start, stop) ranges of at most `chunk_steps` steps, in forward order. Every mode uses
        the same ranges, so the batched input projections agree bit for bit."""
        return [(start, min(start + self.chunk_steps, self.steps))
                for start in range(0, self.steps, self.chunk_steps)]


class ReversibleRNN(nn.Module):
    """A stack of RevGRU or RevLSTM cells run over sequences.

    Args:
        cell: "revgru" or "revlstm".
        input_size, hidden_size: features of the first layer's input and of every state (H >= 2).
        num_layers: stacked layers; layer l > 0 reads layer l-1's new state.
        max_forget_bits: k in {1, 2, 3, 5, None}.
        storage: optional AttentionStorage of the top layer (slice or proj).
        chunk_steps: steps per chunk (first-layer input projections and readouts are batched
            over a chunk; reversible backward holds one chunk's graph at a time).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, *, num_layers: int = 1,
                 max_forget_bits: Optional[int] = 3, storage: Optional[AttentionStorage] = None,
                 chunk_steps: int = DEFAULT_CHUNK_STEPS):
        super().__init__()
        if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a positive integer, got {chunk_steps!r}")
        self.chunk_steps = chunk_steps
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
        """A buffer of shape (batch, ceil(H/2)) for both halves, h and c, and every layer."""
        return InformationBuffer((batch, self.half_size), device=device, keep_words=keep_words,
                                 device_offsets=device_offsets)

    # -- one step of the whole stack ------------------------------------------------------------

    def step(self, x: Optional[Tensor], state: List[State], values: List[Values],
             buffer: Optional[InformationBuffer], mask: Optional[Tensor], *,
             next_state: Optional[List[State]] = None, tag: str = "",
             layer_dropout: Optional[Tensor] = None, projected: Optional[Tensor] = None):
        """All layers at one step; returns (state, values, stored_t or None).

        x: the first layer's input (batch, input), or None when `projected` gives its
        `cells[0].project_input(x)` (computed for a chunk of steps at once).
        mask: (batch,) bool, True on real rows; None when every row is real.
        layer_dropout: (layers - 1, batch, H) masks multiplied into the input of layers 1.. ."""
        new_state, new_values = [], []
        layer_input = x
        for layer, cell in enumerate(self.cells):
            top = layer == self.num_layers - 1
            if layer > 0 and layer_dropout is not None:
                layer_input = layer_input * layer_dropout[layer - 1]
            if layer > 0 or projected is None:
                projected = cell.project_input(layer_input)
            exact, floats = cell.step(
                projected, state[layer], values[layer], buffer, mask,
                next_state=None if next_state is None else next_state[layer],
                stored_units=self.stored_slice if top else 0,
                precision=self.storage.precision if self.storage is not None else 32, tag=tag)
            new_state.append(exact)
            new_values.append(floats)
            layer_input = torch.cat(floats[:2], dim=-1)
        return new_state, new_values, self.stored_value(new_values[-1], mask)

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
        if mask is None:  # every row real
            return value
        return torch.where(mask.unsqueeze(-1), value, torch.zeros((), device=value.device))

    def reverse_step(self, x: Optional[Tensor], state: List[State], buffer: InformationBuffer,
                     mask: Optional[Tensor], *, restored: Optional[Tensor] = None,
                     layer_dropout: Optional[Tensor] = None,
                     projected: Optional[Tensor] = None,
                     tape: Optional[list] = None) -> List[State]:
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
                previous[layer] = self.cells[layer].reverse(
                    layer_projected, state[layer], buffer, mask, restored=restored if top else None,
                    tape=cell_tape)
                if tape is not None:
                    tape.append((layer, below[layer - 1] if layer > 0 else None, cell_tape))
        return previous

    def backward_step(self, tape: list, grads: List[List[Tensor]], mask: Optional[Tensor], *,
                      layer_dropout: Optional[Tensor], weight_grads: DeferredWeightGrads,
                      bias_grads: list) -> Tuple[List[List[Tensor]], Tensor]:
        """The gradient of one `step` of the stack, by hand, from its reversal's `tape`.

        grads: per layer, d loss / d each float half after the step. Returns the same before the
        step and d loss / d the first layer's projected input (batch, P). Weight gradients are
        recorded in `weight_grads` (one product per chunk later); biases of layers above the first
        (whose inputs are projected per step) append (bias, gradient) to `bias_grads`."""
        grads = [list(layer_grads) for layer_grads in grads]
        first_projected = None
        with torch.no_grad():
            for layer, layer_input, cell_tape in tape:  # top layer first
                cell = self.cells[layer]
                grads[layer], d_projected, inputs = cell.backward_step(cell_tape, grads[layer], mask)
                pieces = cell.split_projection(d_projected)
                for linear, piece, own_input in zip(cell.input_layers(), pieces, inputs):
                    if layer == 0:  # x columns: by autograd, through the chunk's projection
                        weight_grads.record((linear, cell.input_size), own_input, piece)
                    else:
                        weight_grads.record((linear, 0), torch.cat([layer_input, own_input], -1), piece)
                        bias_grads.append((linear.bias, piece.sum(0)))
                if layer == 0:
                    first_projected = d_projected
                    continue
                d_input = d_projected.mm(cell.input_weight())
                if layer_dropout is not None:
                    d_input = d_input * layer_dropout[layer - 1]
                below, first_half = grads[layer - 1], self.cells[layer - 1].half_sizes[0]
                below[0] = below[0] + d_input[:, :first_half]
                below[1] = below[1] + d_input[:, first_half:]
        return grads, first_projected

    # -- whole sequences ------------------------------------------------------------------------

    def forward(self, inputs: Tensor, mask: Optional[Tensor] = None, *,
                mode: MemoryMode = MemoryMode.REVERSIBLE,
                initial_state: Optional[InitialState] = None,
                buffer: Optional[InformationBuffer] = None,
                embedding: Optional[nn.Module] = None, input_dropout: Optional[Tensor] = None,
                layer_dropout: Optional[Tensor] = None,
                readout: Optional[Callable] = None, readout_extras: Sequence[Tensor] = (),
                tag: str = "") -> SequenceOutput:
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

        Under torch.no_grad() nothing will be reversed, so the reversible mode just runs the
        steps (same values; a fresh buffer then drops its words).
        """
        mask = check_run(self, inputs, mask, mode=mode, initial_state=initial_state,
                         buffer=buffer, embedding=embedding, input_dropout=input_dropout,
                         layer_dropout=layer_dropout, readout=readout, readout_extras=readout_extras)
        batch = inputs.shape[0]
        reversing = mode is MemoryMode.REVERSIBLE and torch.is_grad_enabled()
        if buffer is None:
            buffer = self.new_buffer(batch, device=inputs.device, keep_words=reversing)
        readout_params = list(readout.parameters()) if isinstance(readout, nn.Module) else []
        plan = Plan(rnn=self, inputs=StepInputs(inputs, embedding, input_dropout), mask=mask,
                    buffer=buffer, tag=tag, readout=readout, num_extras=len(readout_extras),
                    layer_dropout=layer_dropout, chunk_steps=self.chunk_steps,
                    parameters=_unique(list(self.parameters()) + readout_params
                                       + (list(embedding.parameters()) if embedding else [])))
        initial = self.initial_halves(initial_state, batch, inputs.device)
        if reversing:
            final_state, final_values, stored, total = run_reversible(plan, initial, readout_extras)
        else:
            final_state, final_values, stored, total = self._run_reference(plan, initial, readout_extras)
        memory = count_memory(self, mask, buffer, tag=tag)
        return SequenceOutput(final=self.join(final_values), final_state=final_state,
                              stored=stored, readout=total, buffer=buffer, memory=memory,
                              kept_bytes=plan.kept_bytes)

    def _run_reference(self, plan: Plan, initial: List[Values], extras: Sequence[Tensor]):
        state = [tuple(to_fixed(part) for part in layer) for layer in initial]
        values = [tuple(straight_through(part, from_fixed(exact)) for part, exact in zip(layer, ex))
                  for layer, ex in zip(initial, state)]
        stored, losses = [], []
        for start, stop in plan.chunks():
            x, _ = plan.inputs.chunk(start, stop)
            projected = self.cells[0].project_input(x).unbind(1)
            tops = []
            for i, t in enumerate(range(start, stop)):
                state, values, stored_t = self.step(None, state, values, plan.buffer,
                                                    plan.step_mask(t), tag=plan.tag,
                                                    layer_dropout=plan.layer_dropout,
                                                    projected=projected[i])
                stored.append(stored_t)
                if plan.readout is not None:
                    tops.append(torch.cat(values[-1][:2], dim=-1))
            if plan.readout is not None:
                losses.append(read_chunk(plan.readout, tops, start, extras))
        stored = torch.stack(stored, dim=1) if self.storage is not None else None
        total = torch.stack(losses).sum() if plan.readout is not None else None
        return state, values, stored, total

    # -- step by step (decoding) ----------------------------------------------------------------

    def exact_state(self, initial_state: Optional[InitialState], batch: int,
                    device=None) -> List[State]:
        """The exact fixed-point state per layer for a float initial state (zeros when None)."""
        return [tuple(to_fixed(part) for part in layer)
                for layer in self.initial_halves(initial_state, batch, device)]

    def inference_step(self, x: Tensor, state: List[State], buffer: InformationBuffer,
                       mask: Optional[Tensor] = None, *, tag: str = ""):
        """One step of the whole stack without gradient, e.g. for search.

        x: (batch, input); buffer: typically keep_words=False (rows reorder with
        buffer.reorder). Returns (state, top h (batch, H) float, stored (batch, units) or None):
        the arithmetic of the same step inside a full run, except that the input projection is
        one step's matrix product rather than a chunk's; BLAS computes the rows of both alike on
        one CPU thread (then the results are bit-identical), elsewhere they may differ in the
        last bit of a pre-activation.
        """
        with torch.no_grad():
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, values, stored = self.step(x, state, values, buffer, mask, tag=tag)
        return state, torch.cat(values[-1][:2], dim=-1), stored

    # -- state layouts --------------------------------------------------------------------------

    def initial_halves(self, initial_state: Optional[InitialState], batch: int,
                       device) -> List[Values]:
        """Float halves per layer, (h1, h2[, c1, c2]) each (batch, half); zeros when None."""
        if initial_state is None:
            return [tuple(torch.zeros(batch, size, device=device)
                          for size in self.cells[0].half_sizes * (self.state_parts // 2))
                    for _ in range(self.num_layers)]
        tensors = initial_state if isinstance(initial_state, tuple) else (initial_state,)
        halves = []
        for layer in range(self.num_layers):
            parts = []
            for tensor in tensors:
                parts.extend(self.cells[layer].split(tensor[layer].float()))
            halves.append(tuple(parts))
        return halves

    def join(self, values: List[Values]) -> InitialState:
        """Per-layer float halves -> (layers, batch, H), or (h, c) for RevLSTM."""
        h = torch.stack([torch.cat(layer[:2], dim=-1) for layer in values])
        if self.state_parts == 2:
            return h
        return h, torch.stack([torch.cat(layer[2:], dim=-1) for layer in values])


def _leading_full_steps(mask: Tensor) -> int:
    """How many first steps have every row real. Read on the host only on a CPU; elsewhere 0
    (the time loop must not wait for the device, and there a select is cheap)."""
    if mask.device.type != "cpu":
        return 0
    return int(mask.all(0).int().cumprod(0).sum())


def _unique(tensors: List[Tensor]) -> List[Tensor]:
    seen, out = set(), []
    for tensor in tensors:
        if id(tensor) not in seen and tensor.requires_grad:
            seen.add(id(tensor))
            out.append(tensor)
    return out
