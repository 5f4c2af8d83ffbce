"""The run directory's layout: every file and folder a run writes, named in one place.

    {run_dir}/config.yaml              CONFIG_COPY       the resolved config (nmt.run)
    {run_dir}/spm/                     SPM_DIR           the sentencepiece model(s) (nmt.run), and
    {run_dir}/spm/settings.json        SPM_SETTINGS      what they were trained with
    {run_dir}/train.log                LOG_FILE          (nmt.stats)
    {run_dir}/metrics.jsonl            METRICS_FILE      records train, valid, summary (nmt.stats)
    {run_dir}/tensorboard/             TENSORBOARD_DIR   (nmt.stats)
    {run_dir}/checkpoints/step-N.pt    CHECKPOINTS_DIR   the last train.keep_last, with resume state
    {run_dir}/latest.pt                LATEST_CHECKPOINT symlink to the newest step checkpoint
    {run_dir}/best.pt                  BEST_CHECKPOINT   best validation BLEU, no resume state
    {run_dir}/validations/step-N.txt   VALIDATIONS_DIR   each validation's hypotheses (nmt.training)
    {run_dir}/results.json             RESULTS_FILE      a recipe run's results (nmt.results)

Checkpoint files are written and read by nmt.checkpoint; this module only names them.
"""
from __future__ import annotations

import re
from pathlib import Path

CONFIG_COPY = "config.yaml"
SPM_DIR = "spm"
SPM_SETTINGS = "settings.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"
BEST_CHECKPOINT = "best.pt"
VALIDATIONS_DIR = "validations"
STEP_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
RESULTS_FILE = "results.json"


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def step_checkpoint_path(run_dir, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}.pt"


def best_checkpoint_path(run_dir) -> Path:
    return Path(run_dir) / BEST_CHECKPOINT


def latest_checkpoint_path(run_dir) -> Path:
    return Path(run_dir) / LATEST_CHECKPOINT


def validation_path(run_dir, step: int) -> Path:
    return Path(run_dir) / VALIDATIONS_DIR / f"step-{step:08d}.txt"
