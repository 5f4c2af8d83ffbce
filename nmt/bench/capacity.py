"""Capacity: the largest batch (or sentence length) whose training step fits a memory budget.

`nmt bench capacity --config C [--vs B] --budget-mib M --vary batch|length [--length L]
[--batch N] [--set KEY=VALUE ...] [--json]` searches, for three ways to train one model size:
- reversible: the model of C (RevGRU/RevLSTM cells);
- plain: the model of B, or by default C with its cells switched to GRU/LSTM and everything else
  kept (the same-size plain model of `nmt bench memory`);
- checkpointed: that plain model with torch.utils.checkpoint over ~sqrt(T)-step segments.
Each probe is one full training step (forward, backward, gradient clipping, the config's
optimizer step) on a fresh model whose optimizer state already exists (Adam's moments are
created by a zero-gradient update first), tracked by the live-bytes dispatch mode of
nmt/memory_peak.py. A step fits when its peak_total_bytes = resident_bytes (parameters, optimizer
state, the batch) + peak_step_bytes (the most bytes created during the step live at once:
activations, the reverse pass's working set, gradients, optimizer temporaries) is at most
M MiB: the whole training memory of the step, not only its activations. Allocator rounding,
fragmentation and CUDA's context and workspaces are not in it.

Batches are synthetic: every source and target has exactly L subwords (EOS included; random ids
in the config's vocabulary, no data or tokenizer needed). --vary batch searches the number of
sentences at --length L (default 30); --vary length searches L at --batch N sentences (default
64, the paper's batch). The search starts at 1 (batch) or 2 (length), jumps to where the line
through the last two fitting probes meets the budget (doubling before it has two), then closes
the bracket (by the line, then by bisection); a probe stops as soon as it passes the budget.
Reported per way: the largest fitting value, its measured figures, and the first value over budget (= largest + 1 after a
bisection). `--set` applies to both configs, as in `nmt bench speed`.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Dict, Optional

import torch

from nmt.arguments import add_set_argument, describe
from nmt.bench.common import bench_device, format_bytes, positive
from nmt.bench.memory import TO_PLAIN, plain_model_config
from nmt.bench.peak import synthetic_step_peak
from nmt.config import load_config
from nmt.errors import UserError
from nmt.models.build import build_model
from nmt.models.checkpointed import CheckpointedSeq2Seq

WAYS = ("reversible", "plain", "checkpointed")
MIB = 1 << 20
BUDGET_FIGURE = ("peak_total_bytes = resident_bytes (parameters, optimizer state, batch) + "
                 "peak_step_bytes (peak of the storages created during the step)")


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--config", required=True, help="YAML config of a reversible model")
    parser.add_argument("--vs", metavar="CONFIG",
                        help="config of the plain model (default: --config with GRU/LSTM cells)")
    add_set_argument(parser, applies_to="both configs")
    parser.add_argument("--budget-mib", type=float, required=True,
                        help="memory budget in MiB for a whole training step")
    parser.add_argument("--vary", choices=("batch", "length"), default="batch",
                        help="search the batch (sentences) or the sentence length (default batch)")
    parser.add_argument("--length", type=int, default=30,
                        help="subwords per source and target sentence with --vary batch "
                             "(default 30)")
    parser.add_argument("--batch", type=int, default=64,
                        help="sentences per batch with --vary length (default 64)")
    parser.add_argument("--max-value", type=int, default=1 << 16,
                        help="search no further than this (default 65536)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true",
                        help="do not print each probe to stderr as it finishes")


def run(args) -> int:
    if args.budget_mib <= 0:
        raise UserError(f"--budget-mib must be positive, got {args.budget_mib}")
    positive(args.batch, "--batch")
    positive(args.max_value, "--max-value")
    if args.length < 2:
        raise UserError(f"--length must be at least 2, got {args.length}")
    device = bench_device(args.device)
    config = load_config(args.config, args.set)
    cells = (config.model.encoder.cell, config.model.decoder.cell)
    if any(cell not in TO_PLAIN for cell in cells):
        raise UserError(f"{args.config}: model.encoder.cell and model.decoder.cell must be revgru "
                        f"or revlstm for a capacity comparison (got {cells[0]}, {cells[1]})")
    plain_config = load_config(args.vs, args.set) if args.vs else None
    plain_model = plain_config.model if plain_config else plain_model_config(config.model)
    plain_train = plain_config.train if plain_config else config.train
    vocab = config.data.tokenizer.vocab_size
    budget = int(args.budget_mib * MIB)
    builders = way_builders(config.model, plain_model, vocab, device=device, seed=args.seed)
    trains = {"reversible": config.train, "plain": plain_train, "checkpointed": plain_train}
    report = {"config": str(args.config), "vs": args.vs, "device": str(device),
              "budget_mib": args.budget_mib, "budget_bytes": budget, "vary": args.vary,
              "budget_figure": BUDGET_FIGURE, "vocab": vocab}
    if args.vary == "batch":
        report["length"] = args.length
    else:
        report["batch"] = args.batch
    key = "max_batch" if args.vary == "batch" else "max_length"
    for name in WAYS:
        build = builders[name]
        if build is None:
            report[name] = None
            continue

        def probe(value: int, build=build, train=trains[name], name=name):
            batch, length = (value, args.length) if args.vary == "batch" else (args.batch, value)
            started = time.perf_counter()
            result = probe_step(build, train, batch=batch, length=length, vocab=vocab,
                                budget=budget, device=device, seed=args.seed)
            if not args.quiet:
                verdict = (f"fits, {format_bytes(result['peak_total_bytes'])}" if result
                           else "over budget")
                print(f"{name}: {args.vary} {value}: {verdict} "
                      f"({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
            return result

        start = time.perf_counter()
        found = search(probe, first=1 if args.vary == "batch" else 2, cap=args.max_value,
                       budget=budget)
        found["seconds"] = round(time.perf_counter() - start, 2)
        report[name] = {key: found.pop("value"), **found}
    for name in ("plain", "checkpointed"):
        theirs = (report.get(name) or {}).get(key)
        report[f"reversible_vs_{name}"] = (report["reversible"][key] / theirs if theirs else None)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


def way_builders(reversible_cfg, plain_cfg, vocab: int, *, device: torch.device,
                 seed: int) -> Dict[str, Optional[Callable]]:
    """name -> function building a fresh model of that way (None: the way does not apply)."""

    def build(cfg):
        torch.manual_seed(seed)
        return build_model(cfg, vocab, vocab).to(device).train()

    builders = {"reversible": lambda: build(reversible_cfg), "plain": lambda: build(plain_cfg),
                "checkpointed": lambda: CheckpointedSeq2Seq.sharing(build(plain_cfg)).train()}
    try:
        builders["checkpointed"]()
    except ValueError:  # a bidirectional encoder cannot be checkpointed over time
        builders["checkpointed"] = None
    return builders


def probe_step(build: Callable, train_cfg, *, batch: int, length: int, vocab: int, budget: int,
               device: torch.device, seed: int) -> Optional[dict]:
    """One tracked training step of a fresh model at (batch, length): its figures, or None when
    it passes `budget` bytes (resident + step peak)."""

    return synthetic_step_peak(build, train_cfg, batch=batch, length=length, vocab=vocab,
                               device=device, seed=seed, budget=budget)


def search(probe: Callable[[int], Optional[dict]], *, first: int, cap: int,
           budget: Optional[int] = None) -> dict:
    """The largest value v >= first with probe(v) not None (a fit is assumed monotone in v).

    Without `budget`: doubling, then bisection. With it, the next value is where the line through
    the last two fitting probes' peak_total_bytes meets the budget (a step's peak is close to
    affine in the batch; at most MAX_JUMP times the largest fit while no probe is over) when that
    lies inside the bracket, else doubling or bisection; after INTERPOLATED_PROBES guesses inside
    a bracket it only bisects, so a poor line costs probes, never the result: the search ends
    only on a fitting value next to one over budget (or at the cap). Returns value (first - 1 if even
    `first` does not fit), its figures, the first value over budget (None when the cap was
    reached) and every probe made."""
    probes, fitted = [], []
    low, high, best, guesses = first - 1, None, None, 0
    value = first
    while True:
        result = probe(value)
        probes.append({"value": value, "fits": result is not None,
                       "peak_total_bytes": result["peak_total_bytes"] if result else None})
        if result is None:
            high = value
        else:
            low, best = value, result
            fitted.append((value, result["peak_total_bytes"]))
        if (high is not None and high - low <= 1) or (high is None and low >= cap):
            break
        value = min(cap, 2 * low) if high is None else (low + high) // 2
        guess = _line_guess(fitted, budget) if guesses < INTERPOLATED_PROBES else None
        if guess == low:  # the line puts the edge right here: try the neighbour
            guess += 1
        if guess is not None and high is None:  # an overshoot is a costly probe: at most 8x
            guess = min(guess, MAX_JUMP * low)
        if guess is not None and low < guess < (high or cap + 1):  # else halve: the line is off
            value, guesses = guess, guesses + (high is not None)  # (on the edge it would creep)
        value = max(low + 1, value)
    return {"value": low, "at_max": best, "first_over": high, "probes": probes}


INTERPOLATED_PROBES = 4
MAX_JUMP = 8  # the largest step up, as a multiple of the largest fit, before a probe is over


def _line_guess(fitted: list, budget: Optional[int]) -> Optional[int]:
    """Where the line through the last two fits reaches `budget` (None without one or a slope)."""
    if budget is None or len(fitted) < 2:
        return None
    (v1, p1), (v2, p2) = fitted[-2:]
    if p2 <= p1:
        return None
    return v2 + int((budget - p2) * (v2 - v1) // (p2 - p1))


def print_table(report: dict) -> None:
    vary = report["vary"]
    fixed = (f"sentences of {report['length']} subwords" if vary == "batch"
             else f"batches of {report['batch']} sentences")
    key = "max_batch" if vary == "batch" else "max_length"
    print(f"{report['config']}: largest {vary} whose training step fits "
          f"{report['budget_mib']:g} MiB ({fixed}, synthetic, {report['device']})")
    print(f"  budget compared with {report['budget_figure']}")
    print(f"  {'way':<13} {key:>10} {'first over':>10} {'peak_step':>11} {'resident':>10} "
          f"{'peak_total':>11} {'probes':>6} {'s':>7}")
    for name in WAYS:
        row = report[name]
        if row is None:
            print(f"  {name:<13} {'-':>10}  (a bidirectional encoder is not checkpointed)")
            continue
        figures = row["at_max"] or {}
        print(f"  {name:<13} {row[key]:>10} {str(row['first_over'] or '-'):>10} "
              f"{format_bytes(figures.get('peak_step_bytes')):>11} "
              f"{format_bytes(figures.get('resident_bytes')):>10} "
              f"{format_bytes(figures.get('peak_total_bytes')):>11} {len(row['probes']):>6} "
              f"{row['seconds']:>7.1f}")
    for name in ("plain", "checkpointed"):
        value = report.get(f"reversible_vs_{name}")
        if value is not None:
            print(f"  reversible / {name} {key}: {value:.2f}x")
