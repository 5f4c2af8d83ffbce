#!/usr/bin/env python3
"""Peak memory of one training step against sentence length: reversible, plain, checkpointed.

    PYTHONPATH=. python recipes/plot_peak_memory.py --config configs/multi30k/revgru-emb20h.yaml \\
        [--set KEY=VALUE ...] [--lengths 10,25,50,100,200] [--batch 64] \\
        [--out docs/peak_memory.png] [--json docs/peak_memory.json]

For each length L, one full training step (forward, backward, clipping, the config's optimizer
step) of a fresh model on a synthetic batch of --batch sentences of L subwords on both sides is
tracked by the live-bytes dispatch mode (nmt/memory_peak.py), exactly as `nmt bench capacity`
probes it (nmt.bench.peak.synthetic_step_peak), for the config's reversible model, its plain
counterpart (the same config with GRU/LSTM cells) and that plain model with torch.utils.checkpoint.
Recorded: peak_step_bytes (the peak of what the step creates) and peak_total_bytes (+ resident:
parameters, optimizer state, batch). Device-independent (CPU by default).

The figure draws peak_total MiB against L (log y), one line per way; the JSON keeps every figure.
Drawing needs matplotlib: pip install -e '.[plots]'. With --no-plot only the JSON is written.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nmt.bench.capacity import way_builders  # noqa: E402
from nmt.bench.memory import TO_PLAIN, plain_model_config  # noqa: E402
from nmt.bench.peak import WAYS, synthetic_step_peak  # noqa: E402
from nmt.bench.scaling import parse_lengths  # noqa: E402
from nmt.config import load_config  # noqa: E402
from nmt.errors import ConfigError, UserError  # noqa: E402

import torch  # noqa: E402

MIB = 1 << 20
STYLE = {"reversible": ("tab:green", "o"), "plain": ("tab:red", "s"),
         "checkpointed": ("tab:blue", "^")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config of a reversible model (required unless "
                        "--replot)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as in nmt train (repeatable)")
    parser.add_argument("--lengths", default="10,25,50,100,200",
                        help="comma-separated sentence lengths in subwords "
                             "(default 10,25,50,100,200)")
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/peak_memory.png", help="PNG to write")
    parser.add_argument("--json", default=None, help="JSON of the numbers (default: --out .json)")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    parser.add_argument("--replot", metavar="JSON",
                        help="draw --out from a JSON this script wrote, without measuring")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def chunk_label(config) -> str:
    reversible = getattr(config.model, "reversible", None)
    chunk = getattr(reversible, "chunk_steps", None) if reversible is not None else None
    return f"chunk_steps={chunk}" if chunk is not None else "default chunk"


def measure(config, lengths, *, batch: int, seed: int = 0, quiet: bool = True,
            device: torch.device = torch.device("cpu")) -> dict:
    """The figures of every way at every length: {way: [StepPeak dict or None per length]}."""
    cells = (config.model.encoder.cell, config.model.decoder.cell)
    if any(cell not in TO_PLAIN for cell in cells):
        raise SystemExit(f"plot_peak_memory.py: error: the config's cells must be revgru or "
                         f"revlstm (got {cells[0]}, {cells[1]})")
    vocab = config.data.tokenizer.vocab_size
    builders = way_builders(config.model, plain_model_config(config.model), vocab,
                            device=device, seed=seed)
    rows = {}
    for name in WAYS:
        build = builders[name]
        rows[name] = []
        for length in lengths:
            if build is None:
                rows[name].append(None)
                continue
            started = time.perf_counter()
            figures = synthetic_step_peak(build, config.train, batch=batch, length=length,
                                          vocab=vocab, device=device, seed=seed)
            figures["length"] = length
            figures["seconds"] = round(time.perf_counter() - started, 2)
            rows[name].append(figures)
            if not quiet:
                print(f"{name}: length {length}: peak_step {figures['peak_step_bytes'] / MIB:.1f} "
                      f"MiB, peak_total {figures['peak_total_bytes'] / MIB:.1f} MiB "
                      f"({figures['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return rows


def report(config_path, overrides, config, lengths, batch, rows) -> dict:
    summary = {}
    for name in WAYS:
        summary[name] = {
            "peak_step_mib": [None if row is None else round(row["peak_step_bytes"] / MIB, 2)
                              for row in rows[name]],
            "peak_total_mib": [None if row is None else round(row["peak_total_bytes"] / MIB, 2)
                               for row in rows[name]]}
    cells = {"reversible": config.model.decoder.cell,
             "plain": TO_PLAIN[config.model.decoder.cell]}
    return {"config": str(config_path), "set": list(overrides), "chunk": chunk_label(config),
            "cells": cells,
            "batch": batch, "lengths": list(lengths), "vocab": config.data.tokenizer.vocab_size,
            "device": "cpu", "tracker": "nmt.memory_peak.LiveBytes (storage bytes, no allocator "
            "rounding)", "summary_mib": summary, "ways": rows}


def draw(result: dict, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_peak_memory.py: error: drawing needs matplotlib: "
                         "pip install -e '.[plots]' (or pass --no-plot for the JSON only)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = result["lengths"]
    figure, axis = plt.subplots(figsize=(7, 4.6), dpi=120)
    for name in WAYS:
        totals = result["summary_mib"][name]["peak_total_mib"]
        points = [(L, v) for L, v in zip(lengths, totals) if v is not None]
        if not points:
            continue
        color, marker = STYLE[name]
        cells = result.get("cells", {"reversible": "reversible", "plain": "plain"})
        label = {"reversible": f"reversible ({cells['reversible']})",
                 "plain": f"plain ({cells['plain']}, same size)",
                 "checkpointed": f"plain {cells['plain']} + torch.utils.checkpoint"}[name]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color,
                  label=label)
        axis.annotate(f"{points[-1][1]:.0f}", points[-1], textcoords="offset points",
                      xytext=(4, 0), va="center", fontsize=8, color=color)
    axis.set_yscale("log")
    values = [v for name in WAYS for v in result["summary_mib"][name]["peak_total_mib"]
              if v is not None]
    ticks = [t for t in (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
             if min(values) / 1.5 <= t <= max(values) * 1.5]
    axis.set_yticks(ticks)
    axis.set_yticklabels([str(t) for t in ticks])
    axis.set_xlabel("sentence length (subwords, source = target)")
    axis.set_ylabel("peak memory of one training step (MiB)")
    name = Path(result["config"]).name
    sets = ", ".join(s.rsplit(".", 1)[-1] for s in result["set"])
    axis.set_title(f"{name} ({sets or result['chunk']}), batch {result['batch']}\n"
                   "tracked live tensor bytes: parameters + optimizer state + batch + step peak",
                   fontsize=9)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        draw(json.loads(Path(args.replot).read_text()), Path(args.out))
        return 0
    if not args.config:
        print("plot_peak_memory.py: error: --config is required (or --replot JSON)",
              file=sys.stderr)
        return 2
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401  (fail before minutes of measuring)
        except ImportError:
            print("plot_peak_memory.py: error: drawing needs matplotlib: pip install -e '.[plots]' "
                  "(or pass --no-plot for the JSON only)", file=sys.stderr)
            return 2
    if args.batch < 1:
        print(f"plot_peak_memory.py: error: --batch must be positive, got {args.batch}",
              file=sys.stderr)
        return 2
    try:
        lengths = parse_lengths(args.lengths)
        config = load_config(args.config, args.set)
    except (UserError, ConfigError) as error:
        print(f"plot_peak_memory.py: error: {error}", file=sys.stderr)
        return 2
    rows = measure(config, lengths, batch=args.batch, seed=args.seed, quiet=args.quiet)
    result = report(args.config, args.set, config, lengths, args.batch, rows)
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_plot:
        draw(result, out)
    print(json.dumps({"json": str(json_path), "png": None if args.no_plot else str(out),
                      "summary_mib": result["summary_mib"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
