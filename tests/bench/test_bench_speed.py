"""`nmt bench speed` on tiny configs: JSON fields, honest token counts, one-line errors."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece

from nmt.bench import speed
from training.toy import toy_config, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("speed")
    gru = toy_config(tmp_path)
    lstm = toy_config(tmp_path)
    lstm["run_dir"] = str(tmp_path / "run-lstm")
    for part in ("encoder", "decoder"):
        lstm["model"][part]["cell"] = "lstm"
    return (write_config(tmp_path, gru, "gru.yaml"), write_config(tmp_path, lstm, "lstm.yaml"),
            gru)


def bench(capsys, *argv):
    parser = argparse.ArgumentParser()
    speed.add_arguments(parser)
    assert speed.run(parser.parse_args(list(argv))) == 0
    return json.loads(capsys.readouterr().out)


def test_two_configs_in_alternation_give_medians_tokens_per_second_and_a_ratio(configs, capsys):
    gru, lstm, values = configs
    report = bench(capsys, "--config", str(gru), "--vs", str(lstm), "--steps", "3", "--warmup",
                   "1", "--device", "cpu", "--json")
    assert report["steps"] == 3 and report["device"] == "cpu"
    for label in ("A", "B"):
        figures = report[label]
        seconds = figures["step_seconds"]
        assert len(seconds) == 3 and all(s > 0 for s in seconds)
        assert figures["median_step_s"] == pytest.approx(sorted(seconds)[1], abs=1e-6)
        assert figures["tgt_tokens_per_s"] == pytest.approx(
            3 * figures["tgt_tokens_per_step"] / sum(seconds), rel=1e-3)
    ratios = sorted(a / b for a, b in zip(report["A"]["step_seconds"], report["B"]["step_seconds"]))
    assert report["ratio"] == pytest.approx(ratios[1], rel=1e-3)
    assert report["A"]["parameters"] != report["B"]["parameters"]  # LSTM has more gates

    # tokens per step counted independently: the timed batches are batches 2..4 of epoch 1
    from nmt.data.batching import TokenBatchSampler
    from nmt.data.corpus import read_lines

    tokenizer = sentencepiece.SentencePieceProcessor(
        model_file=str(next((Path(values["run_dir"]) / "spm").glob("*.model"))))
    data = Path(values["data"]["dir"])
    src = [tokenizer.encode(line) for line in read_lines(data / "train.en")]
    tgt = [tokenizer.encode(line) for line in read_lines(data / "train.de")]
    keep = [i for i in range(len(src)) if len(src[i]) <= 20 and len(tgt[i]) <= 20]
    sampler = TokenBatchSampler([len(src[i]) for i in keep], [len(tgt[i]) for i in keep],
                                batch_tokens=values["data"]["batch_tokens"],
                                seed=values["train"]["seed"])
    timed = sampler.batches_for_epoch(0)[1:4]
    expected = sum(len(tgt[keep[i]]) + 1 for batch in timed for i in batch) / 3  # + EOS
    assert report["A"]["tgt_tokens_per_step"] == pytest.approx(expected)


def nmt(*args):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_command_line_prints_a_readable_report(configs):
    gru, _, _ = configs
    result = nmt("bench", "speed", "--config", str(gru), "--steps", "2", "--warmup", "0",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "target tokens/s" in result.stdout and "median step" in result.stdout


def test_bad_input_is_one_line_exit_2(tmp_path, configs):
    gru, _, _ = configs
    missing = nmt("bench", "speed", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.yaml" in missing.stderr
    zero = nmt("bench", "speed", "--config", str(gru), "--steps", "0")
    assert zero.returncode == 2 and "--steps" in zero.stderr and zero.stderr.count("\n") == 1


def test_profile_ranks_operations_by_self_time(configs, capsys):
    """--profile N: per config, the operations that took the step's time, largest first, with
    shares of the profiled total; the GRU step's matrix products are among them."""
    gru, _, _ = configs
    report = bench(capsys, "--config", str(gru), "--steps", "1", "--warmup", "1", "--device",
                   "cpu", "--profile", "2", "--profile-rows", "8", "--json")
    profile = report["profile"]["A"]
    assert profile["steps"] == 2 and profile["sorted_by"] == "self_cpu_time_total"
    rows = profile["top"]
    assert 1 <= len(rows) <= 8
    times = [row["self_ms_per_step"] for row in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert 0 < sum(row["share"] for row in rows) <= 1 + 1e-9
    assert any(name in row["op"] for row in rows for name in ("mm", "linear", "gru", "bmm"))
    assert "Self CPU" in profile["table"]


def test_set_overrides_both_configs(configs, capsys):
    """--set applies to A and to B: the GRU config turned LSTM has the LSTM config's parameters."""
    gru, lstm, _ = configs
    report = bench(capsys, "--config", str(gru), "--vs", str(lstm), "--set",
                   "model.encoder.cell=lstm", "--set", "model.decoder.cell=lstm", "--steps", "1",
                   "--warmup", "0", "--device", "cpu", "--json")
    assert report["A"]["parameters"] == report["B"]["parameters"]
    bad = nmt("bench", "speed", "--config", str(gru), "--set", "model.hiden=3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "(--set model.hiden)" in bad.stderr


def test_count_launches_per_time_step_on_both_kernel_paths(configs, tmp_path, capsys):
    """--count-launches: aten compute ops + Triton launches of one forward + backward, divided by
    the batch's padded source + target lengths; the fused path (under the interpreter) has fewer."""
    pytest.importorskip("triton")
    from nmt.reversible import triton_kernels

    _, _, values = configs
    rev = json.loads(json.dumps(values))
    rev["model"]["encoder"].update(cell="revgru", bidirectional=False)
    rev["model"]["decoder"].update(cell="revgru", input_feeding=False)
    rev["model"]["attention"] = {"context": "emb+slice", "size": 2, "precision": 32}
    path = write_config(tmp_path, rev, "rev.yaml")
    reports = {}
    for kernels in ("torch", "triton") if triton_kernels.interpreting() else ("torch",):
        report = bench(capsys, "--config", str(path), "--set", f"model.reversible.kernels={kernels}",
                       "--steps", "1", "--count-launches", "--batch-sentences", "3",
                       "--device", "cpu", "--json")
        figures = reports[kernels] = report["A"]
        assert figures["fused"] == (kernels == "triton")
        assert figures["batch_sentences"] == 3
        assert figures["time_steps"] == figures["src_steps"] + figures["tgt_steps"]
        phases = figures["phases"]
        total = sum(p["aten_compute"] + p["triton_launches"] for p in phases.values())
        assert figures["launches_per_time_step"] == pytest.approx(total / figures["time_steps"])
        assert (phases["backward"]["triton_launches"] > 0) == (kernels == "triton")
    if "triton" in reports:
        assert (reports["triton"]["launches_per_time_step"]
                < reports["torch"]["launches_per_time_step"])
