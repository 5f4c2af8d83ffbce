"""Results of recipe runs: one run's `results.json`, and the grid's results table built from many.

`collect_run_results(...)` gathers what a run of recipes/multi30k/run.sh measured (test scores,
training speed and epochs from `metrics.jsonl`, memory ratios as logged during training, how and
where it ran) into one dict; `render_results_table(results)` turns a list of them into the
Markdown of recipes/multi30k/RESULTS.md. Both work on plain dicts, so the table can be tested on
fabricated results.

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
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from nmt.config import TrainConfig
from nmt.errors import UserError

RESULTS_FILE = "results.json"
FORMAT_VERSION = 1
DEFAULT_SEED = TrainConfig.seed  # results.json files written before the seed was recorded used it
MEMORY_KEYS = ("encoder_ratio", "encoder_optimal_ratio", "decoder_ratio", "decoder_optimal_ratio")


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
    config = _read_yaml(run_dir / "config.yaml")
    records = read_metrics(run_dir)
    train_records = [r for r in records if r.get("event") == "train"]
    summaries = [r for r in records if r.get("event") == "summary"]
    if not summaries:
        raise UserError(f"{run_dir / 'metrics.jsonl'}: no summary record (did training finish?)")
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
             f"{_number(training['wall_minutes'], 1)} min, {_number(training['tokens_per_sec'], 0)} "
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


# --------------------------------------------------------------------------- the table


def load_results(paths: Iterable) -> List[dict]:
    """results.json files (or run directories holding one); UserError naming a bad file/key."""
    results = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        data = read_json(path)
        for key in ("name", "test", "training", "memory", "budget", "machine", "commit"):
            if key not in data:
                raise UserError(f"{path}: key {key!r} is missing (not a results.json of run.sh?)")
        for key in ("cased", "lowercased"):
            if not isinstance(data["test"].get(key), dict):
                raise UserError(f"{path}: key 'test.{key}' is missing")
        data["_path"] = str(path)
        results.append(data)
    return results


def _number(value, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value == float("inf"):
        return "∞"
    return f"{value:,.{digits}f}"


def _ratio_pair(memory: dict, side: str) -> str:
    counted, optimal = memory.get(f"{side}_ratio"), memory.get(f"{side}_optimal_ratio")
    if counted is None and optimal is None:
        return "–"
    return f"{_number(counted, 1)} / {_number(optimal, 1)}"


def _bench_ratios(bench: Optional[dict]) -> str:
    """`nmt bench memory --json` on the run's checkpoint: counted encoder / decoder ratios and
    (in parentheses) the measured ratio of recurrent bytes kept for backward, plain / reversible."""
    reversible = (bench or {}).get("reversible")
    if not isinstance(reversible, dict):
        return "–"
    text = (f"{_number(reversible.get('encoder_ratio'), 1)} / "
            f"{_number(reversible.get('decoder_ratio'), 1)}")
    if bench.get("measured_recurrent_ratio") is not None:
        text += f" ({_number(bench['measured_recurrent_ratio'], 1)}×)"
    return text


def _attention(model: dict) -> str:
    context, size = model.get("context") or "hidden", model.get("size")
    if context == "hidden" and str(model.get("encoder", "")).startswith("rev"):
        return f"{model.get('hidden')}H (every state)"  # the paper's 300H: memory_saving false
    text = {"hidden": "hidden", "emb": "Emb", "slice": f"{size}H", "proj": f"proj{size}",
            "emb+slice": f"Emb+{size}H", "emb+proj": f"Emb+proj{size}"}.get(context, context)
    if model.get("precision") == 16 and context != "hidden":
        text += " (16-bit)"
    return text


def _forget_bits(model: dict) -> str:
    if not str(model.get("encoder", "")).startswith("rev"):
        return ""
    bits = model.get("max_forget_bits")
    return "none" if bits is None else str(bits)


def _readout_dropout(model: dict) -> str:
    """How the readout's dropout was drawn: plain models always per step; reversible runs recorded
    before the setting existed drew it once per sentence ("sequence")."""
    if not str(model.get("encoder", "")).startswith("rev"):
        return "step"
    return model.get("readout_dropout") or "sequence"


def _seed(result: dict) -> int:
    seed = result["training"].get("seed")
    return DEFAULT_SEED if seed is None else seed


def _baseline_of(result: dict, results: List[dict]) -> Optional[dict]:
    """The plain run of the same cell family (GRU for RevGRU), language pair, budget and seed: the
    one attending to the same context if there is one (gru-emb20h for revgru-emb20h), else the
    standard one attending to every hidden state."""
    cell = str(result["model"].get("encoder", ""))
    if not cell.startswith("rev"):
        return None
    candidates = [other for other in results
                  if other["model"].get("encoder") == cell[3:] and other["budget"] == result["budget"]
                  and other.get("language_pair") == result.get("language_pair")
                  and _seed(other) == _seed(result)]

    def attention(run):
        return (run["model"].get("context"), run["model"].get("size"))

    for wanted in (attention(result), ("hidden", None)):
        for other in candidates:
            if attention(other) == wanted:
                return other
    return None


def _row_order(result: dict):
    cell = str(result["model"].get("encoder", ""))
    family = cell[3:] if cell.startswith("rev") else cell
    return (result["budget"], result.get("language_pair", ""), family, cell.startswith("rev"),
            _seedless_name(result), _seed(result))


def _seedless_name(result: dict) -> str:
    """The run's name without a '-seedN' suffix: the name of the model its seeds share."""
    return re.sub(r"-seed\d+$", "", str(result["name"] or ""))


COLUMNS = ("model", "cells", "attention", "k", "readout dropout", "seed", "BLEU", "Δ base",
           "BLEU lc", "chrF",
           "enc ratio (counted / optimal)", "dec ratio (counted / optimal)",
           "bench enc / dec (measured)", "train tok/s",
           "train min", "epochs", "budget", "machine", "commit")


def render_results_table(results: List[dict], *, title: str = "Multi30K results") -> str:
    """RESULTS.md: one row per run, grouped by budget, then the signatures and how to reproduce."""
    results = sorted(results, key=_row_order)
    lines = [f"# {title}", "",
             "Generated by `recipes/multi30k/grid.sh` (`python recipes/multi30k/make_results.py "
             "table`) from each run's `results.json`; do not edit by hand.", "",
             "BLEU and chrF: sacreBLEU on detokenized, cased test output (beam 5); *BLEU lc*: "
             "the same output lowercased, for comparison with the paper's lowercased BLEU. "
             "*Δ base*: BLEU minus the plain model of the same cell, language pair and budget (attending "
             "to the same context when there is one, else to every hidden state). "
             "Memory ratios: normal / used bits of the hidden states as counted during training "
             "(*optimal*: normal / information-theoretic minimum), mean of the logged steps; "
             "*bench*: `nmt bench memory` on the run's best checkpoint (counted ratios, bits "
             "summed over 20 training batches; and in parentheses the measured bytes the "
             "recurrent layers keep for backward, plain / reversible). The two agree where stored "
             "hidden units dominate the count; an Emb-only encoder keeps nothing but buffer "
             "words, and its ratio grows while the model learns to forget (it roughly doubles "
             "over three epochs), so the bench on the trained model finds more than the mean. "
             "k: max forgetting in bits per unit per step. *readout dropout*: the attention "
             "context's and a_t's dropout drawn per position and step (*step*, as plain models "
             "always do; the default since `model.readout_dropout` became `step`) or once per "
             "sentence (*sequence*: every reversible run before then, whatever its config says "
             "now; reproduce those at their commit or with `model.readout_dropout: sequence`). "
             "*train tok/s*: target tokens per second of training steps.", ""]
    if not results:
        return "\n".join(lines + ["No results yet: run `bash recipes/multi30k/grid.sh`.", ""])
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for result in results:
        lines.append("| " + " | ".join(_row_cells(result, results)) + " |")
    lines += _seed_means(results)
    lines += ["", "## Signatures", ""]
    for label, key in (("BLEU", "bleu_signature"), ("chrF", "chrf_signature")):
        for variant in ("cased", "lowercased"):
            signatures = sorted({str(r["test"][variant].get(key)) for r in results})
            lines.append(f"- {label}, {variant}: " + "; ".join(f"`{s}`" for s in signatures))
    lines += ["", "## Reproduce a row", "",
              "From the repository root, with Multi30K in `$MULTI30K_DIR`:", "", "```bash"]
    for result in results:
        lines.append(f"bash recipes/multi30k/run.sh {result.get('config') or '<config>'} "
                     f"{result['budget'] if result['budget'] != 'config' else ''}".rstrip())
    lines += ["```", ""]
    return "\n".join(lines)


def _row_cells(result: dict, results: List[dict]) -> List[str]:
    model, training, test = result["model"], result["training"], result["test"]
    cased = test["cased"]
    baseline = _baseline_of(result, results)
    delta = ""
    if baseline is not None and cased.get("bleu") is not None:
        delta = f"{cased['bleu'] - baseline['test']['cased']['bleu']:+.2f}"
    cells = f"{model.get('encoder')}/{model.get('decoder')}"
    if result.get("language_pair") not in (None, "en-de"):
        cells += f" {result['language_pair']}"
    machine = result["machine"] or {}
    where = f"{machine.get('arch', '?')}, {machine.get('cores', '?')} cores"
    if machine.get("torch_threads"):
        threads = machine["torch_threads"]
        where += f", {threads} thread{'s' if threads > 1 else ''}"
    if machine.get("cuda"):
        where += f", {machine['cuda']}"
    budget = str(result["budget"]).replace("--", "")
    return [str(result["name"]), cells, _attention(model), _forget_bits(model),
            _readout_dropout(model), str(_seed(result)),
            _number(cased.get("bleu"), 2), delta, _number(test["lowercased"].get("bleu"), 2),
            _number(cased.get("chrf"), 2), _ratio_pair(result["memory"], "encoder"),
            _ratio_pair(result["memory"], "decoder"), _bench_ratios(result.get("bench_memory")),
            _number(training.get("tokens_per_sec"), 0),
            _number(training.get("wall_minutes"), 1), str(training.get("epochs")), budget, where,
            f"`{result['commit']}`" if result["commit"] else "–"]


SEED_COLUMNS = ("model", "attention", "k", "budget", "seeds", "BLEU per seed", "mean BLEU",
                "Δ base per seed", "mean Δ base")


def _seed_means(results: List[dict]) -> List[str]:
    """A table of the models trained with more than one seed: BLEU and Δ base per seed and their
    means (the mean Δ only when every seed has its baseline, trained with the same seed)."""
    groups: Dict[tuple, List[dict]] = {}
    for result in results:  # already in row order: seeds ascending within a model
        key = (_seedless_name(result), result["budget"], result.get("language_pair"))
        groups.setdefault(key, []).append(result)
    rows = []
    for (name, budget, _), runs in groups.items():
        if len({_seed(run) for run in runs}) < 2:
            continue
        bleus = [run["test"]["cased"].get("bleu") for run in runs]
        baselines = [_baseline_of(run, results) for run in runs]
        deltas = [None if base is None or bleu is None else bleu - base["test"]["cased"]["bleu"]
                  for bleu, base in zip(bleus, baselines)]
        mean_bleu = None if None in bleus else sum(bleus) / len(bleus)
        mean_delta = None if None in deltas else sum(deltas) / len(deltas)
        model = runs[0]["model"]
        rows.append([name, _attention(model), _forget_bits(model), budget.replace("--", ""),
                     ", ".join(str(_seed(run)) for run in runs),
                     ", ".join(_number(bleu, 2) for bleu in bleus), _number(mean_bleu, 2),
                     ", ".join("–" if d is None else f"{d:+.2f}" for d in deltas) if any(
                         d is not None for d in deltas) else "",
                     "" if mean_delta is None else f"{mean_delta:+.2f}"])
    if not rows:
        return []
    lines = ["", "## Mean over seeds", "",
             "Models trained with more than one seed (`train.seed`; configs in "
             "`configs/multi30k/seeds/`): cased BLEU per seed, its mean, and Δ base per seed "
             "against the baseline trained with the same seed.", "",
             "| " + " | ".join(SEED_COLUMNS) + " |", "|" + "---|" * len(SEED_COLUMNS)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
