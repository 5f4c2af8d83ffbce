"""The Multi30K grid configs (the paper's Table 3 rows) build the models they name."""
from dataclasses import replace
from pathlib import Path

import pytest

from nmt.config import load_config
from nmt.models import build_model
from nmt.models.reversible_encoder import ReversibleEncoder

GRID = Path(__file__).resolve().parents[2] / "configs" / "multi30k"
# row -> (attention context width: embeddings 300 + stored units, stored units, memory saving)
ROWS = {"20h": (20, 20, True), "100h": (100, 100, True), "300h": (300, 0, False),
        "emb": (300, 0, True), "emb20h": (320, 20, True), "embproj20": (320, 20, True)}


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
@pytest.mark.parametrize("row", ["20h", "100h", "300h", "emb", "emb20h", "emb20h-fp16",
                                 "emb20h-k1", "emb20h-k2", "emb20h-k5", "emb20h-knone",
                                 "embproj20"])
def test_grid_config_builds_its_row(cell, row, monkeypatch):
    monkeypatch.setenv("MULTI30K_DIR", "data/multi30k")
    config = load_config(GRID / f"{cell}-{row}.yaml")
    model_cfg = config.model
    assert model_cfg.encoder.cell == model_cfg.decoder.cell == cell
    assert model_cfg.encoder.hidden == model_cfg.decoder.hidden == 300
    assert model_cfg.encoder.layers == model_cfg.decoder.layers == 1
    bits = {"k1": 1, "k2": 2, "k5": 5, "knone": None}.get(row.split("-")[-1], 3)
    assert model_cfg.encoder.max_forget_bits == model_cfg.decoder.max_forget_bits == bits
    assert model_cfg.attention.precision == (16 if row.endswith("fp16") else 32)
    width, stored, saving = ROWS[row.split("-")[0]]
    model = build_model(model_cfg, 64, 64)
    encoder = model.encoder
    assert isinstance(encoder, ReversibleEncoder) and encoder.memory_saving is saving
    assert encoder.context_size == width
    storage = encoder.rnn.storage
    assert (storage.units if storage is not None else 0) == stored
    assert (storage is not None and storage.kind.value == "proj") == row.startswith("embproj")
    baseline = load_config(GRID / "gru.yaml")
    assert config.data == baseline.data and config.train.lr == baseline.train.lr
    assert config.train.optimizer == baseline.train.optimizer


def test_char_config_is_a_long_sequence_recipe_outside_the_grid(monkeypatch):
    monkeypatch.setenv("MULTI30K_DIR", "data/multi30k")
    path = GRID / "long" / "revgru-char.yaml"
    assert path not in set(GRID.glob("*.yaml"))  # recipes/multi30k/grid.sh's default list
    config = load_config(path)
    assert config.data.tokenizer.model_type == "char" and config.data.max_len >= 300
    assert config.model.encoder.cell == config.model.decoder.cell == "revgru"
    assert config.model.encoder.max_forget_bits == config.model.decoder.max_forget_bits == 3
    assert str(config.model.reversible.chunk_steps) == "2"
    model = build_model(config.model, config.data.tokenizer.vocab_size,
                        config.data.tokenizer.vocab_size)
    assert isinstance(model.encoder, ReversibleEncoder) and model.encoder.context_size == 320


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_gpu_configs_are_the_grid_configs_on_the_fused_path(cell, monkeypatch):
    monkeypatch.setenv("MULTI30K_DIR", "data/multi30k")
    path = GRID / "gpu" / f"{cell}-emb20h.yaml"
    assert path not in set(GRID.glob("*.yaml"))  # not in recipes/multi30k/grid.sh's list
    config, grid = load_config(path), load_config(GRID / f"{cell}-emb20h.yaml")
    reversible = config.model.reversible
    assert (reversible.kernels, reversible.fused_products) == ("auto", True)
    assert (str(reversible.chunk_steps), reversible.readout_steps) == ("8", 4)
    assert config.data == grid.data and config.train == grid.train
    assert config.decode == grid.decode
    assert replace(config.model, reversible=grid.model.reversible) == grid.model
    model = build_model(config.model, 64, 64)
    assert model.encoder.rnn.fused_products and model.decoder.rnn.readout_steps == 4
