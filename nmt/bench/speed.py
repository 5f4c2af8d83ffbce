"""Training speed: median step time and target tokens/s on real batches, two configs side by side.

`nmt bench speed --config C [--vs C2] [--steps N] [--json]` builds each config's model and
optimizer as `nmt train` does, takes the first batches of its training data (epoch 1, the
config's seed and token budget; the tokenizer is trained into run_dir first if missing) and
times full training steps: zero_grad, forward, backward, gradient clipping, optimizer step. After
--warmup untimed rounds the contenders run in alternation A B A B on their own copy of the same
batch index, so machine load hits both alike. Reported per config: the median step time and
target tokens/s (non-padding target tokens, EOS included, over the summed time of the timed
steps, as JoeyNMT counts); with --vs the ratio A/B, the median of the per-round ratios.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from nmt.arguments import add_set_argument, describe
from nmt.bench.common import (bench_device, cuda_peak, format_bytes, median, paired_ratio,
                              positive, synchronize, time_alternating)
from nmt.errors import UserError


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--config", required=True, help="YAML config (A)")
    parser.add_argument("--vs", metavar="CONFIG", help="second config (B), timed in alternation")
    add_set_argument(parser, applies_to="both configs")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per config (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default auto: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile N more steps of each config with "
                             "torch.profiler and print the top operations by self time")
    parser.add_argument("--count-launches", action="store_true",
                        help="instead of timing, count one training step's device launches (aten "
                             "compute ops + Triton kernels) per recurrent time step "
                             "(nmt/bench/launches.py)")
    parser.add_argument("--batch-sentences", type=int, metavar="N",
                        help="batches of the first N training pairs each instead of the token "
                             "budget's batches")
    parser.add_argument("--profile-rows", type=int, default=15, metavar="R",
                        help="operations listed per profiled config (default 15)")


@dataclass
class Contender:
    """One config ready to train: `step(index)` runs a full training step on batch `index`."""

    label: str
    config: object
    step: Callable[[int], None]
    tokens: List[int]  # non-padding target tokens per batch, by round index
    parameters: int
    count: Optional[Callable[[int], dict]] = None  # launch counts of the step on batch `index`
    cuda_peak_bytes: int = 0


def run(args) -> int:
    positive(args.steps, "--steps")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(positive(args.threads, "--threads"))
    device = bench_device(args.device)
    rounds = args.warmup + args.steps
    options = dict(rounds=rounds, device=device, sentences=args.batch_sentences)
    contenders = [prepare(args.config, args.set, label="A", **options)]
    if args.vs:
        contenders.append(prepare(args.vs, args.set, label="B", **options))
    if args.count_launches:
        report = {"device": str(device), **{c.label: {"config": c.config, **c.count(0)}
                                            for c in contenders}}
        print(json.dumps(report) if args.json else json.dumps(report, indent=1))
        return 0

    def at(contender: Contender) -> Callable[[int], None]:
        return lambda index: contender.step(index + args.warmup)

    seconds = time_alternating({c.label: at(c) for c in contenders}, rounds=args.steps,
                               warmup=args.warmup, device=device)
    for contender in contenders:
        memory: dict = {}
        with cuda_peak(device, memory):
            contender.step(args.warmup)
        contender.cuda_peak_bytes = memory.get("cuda_peak_bytes", 0)
    report = {"device": str(device), "torch_threads": torch.get_num_threads(),
              "steps": args.steps, "warmup": args.warmup}
    for contender in contenders:
        report[contender.label] = summarize(contender, seconds[contender.label], args.warmup)
    if args.vs:
        report["ratio"] = paired_ratio(seconds["A"], seconds["B"])
        report["ratio_of_medians"] = (report["A"]["median_step_s"] / report["B"]["median_step_s"])
    if args.profile:
        report["profile"] = {c.label: profile_steps(c, steps=positive(args.profile, "--profile"),
                                                    first=args.warmup, device=device,
                                                    rows=positive(args.profile_rows, "--profile-rows"))
                             for c in contenders}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def profile_steps(contender: Contender, *, steps: int, first: int, device: torch.device,
                  rows: int) -> dict:
    """Where a step's time goes: torch.profiler over `steps` training steps, operations ranked by
    self time (on the device when it is CUDA). Returns the table and its top rows as data."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for index in range(steps):
            contender.step(first + index % max(1, len(contender.tokens) - first))
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = profiler.key_averages()
    total = sum(getattr(event, key) for event in averages) or 1.0
    top = sorted(averages, key=lambda event: getattr(event, key), reverse=True)[:rows]
    return {
        "steps": steps, "sorted_by": key,
        "total_ms_per_step": total / 1e3 / steps,
        "table": averages.table(sort_by=key, row_limit=rows),
        "top": [{"op": event.key, "calls_per_step": event.count / steps,
                 "self_ms_per_step": getattr(event, key) / 1e3 / steps,
                 "share": getattr(event, key) / total} for event in top],
    }


def prepare(path: str, overrides: Sequence[str] = (), *, rounds: int, device: torch.device,
            label: str, sentences: Optional[int] = None) -> Contender:
    """Load config, tokenizer and the first `rounds` training batches; build model + optimizer."""
    from nmt.config import load_config
    from nmt.data.batching import collate_pairs, training_sampler
    from nmt.data.files import check_data_files
    from nmt.models.build import build_model
    from nmt.optim import build_optimizer
    from nmt.run import prepare_tokenizer, seed_everything

    config = load_config(path, overrides)
    check_data_files(config, ["train"])
    tokenizer, _ = prepare_tokenizer(config)
    corpus, sampler = training_sampler(config, tokenizer)
    chosen = sampler.batches_for_epoch(0)
    if sentences is not None:  # the first pairs of the corpus, `sentences` per batch
        count = positive(sentences, "--batch-sentences")
        chosen = [[(i * count + j) % len(corpus.src) for j in range(count)] for i in range(rounds)]
    chosen = [chosen[i % len(chosen)] for i in range(rounds)]  # tiny data: wrap around
    batches = [collate_pairs(corpus, ids).to(device) for ids in chosen]
    seed_everything(config.train.seed)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).to(device)
    model.train()
    optimizer = build_optimizer(model.parameters(), config.train)
    train_cfg = config.train

    def step(index: int) -> None:
        """What Trainer._update does to the model, without logging and checkpoints."""
        batch = batches[index]
        optimizer.zero_grad(set_to_none=True)
        output = model.training_loss(batch, label_smoothing=train_cfg.label_smoothing)
        (output.loss / batch.num_tgt_tokens).backward()
        if train_cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_grad_norm)
        optimizer.step()
        float(output.loss.detach())  # the trainer logs the loss every step (a device sync)

    def count(index: int) -> dict:
        from nmt.bench.launches import count_training_step
        return count_training_step(model, batches[index], label_smoothing=train_cfg.label_smoothing)

    return Contender(label=label, config=path, step=step,
                     tokens=[batch.num_tgt_tokens for batch in batches],
                     parameters=sum(p.numel() for p in model.parameters()), count=count)


def summarize(contender: Contender, seconds: List[float], warmup: int) -> dict:
    tokens = contender.tokens[warmup: warmup + len(seconds)]
    result = {
        "config": contender.config, "parameters": contender.parameters,
        "median_step_s": median(seconds), "min_step_s": min(seconds),
        "tgt_tokens_per_s": sum(tokens) / sum(seconds),
        "tgt_tokens_per_step": sum(tokens) / len(tokens),
        "step_seconds": [round(s, 7) for s in seconds],
    }
    if contender.cuda_peak_bytes:
        result["cuda_peak_bytes"] = contender.cuda_peak_bytes
    return result


def print_report(report: dict) -> None:
    print(f"{report['steps']} timed training steps after {report['warmup']} warm-up, "
          f"{report['device']} ({report['torch_threads']} threads), alternating")
    for label in ("A", "B"):
        if label not in report:
            continue
        figures = report[label]
        peak = (f", CUDA peak {format_bytes(figures['cuda_peak_bytes'])}"
                if "cuda_peak_bytes" in figures else "")
        print(f"{label} {figures['config']}: median step {figures['median_step_s'] * 1e3:.1f} ms, "
              f"{figures['tgt_tokens_per_s']:.0f} target tokens/s "
              f"({figures['tgt_tokens_per_step']:.0f} per step){peak}")
    for label, figures in report.get("profile", {}).items():
        print(f"\nprofile of {label} ({figures['steps']} steps, "
              f"{figures['total_ms_per_step']:.1f} ms of operator self time per step):")
        for row in figures["top"]:
            print(f"  {row['share'] * 100:5.1f}%  {row['self_ms_per_step']:8.2f} ms/step "
                  f"{row['calls_per_step']:8.0f} calls/step  {row['op']}")
    if "ratio" in report:
        print(f"step time ratio A/B: {report['ratio']:.3f} (median of per-round ratios; "
              f"ratio of medians {report['ratio_of_medians']:.3f})")
