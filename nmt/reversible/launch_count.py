"""Counting what a time step launches: aten ops (by a dispatch mode) and Triton kernel launches.

`OpCounter` sees every aten op issued under it and sorts it into compute ops (each would launch a
device kernel), metadata ops (views and allocations: no kernel) and host synchronisations (ops
that read a device value on the host). Triton launches are counted by the launch wrappers
(`triton_kernels.LAUNCHES`); under the interpreter a launch's own host copies are hidden from
dispatch modes, as a GPU launch issues no aten op.

`count_fused_time_step` measures one time step of a training step of a reversible cell on the
fused path: the forward step (no gradient), then, as backward runs it, the reverse step with its
tape and the hand-written backward step.
"""
from __future__ import annotations

import collections
from typing import Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nmt.reversible import fused, triton_kernels

_METADATA = {
    "alias", "as_strided", "detach", "empty", "empty_like", "empty_strided", "expand",
    "new_empty", "new_empty_strided", "permute", "reshape", "select", "slice", "split",
    "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view",
    "_reshape_alias", "_unsafe_view", "unsafe_split", "unsafe_split_with_sizes",
}
_SYNC = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "equal",
         "masked_scatter", "masked_scatter_", "unique", "_unique2"}


class OpCounter(TorchDispatchMode):
    """Counts aten ops by kind; `sync` lists the host-synchronising ones seen (with a device-to-
    host copy counted as one)."""

    def __init__(self):
        super().__init__()
        self.ops: Dict[str, int] = collections.Counter()
        self.compute = 0
        self.metadata = 0
        self.sync: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops[str(func)] += 1
        if name in _METADATA:
            self.metadata += 1
        else:
            self.compute += 1
        if name in _SYNC or _device_to_host(name, args, kwargs) or _mask_index(name, args):
            self.sync.append(str(func))
        return func(*args, **kwargs)


def _mask_index(name: str, args) -> bool:
    """Indexing by a boolean mask (x[mask]): its output size is the mask's count, which the host
    must read (a nonzero inside the op, not dispatched on its own)."""
    if name not in ("index", "index_put", "index_put_", "_index_put_impl_") or len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in args[1] or ())


def _device_to_host(name: str, args, kwargs) -> bool:
    if name not in ("_to_copy", "copy_"):
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name == "copy_":  # copy_(destination, source)
        return (len(tensors) == 2 and tensors[0].device.type == "cpu"
                and tensors[1].device.type != "cpu")
    target = kwargs.get("device")
    return (bool(tensors) and tensors[0].device.type != "cpu" and target is not None
            and torch.device(target).type == "cpu")


def count_fused_time_step(cell, batch: int, *, stored_units: int = 0, steps: int = 2,
                          device=None, activate: bool = False) -> Dict[str, object]:
    """Per time step of a training step on the fused path (averaged over `steps`): aten compute
    ops, metadata ops and Triton launches of the forward, reverse and backward steps, and any host
    synchronisation seen. The loop keeps float views and masks between steps, as a run loop
    would; the weight gradients (one product per chunk of steps) are not counted."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.randn(steps, batch, cell.input_size, generator=generator).to(device)
        projected = cell.project_input(x)
    masks = torch.ones(steps, batch, dtype=torch.bool, device=device).view(torch.uint8)
    stack = fused.word_stack_for(cell, batch, device=device,
                                 capacity=steps * batch * cell.half_sizes[0] * cell.state_parts)
    state = cell.initial_state(batch, device=device)
    values = tuple(torch.zeros(part.shape, device=device) for part in state)
    phases = {}

    def measure(phase, run):
        counter = OpCounter()
        launches = triton_kernels.LAUNCHES[0]
        with counter:
            result = run()
        totals = phases.setdefault(phase, collections.Counter())
        totals["compute"] += counter.compute
        totals["metadata"] += counter.metadata
        totals["kernels"] += triton_kernels.LAUNCHES[0] - launches
        totals["sync"] += len(counter.sync)
        return result

    state, values, kept = fused.run_fused_steps(
        cell, projected, state, stack, masks, values=values, stored_units=stored_units,
        activate=activate, phase=measure)
    fused.reverse_fused_steps(cell, projected, state, stack, masks, kept=kept, values=values,
                              grads=tuple(torch.ones_like(v) for v in values), activate=activate,
                              phase=measure)
    result: Dict[str, object] = {
        phase: {key: value / steps for key, value in totals.items()}
        for phase, totals in phases.items()}
    launches = sum(totals["compute"] + totals["kernels"] for totals in phases.values()) / steps
    result["launches_per_time_step"] = launches
    result["sync_per_time_step"] = sum(totals["sync"] for totals in phases.values()) / steps
    result["buffer_initial"] = stack.is_initial()
    return result


def main(argv: Optional[list] = None) -> None:
    """python -m nmt.reversible.launch_count [revgru|revlstm] [hidden] [batch] [stored]
    [activate]: one JSON line (run under TRITON_INTERPRET=1 on a CPU)."""
    import json
    import sys

    from nmt.reversible.cells import CELLS

    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0] if args else "revgru"
    hidden, batch, stored = (int(a) for a in (args[1:4] + ["300", "64", "20"][len(args[1:4]):]))
    activate = len(args) > 4 and args[4] in ("1", "activate", "true")
    cell = CELLS[name](hidden, hidden)
    print(json.dumps({"cell": name, "hidden": hidden, "batch": batch, "stored_units": stored,
                      "activate": activate,
                      **count_fused_time_step(cell, batch, stored_units=stored,
                                              activate=activate)}))


if __name__ == "__main__":
    main()
