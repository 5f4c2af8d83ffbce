"""Activation memory: counted ratios and measured bytes, reversible model against the plain one.

`nmt bench memory --config C [--checkpoint CKPT] --batches N [--json]` takes the first N
training batches of the config's data (epoch 1, the config's seed and token budget; with
--checkpoint, the checkpoint's config, tokenizer and weights) and runs one training step's forward
and backward per batch, in training mode, for the configured reversible model and for the
same-size plain model (revgru -> gru, revlstm -> lstm, same attention context), in one run.

Reported: bits summed over the batches (ratios of the sums), bytes as means per batch.
- counted (docs/design.md, "Memory accounting"; complete): per side and for the whole model
  (`total`, the headline) normal / used / optimal bits, the ratios normal/used and
  normal/optimal, and the parts of used bits: buffer heads, words, stored values, the kept final
  state and what is kept of the initial state. Each side is charged the shared buffer's int32
  heads as if it had its own; total charges them once. `*_ratio_words_only` is the paper's
  convention (words + stored values only), for comparison, not the headline.
- measured, recurrent parts: bytes of the distinct storages autograd saves during the plain
  model's encoder and decoder RNN calls (torch.autograd.graph.saved_tensors_hooks) against the
  bytes the reversible path keeps for backward (the buffer's heads and words at their peak, the
  stored attention values and the encoder's exact final state; with `memory_saving: false`, what
  autograd saves during the encoder's steps, which keep every state);
- measured, whole step: the peak of all autograd-saved bytes (parameters excluded), plus, for the
  reversible model, what it keeps outside autograd (the figure above).
- peak of a whole training step (`peak_step_bytes`, nmt/memory_peak.py): every storage created
  during forward, backward, gradient clipping and the optimizer step (the config's), tracked live
  by a dispatch mode, on a copy of each model whose optimizer state already exists; the peak above
  the step's starting bytes (parameters, optimizer state, batch: `resident_bytes`; gradients are
  created in the step and count in the peak), the largest over the batches; for the reversible
  model, the same-size plain model and the plain model with torch.utils.checkpoint over ~sqrt(T)
  steps (none for a bidirectional encoder). On CUDA also max_memory_allocated over the step.
  With --at-peak, what was live at each peak moment, grouped by creating operation, dtype, shape.
"""
from __future__ import annotations

import copy
import json
from typing import Dict, List

import torch

from nmt.arguments import add_set_argument, describe
from nmt.bench.common import SavedBytes, bench_device, format_bytes, positive
from nmt.errors import UserError

EXECUTION_PREFIX = "model.reversible."  # --set keys that still apply to a --checkpoint's config

TO_PLAIN = {"revgru": "gru", "revlstm": "lstm"}
HEAD_RULE = ("complete accounting: each side is charged the shared buffer's int32 heads as if it "
             "had its own, its words, stored values and the exact states it keeps for backward; "
             "total charges the heads once")


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--config", required=True, help="YAML config of a reversible model")
    parser.add_argument("--checkpoint", help="use this checkpoint's config, tokenizer and weights "
                        "(--set model.reversible.* still applies: e.g. the chunk length)")
    add_set_argument(parser, applies_to="--config")
    parser.add_argument("--batches", type=int, default=10, help="training batches (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--at-peak", action="store_true",
                        help="also list what is live at each model's step peak (storages grouped "
                             "by creating operation, dtype and shape; slower)")


def run(args) -> int:
    positive(args.batches, "--batches")
    device = bench_device(args.device)
    config, tokenizer, state_dict = _load(args)
    if config.model.encoder.cell not in TO_PLAIN or config.model.decoder.cell not in TO_PLAIN:
        raise UserError(f"{args.config}: model.encoder.cell and model.decoder.cell must be revgru "
                        f"or revlstm for a memory comparison (got {config.model.encoder.cell}, "
                        f"{config.model.decoder.cell})")
    batches = _batches(config, tokenizer, args.batches, device)
    from nmt.models.build import build_model

    torch.manual_seed(config.train.seed)
    sizes = (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    reversible = build_model(config.model, *sizes).to(device).train()
    if state_dict is not None:
        reversible.load_state_dict(state_dict)
    plain = build_model(plain_model_config(config.model), *sizes).to(device).train()
    report = {"config": args.config, "checkpoint": args.checkpoint, "batches": len(batches),
              "device": str(device), "head_rule": HEAD_RULE,
              "reversible": measure_reversible(reversible, batches, config.train.label_smoothing),
              "plain": measure_plain(plain, batches, config.train.label_smoothing)}
    plain_bytes = report["plain"]["recurrent_saved_bytes"]
    kept = report["reversible"]["recurrent_kept_bytes"]
    report["measured_recurrent_ratio"] = plain_bytes / kept if kept else float("inf")
    report["step_peak"] = step_peaks(reversible, plain, config.train, batches,
                                     record=getattr(args, "at_peak", False))
    for way, figures in report["step_peak"].items():
        if figures is not None and way in report:
            report[way]["peak_step_bytes"] = figures["peak_step_bytes"]
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def step_peaks(reversible, plain, train_cfg, batches, *, record: bool = False) -> dict:
    """peak_step_bytes and what goes with it for the three ways (nmt.bench.peak), plus the
    ratios of the reversible peak to the other two."""
    from nmt.bench.peak import measure_ways, ratio
    from nmt.models.checkpointed import CheckpointedSeq2Seq

    try:
        checkpointed = CheckpointedSeq2Seq.sharing(plain)
    except ValueError:
        checkpointed = None  # a bidirectional encoder cannot be checkpointed over time
    result = measure_ways({"reversible": reversible, "plain": plain,
                           "checkpointed": checkpointed}, train_cfg, batches, record=record)
    result["reversible_vs_plain"] = ratio(result["reversible"], result["plain"])
    result["reversible_vs_checkpointed"] = ratio(result["reversible"], result["checkpointed"])
    return result


def plain_model_config(model_cfg):
    """The same-size plain model: reversible cells replaced by GRU/LSTM, everything else kept."""
    plain = copy.deepcopy(model_cfg)
    plain.encoder.cell = TO_PLAIN[plain.encoder.cell]
    plain.decoder.cell = TO_PLAIN[plain.decoder.cell]
    return plain


def measure_reversible(model, batches, label_smoothing: float) -> dict:
    """Counted bits per side and measured bytes of the reversible model over `batches`."""
    sides = {"encoder": _zero_counts(), "decoder": _zero_counts(), "total": _zero_counts()}
    kept_total, saved_peak, stored_in_autograd = 0, 0, 0
    exclude = list(model.parameters())
    states_saved = 0  # memory_saving: false: the encoder's states, saved by autograd
    for batch in batches:
        model.zero_grad(set_to_none=True)
        with SavedBytes(exclude) as saved:
            output = model.training_loss(batch, label_smoothing=label_smoothing)
        output.loss.backward()
        details = output.memory.details()
        for side in sides:
            for key in sides[side]:
                sides[side][key] += details[side][key]
        kept_total += details["kept_bytes"]["total"]
        stored_in_autograd += details["kept_bytes"]["encoder"].get("stored", 0)
        saved_peak += saved.peak
        if not getattr(model.encoder, "memory_saving", True):
            states_saved += _encoder_states_saved_bytes(model, batch, label_smoothing, exclude)
    kept_total += states_saved
    stored_in_autograd += states_saved
    for counts in sides.values():
        counts["ratio_used"] = counts["normal_bits"] / counts["used_bits"]
        counts["ratio_optimal"] = counts["normal_bits"] / counts["optimal_bits"]
        counts["ratio_words_only"] = (counts["normal_bits"] / counts["words_only_bits"]
                                      if counts["words_only_bits"] else float("inf"))
    return {"encoder": sides["encoder"], "decoder": sides["decoder"], "total": sides["total"],
            "encoder_ratio": sides["encoder"]["ratio_used"],
            "decoder_ratio": sides["decoder"]["ratio_used"],
            "total_ratio": sides["total"]["ratio_used"],
            "encoder_optimal_ratio": sides["encoder"]["ratio_optimal"],
            "decoder_optimal_ratio": sides["decoder"]["ratio_optimal"],
            "total_optimal_ratio": sides["total"]["ratio_optimal"],
            "paper_convention": {f"{side}_ratio_words_only": sides[side]["ratio_words_only"]
                                 for side in sides},
            "recurrent_kept_bytes": kept_total / len(batches),
            "autograd_saved_peak_bytes": saved_peak / len(batches),
            # the stored attention values are saved through autograd too: counted once
            "step_total_bytes": (kept_total + saved_peak - stored_in_autograd) / len(batches)}


def _encoder_states_saved_bytes(model, batch, label_smoothing: float, exclude) -> int:
    """A second pass (saved-tensor hooks do not nest) counting what autograd saves while an
    encoder with `memory_saving: false` runs its steps: that encoder keeps its states that way."""
    encoder = model.encoder
    counted = []
    run_steps = encoder.rnn.forward  # the encoder's run, which keeps its states through autograd

    def counting(*args, **kwargs):
        with SavedBytes(exclude) as saved:
            result = run_steps(*args, **kwargs)
        counted.append(saved.bytes)
        return result

    encoder.rnn.forward = counting
    try:
        model.zero_grad(set_to_none=True)
        output = model.training_loss(batch, label_smoothing=label_smoothing)
    finally:
        del encoder.rnn.forward
    output.loss.backward()
    return sum(counted)


def measure_plain(model, batches, label_smoothing: float) -> dict:
    """Bytes autograd saves in the plain model: inside its RNN calls, and over the whole step."""
    exclude = list(model.parameters())
    recurrent: Dict[str, int] = {"encoder": 0, "decoder": 0}
    saved_peak = 0
    for batch in batches:
        # two passes: saved-tensor hooks do not nest (the innermost one alone sees a tensor)
        model.zero_grad(set_to_none=True)
        with SavedBytes(exclude) as saved:
            output = model.training_loss(batch, label_smoothing=label_smoothing)
        output.loss.backward()
        saved_peak += saved.peak
        probes = {side: _Probe(getattr(model, side).rnn, exclude) for side in recurrent}
        try:
            output = model.training_loss(batch, label_smoothing=label_smoothing)
        finally:
            for probe in probes.values():
                probe.remove()
        output.loss.backward()
        for side, probe in probes.items():
            recurrent[side] += probe.bytes
    count = len(batches)
    return {"encoder_rnn_saved_bytes": recurrent["encoder"] / count,
            "decoder_rnn_saved_bytes": recurrent["decoder"] / count,
            "recurrent_saved_bytes": (recurrent["encoder"] + recurrent["decoder"]) / count,
            "autograd_saved_peak_bytes": saved_peak / count, "step_total_bytes": saved_peak / count}


class _Probe:
    """Counts the bytes autograd saves inside every call of one module (hooks on its forward)."""

    def __init__(self, module, exclude):
        self.bytes, self._exclude, self._active = 0, exclude, []
        self._handles = [module.register_forward_pre_hook(self._enter),
                         module.register_forward_hook(self._exit)]

    def _enter(self, module, inputs):
        counter = SavedBytes(self._exclude)
        counter.__enter__()
        self._active.append(counter)

    def _exit(self, module, inputs, outputs):
        counter = self._active.pop()
        counter.__exit__(None, None, None)
        self.bytes += counter.bytes  # still held: the graph lives until backward

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _zero_counts() -> dict:
    return {"normal_bits": 0, "used_bits": 0, "optimal_bits": 0.0, "buffer_head_bits": 0,
            "buffer_word_bits": 0, "stored_bits": 0, "final_state_bits": 0,
            "initial_state_bits": 0, "autograd_state_bits": 0, "words_only_bits": 0}


def _load(args):
    """(config, tokenizer, state_dict or None) from --config, or from --checkpoint."""
    from nmt.config import apply_overrides, config_from_dict, load_config
    from nmt.run import prepare_tokenizer

    config = load_config(args.config, args.set)
    if not args.checkpoint:
        tokenizer, _ = prepare_tokenizer(config)
        return config, tokenizer, None
    from nmt import checkpoint as ckpt
    from nmt.data.tokenizer import Tokenizer

    payload = ckpt.load_checkpoint(args.checkpoint)
    values = copy.deepcopy(payload["config"])
    # how backward runs (chunk length, kernels) may be changed for a trained model; its shape not
    apply_overrides(values, [item for item in args.set
                             if item.partition("=")[0].strip().startswith(EXECUTION_PREFIX)])
    trained = config_from_dict(values)
    trained.data = config.data  # the batches come from --config's data
    tokenizer = Tokenizer.from_bytes(ckpt.tensor_to_bytes(payload["tokenizer"]))
    return trained, tokenizer, payload["model"]


def _batches(config, tokenizer, count: int, device) -> List:
    from nmt.data.batching import TokenBatchSampler, collate_pairs
    from nmt.data.files import check_data_files
    from nmt.data.corpus import load_split

    check_data_files(config, ["train"])
    corpus = load_split(config, "train", tokenizer)
    if len(corpus) == 0:
        raise UserError(f"data.train gives no pairs within data.max_len={config.data.max_len}")
    sampler = TokenBatchSampler([len(s) for s in corpus.src], [len(t) for t in corpus.tgt],
                                batch_tokens=config.data.batch_tokens, seed=config.train.seed)
    chosen = sampler.batches_for_epoch(0)[:count]
    return [collate_pairs(corpus, ids).to(device) for ids in chosen]


def print_report(report: dict) -> None:
    rev, plain = report["reversible"], report["plain"]
    print(f"{report['config']}: {report['batches']} training batches on {report['device']} "
          f"(bits summed, bytes per batch)")
    for side in ("encoder", "decoder", "total"):
        counts = rev[side]
        print(f"  {side}: normal {counts['normal_bits'] / 8 / 2**20:.2f} MiB, used "
              f"{counts['used_bits'] / 8 / 2**20:.3f} MiB (heads {counts['buffer_head_bits']}, "
              f"words {counts['buffer_word_bits']}, stored {counts['stored_bits']}, final state "
              f"{counts['final_state_bits']}, initial state {counts['initial_state_bits']}"
              + (f", states kept by autograd {counts['autograd_state_bits']}"
                 if counts['autograd_state_bits'] else "")
              + f" bits), ratio {counts['ratio_used']:.2f}, optimal ratio "
              f"{counts['ratio_optimal']:.2f} (words + stored only: "
              f"{counts['ratio_words_only']:.2f})")
    print(f"  ({report['head_rule']})")
    print(f"  measured, recurrent parts: plain RNNs save "
          f"{format_bytes(plain['recurrent_saved_bytes'])}"
          f" (encoder {format_bytes(plain['encoder_rnn_saved_bytes'])}, decoder "
          f"{format_bytes(plain['decoder_rnn_saved_bytes'])}); reversible keeps "
          f"{format_bytes(rev['recurrent_kept_bytes'])}: "
          f"{report['measured_recurrent_ratio']:.1f}x less, held between forward and backward "
          f"only (the backward's working set is in the step peak below)")
    print(f"  measured, whole step: plain autograd peak {format_bytes(plain['step_total_bytes'])}; "
          f"reversible autograd peak {format_bytes(rev['autograd_saved_peak_bytes'])} + kept "
          f"{format_bytes(rev['recurrent_kept_bytes'])}")
    peaks = report["step_peak"]
    print("  peak of a training step (forward, backward, clipping, optimizer; live storages above "
          "parameters + optimizer state + batch; largest over the batches):")
    for way in ("reversible", "plain", "checkpointed"):
        figures = peaks[way]
        if figures is None:
            print(f"    {way:<12} - (a bidirectional encoder is not checkpointed over time)")
            continue
        cuda = (f", CUDA max allocated {format_bytes(figures['cuda_peak_step_bytes'])}"
                if "cuda_peak_step_bytes" in figures else "")
        print(f"    {way:<12} peak_step_bytes {format_bytes(figures['peak_step_bytes'])} "
              f"(+ resident {format_bytes(figures['resident_bytes'])}){cuda}")
        for group in (figures.get("at_peak") or {}).get("groups", []):
            print(f"      {format_bytes(group['bytes']):>10} {group['count']:>5} x "
                  f"{group['dtype'].replace('torch.', '')} {tuple(group['shape'])} from {group['op']}")
    for way in ("plain", "checkpointed"):
        value = peaks[f"reversible_vs_{way}"]
        if value is not None:
            print(f"    reversible / {way}: {value:.3f}")
