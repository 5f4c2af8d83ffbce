import os
import random
import subprocess
import sys

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.errors import UserError


def make_payload(step=10, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    return {
        "config": {"name": "toy", "train": {"lr": 0.01, "max_steps": None}},
        "tokenizer": ckpt.bytes_to_tensor(b"\x00sentencepiece\xffbytes"),
        "vocab_sizes": {"src": 7, "tgt": 3},
        "model": model.state_dict(),
        "step": step, "epoch": 1, "best_score": None,
        "training": {"optimizer": optimizer.state_dict(), "rng": ckpt.capture_rng_state()},
    }


def test_round_trip_loads_with_weights_only(tmp_path):
    payload = make_payload()
    path = ckpt.save_checkpoint(tmp_path / "a.pt", payload)
    raw = torch.load(path, weights_only=True)  # no pickled objects anywhere
    assert raw["format_version"] == ckpt.FORMAT_VERSION
    loaded = ckpt.load_checkpoint(path)
    assert ckpt.tensor_to_bytes(loaded["tokenizer"]) == b"\x00sentencepiece\xffbytes"
    for key, value in payload["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["config"] == payload["config"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_missing_file_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint .*nope\.pt: no such file"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_checkpoint_is_one_line_user_error(tmp_path, damage):
    path = ckpt.save_checkpoint(tmp_path / "a.pt", make_payload())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # inside tensor data: only the checksum can notice
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        ckpt.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_rng_state_round_trip_reproduces_draws():
    random.seed(3)
    torch.manual_seed(3)
    import numpy
    numpy.random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = ckpt.capture_rng_state()
    expected = (random.random(), torch.rand(3), numpy.random.rand(), random.gauss(0, 1))
    random.seed(99), torch.manual_seed(99), numpy.random.seed(99)
    ckpt.restore_rng_state(state)
    got = (random.random(), torch.rand(3), numpy.random.rand(), random.gauss(0, 1))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_rng_state_survives_weights_only_file(tmp_path):
    torch.manual_seed(5)
    path = ckpt.save_checkpoint(tmp_path / "r.pt", dict(make_payload(), training={"rng": ckpt.capture_rng_state()}))
    expected = torch.rand(4)
    torch.manual_seed(6)
    ckpt.restore_rng_state(ckpt.load_checkpoint(path)["training"]["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_prune_keeps_last_k_and_latest_link(tmp_path):
    for step in (5, 10, 15, 20):
        path = ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, step), make_payload(step))
        ckpt.point_latest_at(tmp_path, path)
        ckpt.prune_step_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-00000015.pt", "step-00000020.pt"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(tmp_path))["step"] == 20


def test_resume_falls_back_to_previous_good_checkpoint(tmp_path):
    for step in (5, 10):
        ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, step), make_payload(step))
    newest = ckpt.step_checkpoint_path(tmp_path, 10)
    newest.write_bytes(newest.read_bytes()[:100])
    warnings = []
    payload = ckpt.load_latest_good(tmp_path, warn=warnings.append)
    assert payload["step"] == 5
    assert len(warnings) == 1 and "step-00000010.pt" in warnings[0]


def test_resume_with_only_corrupted_checkpoints_fails(tmp_path):
    path = ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, 5), make_payload())
    path.write_bytes(b"junk")
    with pytest.raises(UserError, match="no loadable checkpoint"):
        ckpt.load_latest_good(tmp_path, warn=lambda message: None)
    assert ckpt.load_latest_good(tmp_path / "empty") is None


def test_average_is_elementwise_mean(tmp_path):
    paths = [ckpt.save_checkpoint(tmp_path / f"{i}.pt", make_payload(step=i, seed=i)) for i in range(3)]
    states = [ckpt.load_checkpoint(p)["model"] for p in paths]
    averaged = ckpt.average_checkpoints(paths)
    for key in states[0]:
        expected = (states[0][key] + states[1][key] + states[2][key]) / 3
        assert torch.allclose(averaged["model"][key], expected, atol=1e-7)
    assert averaged["training"] is None and averaged["step"] == 2


def test_average_rejects_different_models(tmp_path):
    a = ckpt.save_checkpoint(tmp_path / "a.pt", make_payload())
    other = make_payload()
    other["model"] = {"weight": torch.zeros(2)}
    b = ckpt.save_checkpoint(tmp_path / "b.pt", other)
    with pytest.raises(UserError, match="differ"):
        ckpt.average_checkpoints([a, b])


def test_average_cli(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, step), make_payload(step, seed=step))
    out = tmp_path / "avg.pt"
    result = subprocess.run([sys.executable, "-m", "nmt", "average", "--run-dir", str(tmp_path),
                             "--last", "2", "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    averaged = ckpt.load_checkpoint(out)
    two = [ckpt.load_checkpoint(ckpt.step_checkpoint_path(tmp_path, s))["model"] for s in (2, 3)]
    for key in two[0]:
        assert torch.allclose(averaged["model"][key], (two[0][key] + two[1][key]) / 2, atol=1e-7)
    bad = subprocess.run([sys.executable, "-m", "nmt", "average", "--checkpoints", str(tmp_path / "x.pt"),
                          "--output", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "x.pt" in bad.stderr


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    kept = ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, 5), make_payload())
    stale = [ckpt.checkpoint_dir(tmp_path) / ".step-00000010.pt.ab12cd.tmp", tmp_path / ".best.pt.x1.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert sorted(ckpt.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert kept.exists() and not any(path.exists() for path in stale)
