"""`nmt bench scaling` on a tiny config: the table's fields, growth with T, one-line errors."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.bench import scaling
from training.toy import toy_config, write_config

REPO = Path(__file__).resolve().parents[2]
WAYS = ("plain", "checkpointed", "reversible")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("scaling")
    return write_config(tmp_path, toy_config(tmp_path))


def test_json_table_grows_with_length_and_orders_the_three_ways(config, capsys):
    parser = argparse.ArgumentParser()
    scaling.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--lengths", "30,5,60", "--batch", "3",
                              "--repeats", "2", "--warmup", "0", "--json"])
    assert scaling.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lengths"] == [5, 30, 60]
    rows = report["rows"]
    assert [row["length"] for row in rows] == [5, 30, 60]
    for row in rows:
        for way in WAYS:
            assert row[f"{way}_step_ms"] > 0
            assert row[f"{way}_bytes"] == row[f"{way}_saved_bytes"] + row[f"{way}_kept_bytes"]
            assert f"{way}_cuda_peak_bytes" not in row  # CPU run
    plain = [row["plain_bytes"] for row in rows]
    checkpointed = [row["checkpointed_bytes"] for row in rows]
    reversible = [row["reversible_bytes"] for row in rows]
    assert plain[0] < plain[1] < plain[2]
    # plain keeps at least every decoder hidden state: 4 bytes x 32 units x 3 rows per step
    assert plain[2] - plain[0] >= 4 * 32 * 3 * 55
    assert all(c < p for c, p in zip(checkpointed, plain))
    assert reversible[1] > 0 and rows[1]["reversible_kept_bytes"] > 0  # buffer + final state
    growth = report["growth"]
    assert growth["plain_bytes_per_step"] > growth["checkpointed_bytes_per_step"]
    assert growth["reversible_bytes_growth_vs_plain"] < 1 / 8
    assert "reversible" in report["reversible_kind"] or "Reversible" in report["reversible_kind"]


def nmt(*args):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_command_line_table(config):
    result = nmt("bench", "scaling", "--config", str(config), "--lengths", "4,8", "--batch", "2",
                 "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "growth per token of T" in result.stdout
    assert "plain bytes" in result.stdout and "reversible bytes" in result.stdout


@pytest.mark.parametrize("flags, message", [
    (["--lengths", "10,x"], "--lengths"), (["--lengths", "1"], "--lengths"),
    (["--batch", "0"], "--batch"), (["--device", "cuda:7"], "--device"),
    (["--set", "model.encoder.cell=rnn"], "--set model.encoder.cell"),
    (["--set", "memory.x=1"], "--set memory.x")])
def test_bad_flags_are_one_line_errors(config, flags, message, capsys):
    from nmt.cli import main

    if flags[:2] == ["--device", "cuda:7"] and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "scaling", "--config", str(config), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert message in err


def test_a_reversible_config_is_measured_with_its_own_model_and_a_plain_twin(tmp_path, capsys):
    from nmt.config import load_config
    from nmt.errors import ConfigError
    from nmt.models.build import build_model

    values = toy_config(tmp_path)
    for part in ("encoder", "decoder"):
        values["model"][part]["cell"] = "revgru"
    values["model"]["attention"] = {"context": "emb+slice", "size": 4, "precision": 32}
    path = write_config(tmp_path, values, "rev.yaml")
    try:
        build_model(load_config(path).model, 48, 48)
    except ConfigError as error:
        pytest.skip(f"no reversible Seq2Seq in this build: {error}")
    parser = argparse.ArgumentParser()
    scaling.add_arguments(parser)
    assert scaling.run(parser.parse_args(["--config", str(path), "--lengths", "5,40",
                                          "--batch", "2", "--repeats", "1", "--warmup", "0",
                                          "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reversible_kind"] == "reversible Seq2Seq"
    short, long = report["rows"]
    assert short["reversible_kept_bytes"] > 0  # buffer heads and final states
    assert long["plain_bytes"] > long["checkpointed_bytes"]
    assert report["growth"]["reversible_bytes_growth_vs_plain"] < 1 / 8
