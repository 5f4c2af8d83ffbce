"""Choosing the torch device from the config's `train.device` (CUDA when present for `auto`)."""
from __future__ import annotations

import torch

from nmt.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if available else cpu; `cpu`, `cuda`, `cuda:N` are checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device: {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"train.device: {name!r} but only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"train.device: {name!r} is not supported (auto, cpu, cuda, cuda:N)")
    return device
