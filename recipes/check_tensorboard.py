#!/usr/bin/env python3
"""Check that TensorBoard serves every logged step of some scalar tags, over HTTP.

    python recipes/check_tensorboard.py --logdir runs/multi30k-revgru-emb20h/tensorboard \\
        --tags memory/encoder_ratio,memory/decoder_ratio,memory/total_ratio \\
        [--run NAME] [--timeout 180]

Starts `tensorboard --logdir DIR --port <free> --host 127.0.0.1` (what the README tells users to
run, on a free port), reads `/data/plugin/scalars/tags` and `/data/plugin/scalars/scalars?run=R&tag=T`
(TensorBoard 2.x's scalars endpoints: a JSON list of [wall_time, step, value]) until each run's
served steps and values match what was logged, and always stops the server it started.

What was logged comes from the run's `metrics.jsonl` when the run directory is a RevNMT
`tensorboard/` folder (the stats object writes both), else from the event files themselves. A run
without any of the tags is skipped (e.g. a plain GRU has no memory curves) unless named by --run.
TensorBoard keeps at most 1,000 points per scalar tag by default: longer curves fail the check.

Exit status: 0 all served, 1 something missing or different, 2 bad arguments or nothing to check.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

Curve = Dict[int, float]  # step -> value
EVENT_FILE_MARK = "tfevents"
TENSORBOARD_SCALAR_SAMPLES = 1000  # TensorBoard's default --samples_per_plugin for scalars


class CheckError(Exception):
    """Bad arguments or nothing to check: one line, exit status 2."""


# --------------------------------------------------------------------------- what was logged


def find_runs(logdir: Path) -> Dict[str, Path]:
    """TensorBoard run name (path relative to logdir, '.' for logdir itself) -> directory."""
    runs = {}
    for directory, _, files in os.walk(logdir):
        if any(EVENT_FILE_MARK in name for name in files):
            relative = Path(directory).relative_to(logdir).as_posix()
            runs[relative] = Path(directory)
    return runs


def curves_from_metrics(metrics_path: Path, tags: List[str]) -> Dict[str, Curve]:
    """Tag -> logged curve from metrics.jsonl (`train/x` and `memory/x` from train records,
    `valid/x` from valid records), as nmt.stats writes them beside the TensorBoard scalars."""
    curves: Dict[str, Curve] = {tag: {} for tag in tags}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # blank, or cut short by a killed run
        for tag in tags:
            section, _, name = tag.partition("/")
            if section == "memory" and record.get("event") == "train":
                value = record.get(tag)
            elif section == record.get("event") and section in ("train", "valid"):
                value = record.get(name)
            else:
                continue
            if isinstance(value, (int, float)):
                curves[tag][int(record["step"])] = float(value)
    return {tag: curve for tag, curve in curves.items() if curve}


def curves_from_events(directory: Path, tags: List[str]) -> Dict[str, Curve]:
    """Tag -> curve read from the event files of one run directory (later writes win)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    curves: Dict[str, Curve] = {tag: {} for tag in tags}
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if EVENT_FILE_MARK not in path.name or not path.is_file():
            continue
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag not in curves:
                    continue
                if value.HasField("simple_value"):
                    number = value.simple_value
                else:  # data-compat may have turned it into a scalar tensor
                    number = float(tensor_util.make_ndarray(value.tensor))
                curves[value.tag][int(event.step)] = float(number)
    return {tag: curve for tag, curve in curves.items() if curve}


def logged_curves(run_dir: Path, tags: List[str]) -> Dict[str, Curve]:
    metrics = run_dir.parent / "metrics.jsonl"
    if run_dir.name == "tensorboard" and metrics.is_file():
        return curves_from_metrics(metrics, tags)
    return curves_from_events(run_dir, tags)


def expected_curves(logdir: Path, tags: List[str],
                    runs: Optional[List[str]]) -> Dict[str, Dict[str, Curve]]:
    """Run -> tag -> curve for every run that logged one of `tags` (or each run in `runs`)."""
    found = find_runs(logdir)
    if not found:
        raise CheckError(f"--logdir {logdir}: no TensorBoard event files under it")
    if runs:
        unknown = [run for run in runs if run not in found]
        if unknown:
            raise CheckError(f"--run {', '.join(unknown)}: not a run of {logdir} "
                             f"(runs: {', '.join(sorted(found))})")
        found = {run: found[run] for run in runs}
    expected = {}
    for run, directory in sorted(found.items()):
        curves = logged_curves(directory, tags)
        if runs:
            missing = [tag for tag in tags if tag not in curves]
            if missing:
                raise CheckError(f"run {run}: logged no {', '.join(missing)}")
        if curves:
            expected[run] = curves
    if not expected:
        raise CheckError(f"--logdir {logdir}: no run logged any of {', '.join(tags)}")
    return expected


# --------------------------------------------------------------------------- comparing


def compare_curve(expected: Curve, served: Optional[list]) -> Optional[str]:
    """None when `served` ([wall_time, step, value] rows) holds exactly the expected steps and
    values (float32 precision), else what differs."""
    if served is None:
        return "not served"
    got = {int(step): float(value) for _, step, value in served}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        return f"{len(missing)} of {len(expected)} steps not served (first: {missing[:5]})"
    if extra:
        return f"{len(extra)} steps served that were not logged (first: {extra[:5]})"
    wrong = [step for step in sorted(expected)
             if not math.isclose(got[step], expected[step], rel_tol=1e-6, abs_tol=1e-6)]
    if wrong:
        step = wrong[0]
        return f"{len(wrong)} values differ (step {step}: served {got[step]}, logged {expected[step]})"
    return None


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_tensorboard(logdir: Path, port: int, log_file) -> subprocess.Popen:
    """`tensorboard --logdir DIR --port PORT --host 127.0.0.1` in its own process group."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
               "--port", str(port), "--host", "127.0.0.1"]
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_tensorboard(server: subprocess.Popen) -> None:
    """Stops the server and whatever it started (its data server), waiting until it is gone."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            break
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # helpers left in the group (the server itself has exited)
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def get_json(base_url: str, path: str, **params):
    """GET base_url + path?params as JSON; None when the server does not answer (yet) or 4xx."""
    url = f"{base_url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def served_differences(base_url: str, expected: Dict[str, Dict[str, Curve]]) -> Dict[tuple, str]:
    """(run, tag) -> what differs, for every expected curve not served exactly."""
    index = get_json(base_url, "/data/plugin/scalars/tags") or {}
    problems = {}
    for run, curves in expected.items():
        for tag, curve in curves.items():
            served = None
            if tag in index.get(run, {}):
                served = get_json(base_url, "/data/plugin/scalars/scalars", run=run, tag=tag)
            problem = compare_curve(curve, served)
            if problem:
                problems[(run, tag)] = problem
    return problems


def wait_until_served(base_url: str, expected, server: subprocess.Popen, *, timeout: float,
                      settle: float) -> Dict[tuple, str]:
    """Polls until everything is served, or until every curve is served but the differences have
    not changed for `settle` seconds (the data is loaded and wrong), or `timeout`."""
    deadline = time.monotonic() + timeout
    previous, unchanged_since = None, time.monotonic()
    while True:
        problems = served_differences(base_url, expected)
        now = time.monotonic()
        if problems != previous:
            previous, unchanged_since = problems, now
        loaded = all(problem != "not served" for problem in problems.values())
        if (not problems or now > deadline or server.poll() is not None
                or (loaded and now - unchanged_since >= settle)):
            return problems
        time.sleep(1.0)


def check(logdir: Path, tags: List[str], *, runs: Optional[List[str]] = None,
          timeout: float = 180.0, settle: float = 15.0, report=print) -> bool:
    """True when a TensorBoard started on `logdir` serves every expected curve within `timeout`."""
    expected = expected_curves(logdir, tags, runs)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log_file:
        server = start_tensorboard(logdir, port, log_file)
        report(f"started tensorboard (pid {server.pid}) on {base_url} for {logdir}")
        try:
            problems = wait_until_served(base_url, expected, server, timeout=timeout,
                                         settle=settle)
            if server.poll() is not None:
                log_file.seek(0)
                tail = log_file.read().strip().splitlines()[-5:]
                report(f"tensorboard exited with status {server.returncode}: {' | '.join(tail)}")
        finally:
            stop_tensorboard(server)
            report(f"stopped tensorboard (pid {server.pid})")
    for run, curves in expected.items():
        for tag, curve in curves.items():
            problem = problems.get((run, tag))
            steps = sorted(curve)
            status = f"FAIL: {problem}" if problem else "ok"
            if problem and len(steps) > TENSORBOARD_SCALAR_SAMPLES:
                status += (f" (TensorBoard keeps {TENSORBOARD_SCALAR_SAMPLES} points per tag unless "
                           "started with --samples_per_plugin scalars=0)")
            report(f"{status} run {run} tag {tag}: {len(steps)} logged steps "
                   f"({steps[0]}..{steps[-1]})")
    return not problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True, help="what `tensorboard --logdir` is given")
    parser.add_argument("--tags", default="memory/encoder_ratio,memory/decoder_ratio",
                        help="comma-separated scalar tags (default: %(default)s)")
    parser.add_argument("--run", action="append",
                        help="check only this run (repeatable; '.' when logdir holds the events)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for TensorBoard to load everything (default 180)")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="give up after every curve is served but wrong, unchanged, for this "
                             "many seconds (default 15)")
    args = parser.parse_args(argv)
    tags = [tag.strip() for tag in args.tags.split(",") if tag.strip()]
    try:
        if not tags:
            raise CheckError("--tags: give at least one tag")
        if not Path(args.logdir).is_dir():
            raise CheckError(f"--logdir {args.logdir}: no such directory")
        ok = check(Path(args.logdir), tags, runs=args.run, timeout=args.timeout,
                       settle=args.settle)
    except CheckError as error:
        print(f"check_tensorboard: error: {error}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
