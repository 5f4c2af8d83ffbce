"""Reversal benchmark: bit-exact reversal, gradient agreement, counted memory and speed of the reversible core.

Random data through both memory modes of one ReversibleRNN: whether reversing reproduces every
intermediate state and empties the buffer, whether the reversible loss equals the reference loss
bit for bit, the largest gradient difference, normal/used/optimal bits, and the median time of
forward + backward per mode with the ratio reversible / reference.
Exits 1 unless the reversal is exact, the losses are identical and the gradients agree
(|reversible - reference| <= GRAD_ATOL + GRAD_RTOL * |reference| for every element).
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from nmt.errors import UserError
from nmt.reversible.fixed_point import MAX_FORGET_CHOICES

GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6  # float rounding of the same sums in another order


def add_arguments(parser) -> None:
    parser.add_argument("--cell", choices=["revgru", "revlstm"], default="revgru")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--input-size", type=int, default=None, help="default: --hidden")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-forget-bits", default="3",
                        choices=["none" if k is None else str(k) for k in MAX_FORGET_CHOICES])
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--slice", type=int, metavar="K", help="store the first K units of h1")
    storage.add_argument("--proj", type=int, metavar="K", help="store a learned K-dim projection")
    parser.add_argument("--precision", type=int, choices=[32, 16], default=32,
                        help="bits per stored value")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from nmt.reversible import AttentionStorage, MemoryMode, ReversibleRNN
    from nmt.reversible.checks import check_reversal

    for name in ("layers", "hidden", "batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UserError(f"--device {args.device}: {error}".splitlines()[0]) from None
    torch.manual_seed(args.seed)
    max_forget_bits = None if args.max_forget_bits == "none" else int(args.max_forget_bits)
    input_size = args.input_size or args.hidden
    try:
        storage = None
        if args.slice is not None or args.proj is not None:
            kind, units = ("slice", args.slice) if args.slice is not None else ("proj", args.proj)
            storage = AttentionStorage(kind, units, args.precision)
        rnn = ReversibleRNN(args.cell, input_size, args.hidden, num_layers=args.layers,
                            max_forget_bits=max_forget_bits, storage=storage)
    except ValueError as error:
        raise UserError(str(error)) from None

    rnn.to(device)
    inputs = torch.randn(args.batch, args.steps, input_size, device=device)
    reversal = check_reversal(rnn, inputs, seed=args.seed)
    final_weight = torch.randn(args.layers, args.batch, args.hidden, device=device)
    stored_weight = (torch.randn(args.batch, args.steps, storage.units, device=device)
                     if storage else None)

    def forward_backward(mode):
        leaf = inputs.clone().requires_grad_()
        out = rnn(leaf, mode=mode)
        final = out.final if args.cell == "revgru" else out.final[0] + out.final[1]
        loss = (final * final_weight).sum()
        if out.stored is not None:
            loss = loss + (out.stored * stored_weight).sum()
        params = [leaf] + list(rnn.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), grads, out

    results, times = {}, {}
    for mode in MemoryMode:
        durations = []
        for _ in range(args.repeats):
            _synchronize(device)
            start = time.perf_counter()
            results[mode] = forward_backward(mode)
            _synchronize(device)
            durations.append(time.perf_counter() - start)
        times[mode] = statistics.median(durations)
    (ref_loss, ref_grads, _), (rev_loss, rev_grads, rev_out) = (
        results[MemoryMode.REFERENCE], results[MemoryMode.REVERSIBLE])
    abs_diff, rel_diff, grads_agree = 0.0, 0.0, True
    for a, b in zip(ref_grads, rev_grads):
        if a is None or b is None:
            grads_agree = grads_agree and a is None and b is None
            continue
        grads_agree = grads_agree and torch.allclose(b, a, rtol=GRAD_RTOL, atol=GRAD_ATOL)
        diff = (a - b).abs()
        abs_diff = max(abs_diff, float(diff.max()))
        rel_diff = max(rel_diff, float((diff / a.abs().clamp_min(1e-6)).max()))
    memory = rev_out.memory
    report = {
        "cell": args.cell, "layers": args.layers, "hidden": args.hidden, "batch": args.batch,
        "steps": args.steps, "max_forget_bits": args.max_forget_bits, "device": str(device),
        "storage": None if storage is None else f"{storage.kind.value} {storage.units}",
        "precision": args.precision,
        "reversal_exact": reversal.exact, "buffer_restored": reversal.buffer_initial,
        "loss_identical": bool(torch.equal(ref_loss, rev_loss)),
        "max_grad_abs_diff": abs_diff, "max_grad_rel_diff": rel_diff, "grads_agree": grads_agree,
        **{key: value for key, value in memory.as_dict().items()},
        "time_reference_s": times[MemoryMode.REFERENCE],
        "time_reversible_s": times[MemoryMode.REVERSIBLE],
        "time_ratio": times[MemoryMode.REVERSIBLE] / times[MemoryMode.REFERENCE],
    }
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    agree = reversal.exact and reversal.buffer_initial and report["loss_identical"]
    return 0 if agree and grads_agree else 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_report(report: dict) -> None:
    yes = {True: "yes", False: "NO"}
    storage = report["storage"] or "none"
    print(f"{report['cell']} layers={report['layers']} hidden={report['hidden']} "
          f"batch={report['batch']} steps={report['steps']} "
          f"max_forget_bits={report['max_forget_bits']} storage={storage} "
          f"precision={report['precision']} device={report['device']}")
    print(f"bit-exact reversal:       {yes[report['reversal_exact']]} "
          f"(buffer restored: {yes[report['buffer_restored']]})")
    print(f"loss bit-identical:       {yes[report['loss_identical']]}")
    print(f"gradients agree:          {yes[report['grads_agree']]} "
          f"(largest diff {report['max_grad_abs_diff']:.3g} abs, "
          f"{report['max_grad_rel_diff']:.3g} rel)")
    print(f"normal bits:              {report['normal_bits']}")
    print(f"used bits:                {report['used_bits']}  (normal/used {report['ratio_used']:.2f})")
    print(f"optimal bits:             {report['optimal_bits']:.0f}  "
          f"(normal/optimal {report['ratio_optimal']:.2f})")
    print(f"final state bits (kept):  {report['final_state_bits']}")
    print(f"forward+backward median:  reference {report['time_reference_s'] * 1e3:.1f} ms, "
          f"reversible {report['time_reversible_s'] * 1e3:.1f} ms "
          f"(ratio {report['time_ratio']:.2f})")
