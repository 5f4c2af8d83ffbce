"""Bench helpers: alternation order, paired ratios, and saved-bytes counting against known ops."""
import torch

from nmt.bench.common import SavedBytes, format_bytes, paired_ratio, time_alternating


def test_contenders_alternate_after_warmup_and_share_round_indices():
    calls = []
    seconds = time_alternating({"A": lambda i: calls.append(("A", i)),
                                "B": lambda i: calls.append(("B", i))}, rounds=3, warmup=2)
    assert calls == [("A", -2), ("B", -2), ("A", -1), ("B", -1),
                     ("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert [len(seconds["A"]), len(seconds["B"])] == [3, 3]  # warm-up rounds are not timed
    assert all(value >= 0 for value in seconds["A"] + seconds["B"])


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([2.0, 9.0, 3.0], [1.0, 1.0, 2.0]) == 2.0


def test_saved_bytes_counts_each_storage_once_and_skips_excluded_tensors():
    weight = torch.randn(100, requires_grad=True)
    x = torch.randn(100, requires_grad=True)
    with SavedBytes(exclude=[weight]) as saved:
        y = x.exp()              # saves its result y: 400 bytes
        z = (y[:50] * y[50:]).sum()  # saves two views of y: same storage, counted once
        w = (x * weight).sum()   # saves x (400 bytes) and weight (excluded)
    assert saved.bytes == saved.peak == 800
    (z + w).backward()
    del y, z, w
    assert saved.bytes == 0 and saved.peak == 800


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert format_bytes(None) == "-"
