"""Translation speed: sentences/s of the decoding loop and end to end (start-up included).

`nmt bench translate --checkpoint CKPT --split test --beam-size 5 [--batch-size 64] [--json]`
translates a data split and reports two figures:
- decoding: the search over pre-tokenized sentences (batched, sorted by length), nothing else,
  after one untimed warm-up batch (`--no-warmup` to time it cold);
- end to end: from the process start (interpreter and imports included, read from /proc where
  available) to detokenized output: what a user waits for with `nmt translate`.
BLEU of the translations is printed too, so a faster setting cannot silently be a worse one.
"""
from __future__ import annotations

import json
import os
import time

import torch

from nmt.arguments import add_decode_arguments, check_beam, decode_overrides, describe
from nmt.device import resolve_device
from nmt.errors import UserError


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint to translate with")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="data split (default: test)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory (default: the checkpoint config's data.dir)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N sentences")
    parser.add_argument("--no-warmup", action="store_true",
                        help="time the decoding loop cold (default: one untimed batch first, so "
                             "one-off costs such as CUDA start-up count only end to end)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_decode_arguments(parser)


def process_age_seconds() -> float:
    """Seconds since this process started (0 where /proc is not available)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat, counted after the command name
        with open("/proc/uptime") as stream:
            uptime = float(stream.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run(args) -> int:
    started = time.perf_counter()
    before_run = process_age_seconds()
    from nmt.data.files import check_data_files
    from nmt.data.corpus import read_parallel
    from nmt.evaluation import score_corpus
    from nmt.translation import load_translator

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: must be at least 1, got {args.limit}")
    overrides = decode_overrides(args)
    overrides["max_src_len"] = overrides["max_src_len"] or 1 << 30
    device = resolve_device(args.device)
    translator, config = load_translator(args.checkpoint, device=device, **overrides)
    check_beam(translator.options)
    if args.data_dir:
        config.data.dir = args.data_dir
    src_path, ref_path = check_data_files(config, [args.split])[args.split]
    src_lines, references = read_parallel(src_path, ref_path)
    if args.limit:
        src_lines, references = src_lines[:args.limit], references[:args.limit]
    src_ids = translator.tokenizer.encode_src_lines(src_lines)
    if not args.no_warmup:
        translator.translate_ids(src_ids[:translator.options.batch_size])

    _synchronize(device)
    decode_start = time.perf_counter()
    found = translator.translate_ids(src_ids)
    _synchronize(device)
    decode_seconds = time.perf_counter() - decode_start
    hypotheses = [translator.tokenizer.decode_tgt(best[0][0]) if best else "" for best in found]
    end_to_end = before_run + time.perf_counter() - started
    scores = score_corpus(hypotheses, references)

    options = translator.options
    result = {
        "sentences": len(src_lines), "split": args.split, "device": str(device),
        "beam_size": options.beam_size, "batch_size": options.batch_size,
        "decode_seconds": round(decode_seconds, 4),
        "decode_sentences_per_sec": round(len(src_lines) / max(decode_seconds, 1e-9), 2),
        "end_to_end_seconds": round(end_to_end, 4),
        "end_to_end_sentences_per_sec": round(len(src_lines) / max(end_to_end, 1e-9), 2),
        "startup_seconds": round(before_run, 4), "bleu": round(scores.bleu, 2),
        "bleu_signature": scores.bleu_signature,
        "torch_threads": torch.get_num_threads(), "warmup": not args.no_warmup,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['sentences']} sentences of {args.split}, beam {options.beam_size}, "
              f"batch {options.batch_size}, {device} ({result['torch_threads']} threads)")
        print(f"decoding:   {result['decode_sentences_per_sec']:.1f} sentences/s "
              f"({result['decode_seconds']:.2f} s)")
        print(f"end to end: {result['end_to_end_sentences_per_sec']:.1f} sentences/s "
              f"({result['end_to_end_seconds']:.2f} s, of which {before_run:.2f} s start-up "
              f"before the command ran)")
        print(f"BLEU = {scores.bleu:.2f}  ({scores.bleu_signature})")
    return 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
