"""A checkpoint carrying a pickled object that would run code is refused, and the code never runs.

The payload's __reduce__ asks the unpickler to call os.system("touch MARKER"): a plain
`torch.load(weights_only=False)` creates MARKER (checked first, so the payload is known to be
live); every RevNMT path that loads checkpoints must refuse it with a one-line error instead."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.errors import UserError

REPO = Path(__file__).resolve().parent.parent.parent


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path, *, zip_format: bool = True) -> Path:
    """A file that looks like a RevNMT checkpoint with the payload hidden in the model."""
    payload = {"format_version": ckpt.FORMAT_VERSION, "config": {}, "vocab_sizes": {"src": 8, "tgt": 8},
               "tokenizer": torch.zeros(4, dtype=torch.uint8), "step": 5, "epoch": 1,
               "model": {"weight": torch.zeros(2), "bias": RunsCode(marker)}, "training": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    return path


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_payload_is_live_but_load_checkpoint_refuses_it(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pt", marker, zip_format=zip_format)
    unsafe = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", unsafe], check=True, capture_output=True)
    assert marker.exists()  # an unsafe load does run the code
    marker.unlink()

    with pytest.raises(UserError) as caught:
        ckpt.load_checkpoint(path)
    assert not marker.exists()
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path}: refused: it holds a pickled Python object (posix.system)")
    assert "\n" not in message


def test_resume_skips_a_malicious_newest_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    good = {"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
            "vocab_sizes": {"src": 1, "tgt": 1}, "model": {"w": torch.ones(1)}, "step": 1, "epoch": 1}
    ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, 1), good)
    write_malicious(ckpt.step_checkpoint_path(tmp_path, 2), marker)
    warnings = []
    payload = ckpt.load_latest_good(tmp_path, warn=warnings.append)
    assert payload["step"] == 1 and not marker.exists()
    assert "step-00000002.pt: refused" in warnings[0]


@pytest.mark.parametrize("command", [
    ["translate", "--checkpoint", "{ckpt}"],
    ["evaluate", "--checkpoint", "{ckpt}", "--split", "test"],
    ["average", "--checkpoints", "{ckpt}", "{ckpt}", "--output", "{dir}/avg.pt"],
])
def test_cli_commands_refuse_it_in_one_line(tmp_path, command):
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pt", marker)
    arguments = [part.format(ckpt=path, dir=tmp_path) for part in command]
    done = subprocess.run([sys.executable, "-m", "nmt", *arguments], cwd=REPO, input="a b\n",
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"checkpoint {path}: refused" in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "avg.pt").exists()


def test_a_plain_pickle_is_refused_in_one_line_without_torch_warnings(tmp_path):
    """`pickle.dump` writes protocol 4+, which torch's weights-only loader warns about before
    refusing; the user sees RevNMT's one line only."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": RunsCode(marker)}, handle, protocol=4)
    done = subprocess.run([sys.executable, "-m", "nmt", "translate", "--checkpoint", str(path)],
                          cwd=REPO, input="a b\n", capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 2 and not marker.exists()
    assert done.stderr.strip().splitlines() == [
        f"nmt translate: error: checkpoint {path}: refused: it holds a pickled Python object "
        "(a plain Python pickle, not written by torch.save), which could run code when loaded; "
        "RevNMT checkpoints hold only tensors and plain data, so do not load it"]
