"""recipes/check_tensorboard.py against a real TensorBoard on tiny logdirs written with SummaryWriter."""
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "check_tensorboard.py"
TAGS = "memory/encoder_ratio,memory/decoder_ratio"
STEPS = [5, 10, 15, 20, 23]

spec = importlib.util.spec_from_file_location("check_tensorboard", SCRIPT)
check_tensorboard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_tensorboard)


def encoder_ratio(step):
    return 10.0 + step / 8.0


def decoder_ratio(step):
    return 15.0 - step / 16.0


def write_run(run_dir: Path, steps=STEPS, *, memory=True, metrics_steps=None):
    """A RevNMT-like run directory: tensorboard/ events and the matching metrics.jsonl."""
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    records = []
    for step in steps:
        writer.add_scalar("train/loss", 5.0 / step, step)
        record = {"event": "train", "step": step, "loss": 5.0 / step}
        if memory:
            writer.add_scalar("memory/encoder_ratio", encoder_ratio(step), step)
            writer.add_scalar("memory/decoder_ratio", decoder_ratio(step), step)
            record.update({"memory/encoder_ratio": encoder_ratio(step),
                           "memory/decoder_ratio": decoder_ratio(step)})
        records.append(record)
    writer.close()
    if metrics_steps is not None:
        records = [dict(records[0], step=step) for step in metrics_steps]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def run_check(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def assert_server_stopped(output: str):
    pid, port = re.search(r"started tensorboard \(pid (\d+)\) on http://127\.0\.0\.1:(\d+)", output).groups()
    assert f"stopped tensorboard (pid {pid})" in output
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(port))) != 0


def test_every_logged_step_is_served_for_each_run(tmp_path):
    write_run(tmp_path / "runs" / "revgru")
    write_run(tmp_path / "runs" / "gru", memory=False)  # no memory curves: skipped, not failed
    done = run_check("--logdir", tmp_path / "runs", "--tags", TAGS, "--timeout", 120)
    assert done.returncode == 0, done.stdout + done.stderr
    for tag in TAGS.split(","):
        assert f"ok run revgru/tensorboard tag {tag}: 5 logged steps (5..23)" in done.stdout
    assert "run gru/" not in done.stdout
    assert_server_stopped(done.stdout)


def test_a_named_run_in_the_logdir_itself(tmp_path):
    write_run(tmp_path)
    done = run_check("--logdir", tmp_path / "tensorboard", "--tags", "train/loss," + TAGS,
                     "--run", ".", "--timeout", 120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok run . tag") == 3
    assert_server_stopped(done.stdout)


def test_steps_logged_but_not_in_the_event_files_fail(tmp_path):
    # metrics.jsonl says step 30 was logged too; TensorBoard cannot serve it
    write_run(tmp_path / "run", metrics_steps=STEPS + [30])
    done = run_check("--logdir", tmp_path / "run" / "tensorboard", "--tags", "train/loss",
                     "--timeout", 120, "--settle", 6)
    assert done.returncode == 1
    assert "FAIL: 1 of 6 steps not served (first: [30])" in done.stdout
    assert_server_stopped(done.stdout)


def test_compare_curve_reports_missing_extra_and_wrong_values():
    expected = {1: 1.0, 2: 2.0}
    assert check_tensorboard.compare_curve(expected, [[0.0, 1, 1.0], [0.0, 2, 2.0000001]]) is None
    assert "not served" in check_tensorboard.compare_curve(expected, None)
    assert "1 of 2 steps not served" in check_tensorboard.compare_curve(expected, [[0.0, 1, 1.0]])
    assert "not logged (first: [3])" in check_tensorboard.compare_curve(
        expected, [[0, 1, 1.0], [0, 2, 2.0], [0, 3, 3.0]])
    assert "1 values differ (step 2" in check_tensorboard.compare_curve(
        expected, [[0, 1, 1.0], [0, 2, 2.5]])


def test_expected_curves_from_event_files_without_metrics(tmp_path):
    write_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    curves = check_tensorboard.expected_curves(tmp_path, ["memory/encoder_ratio"], None)
    served = curves["run/tensorboard"]["memory/encoder_ratio"]
    assert sorted(served) == STEPS
    assert served[20] == pytest.approx(encoder_ratio(20), rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--tags", "memory/encoder_ratio"], "no run logged any of memory/encoder_ratio"),
    (["--run", "elsewhere"], "--run elsewhere: not a run of"),
    (["--run", "tensorboard", "--tags", "valid/bleu"], "run tensorboard: logged no valid/bleu"),
])
def test_nothing_to_check_is_one_line(tmp_path, args, message):
    write_run(tmp_path, memory=False)
    done = run_check("--logdir", tmp_path, *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert "started tensorboard" not in done.stdout
