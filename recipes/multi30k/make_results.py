#!/usr/bin/env python3
"""Helpers of run.sh and grid.sh: describe a config, write a run's results.json, build RESULTS.md.

    make_results.py describe CONFIG        shell assignments: NAME, RUN_DIR, TEST_REF ('' if absent), REVERSIBLE
    make_results.py collect --run-dir DIR --config CONFIG --cased F --lowercased F
                            --wall-seconds S --budget TEXT [--bench-memory F]
    make_results.py table [--output RESULTS.md] (RESULTS_JSON | RUN_DIR | CONFIG)...
    make_results.py commit                 the checked-out commit ('+dirty' if code is modified)

Bad input (a missing file, a results.json without a key) is one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nmt.errors import UserError
from nmt.results import collect_run_results, format_run_summary, git_commit, read_json
from nmt.results_table import load_results, render_results_table
from nmt.run_layout import RESULTS_FILE

REPO = Path(__file__).resolve().parents[2]
RECIPE_OUTPUTS = ("recipes/multi30k/RESULTS.md", "recipes/multi30k/results")  # grid.sh rewrites them


def describe(args) -> None:
    from nmt.config import REVERSIBLE_CELLS, load_config
    from nmt.data.files import data_file

    config = load_config(args.config)
    reference = data_file(config.data, "test", config.data.tgt)  # None until the data is fetched
    cells = (config.model.encoder.cell, config.model.decoder.cell)
    values = {"NAME": config.name, "RUN_DIR": config.run_dir, "TEST_REF": str(reference or ""),
              "REVERSIBLE": "1" if any(cell in REVERSIBLE_CELLS for cell in cells) else "0"}
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")


def collect(args) -> None:
    run_dir = Path(args.run_dir)
    bench = None
    if args.bench_memory and Path(args.bench_memory).exists():
        try:
            bench = read_json(args.bench_memory)
        except UserError as error:
            print(f"warning: memory bench output not used: {error}", file=sys.stderr)
    results = collect_run_results(
        run_dir, cased=read_json(args.cased), lowercased=read_json(args.lowercased),
        beam_size=args.beam_size, wall_seconds=args.wall_seconds, budget=args.budget,
        bench_memory=bench, config_path=args.config,
        commit=args.commit if args.commit is not None else current_commit())
    import json

    path = run_dir / RESULTS_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    print(format_run_summary(results))
    print(f"results: {path}")


def current_commit() -> str:
    return git_commit(REPO, outputs=RECIPE_OUTPUTS) or ""


def results_paths(items) -> list:
    """results.json files and run directories as given; for a config (.yaml), the results.json of
    its run_dir when that run has finished (a grid config not run yet is skipped)."""
    from nmt.config import load_config

    paths = []
    for item in items:
        if item.endswith((".yaml", ".yml")):
            candidate = Path(load_config(item).run_dir) / RESULTS_FILE
            if candidate.exists():
                paths.append(candidate)
        else:
            paths.append(Path(item))
    return list(dict.fromkeys(paths))


def table(args) -> None:
    paths = results_paths(args.results)
    text = render_results_table(load_results(paths))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(paths)} runs)")
    else:
        sys.stdout.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="make_results.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help="shell assignments describing a config")
    p.add_argument("config")
    p.set_defaults(handler=describe)
    p = sub.add_parser("collect", help="write {run_dir}/results.json and print the summary")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--cased", required=True, help="`nmt evaluate --json` output, cased")
    p.add_argument("--lowercased", required=True, help="`nmt evaluate --json` output, lowercased")
    p.add_argument("--bench-memory", help="`nmt bench memory --json` output (optional)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--wall-seconds", type=float, required=True, help="the whole recipe's wall time")
    p.add_argument("--budget", required=True, help="e.g. '--epochs 10', '--minutes 70', 'config'")
    p.add_argument("--commit", help="the commit the run trained with (default: the current one)")
    p.set_defaults(handler=collect)
    p = sub.add_parser("table", help="render RESULTS.md from results.json files")
    p.add_argument("results", nargs="*",
                   help="results.json files, run directories, or configs (their run_dir's "
                        "results.json, if any)")
    p.add_argument("--output", help="write here instead of stdout")
    p.set_defaults(handler=table)
    p = sub.add_parser("commit", help="print the checked-out commit")
    p.set_defaults(handler=lambda args: print(current_commit()))
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"make_results.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
