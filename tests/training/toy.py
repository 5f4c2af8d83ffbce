"""Tiny synthetic parallel data and configs, so training tests take seconds."""
from __future__ import annotations

import random
from pathlib import Path

import yaml

SRC_WORDS = ["a", "big", "cat", "dog", "eats", "fish", "green", "house", "is", "jumps", "kind",
             "little", "man", "near", "old", "park", "quick", "red", "sees", "the"]
TGT_WORDS = ["ein", "gross", "katze", "hund", "frisst", "fisch", "gruen", "haus", "ist", "springt",
             "nett", "klein", "mann", "nahe", "alt", "park", "schnell", "rot", "sieht", "der"]
TRANSLATE = dict(zip(SRC_WORDS, TGT_WORDS))


def write_toy_data(directory, *, train: int = 240, valid: int = 24, test: int = 24, seed: int = 0) -> Path:
    """train/val/test .en/.de files: German = English words mapped one to one, order kept."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, count in (("train", train), ("val", valid), ("test", test)):
        src, tgt = [], []
        for _ in range(count):
            words = [rng.choice(SRC_WORDS) for _ in range(rng.randint(2, 7))]
            src.append(" ".join(words))
            tgt.append(" ".join(TRANSLATE[w] for w in words))
        (directory / f"{name}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (directory / f"{name}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return directory


def toy_config(tmp_path, **train_overrides) -> dict:
    """A complete config dict for a tiny GRU model on `write_toy_data` files."""
    data_dir = write_toy_data(Path(tmp_path) / "data")
    train = {"seed": 3, "device": "cpu", "optimizer": "adam", "lr": 0.03, "clip_grad_norm": 1.0,
             "label_smoothing": 0.1, "max_epochs": 50, "max_steps": 12, "valid_every": 6,
             "log_every": 1, "keep_last": 2, "early_stopping_patience": None,
             "lr_schedule": {"type": "plateau", "factor": 0.5, "patience": 0, "metric": "loss",
                             "min_lr": 1.0e-5, "warmup_steps": 2}}
    train.update(train_overrides)
    return {
        "name": "toy", "run_dir": str(Path(tmp_path) / "run"),
        "data": {"dir": str(data_dir), "src": "en", "tgt": "de", "train": "train", "valid": "val",
                 "test": "test", "max_len": 20, "batch_tokens": 96, "eval_batch_size": 8,
                 "tokenizer": {"joint": True, "vocab_size": 48, "model_type": "word",
                               "character_coverage": 1.0, "byte_fallback": False}},
        "model": {"embedding_dim": 32, "tie_embeddings": False, "dropout": 0.1, "init_uniform": 0.1,
                  "encoder": {"cell": "gru", "layers": 1, "hidden": 32, "bidirectional": False,
                              "dropout": 0.0},
                  "decoder": {"cell": "gru", "layers": 1, "hidden": 32, "input_feeding": False,
                              "dropout": 0.0},
                  "attention": {"context": "hidden", "size": None, "precision": 32}},
        "train": train,
        "decode": {"beam_size": 3, "length_penalty": 1.0, "max_len_ratio": 1.5, "max_len_offset": 5,
                   "nbest": 1, "batch_size": 4},
    }


def write_config(tmp_path, config: dict, name: str = "toy.yaml") -> Path:
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def train_toy_model(directory, **train_overrides) -> Path:
    """Trains the toy config in-process (a few seconds); returns the run directory."""
    from nmt.config import config_from_dict
    from nmt.run import train_from_config

    settings = dict(max_steps=40, valid_every=20)
    settings.update(train_overrides)
    config = config_from_dict(toy_config(directory, **settings))
    train_from_config(config, progress=False, echo=False)
    return Path(config.run_dir)
