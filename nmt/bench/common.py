"""Shared measurement helpers for the benches: fair timing and bytes kept for backward.

Timing on a shared machine is noisy, so every comparison runs its contenders in alternation
(A B A B ...) after untimed warm-up rounds, synchronizes CUDA before reading the clock, and reports
medians. Memory is measured, not estimated: the distinct storages autograd saves for backward
(`torch.autograd.graph.saved_tensors_hooks`), and on CUDA the peak allocated bytes, reset per
measurement.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from nmt.errors import UserError


def bench_device(name: str) -> torch.device:
    """`--device` value -> torch.device (`auto` = CUDA when present); UserError if unusable."""
    from nmt.device import resolve_device

    try:
        return resolve_device(name)
    except UserError as error:
        raise UserError(str(error).replace("train.device", "--device")) from None


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so the clock measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(contenders: Dict[str, Callable[[int], None]], *, rounds: int,
                     warmup: int = 1, device: torch.device = torch.device("cpu")
                     ) -> Dict[str, List[float]]:
    """Seconds of `fn(round)` per contender and round, run A B A B ... after `warmup` rounds.

    Warm-up rounds use round indices -warmup..-1 (callers pick inputs by index), so contender A and
    B see the same input within a round and machine load hits both alike.
    """
    seconds: Dict[str, List[float]] = {name: [] for name in contenders}
    for index in range(-warmup, rounds):
        for name, function in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            function(index)
            synchronize(device)
            if index >= 0:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of per-round ratios: each pair ran back to back on the same input."""
    return median([a / b for a, b in zip(numerator, denominator) if b > 0])


class SavedBytes:
    """Live and peak bytes of the distinct storages autograd keeps for backward.

    Use as a context manager around a forward pass. Each storage counts once however many views
    of it are saved; storages of `exclude` (parameters, the caller's own inputs) are not
    activations and are skipped. A storage stops counting when autograd drops its last reference
    (after backward), so `peak` is the most that was ever held at once.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self.excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
        self._live: Dict[int, List[int]] = {}  # storage pointer -> [references, bytes]
        self.bytes = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        return _Held(self, tensor)

    def _add(self, key: int, size: int) -> None:
        if key in self.excluded:
            return
        entry = self._live.setdefault(key, [0, size])
        entry[0] += 1
        if entry[0] == 1:
            self.bytes += size
            self.peak = max(self.peak, self.bytes)

    def _remove(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.bytes -= entry[1]
            del self._live[key]


class _Held:
    """A saved tensor plus the bookkeeping that un-counts it when autograd lets go of it."""

    __slots__ = ("counter", "tensor", "key")

    def __init__(self, counter: SavedBytes, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        self.counter, self.tensor, self.key = counter, tensor, storage.data_ptr()
        counter._add(self.key, storage.nbytes())

    def __del__(self):
        self.counter._remove(self.key)


def _unpack(held: _Held) -> torch.Tensor:
    return held.tensor


@contextmanager
def cuda_peak(device: torch.device, result: dict, key: str = "cuda_peak_bytes"):
    """On CUDA: reset the peak-memory counter, run the block, store the peak in result[key]."""
    if device.type != "cuda":
        yield
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    synchronize(device)
    result[key] = int(torch.cuda.max_memory_allocated(device))


def format_bytes(count: Optional[float]) -> str:
    if count is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise UserError(f"{flag} must be positive, got {value}")
    return value
