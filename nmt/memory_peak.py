"""The measured peak of a training step: live tensor bytes, device-independent.

`LiveBytes` is a `TorchDispatchMode`: every ATen operation run inside it (forward, the backward
that autograd runs for it, gradient clipping, the optimizer's update, factory functions such as
`torch.zeros`) passes through `__torch_dispatch__`, which looks at the storages of the
operation's outputs. A storage that is none of the inputs' storages and not already tracked was
created by that operation: it is tracked, with its `nbytes()`, until it is freed
(`weakref.finalize` on the storage's Python object, which torch keeps alive exactly as long as the
storage itself). So the tracker counts storages, not tensors: a view, `detach`, an in-place or
`out=` operation adds nothing; a `resize_` that grows a tracked storage updates its bytes.

What it does not see, and why that is small here:
- storages that existed when the mode was entered (parameters, optimizer state, the batch):
  they are the step's starting bytes; their release during the step is not subtracted either,
  so run `zero_grad(set_to_none=True)` before entering (then gradients are new in the step);
- memory allocated outside torch's dispatcher: the C kernels of the information buffer
  (`nmt/reversible/native.py`) write into tensors created with `torch.empty_like` / `torch.zeros`,
  which are seen; buffers that C code mallocs itself, or numpy arrays, are not (RevNMT has none);
- tensors without a plain storage (sparse, nested; RevNMT has none) are skipped;
- `torch.tensor(data)` builds its tensor below the dispatcher and then calls `aten.lift_fresh`:
  that operation's output is counted as new;
- allocator rounding and caching (on CUDA, blocks are rounded up to 512 bytes and a matmul may
  take a workspace): `torch.cuda.max_memory_allocated` is reported beside the tracker there.

`peak_step_bytes` = the most bytes of storages created during the step that were live at once
(the peak above the step's starting bytes).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_FRESH_OPS = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


class OverBudget(RuntimeError):
    """Raised inside a `LiveBytes(limit=...)` block when the live bytes pass the limit."""


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created inside the mode.

    Use as a context manager: `with LiveBytes() as live: ...; live.peak`. `current` is what is
    still live now, `peak` the most that was live at once, `allocated` the sum of every new
    storage's bytes. With `record=True` each new storage's size, dtype, shape and creating
    operation is kept (`live.at_peak()` lists what was live at the peak moment). With `limit`,
    the operation that takes the live bytes past it raises `OverBudget` (and `exceeded` is set:
    autograd may wrap the error when it happens in backward), so a search stops a step early.
    """

    def __init__(self, *, record: bool = False, limit: Optional[int] = None):
        super().__init__()
        self.limit = limit
        self.exceeded = False
        self.current = 0
        self.peak = 0
        self.allocated = 0
        self.storages = 0
        # storage key -> (bytes, finalizer that un-counts it when the storage is freed)
        self._live: Dict[int, Tuple[int, weakref.finalize]] = {}
        self._record = record
        self._origins: Dict[int, Tuple[str, str, tuple]] = {}  # key -> (op, dtype, shape)
        self._at_peak: List[Tuple[int, str, str, tuple]] = []
        self._closed = False

    # -- the dispatch hook ---------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        fresh = func in _FRESH_OPS
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                key = _key(tensor)
                if key is not None:
                    self._see(tensor, func, new=fresh or key not in inputs)
        return out

    def _see(self, tensor: torch.Tensor, func, *, new: bool) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        size = storage.nbytes()
        entry = self._live.get(key)
        if entry is not None:  # tracked already: a view or in-place result; a resize_ may grow it
            if size != entry[0]:
                self._change(size - entry[0])
                self._live[key] = (size, entry[1])
            return
        if not new or size == 0:
            return
        finalizer = weakref.finalize(storage, self._release, key)
        finalizer.atexit = False
        self._live[key] = (size, finalizer)
        self.allocated += size
        self.storages += 1
        if self._record:
            self._origins[key] = (str(func), str(tensor.dtype), tuple(tensor.shape))
        self._change(size)

    def _change(self, delta: int) -> None:
        self.current += delta
        if self.current > self.peak:
            self.peak = self.current
            if self._record:
                self._at_peak = [(self._live[k][0], *self._origins[k]) for k in self._live]
            if self.limit is not None and self.peak > self.limit and not self.exceeded:
                self.exceeded = True
                raise OverBudget(f"live bytes {self.peak} passed the limit {self.limit}")

    def _release(self, key: int) -> None:
        if self._closed:
            return
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
            self._origins.pop(key, None)

    # -- results -------------------------------------------------------------------------------

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._closed = True
        for _, finalizer in self._live.values():
            finalizer.detach()  # storages that outlive the mode no longer call back
        self._live.clear()
        return result

    def at_peak(self) -> List[dict]:
        """With record=True: the storages live at the peak moment, largest first."""
        rows = [{"bytes": size, "op": op, "dtype": dtype, "shape": list(shape)}
                for size, op, dtype, shape in self._at_peak]
        return sorted(rows, key=lambda row: -row["bytes"])


def _key(tensor: torch.Tensor) -> Optional[int]:
    """The storage's identity (its StorageImpl address, unique among live storages); None for
    a tensor without a plain storage (sparse, nested): such tensors are not counted."""
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: Dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values()
            if isinstance(value, torch.Tensor)]


def prime_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's lazily built state (Adam's moments) without a training step: one
    update from zero gradients (Adam's step is 0 / (0 + eps) = 0; SGD's is 0 without weight
    decay), then the gradients are dropped. What a step after the first one starts with."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class StepPeak:
    """One tracked training step.

    resident_bytes: what the step starts with (parameters, optimizer state, the batch: distinct
    storages); peak_step_bytes: the peak of the storages created in the step, above that start
    (activations, the reverse pass's working set, gradients, clipping and optimizer temporaries);
    peak_total_bytes = resident_bytes + peak_step_bytes: what a device must hold at the peak.
    """

    peak_step_bytes: int
    resident_bytes: int
    parameter_bytes: int
    optimizer_state_bytes: int
    batch_bytes: int
    allocated_bytes: int
    storages: int
    cuda_peak_step_bytes: Optional[int] = None
    at_peak: Optional[List[dict]] = None

    @property
    def peak_total_bytes(self) -> int:
        return self.resident_bytes + self.peak_step_bytes

    def to_dict(self) -> dict:
        result = {"peak_step_bytes": self.peak_step_bytes, "resident_bytes": self.resident_bytes,
                  "peak_total_bytes": self.peak_total_bytes,
                  "parameter_bytes": self.parameter_bytes,
                  "optimizer_state_bytes": self.optimizer_state_bytes,
                  "batch_bytes": self.batch_bytes, "allocated_bytes": self.allocated_bytes,
                  "storages": self.storages}
        if self.cuda_peak_step_bytes is not None:
            result["cuda_peak_step_bytes"] = self.cuda_peak_step_bytes
        return result


def training_step(model, optimizer: torch.optim.Optimizer, batch, *, label_smoothing: float = 0.0,
                  clip_grad_norm: float = 0.0) -> torch.Tensor:
    """One training step as `Trainer._update` runs it for one batch: forward, backward of the
    token-averaged loss, gradient clipping (when set), optimizer step. Gradients must be None on
    entry (zero_grad(set_to_none=True)). Returns the detached loss sum."""
    output = model.training_loss(batch, label_smoothing=label_smoothing)
    (output.loss / batch.num_tgt_tokens).backward()
    parameters = [p for p in model.parameters() if p.grad is not None]
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
    optimizer.step()
    return output.loss.detach()


def measure_step(model, optimizer: torch.optim.Optimizer, batch, *, label_smoothing: float = 0.0,
                 clip_grad_norm: float = 0.0, record: bool = False,
                 step: Optional[Callable] = None,
                 budget_bytes: Optional[int] = None) -> Optional[StepPeak]:
    """Track one training step of `model` on `batch` (see `training_step`).

    The optimizer's state must already exist (`prime_optimizer`, or any earlier step): it is
    part of the starting bytes. Gradients are dropped first, so they are counted in the step.
    On CUDA, `cuda_peak_step_bytes` = max_memory_allocated during the step minus the allocated
    bytes at its start.

    With `budget_bytes`, the step is stopped as soon as resident + live bytes pass it, and None
    is returned (the model and optimizer are then in an undefined state: use fresh ones)."""
    optimizer.zero_grad(set_to_none=True)
    parameters = list(model.parameters())
    state = optimizer_state_tensors(optimizer)
    batch_tensors = [value for value in vars(batch).values() if isinstance(value, torch.Tensor)]
    device = parameters[0].device if parameters else torch.device("cpu")
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    run = step or training_step
    parameter_bytes = storage_bytes(parameters)
    state_bytes = storage_bytes(state)
    batch_bytes = storage_bytes(batch_tensors)
    resident = storage_bytes(parameters + state + batch_tensors)
    limit = None if budget_bytes is None else budget_bytes - resident
    if limit is not None and limit < 0:
        return None
    live = LiveBytes(record=record, limit=limit)
    try:
        with live:
            run(model, optimizer, batch, label_smoothing=label_smoothing,
                clip_grad_norm=clip_grad_norm)
    except Exception:  # noqa: BLE001 - OverBudget, possibly wrapped by autograd
        if live.exceeded:
            optimizer.zero_grad(set_to_none=True)
            return None
        raise
    cuda_peak = None
    if cuda:
        torch.cuda.synchronize(device)
        cuda_peak = int(torch.cuda.max_memory_allocated(device) - start)
    optimizer.zero_grad(set_to_none=True)
    return StepPeak(peak_step_bytes=live.peak, resident_bytes=resident,
                    parameter_bytes=parameter_bytes, optimizer_state_bytes=state_bytes,
                    batch_bytes=batch_bytes, allocated_bytes=live.allocated,
                    storages=live.storages, cuda_peak_step_bytes=cuda_peak,
                    at_peak=live.at_peak() if record else None)
