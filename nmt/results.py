"""Results of recipe runs: one run's `results.json`, and the grid's results table built from many.

`collect_run_results(...)` gathers what a run of recipes/multi30k/run.sh measured (test scores,
training speed and epochs from `metrics.jsonl`, memory ratios as logged during training, how and
where it ran) into one dict (`nmt.results_table` turns many of them into RESULTS.md).

Memory ratios are means, over logged training records, of the `memory/*` figures the model
reported: over every record (`memory`, the table's figures) and over the epoch that produced the
best checkpoint, up to it (`memory_best`: the model `nmt bench memory` measures; the ratios move
while a model learns what to forget). Records written before the stats averaged over the log
window hold the figures of the window's last batch.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, Iterable, Optional

from nmt.config import TrainConfig
from nmt.errors import UserError
from nmt.run_layout import CONFIG_COPY, METRICS_FILE

FORMAT_VERSION = 1
DEFAULT_SEED = TrainConfig.seed  # results.json files written before the seed was recorded used it
MEMORY_KEYS = ("encoder_ratio", "encoder_optimal_ratio", "decoder_ratio", "decoder_optimal_ratio",
               "total_ratio", "total_optimal_ratio")  # total_*: complete accounting (issue 15)


# --------------------------------------------------------------------------- one run


def read_json(path) -> dict:
    """A JSON object from a file; UserError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def training_throughput(train_records: Iterable[dict]) -> Optional[float]:
    """Target tokens per second over all logged windows: total tokens / total training seconds."""
    tokens = seconds = 0.0
    for record in train_records:
        if record.get("tokens") and record.get("tokens_per_sec"):
            tokens += record["tokens"]
            seconds += record["tokens"] / record["tokens_per_sec"]
    return tokens / seconds if seconds else None


def mean_memory_figures(train_records: Iterable[dict]) -> Dict[str, float]:
    """`memory/<key>` of the train records -> {key: mean over the records that logged it}."""
    sums: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    for record in train_records:
        for key, value in record.items():
            if key.startswith("memory/") and isinstance(value, (int, float)):
                name = key[len("memory/"):]
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sums}


EPOCH_MIN_RECORDS = 3


def best_checkpoint_memory_figures(train_records: Iterable[dict],
                                   best_step: Optional[int] = None) -> Dict[str, float]:
    """`mean_memory_figures` over the records of the epoch that reached `best_step` (the best
    checkpoint's; None: the last logged step), up to it, with the epoch before it when that one
    logged fewer than EPOCH_MIN_RECORDS."""
    logged = [r for r in train_records if any(key.startswith("memory/") for key in r)
              and (best_step is None or int(r.get("step", 0)) <= best_step)]
    if not logged:
        return {}
    last = max(int(r.get("epoch", 0)) for r in logged)
    chosen = [r for r in logged if int(r.get("epoch", 0)) == last]
    if len(chosen) < EPOCH_MIN_RECORDS:
        chosen = [r for r in logged if int(r.get("epoch", 0)) >= last - 1]
    return mean_memory_figures(chosen)


def machine_description() -> dict:
    """Where the run happened: architecture (`uname -m`), CPU cores, processor name, torch threads."""
    import torch

    processor = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "cores": os.cpu_count(), "processor": processor,
            "system": platform.system(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_commit(directory, *, outputs: Iterable[str] = ()) -> Optional[str]:
    """The checked-out commit of the repository holding `directory`, '+dirty' when a tracked file
    other than `outputs` (paths relative to `directory`: files the recipes themselves rewrite,
    like RESULTS.md) is modified."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode:
            return None
        excluded = [f":(exclude){path}" for path in outputs]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                    *excluded).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def collect_run_results(run_dir, *, cased: dict, lowercased: dict, beam_size: int,
                        wall_seconds: float, budget: str, bench_memory: Optional[dict] = None,
                        config_path: Optional[str] = None, machine: Optional[dict] = None,
                        commit: Optional[str] = None) -> dict:
    """One run's results: scores of `nmt evaluate --json` (cased and lowercased), the run's
    config copy, summary and training records, the memory bench output and the budget text
    (e.g. '--epochs 10', '--minutes 70', 'config')."""
    from nmt.stats import read_metrics

    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / CONFIG_COPY)
    records = read_metrics(run_dir)
    train_records = [r for r in records if r.get("event") == "train"]
    summaries = [r for r in records if r.get("event") == "summary"]
    if not summaries:
        raise UserError(f"{run_dir / METRICS_FILE}: no summary record (did training finish?)")
    summary = summaries[-1]
    model, train, data = config.get("model", {}), config.get("train", {}), config.get("data", {})
    return {
        "format": FORMAT_VERSION,
        "name": config.get("name"),
        "config": config_path,
        "run_dir": str(run_dir),
        "model": {"encoder": model.get("encoder", {}).get("cell"),
                  "decoder": model.get("decoder", {}).get("cell"),
                  "hidden": model.get("encoder", {}).get("hidden"),
                  "layers": model.get("encoder", {}).get("layers"),
                  "context": model.get("attention", {}).get("context"),
                  "size": model.get("attention", {}).get("size"),
                  "precision": model.get("attention", {}).get("precision"),
                  "max_forget_bits": model.get("encoder", {}).get("max_forget_bits"),
                  "readout_dropout": model.get("readout_dropout")},
        "language_pair": f"{data.get('src')}-{data.get('tgt')}",
        "test": {"split": data.get("test"), "beam_size": beam_size,
                 "cased": _scores(cased), "lowercased": _scores(lowercased)},
        "training": {"epochs": summary.get("epochs_completed"), "steps": summary.get("steps"),
                     "stop_reason": summary.get("stop_reason"),
                     "wall_minutes": summary.get("wall_minutes"),
                     "best_valid_bleu": summary.get("best_bleu"),
                     "tokens_per_sec": training_throughput(train_records),
                     "seed": train.get("seed", DEFAULT_SEED),
                     "max_epochs": train.get("max_epochs"), "max_minutes": train.get("max_minutes")},
        "memory": mean_memory_figures(train_records),
        "memory_best": best_checkpoint_memory_figures(train_records, summary.get("best_step")),
        "bench_memory": bench_memory,
        "budget": budget,
        "wall_seconds": wall_seconds,
        "machine": machine if machine is not None else machine_description(),
        "commit": commit,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _scores(scores: dict) -> dict:
    return {key: scores.get(key) for key in ("bleu", "chrf", "bleu_signature", "chrf_signature",
                                             "num_sentences")}


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (is this a run directory?)") from None
    return data if isinstance(data, dict) else {}


def format_run_summary(results: dict) -> str:
    """The lines run.sh prints at the end: scores and memory ratios."""
    test, training, memory = results["test"], results["training"], results["memory"]
    lines = [f"{results['name']}: {test['split']} beam {test['beam_size']}",
             f"  BLEU {test['cased']['bleu']:.2f}  ({test['cased']['bleu_signature']})",
             f"  chrF {test['cased']['chrf']:.2f}  ({test['cased']['chrf_signature']})",
             f"  lowercased BLEU {test['lowercased']['bleu']:.2f}, for comparison with the paper "
             f"({test['lowercased']['bleu_signature']})",
             f"  training: {training['epochs']} epochs, {training['steps']} steps, "
             f"{format_number(training['wall_minutes'], 1)} min, "
             f"{format_number(training['tokens_per_sec'], 0)} "
             f"target tokens/s (stopped by {training['stop_reason']}; budget {results['budget']})"]
    if memory:
        lines.append("  memory (mean of logged steps): " + ", ".join(
            f"{key} {value:.2f}" for key, value in sorted(memory.items())))
        best = results.get("memory_best")
        if best:
            lines.append("  memory (mean of the logged steps of the best checkpoint's epoch): "
                         + ", ".join(f"{key} {value:.2f}" for key, value in sorted(best.items())))
    else:
        lines.append("  memory: no memory figures logged (not a reversible model)")
    return "\n".join(lines)


def format_number(value, digits: int) -> str:
    """A figure for text: thousands separators, "–" for none, "∞" for infinity."""
    if value is None:
        return "–"
    if isinstance(value, float) and value == float("inf"):
        return "∞"
    return f"{value:,.{digits}f}"
