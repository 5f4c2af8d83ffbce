"""Self-contained checkpoints: one file holds everything needed to translate or to resume.

Layout (a dict of tensors and plain containers, so `torch.load(path, weights_only=True)` works):

    format_version  int
    config          the run's config as a plain dict (`Config.to_dict()`)
    tokenizer       uint8 tensor of `Tokenizer.to_bytes()` (the sentencepiece model(s))
    vocab_sizes     {"src": int, "tgt": int}
    model           the model's state_dict
    step, epoch     training progress when written
    best_score      best validation BLEU so far (or None)
    training        resume state or None: optimizer, lr_schedule, sampler, rng, stats
    checksum        sha1 over everything above, so flipped bytes are caught, not loaded

Writes are atomic (temporary file in the same directory, fsync, `os.replace`), so a run killed while
saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from nmt.errors import UserError
from nmt.run_layout import (STEP_CHECKPOINT_NAME, best_checkpoint_path,  # noqa: F401 - ckpt.*
                             checkpoint_dir, latest_checkpoint_path, step_checkpoint_path)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "tokenizer", "vocab_sizes", "model", "step", "epoch")


# --- files ---------------------------------------------------------------------------------------

def save_checkpoint(path, payload: dict) -> Path:
    """Writes `payload` (plus format version and checksum) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, format_version=FORMAT_VERSION)
    payload.pop("checksum", None)
    payload["checksum"] = content_checksum(payload)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide it from others
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Loads and checks a checkpoint; any problem is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():
            # a pickle written by `pickle.dump` (protocol 3+) makes torch warn before refusing it;
            # the refusal below says it in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, OSError, UnpicklingError, EOFError...
        refused = _refused_global(str(error))
        if refused:
            raise UserError(f"checkpoint {path}: refused: it holds a pickled Python object "
                            f"({refused}), which could run code when loaded; RevNMT checkpoints "
                            f"hold only tensors and plain data, so do not load it") from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path}: unreadable (truncated or corrupted?): {reason}") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise UserError(f"checkpoint {path}: not a RevNMT checkpoint (missing fields)")
    if payload["format_version"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {payload['format_version']} "
                        f"is not supported (this version reads {FORMAT_VERSION})")
    stored = payload.pop("checksum", None)
    if stored is not None and stored != content_checksum(payload):
        raise UserError(f"checkpoint {path}: corrupted (checksum mismatch)")
    return payload


def _refused_global(message: str) -> Optional[str]:
    """What `weights_only=True` refused to unpickle (e.g. 'GLOBAL posix.system'), if that is why
    the load failed."""
    if not message.startswith("Weights only load failed"):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return found.group(1)
    if "Unsupported operand" in message:
        return "a plain Python pickle, not written by torch.save"
    return "not tensors or plain data"


def content_checksum(value) -> str:
    """sha1 over the structure: dict keys in order, tensor dtype/shape/bytes, primitive reprs."""
    digest = hashlib.sha1()
    _hash_into(digest, value)
    return digest.hexdigest()


def _hash_into(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _hash_into(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _hash_into(digest, item)
    else:
        digest.update(repr(value).encode())


# --- the run's checkpoints (named in nmt.run_layout) ---------------------------------------------

def step_checkpoints(run_dir) -> List[Path]:
    """The run's step checkpoints, oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in directory.iterdir()
             if (match := STEP_CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def point_latest_at(run_dir, target: Path) -> None:
    """Makes `{run_dir}/latest.pt` a relative symlink to `target`, replacing it atomically."""
    link = latest_checkpoint_path(run_dir)
    temp = link.with_name(f".{link.name}.tmp")
    if temp.is_symlink() or temp.exists():
        temp.unlink()
    os.symlink(os.path.relpath(target, link.parent), temp)
    os.replace(temp, link)


def prune_step_checkpoints(run_dir, keep_last: int) -> List[Path]:
    """Deletes all but the newest `keep_last` step checkpoints; returns what was deleted."""
    paths = step_checkpoints(run_dir)
    doomed = paths[:-keep_last] if keep_last > 0 else paths
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(run_dir) -> List[Path]:
    """Deletes half-written checkpoint files a killed run left behind (`.NAME.*.tmp`)."""
    removed = []
    for directory in (Path(run_dir), checkpoint_dir(run_dir)):
        if directory.is_dir():
            for path in directory.glob(".*.pt.*.tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def load_latest_good(run_dir, *, map_location="cpu", warn=None) -> Optional[dict]:
    """The newest step checkpoint that loads; corrupted ones are skipped with a warning.

    Returns None when the run has no step checkpoints; raises UserError when it has some but
    none of them loads.
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    paths = step_checkpoints(run_dir)
    errors = []
    for path in reversed(paths):
        try:
            payload = load_checkpoint(path, map_location=map_location)
        except UserError as error:
            errors.append(str(error))
            warn(f"{error}; falling back to the previous checkpoint")
            continue
        payload["path"] = str(path)
        return payload
    if errors:
        raise UserError(f"no loadable checkpoint in {checkpoint_dir(run_dir)} "
                        f"({len(errors)} corrupted)")
    return None


# --- RNG state as tensors ------------------------------------------------------------------------

def capture_rng_state() -> dict:
    """Python, torch (CPU and CUDA) RNG states as tensors and primitives."""
    version, internal, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        return state
    kind, keys, position, has_gauss, cached = numpy.random.get_state()
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")),
                      "position": int(position), "has_gauss": int(has_gauss),
                      "cached": float(cached)}
    return state


def restore_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()),
                     python["gauss_next"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        import numpy
        saved = state["numpy"]
        numpy.random.set_state((saved["kind"], saved["keys"].numpy().astype("uint32"),
                                saved["position"], saved["has_gauss"], saved["cached"]))


# --- tokenizer bytes -----------------------------------------------------------------------------

def bytes_to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.cpu().numpy().tobytes())


# --- averaging -----------------------------------------------------------------------------------

def average_checkpoints(paths: Iterable) -> dict:
    """Mean of the model parameters of `paths`; config, tokenizers and progress from the last.

    Floating-point entries are averaged in float64 and cast back; integer buffers (counters)
    are taken from the last checkpoint. The result carries no resume state.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("average: no checkpoints given")
    sums, last = None, None
    for path in paths:
        payload = load_checkpoint(path)
        state = payload["model"]
        if sums is None:
            sums = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        else:
            if set(state) != set(sums):
                raise UserError(f"checkpoint {path}: its model parameters differ from {paths[0]}")
            for key, value in state.items():
                if value.shape != sums[key].shape:
                    raise UserError(f"checkpoint {path}: parameter {key} has shape "
                                    f"{tuple(value.shape)}, {paths[0]} has {tuple(sums[key].shape)}")
                sums[key] = sums[key] + value.double() if value.is_floating_point() else value
        last = payload
    model = {k: (v / len(paths)).to(last["model"][k].dtype) if last["model"][k].is_floating_point()
             else v for k, v in sums.items()}
    averaged = {key: last[key] for key in REQUIRED_KEYS if key != "model"}
    averaged.update(model=model, best_score=last.get("best_score"), training=None,
                    averaged_from=[str(p) for p in paths])
    return averaged
