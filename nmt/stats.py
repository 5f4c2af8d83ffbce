"""One stats object that logs training progress to every sink at once.

Sinks: a tqdm progress bar (stderr, only on a terminal), one printed line per log event, the log
file `{run_dir}/train.log`, TensorBoard scalars under `{run_dir}/tensorboard/`, and the metrics
file `{run_dir}/metrics.jsonl` (one JSON record per event: `train`, `valid`, `summary`).

Memory figures: when the model's `LossOutput.memory` dict is non-empty, each key is logged as
`memory/<key>` (TensorBoard tag, metrics field, progress line) next to the loss: the mean over
the batches of the log window, so a logged point describes every batch since the last one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from nmt.run_layout import LOG_FILE, METRICS_FILE, TENSORBOARD_DIR



class TrainingStats:
    """Accumulates training steps over a log window and reports validations and the summary."""

    def __init__(self, run_dir, *, log_every: int = 50, initial_step: int = 0,
                 total_steps: Optional[int] = None, progress: Optional[bool] = None,
                 tensorboard: bool = True, echo: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_every = max(1, int(log_every))
        self.echo = echo
        self.metrics_path = self.run_dir / METRICS_FILE
        self._drop_records_after(initial_step)
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        self._log = open(self.run_dir / LOG_FILE, "a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR),
                                         purge_step=initial_step + 1)  # hide a lost run's later steps
        show_bar = sys.stderr.isatty() if progress is None else progress
        self._bar = tqdm(total=total_steps, initial=initial_step, disable=not show_bar,
                         unit="step", dynamic_ncols=True, file=sys.stderr)
        self._reset_window()

    # --- training steps --------------------------------------------------------------------------

    def _reset_window(self) -> None:
        self._window_loss = 0.0
        self._window_nll = 0.0
        self._window_tokens = 0
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._memory_sums: dict = {}
        self._memory_counts: dict = {}

    def restart_clock(self) -> None:
        """Excludes time spent outside training steps (validation, checkpoints) from tokens/s."""
        self._window_start = time.perf_counter()

    def train_step(self, step: int, *, epoch: int, loss_sum: float, nll_sum: float,
                   num_tokens: int, lr: float, memory: Sequence[dict] = ()) -> Optional[dict]:
        """Adds one update (`memory`: the figures of each of its batches, several with
        train.accumulate); every `log_every` steps emits and returns a `train` record."""
        self._window_loss += float(loss_sum)
        self._window_nll += float(nll_sum)
        self._window_tokens += int(num_tokens)
        self._window_steps += 1
        for figures in memory:
            for key, value in figures.items():
                self._memory_sums[key] = self._memory_sums.get(key, 0.0) + float(value)
                self._memory_counts[key] = self._memory_counts.get(key, 0) + 1
        self._bar.update(1)
        if step % self.log_every:
            return None
        return self.flush_window(step, epoch=epoch, lr=lr)

    def flush_window(self, step: int, *, epoch: int, lr: float) -> Optional[dict]:
        if not self._window_steps:
            return None
        seconds = max(time.perf_counter() - self._window_start, 1e-9)
        tokens = max(self._window_tokens, 1)
        record = {"event": "train", "step": step, "epoch": epoch,
                  "loss": self._window_loss / tokens, "nll": self._window_nll / tokens,
                  "ppl": math.exp(min(self._window_nll / tokens, 100.0)), "lr": lr,
                  "tokens_per_sec": self._window_tokens / seconds, "tokens": self._window_tokens,
                  "steps": self._window_steps}
        memory = {key: total / self._memory_counts[key] for key, total in self._memory_sums.items()}
        record.update({f"memory/{key}": value for key, value in memory.items()})
        for tag in ("loss", "lr", "tokens_per_sec"):
            self._scalar(f"train/{tag}", record[tag], step)
        for key, value in memory.items():
            self._scalar(f"memory/{key}", value, step)
        memory_text = "".join(f" {key}={value:.4g}" for key, value in memory.items())
        self._bar.set_postfix_str(f"loss={record['loss']:.3f} lr={lr:.2e} "
                                  f"tok/s={record['tokens_per_sec']:.0f}{memory_text}")
        self.message(f"step {step} epoch {epoch}: loss {record['loss']:.4f} "
                     f"ppl {record['ppl']:.2f} lr {lr:.3e} "
                     f"tokens/s {record['tokens_per_sec']:.0f}{memory_text}")
        self._write_record(record)
        self._reset_window()
        return record

    # --- validation and summary ------------------------------------------------------------------

    def validation(self, step: int, *, epoch: int, scores: dict) -> dict:
        """Logs a `valid` record: `scores` has loss, bleu, chrf (plus signatures, extras)."""
        record = {"event": "valid", "step": step, "epoch": epoch, **scores}
        for tag in ("loss", "bleu", "chrf"):
            if tag in scores:
                self._scalar(f"valid/{tag}", scores[tag], step)
        parts = [f"{key} {scores[key]:.4f}" if key == "loss" else f"{key} {scores[key]:.2f}"
                 for key in ("loss", "ppl", "bleu", "chrf") if key in scores]
        note = f" [{scores['note']}]" if scores.get("note") else ""
        self.message(f"validation at step {step} epoch {epoch}: {', '.join(parts)}{note}")
        self._write_record(record)
        if self._writer is not None:
            self._writer.flush()
        return record

    def summary(self, **fields) -> dict:
        record = {"event": "summary", **fields}
        self.message("summary: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
        self._write_record(record)
        return record

    def message(self, text: str) -> None:
        """A line for the log file and, when echoing, stderr (above the progress bar)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"{stamp} {text}\n")
        self._log.flush()
        if self.echo:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        self._metrics.close()
        self._log.close()

    # --- sinks -----------------------------------------------------------------------------------

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def _write_record(self, record: dict) -> None:
        self._metrics.write(json.dumps(record, sort_keys=False) + "\n")
        self._metrics.flush()

    def _drop_records_after(self, step: int) -> None:
        """On resume, forgets records a killed run wrote after its last checkpoint."""
        if not self.metrics_path.exists():
            return
        kept = []
        with open(self.metrics_path, encoding="utf-8") as stream:
            for line in stream:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if record.get("event") != "summary" and record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        temp = self.metrics_path.with_name(f".{METRICS_FILE}.tmp")
        temp.write_text("".join(kept), encoding="utf-8")
        os.replace(temp, self.metrics_path)


def read_metrics(run_dir, event: Optional[str] = None) -> list:
    """The records of `{run_dir}/metrics.jsonl`, optionally only those of one event type."""
    path = Path(run_dir) / METRICS_FILE
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in records if event is None or r.get("event") == event]
