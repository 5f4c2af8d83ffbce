import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nmt.config import CELLS, Config, config_from_dict, expand_env, load_config
from nmt.data.files import check_data_files
from nmt.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def write(tmp_path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def dotted_fields(cls, prefix=""):
    """Every leaf key of the schema, e.g. 'model.encoder.cell'."""
    keys = set()
    for spec in dataclasses.fields(cls):
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys |= dotted_fields(type(default), f"{prefix}{spec.name}.")
        else:
            keys.add(f"{prefix}{spec.name}")
    return keys


def yaml_leaf_keys(node, prefix=""):
    keys = set()
    for key, value in node.items():
        if isinstance(value, dict):
            keys |= yaml_leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


# ---------------------------------------------------------------- round trips and shipped configs


def test_defaults_round_trip_through_yaml():
    config = config_from_dict({"name": "x", "model": {"encoder": {"cell": "lstm", "layers": 2}}})
    assert config.run_dir == "runs/x"
    text = yaml.safe_dump(config.to_dict())
    again = config_from_dict(yaml.safe_load(text))
    assert again == config
    assert again.model.encoder.layers == 2 and again.model.decoder.cell == "gru"


def test_reference_config_documents_every_key_and_matches_defaults(monkeypatch):
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    text = (CONFIGS / "reference.yaml").read_text()
    assert yaml_leaf_keys(yaml.safe_load(text)) == dotted_fields(Config)
    for line in text.splitlines():
        if re.match(r"^\s*\w+:\s*[^#\s]", line):  # a key with a value
            assert "#" in line, f"uncommented key in reference.yaml: {line!r}"
    config = load_config(CONFIGS / "reference.yaml")
    defaults = Config().to_dict()
    loaded = config.to_dict()
    for key in ("name", "run_dir"):
        loaded.pop(key), defaults.pop(key)
    assert loaded == defaults


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_multi30k_recipes(cell, monkeypatch, multi30k_dir):
    monkeypatch.setenv("MULTI30K_DIR", str(multi30k_dir))
    config = load_config(CONFIGS / "multi30k" / f"{cell}.yaml")
    model = config.model
    assert (model.encoder.cell, model.decoder.cell) == (cell, cell)
    assert (model.encoder.layers, model.encoder.hidden, model.encoder.bidirectional) == (1, 300, False)
    assert (model.decoder.layers, model.decoder.hidden) == (1, 300)
    assert model.attention.context == "hidden"
    assert config.data.tokenizer.joint and config.data.tokenizer.vocab_size == 8000
    assert (config.train.optimizer, config.train.lr, config.data.batch_tokens) == ("adam", 0.001, 2048)
    assert config.data.dir == str(multi30k_dir)
    files = check_data_files(config, ["train", "valid", "test"])
    assert files["test"][1].name.startswith("test_2016_flickr.de")


def test_data_dir_default_when_variable_unset(monkeypatch):
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    assert load_config(CONFIGS / "multi30k" / "gru.yaml").data.dir == "data/multi30k"


# ---------------------------------------------------------------- errors name the dotted key

BAD_VALUES = [
    ({"model": {"encoder": {"cell": "revgur"}}},
     "model.encoder.cell: 'revgur' is not one of gru, lstm, revgru, revlstm"),
    ({"model": {"encodr": {}}}, "model.encodr: unknown key"),
    ({"trian": {}}, "trian: unknown key; valid keys are name, run_dir, data, model, train, decode"),
    ({"data": {"tokenizer": {"model_type": "wordpiece"}}},
     "data.tokenizer.model_type: 'wordpiece' is not one of unigram, bpe, char, word"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"data": {"tokenizer": {"input_sentence_size": 50}}},
     "data.tokenizer.input_sentence_size: must be 0 (use every sentence) or more than 100"),
    ({"train": {"max_epochs": 2.5}}, "train.max_epochs: expected an integer"),
    ({"train": {"max_epochs": True}}, "train.max_epochs: expected an integer"),
    ({"model": {"tie_embeddings": "maybe"}}, "model.tie_embeddings: expected true or false"),
    ({"model": {"encoder": {"hidden": -4}}}, "model.encoder.hidden: must be at least 1"),
    ({"data": {"batch_tokens": 0}}, "data.batch_tokens: must be at least 1"),
    ({"model": {"dropout": 1.5}}, "model.dropout: must be in [0, 1)"),
    ({"decode": {"beam_size": 4, "nbest": 5}}, "decode.nbest: 5 is larger than decode.beam_size (4)"),
    ({"model": {"tie_embeddings": True, "embedding_dim": 256}},
     "model.tie_embeddings: needs model.decoder.hidden (300) == model.embedding_dim (256)"),
    ({"model": {"encoder": {"cell": "revgru"}}}, "model.attention.context: 'hidden'"),
    ({"model": {"encoder": {"cell": "revgru"}, "attention": {"context": "slice", "size": 151}}},
     "model.attention.size: must be between 1 and half the encoder hidden state (150)"),
    ({"model": {"encoder": {"cell": "revgru"}, "attention": {"context": "emb+proj"}}},
     "model.attention.size: context 'emb+proj' needs a size"),
    ({"model": {"attention": {"size": 20}}}, "model.attention.size: only used with slice/proj"),
    ({"model": {"attention": {"precision": 8}}}, "model.attention.precision: 8 is not one of 32, 16"),
    ({"model": {"encoder": {"max_forget_bits": 4}}},
     "model.encoder.max_forget_bits: 4 is not one of 1, 2, 3, 5, null"),
    ({"model": {"decoder": {"cell": "revlstm", "input_feeding": True}}},
     "model.decoder.input_feeding: not possible with a reversible decoder"),
    ({"model": {"encoder": {"cell": "revgru", "hidden": 301}, "attention": {"context": "emb"}}},
     "model.encoder.hidden: a reversible cell splits the state in two halves"),
    ({"train": {"device": "gpu"}}, "train.device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    ({"train": {"accumulate": 0}}, "train.accumulate: must be at least 1"),
    ({"train": {"lr_schedule": {"factor": 1.0}}}, "train.lr_schedule.factor: must be in (0, 1)"),
    ({"train": {"lr_schedule": {"type": "cosine"}}},
     "train.lr_schedule.type: 'cosine' is not one of plateau, constant"),
    ({"train": {"momentum": 0.9}}, "train.momentum: only used by optimizer sgd"),
    ({"model": {"encoder": [1, 2]}}, "model.encoder: expected a section"),
    ({"name": "a/b"}, "name: 'a/b' must be a single word"),
    ({"decode": {"beam_size": None}}, "decode.beam_size: a value is required"),
    ({"model": {"reversible": {"chunk_steps": 0}}},
     "model.reversible.chunk_steps: must be a positive integer or 'auto'"),
    ({"model": {"reversible": {"chunk_steps": "auto"}}},
     "model.reversible.chunk_mib: chunk_steps 'auto' needs a positive byte budget"),
    ({"model": {"reversible": {"chunk_mib": 8}}},
     "model.reversible.chunk_mib: only used with chunk_steps 'auto'"),
    ({"model": {"reversible": {"kernels": "cuda"}}},
     "model.reversible.kernels: 'cuda' is not one of auto, triton, torch"),
]


@pytest.mark.parametrize("data,message", BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_good_combinations_are_accepted():
    config = config_from_dict({
        "model": {"encoder": {"cell": "revgru", "max_forget_bits": None},
                  "decoder": {"cell": "revlstm"},
                  "attention": {"context": "emb+slice", "size": 20, "precision": 16}},
        "train": {"optimizer": "sgd", "momentum": 0.9, "lr": "1e-5", "max_steps": "null",
                  "clip_grad_norm": None, "device": "cuda:1"},
        "decode": {"beam_size": 5, "nbest": 5}})
    assert config.train.lr == pytest.approx(1e-5)  # YAML 1.1 reads 1e-5 as text
    assert config.train.max_steps is None and config.model.encoder.max_forget_bits is None
    assert set(CELLS) == {"gru", "lstm", "revgru", "revlstm"}


def test_file_errors_give_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nmodel:\n  encoder:\n    cell: revgur\n")
    with pytest.raises(ConfigError, match=r"^model\.encoder\.cell: 'revgur' is not one of .*"
                                          r"config\.yaml line 4\)$"):
        load_config(path)
    path = write(tmp_path, "name: x\nmodel:\n  encoder: [\n    cell: gru\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:5:1: invalid YAML"):
        load_config(path)
    path = write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"^train\.lr: duplicate key \(.*line 3\)"):
        load_config(path)
    path = write(tmp_path, "- name\n- x\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: expected a mapping of sections.*a list"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(write(tmp_path, "")) == Config(run_dir="runs/run")


def test_environment_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("NMT_TEST_DIR", "/data/here")
    monkeypatch.delenv("NMT_TEST_UNSET", raising=False)
    assert expand_env("${NMT_TEST_DIR}/x", "k") == "/data/here/x"
    assert expand_env("${NMT_TEST_UNSET:-fallback}", "k") == "fallback"
    assert expand_env("$HOME stays", "k") == "$HOME stays"
    path = write(tmp_path, "data:\n  dir: ${NMT_TEST_UNSET}\n")
    with pytest.raises(ConfigError, match=r"^data\.dir: environment variable NMT_TEST_UNSET is not set"):
        load_config(path)
    monkeypatch.setenv("NMT_TEST_STEPS", "250")
    path = write(tmp_path, "train:\n  max_steps: ${NMT_TEST_STEPS}\n")
    assert load_config(path).train.max_steps == 250


def test_command_line_overrides(monkeypatch, tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\nmodel:\n  encoder:\n    cell: lstm\n")
    monkeypatch.setenv("NMT_TEST_DIR", "/data/here")
    config = load_config(path, ["train.lr=5e-4", "train.max_steps=null", "decode.beam_size=3",
                                "model.encoder.cell=gru", "model.tie_embeddings=true",
                                "data.dir=${NMT_TEST_DIR}", "name=with=sign"])
    assert config.train.lr == 0.0005 and config.train.max_steps is None
    assert config.decode.beam_size == 3 and config.model.encoder.cell == "gru"
    assert config.model.tie_embeddings is True and config.data.dir == "/data/here"
    assert config.name == "with=sign"  # the first '=' separates key and value
    assert load_config(path).train.lr == 0.1  # the file is unchanged
    with pytest.raises(ConfigError, match=r"^train\.lrr: unknown key.*\(--set train\.lrr\)$"):
        load_config(path, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number.*\(--set train\.lr\)$"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"^--set 'train\.lr': expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"^--set train\.lr\.x: train\.lr is not a section"):
        load_config(path, ["train.lr.x=1"])


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    cell: revgur\n")
    result = subprocess.run([sys.executable, "-m", "nmt", "prepare", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"nmt prepare: error: model.encoder.cell: 'revgur' is not one of gru, lstm, "
                     f"revgru, revlstm ({path} line 3)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for an invalid config
