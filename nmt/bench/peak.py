"""The measured training-step peak of three ways to train one model size, over given batches
(used by `nmt bench memory`; `nmt bench capacity` probes fresh models one step at a time).

- reversible: the config's RevGRU/RevLSTM model;
- plain: the same-size GRU/LSTM model (`nmt.bench.memory.plain_model_config`, or a given one);
- checkpointed: the plain model run with torch.utils.checkpoint over ~sqrt(T)-step segments
  (`CheckpointedSeq2Seq.sharing`), or None for a bidirectional encoder (not checkpointable).

Each is measured as `nmt.memory_peak.measure_step` does: one full training step (forward,
backward, clipping, the config's optimizer step) on a model whose optimizer state already exists,
tracked by `LiveBytes`. `peak_step_bytes` is the peak above the step's starting bytes;
`peak_total_bytes` adds those starting bytes (parameters, optimizer state, batch).
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch

from nmt.memory_peak import measure_step, prime_optimizer
from nmt.optim import build_optimizer

WAYS = ("reversible", "plain", "checkpointed")


def measure_way(model, train_cfg, batches, *, record: bool = False) -> dict:
    """The tracked step peak of `model` over `batches` (one step each, the config's optimizer,
    clipping and label smoothing). Works on a copy: the caller's weights are not updated.
    peak_step_bytes is the largest over the batches; per_batch lists each."""

    model = copy.deepcopy(model).train()
    optimizer = build_optimizer(model.parameters(), train_cfg)
    prime_optimizer(model, optimizer)
    peaks = [measure_step(model, optimizer, batch, label_smoothing=train_cfg.label_smoothing,
                          clip_grad_norm=train_cfg.clip_grad_norm or 0.0, record=record)
             for batch in batches]
    worst = max(peaks, key=lambda peak: peak.peak_total_bytes)
    result = worst.to_dict()
    result["per_batch_peak_step_bytes"] = [peak.peak_step_bytes for peak in peaks]
    if record:
        result["at_peak"] = summarize_at_peak(worst.at_peak or [])
    return result


def measure_ways(ways: Dict[str, Optional[torch.nn.Module]], train_cfg, batches, *,
                 record: bool = False) -> Dict[str, Optional[dict]]:
    result = {}
    for name in WAYS:
        model = ways.get(name)
        result[name] = None if model is None else measure_way(model, train_cfg, batches,
                                                              record=record)
    return result


def summarize_at_peak(rows, top: int = 12) -> dict:
    """What was live at the peak moment, grouped by (creating op, dtype, shape), largest first."""
    groups: Dict[tuple, list] = {}
    for row in rows:
        key = (row["op"], row["dtype"], tuple(row["shape"]))
        entry = groups.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += row["bytes"]
    ordered = sorted(groups.items(), key=lambda item: -item[1][1])
    return {"total_bytes": sum(row["bytes"] for row in rows), "storages": len(rows),
            "groups": [{"op": op, "dtype": dtype, "shape": list(shape), "count": count,
                        "bytes": size} for (op, dtype, shape), (count, size) in ordered[:top]]}


def ratio(numerator: Optional[dict], denominator: Optional[dict],
          key: str = "peak_step_bytes") -> Optional[float]:
    if not numerator or not denominator or not denominator[key]:
        return None
    return numerator[key] / denominator[key]


def synthetic_step_peak(build, train_cfg, *, batch: int, length: int, vocab: int,
                        device: torch.device, seed: int,
                        budget: Optional[int] = None) -> Optional[dict]:
    """One tracked training step of a fresh model (`build()`, optimizer state primed) on a
    synthetic batch of `batch` sentences of `length` tokens both sides (data seed seed + length):
    its StepPeak figures as a dict, or None when `budget` bytes (resident + step peak) are passed.
    Shared by `nmt bench capacity`'s probes and recipes/plot_peak_memory.py."""
    from nmt.bench.scaling import synthetic_batch

    model = build()
    optimizer = build_optimizer(model.parameters(), train_cfg)
    prime_optimizer(model, optimizer)
    data = synthetic_batch(batch, length, vocab, seed=seed + length, device=device)
    peak = measure_step(model, optimizer, data, label_smoothing=train_cfg.label_smoothing,
                        clip_grad_norm=train_cfg.clip_grad_norm or 0.0, budget_bytes=budget)
    if peak is None or (budget is not None and peak.peak_total_bytes > budget):
        return None
    return peak.to_dict()
