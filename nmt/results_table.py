"""The grid's results table: many runs' `results.json` -> the Markdown of recipes/multi30k/RESULTS.md.

Works on plain dicts (as `nmt.results.collect_run_results` writes them), so the table can be
tested on fabricated results.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from nmt.errors import UserError
from nmt.results import DEFAULT_SEED, format_number, read_json
from nmt.run_layout import RESULTS_FILE


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


OLD_MARK = "°"  # ratios measured before complete accounting (no total_ratio logged)


def _old_convention(memory: Optional[dict]) -> bool:
    """Figures logged before complete accounting (words + stored values, the shared heads on the
    decoder only, no kept states): they carry no total_ratio."""
    return bool(memory) and "total_ratio" not in memory


def _ratio_pair(memory: dict, side: str) -> str:
    counted, optimal = memory.get(f"{side}_ratio"), memory.get(f"{side}_optimal_ratio")
    if counted is None and optimal is None:
        return "–"
    mark = OLD_MARK if side != "total" and _old_convention(memory) else ""
    return f"{format_number(counted, 1)} / {format_number(optimal, 1)}{mark}"


def _bench_ratios(bench: Optional[dict]) -> str:
    """`nmt bench memory --json` on the run's checkpoint: counted encoder / decoder ratios and
    (in parentheses) the measured ratio of recurrent bytes kept for backward, plain / reversible."""
    reversible = (bench or {}).get("reversible")
    if not isinstance(reversible, dict):
        return "–"
    text = (f"{format_number(reversible.get('encoder_ratio'), 1)} / "
            f"{format_number(reversible.get('decoder_ratio'), 1)}")
    if reversible.get("total_ratio") is not None:
        text += f" / {format_number(reversible['total_ratio'], 1)}"
    elif reversible.get("encoder_ratio") is not None:
        text += OLD_MARK
    if bench.get("measured_recurrent_ratio") is not None:
        text += f" ({format_number(bench['measured_recurrent_ratio'], 1)}×)"
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
           "total ratio (counted / optimal)", "bench enc / dec / total (measured)", "train tok/s",
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
             "complete accounting (docs/design.md): each side's used bits are the buffer's heads, "
             "its words, stored values and the exact states kept for backward, *total* charges "
             "the shared heads once. Figures marked ° were measured before complete accounting "
             "(old convention: words + stored values, the shared heads on the decoder only, no "
             "kept states; they are higher than complete figures and cannot be compared with "
             "them; their runs were not re-measured); "
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
            format_number(cased.get("bleu"), 2), delta, format_number(test["lowercased"].get("bleu"), 2),
            format_number(cased.get("chrf"), 2), _ratio_pair(result["memory"], "encoder"),
            _ratio_pair(result["memory"], "decoder"), _ratio_pair(result["memory"], "total"),
            _bench_ratios(result.get("bench_memory")),
            format_number(training.get("tokens_per_sec"), 0),
            format_number(training.get("wall_minutes"), 1), str(training.get("epochs")), budget, where,
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
                     ", ".join(format_number(bleu, 2) for bleu in bleus), format_number(mean_bleu, 2),
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
