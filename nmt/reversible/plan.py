"""What one run of a ReversibleRNN over a sequence needs besides its tensors (the memory mode,
the first layer's inputs chunk by chunk, the masks and the chunking every mode shares), and what
it returns: a SequenceOutput, and per step (forward) or chunk (reverse) of the time loop."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from nmt.reversible.accounting import MemoryAccount
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import State, Values
from nmt.reversible.fixed_point import to_fixed
from nmt.reversible.readout import PendingTotal
from nmt.reversible.stack_buffer import is_stack_buffer

DEFAULT_CHUNK_STEPS = 4
InitialState = Union[Tensor, Tuple[Tensor, Tensor]]  # (layers, batch, H); (h, c) for RevLSTM


# bytes a step of a reversed chunk holds until the chunk's backward is done, per (batch row,
# state unit, layer): its exact int64 states, the recurrent weights' recorded (input, gradient)
# pairs and its projected-input gradient (one step's gate values are recomputed at a time).
# Measured (--at-peak, RevGRU, H 1024, 2 layers, 16-step chunk): ~37
TAPE_BYTES_PER_UNIT = 40


def step_bytes(*, batch: int, hidden: int, layers: int, readout_row_bytes: int = 0) -> int:
    """Estimated bytes one step adds to a reversed chunk's working set: what it holds until the
    chunk's backward is done (all layers) and its readout (e.g. log-probs of one token per row:
    4 x vocab)."""
    return batch * (TAPE_BYTES_PER_UNIT * hidden * layers + readout_row_bytes)


def check_chunking(chunk_steps, chunk_bytes: Optional[int], readout_steps: Optional[int]) -> None:
    """ValueError unless chunk_steps is a positive int (or "auto" with a positive chunk_bytes)
    and readout_steps None or a positive int."""
    if chunk_steps == "auto":
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_steps 'auto' needs a positive chunk_bytes, got {chunk_bytes!r}")
    elif isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise ValueError(f"chunk_steps must be a positive integer or 'auto', got {chunk_steps!r}")
    if readout_steps is not None and (isinstance(readout_steps, bool)
                                      or not isinstance(readout_steps, int) or readout_steps < 1):
        raise ValueError(f"readout_steps must be a positive integer or None, got {readout_steps!r}")


def auto_chunk_steps(budget_bytes: int, *, batch: int, steps: int, hidden: int, layers: int,
                     readout_row_bytes: int = 0) -> int:
    """The largest chunk (1 .. steps) whose estimated working set (`step_bytes` per step) fits
    `budget_bytes`; at least 1 step."""
    per_step = step_bytes(batch=batch, hidden=hidden, layers=layers,
                          readout_row_bytes=readout_row_bytes)
    return max(1, min(max(1, steps), budget_bytes // max(1, per_step)))


class MemoryMode(enum.Enum):
    """REFERENCE: plain autograd over the fixed-point steps (stores everything; the correctness
    reference). REVERSIBLE: keeps the final state, the buffer and the attention storage;
    backward reverses the run (see backprop.py)."""

    REFERENCE = "reference"
    REVERSIBLE = "reversible"


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
        looked-up embeddings, are cut from their graph as a grad leaf (backward then adds each
        chunk's table gradient into one running total, only the rows its ids touch; for an
        embedding module other than a plain nn.Embedding it runs the module once for all steps).
        Both give the same values."""
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
    """Everything one run needs besides its tensors (inputs only: results are returned)."""

    inputs: StepInputs
    mask: Tensor  # (batch, T) bool
    buffer: InformationBuffer
    tag: str = ""
    readout: Optional[Callable] = None
    num_extras: int = 0
    layer_dropout: Optional[Tensor] = None  # (layers - 1, batch, H) fixed masks between layers
    chunk_steps: int = DEFAULT_CHUNK_STEPS
    readout_steps: Optional[int] = None  # steps read at once (None: a whole chunk)
    parameters: List[Tensor] = field(default_factory=list)
    full_steps: int = field(init=False)
    step_masks: Tensor = field(init=False)  # (T, batch): each step's mask contiguous
    stacked_input: Optional[Tuple[Tensor, Tensor]] = field(default=None, init=False)  # `project`

    def __post_init__(self):
        self.full_steps = _leading_full_steps(self.mask)
        self.step_masks = self.mask.t().contiguous()  # one copy per run (the kernels need rows)

    @property
    def steps(self) -> int:
        return self.mask.shape[1]

    def step_mask(self, t: int) -> Optional[Tensor]:
        """The mask of step t for the cells, or None where every row is real (then the cells
        skip their padding selects, which on a CPU cost as much as the arithmetic they guard)."""
        return None if t < self.full_steps else self.step_masks[t]

    def project(self, cell, x: Tensor) -> Tensor:
        """cell.project_input(x) for a chunk; on the fused path (a StackBuffer, no graph) with the
        cell's stacked input weight made once per pass (backprop drops it after each), not per
        chunk: fewer launches, for one stacked weight live through the pass."""
        if not is_stack_buffer(self.buffer) or torch.is_grad_enabled():
            return cell.project_input(x)
        if self.stacked_input is None:
            self.stacked_input = cell.stacked_input()
        return cell.project_input(x, stacked=self.stacked_input)

    def chunks(self) -> List[Tuple[int, int]]:
        """[start, stop) ranges of at most `chunk_steps` steps, in forward order. Every mode and
        every check uses the same ranges, so the batched input projections agree bit for bit."""
        return [(start, min(start + self.chunk_steps, self.steps))
                for start in range(0, self.steps, self.chunk_steps)]

    def readout_stops(self, start: int, stop: int) -> List[int]:
        """The ends of the chunk [start, stop)'s readout blocks (of at most `readout_steps`
        steps), in forward order: forward and backward read the same blocks, so the readout
        total is summed alike in every mode."""
        size = self.readout_steps or (stop - start)
        return [min(first + size, stop) for first in range(start, stop, size)]

    def readout_blocks(self, start: int, stop: int) -> List[Tuple[int, int]]:
        """[first, last) of the chunk [start, stop)'s readout blocks, in forward order."""
        stops = self.readout_stops(start, stop)
        return list(zip([start] + stops[:-1], stops))


@dataclass
class SequenceOutput:
    """What a run returns.

    final: float (layers, batch, H), or (h, c) for RevLSTM; differentiable.
    final_state: the exact int64 state per layer (tuples of halves).
    stored: (batch, T, units) float32 attention storage (zero on padded steps), or None;
        differentiable like `final`.
    outputs: (batch, T, H) top-layer states (zero on padded steps), reference mode with
        `outputs=True` only, else None.
    readout: the summed readout (scalar), or None. In reversible mode, when anything is to be
        differentiated, the readout is evaluated during backward: `pending` then says whether
        backward has filled it in (read it after `backward()`; before, it holds NaN).
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
    outputs: Optional[Tensor] = None
    pending: Optional[PendingTotal] = None


class StepResult(NamedTuple):
    """One forward step of the stack (`run_steps`)."""

    t: int
    state: List[State]  # exact, after step t
    values: List[Values]  # float views of it (with gradients in reference mode)
    stored: Optional[Tensor]  # (batch, units): what the storage keeps of step t
    readout: Optional[Tensor]  # the readout of the block (readout_stops) t ends, else None


class ReversedChunk(NamedTuple):
    """One chunk of steps undone (`reverse_chunks`), in forward order."""

    start: int
    stop: int
    states: List[List[State]]  # exact state before each step start .. stop - 1, then after stop - 1
    tapes: Optional[list]  # per step, what its gradient needs (with tapes=True)
    projected: Tensor  # (batch, C, P) first-layer input projections (values, no graph)
    x_leaf: Optional[Tensor]  # the chunk's inputs as a grad leaf (with grad=True)
    inputs: Optional[Tensor] = None  # (batch, C, input): the x that `projected` was computed from

def _leading_full_steps(mask: Tensor) -> int:
    """How many first steps have every row real. Read on the host only on a CPU; elsewhere 0
    (the time loop must not wait for the device, and there a select is cheap)."""
    if mask.device.type != "cpu":
        return 0
    return int(mask.all(0).int().cumprod(0).sum())


def unique_trainable(tensors: List[Tensor]) -> List[Tensor]:
    """The tensors that require grad, each once, in order."""
    seen, out = set(), []
    for tensor in tensors:
        if id(tensor) not in seen and tensor.requires_grad:
            seen.add(id(tensor))
            out.append(tensor)
    return out


def stored_slices(units: int, start: int, stop: int, stored: Optional[Tensor]) -> Optional[Tensor]:
    """The exact slice units (`units` of the top h1, 0: none) stored after steps
    max(start - 1, 0) .. stop - 2 of storage (batch, T, units): one conversion per chunk."""
    if not units or stop == 1:
        return None
    return to_fixed(stored[:, max(start - 1, 0): stop - 1].float())


def restored_slice(units: int, t: int, start: int, kept: Optional[Tensor],
                   initial_state) -> Optional[Tensor]:
    """The exact slice units of the top h1 before step t of a chunk from `start` (`kept`: its
    `stored_slices`; step 0: the initial state's)."""
    if not units:
        return None
    if t == 0:
        return initial_state[-1][0][:, :units]
    return kept[:, t - 1 - max(start - 1, 0)]
