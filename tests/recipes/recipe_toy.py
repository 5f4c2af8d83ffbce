"""A tiny dataset laid out like Multi30K (gzipped, same split names) and a tiny recipe config."""
from __future__ import annotations

import gzip
from pathlib import Path

import yaml

from training.toy import toy_config, write_toy_data

MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}


def write_toy_multi30k(directory) -> Path:
    """{train,val,test_2016_flickr}.{en,de}.gz in `directory` (the toy one-to-one word task).

    The German test references start with a capital letter, which the model never learns, so
    cased and lowercased BLEU differ."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = write_toy_data(directory.parent / f"{directory.name}-plain", train=240, valid=16,
                           test=24)
    for toy_name, multi30k_name in MULTI30K_SPLITS.items():
        for lang in ("en", "de"):
            lines = (plain / f"{toy_name}.{lang}").read_text(encoding="utf-8").splitlines()
            if toy_name == "test" and lang == "de":
                lines = [line[:1].upper() + line[1:] for line in lines]
            with gzip.open(directory / f"{multi30k_name}.{lang}.gz", "wt", encoding="utf-8") as stream:
                stream.write("".join(line + "\n" for line in lines))
    return directory


def write_recipe_config(tmp_path, *, name: str = "toy-recipe", cell: str = "gru",
                        **train_overrides) -> Path:
    """A config like configs/multi30k/*.yaml (data.dir from $MULTI30K_DIR) for the toy model;
    `cell` revgru/revlstm makes it reversible, attending to Emb+4H.

    Its own budget is large (50 epochs, 60 minutes), so a run that stops early shows that the
    recipe's budget option was applied."""
    values = toy_config(tmp_path, **{"max_steps": None, "max_epochs": 50, "max_minutes": 60,
                                     "valid_every": 100000, "log_every": 2, **train_overrides})
    values["name"] = name
    values["run_dir"] = str(Path(tmp_path) / "runs" / name)
    values["data"]["dir"] = "${MULTI30K_DIR:-data/multi30k}"
    values["data"]["test"] = "test_2016_flickr"
    values["data"]["batch_tokens"] = 48  # more, smaller updates: it learns something in 2 epochs
    values["model"]["encoder"]["cell"] = values["model"]["decoder"]["cell"] = cell
    if cell.startswith("rev"):
        values["model"]["attention"] = {"context": "emb+slice", "size": 4, "precision": 32}
    path = Path(tmp_path) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path
