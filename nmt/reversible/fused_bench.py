"""Time per time step of one reversible layer's training step: fused Triton path (plain and
activate), the tensor path, and cuDNN's GRU/LSTM (forward + backward), on one device.

    python -m nmt.reversible.fused_bench --cell revgru --hidden 300 --batch 64 --steps 50 --device cuda

Prints one JSON line. The reversible paths run forward (no graph), then per step, last first,
reverse with a tape and the hand-written backward step (weight gradients not accumulated: one
product per chunk, the same on every path). Under TRITON_INTERPRET=1 on a CPU the Triton times
are the interpreter's and mean nothing; the script then only checks that everything runs.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from nmt.reversible import fused
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import CELLS
from nmt.reversible.fixed_point import from_fixed


def _fused_training(cell, projected, masks, *, activate: bool):
    steps, batch = projected.shape[:2]
    stack = fused.word_stack_for(cell, batch, device=projected.device,
                                 capacity=steps * batch * cell.half_sizes[0] * cell.state_parts)
    state = cell.initial_state(batch, device=projected.device)
    state, values, _ = fused.run_fused_steps(cell, projected, state, stack, masks,
                                             activate=activate)
    fused.reverse_fused_steps(cell, projected, state, stack, masks, values=values,
                              grads=[torch.ones_like(v) for v in values], activate=activate)
    return stack


def _tensor_training(cell, projected, masks):
    steps, batch = projected.shape[:2]
    buffer = InformationBuffer((batch, cell.half_sizes[0]), device=projected.device)
    state = cell.initial_state(batch, device=projected.device)
    with torch.no_grad():
        for t in range(steps):
            state, values = cell.step(projected[t], state, tuple(from_fixed(p) for p in state),
                                      buffer, masks[t])
        grads = [torch.ones_like(v) for v in values]
        for t in reversed(range(steps)):
            tape: list = []
            state = cell.reverse(projected[t], state, buffer, masks[t], tape=tape)
            grads, _, _ = cell.backward_step(tape, grads, masks[t])
    return buffer


def _timed(run, device, repeats: int) -> float:
    run()  # warm-up (compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench(cell_name: str, hidden: int, batch: int, steps: int, device, repeats: int = 3) -> dict:
    device = torch.device(device)
    torch.manual_seed(0)
    cell = CELLS[cell_name](hidden, hidden).to(device)
    x = torch.randn(steps, batch, hidden, device=device)
    with torch.no_grad():
        projected = cell.project_input(x)
    masks = torch.ones(steps, batch, dtype=torch.bool, device=device)
    result = {"cell": cell_name, "hidden": hidden, "batch": batch, "steps": steps,
              "device": str(device)}
    for name, run in (
            ("fused_ms", lambda: _fused_training(cell, projected, masks, activate=False)),
            ("fused_activate_ms", lambda: _fused_training(cell, projected, masks, activate=True)),
            ("tensor_ms", lambda: _tensor_training(cell, projected, masks))):
        result[name] = 1000 * _timed(run, device, repeats) / steps
    baseline = (nn.GRU if cell_name == "revgru" else nn.LSTM)(hidden, hidden).to(device)

    def plain():
        out, _ = baseline(x)
        out.sum().backward()

    result["cudnn_ms" if device.type == "cuda" else "plain_rnn_ms"] = (
        1000 * _timed(plain, device, repeats) / steps)
    result["fused_initial"] = _fused_training(cell, projected, masks, activate=False).is_initial()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="revgru", choices=sorted(CELLS))
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.cell, args.hidden, args.batch, args.steps, args.device,
                           args.repeats)))


if __name__ == "__main__":
    main()
