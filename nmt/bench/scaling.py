"""Scaling with sentence length: activation bytes kept for backward and step time, three ways.

`nmt bench scaling --config C --lengths 10,20,50,100,200 [--batch 32] [--json]` trains on
synthetic batches whose source and target all have exactly T tokens, for each T:
- plain: the config's model with ordinary autograd (reversible cells replaced by GRU/LSTM);
- checkpointed: the same model with torch.utils.checkpoint over segments of about sqrt(T)
  steps (encoder recurrence; decoder recurrence, attention, output layer and loss);
- reversible: the config's reversible model; for a plain config, or while no reversible
  Seq2Seq is available, a same-size ReversibleRNN stand-in (target embedding, the recurrence and
  the output layer with its loss, no encoder or attention), labelled as such.
Bytes are the peak of the distinct storages autograd saves during the forward pass (parameters
and the batch excluded), plus what a reversible Function keeps itself (buffer, final state). On
CUDA the peak allocated memory of the step (reset per measurement) is reported beside them.
Time is the median forward + backward over --repeats rounds run in alternation, after warm-up.
Growth is the least-squares slope in bytes (or ms) per token of T.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from nmt.arguments import add_set_argument, describe
from nmt.bench.common import (SavedBytes, bench_device, cuda_peak, format_bytes, median,
                              positive, time_alternating)
from nmt.errors import ConfigError, UserError

TO_PLAIN = {"revgru": "gru", "revlstm": "lstm", "gru": "gru", "lstm": "lstm"}
TO_REVERSIBLE = {"gru": "revgru", "lstm": "revlstm", "revgru": "revgru", "revlstm": "revlstm"}
WAYS = ("plain", "checkpointed", "reversible")


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--config", required=True, help="YAML config whose model to measure")
    add_set_argument(parser)
    parser.add_argument("--lengths", default="10,20,50,100,200",
                        help="comma-separated sequence lengths T (default: 10,20,50,100,200)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per length (median; default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--segment-steps", type=int, default=None,
                        help="steps per checkpointed segment (default: round(sqrt(T)))")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_lengths(text: str) -> List[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--lengths: {text!r} is not a comma-separated list of integers") from None
    if not lengths or min(lengths) < 2:
        raise UserError(f"--lengths: need lengths of at least 2, got {text!r}")
    return sorted(set(lengths))


def run(args) -> int:
    from nmt.config import load_config

    lengths = parse_lengths(args.lengths)
    for flag in ("batch", "repeats"):
        positive(getattr(args, flag), f"--{flag}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.segment_steps is not None:
        positive(args.segment_steps, "--segment-steps")
    device = bench_device(args.device)
    config = load_config(args.config, args.set)
    torch.manual_seed(args.seed)
    vocab = config.data.tokenizer.vocab_size
    ways = build_ways(config.model, vocab, device=device, segment_steps=args.segment_steps)
    rows = [measure_length(ways, length, vocab=vocab, batch=args.batch, repeats=args.repeats,
                           warmup=args.warmup, device=device, seed=args.seed + length)
            for length in lengths]
    report = {
        "config": str(args.config), "device": str(device), "batch": args.batch,
        "repeats": args.repeats, "lengths": lengths,
        "segment_steps": args.segment_steps or "round(sqrt(T))",
        "reversible_kind": ways["reversible"].kind, "rows": rows,
        "growth": growth(rows),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


# -- the three ways -------------------------------------------------------------------------------


@dataclasses.dataclass
class Way:
    """One way to train: `step(batch) -> (loss, kept_bytes)`; parameters are excluded from bytes."""

    kind: str
    step: Callable
    parameters: List[nn.Parameter]


def build_ways(model_cfg, vocab: int, *, device: torch.device,
               segment_steps: Optional[int]) -> Dict[str, Way]:
    """The plain, checkpointed and reversible models of `model_cfg` (vocab: both sides)."""
    from nmt.models.build import build_model
    from nmt.models.checkpointed import CheckpointedSeq2Seq

    plain = build_model(_with_cells(model_cfg, TO_PLAIN), vocab, vocab).to(device).train()
    try:
        checkpointed = CheckpointedSeq2Seq.sharing(plain, segment_steps=segment_steps)
    except ValueError as error:
        raise UserError(f"{error} (model.encoder.bidirectional)") from None
    ways = {"plain": _seq2seq_way("seq2seq", plain),
            "checkpointed": _seq2seq_way("seq2seq", checkpointed)}
    reversible = None
    try:
        reversible = build_model(_with_cells(model_cfg, TO_REVERSIBLE), vocab, vocab)
    except (ConfigError, ValueError):
        pass  # no reversible Seq2Seq in this build (or for this config): use the stand-in
    if reversible is not None:
        ways["reversible"] = _seq2seq_way("reversible Seq2Seq", reversible.to(device).train())
    else:
        ways["reversible"] = _reversible_rnn_way(model_cfg, vocab, device)
    return ways


def _with_cells(model_cfg, mapping: Dict[str, str]):
    encoder = dataclasses.replace(model_cfg.encoder, cell=mapping[model_cfg.encoder.cell])
    decoder = dataclasses.replace(model_cfg.decoder, cell=mapping[model_cfg.decoder.cell])
    return dataclasses.replace(model_cfg, encoder=encoder, decoder=decoder)


def _seq2seq_way(kind: str, model) -> Way:
    def step(batch):
        output = model.training_loss(batch)
        return output.loss / batch.num_tgt_tokens, reversible_kept_bytes(output.memory)

    return Way(kind=kind, step=step, parameters=list(model.parameters()))


def reversible_kept_bytes(memory) -> int:
    """Bytes a reversible Seq2Seq's Functions hold besides autograd's saved tensors, from the
    memory its training_loss returned: the shared buffer at its peak, the exact final states and
    what is kept of the initial states (stored attention values are saved tensors, so already
    counted). 0 for a plain model."""
    kept = getattr(memory, "kept_bytes", None)
    if not kept:
        return 0
    encoder, decoder = kept.get("encoder") or {}, kept.get("decoder") or {}
    buffer = decoder.get("buffer", encoder.get("buffer", 0))  # shared: the decoder's is the peak
    return int(buffer + sum(side.get("state", 0) + side.get("initial", 0)
                             for side in (encoder, decoder)))


class _StepLoss(nn.Module):
    """The output layer and summed cross-entropy of step t, evaluated during reversal."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.output = nn.Linear(hidden, vocab)
        self.targets: Optional[torch.Tensor] = None

    def forward(self, hidden: torch.Tensor, t: int) -> torch.Tensor:
        logits = self.output(hidden).float()
        return nn.functional.cross_entropy(logits, self.targets[:, t], reduction="sum")


def _reversible_rnn_way(model_cfg, vocab: int, device: torch.device) -> Way:
    from nmt.reversible import MemoryMode, ReversibleRNN

    decoder = model_cfg.decoder
    rnn = ReversibleRNN(TO_REVERSIBLE[decoder.cell], model_cfg.embedding_dim, decoder.hidden,
                        num_layers=decoder.layers,
                        max_forget_bits=getattr(decoder, "max_forget_bits", 3)).to(device)
    embedding = nn.Embedding(vocab, model_cfg.embedding_dim).to(device)
    readout = _StepLoss(decoder.hidden, vocab).to(device)

    def step(batch):
        readout.targets = batch.tgt_out
        out = rnn(batch.tgt_in, batch.tgt_out != 0, mode=MemoryMode.REVERSIBLE,
                  embedding=embedding, readout=readout)
        kept = sum(out.kept_bytes.get(part, 0) for part in ("buffer", "state", "initial"))
        return out.readout / batch.num_tgt_tokens, kept

    parameters = list(rnn.parameters()) + list(embedding.parameters()) + list(readout.parameters())
    return Way(kind="ReversibleRNN stand-in (target embedding + recurrence + output layer; "
                    "no encoder, no attention)", step=step, parameters=parameters)


# -- measuring ------------------------------------------------------------------------------------


def synthetic_batch(batch: int, length: int, vocab: int, *, seed: int, device: torch.device):
    """Every source and target of exactly `length` tokens (EOS included), random ids 4..vocab-1."""
    from nmt.data.batching import Batch
    from nmt.models.embeddings import BOS_ID, EOS_ID

    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (batch, length), generator=generator)
    src[:, -1] = EOS_ID
    words = torch.randint(4, vocab, (batch, length - 1), generator=generator)
    bos = torch.full((batch, 1), BOS_ID)
    eos = torch.full((batch, 1), EOS_ID)
    full = torch.full((batch,), length)
    return Batch(src=src, src_lengths=full, tgt_in=torch.cat([bos, words], 1),
                 tgt_out=torch.cat([words, eos], 1), tgt_lengths=full.clone(),
                 indices=torch.arange(batch), num_tgt_tokens=batch * length).to(device)


def measure_length(ways: Dict[str, Way], length: int, *, vocab: int, batch: int, repeats: int,
                   warmup: int, device: torch.device, seed: int) -> dict:
    """Bytes (one measured step per way) and median step time (alternating rounds) at T=length."""
    data = synthetic_batch(batch, length, vocab, seed=seed, device=device)
    batch_tensors = [data.src, data.src_lengths, data.tgt_in, data.tgt_out, data.tgt_lengths]
    row = {"length": length}
    for name, way in ways.items():
        memory: dict = {}
        _zero_grad(way)
        with cuda_peak(device, memory):
            with SavedBytes(exclude=way.parameters + batch_tensors) as saved:
                loss, kept = way.step(data)
            loss.backward()
        row[f"{name}_saved_bytes"] = saved.peak
        row[f"{name}_kept_bytes"] = kept
        row[f"{name}_bytes"] = saved.peak + kept
        if "cuda_peak_bytes" in memory:
            row[f"{name}_cuda_peak_bytes"] = memory["cuda_peak_bytes"]

    def timed(way: Way):
        def one(_round: int) -> None:
            _zero_grad(way)
            loss, _ = way.step(data)
            loss.backward()
        return one

    seconds = time_alternating({name: timed(way) for name, way in ways.items()},
                               rounds=repeats, warmup=warmup, device=device)
    for name, values in seconds.items():
        row[f"{name}_step_ms"] = round(1e3 * median(values), 3)
    return row


def _zero_grad(way: Way) -> None:
    for parameter in way.parameters:
        parameter.grad = None


def growth(rows: List[dict]) -> dict:
    """Least-squares slopes over T: bytes and ms per token, and ratios against plain."""
    lengths = [row["length"] for row in rows]
    result = {}
    for name in WAYS:
        result[f"{name}_bytes_per_step"] = _slope(lengths, [row[f"{name}_bytes"] for row in rows])
        result[f"{name}_ms_per_step"] = _slope(lengths, [row[f"{name}_step_ms"] for row in rows])
    plain = result["plain_bytes_per_step"]
    for name in ("checkpointed", "reversible"):
        result[f"{name}_bytes_growth_vs_plain"] = (
            result[f"{name}_bytes_per_step"] / plain if plain else None)
    return result


def _slope(xs: List[int], ys: List[float]) -> Optional[float]:
    if len(xs) < 2:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def print_table(report: dict) -> None:
    print(f"{report['config']}: batch {report['batch']}, {report['device']}, "
          f"median of {report['repeats']} alternating rounds; segments of "
          f"{report['segment_steps']} steps")
    print(f"reversible: {report['reversible_kind']}")
    cuda = any("plain_cuda_peak_bytes" in row for row in report["rows"])
    header = f"{'T':>5}" + "".join(f" {name + ' bytes':>18} {'ms':>9}" for name in WAYS)
    if cuda:
        header += "".join(f" {name[:5] + ' cuda peak':>16}" for name in WAYS)
    print(header)
    for row in report["rows"]:
        line = f"{row['length']:>5}" + "".join(
            f" {format_bytes(row[f'{name}_bytes']):>18} {row[f'{name}_step_ms']:>9.1f}"
            for name in WAYS)
        if cuda:
            line += "".join(f" {format_bytes(row.get(f'{name}_cuda_peak_bytes')):>16}"
                            for name in WAYS)
        print(line)
    grow = report["growth"]
    if grow["plain_bytes_per_step"] is not None:
        print("growth per token of T: " + ", ".join(
            f"{name} {format_bytes(grow[f'{name}_bytes_per_step'])} and "
            f"{grow[f'{name}_ms_per_step']:.2f} ms" for name in WAYS))
        print(f"bytes growth vs plain: checkpointed "
              f"{grow['checkpointed_bytes_growth_vs_plain']:.3f}, reversible "
              f"{grow['reversible_bytes_growth_vs_plain']:.3f}")
