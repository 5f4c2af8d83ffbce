"""Score translations with sacreBLEU (BLEU and chrF with signatures): a checkpoint on a split, or files.

`--checkpoint CKPT --split test|valid` translates the split's source side with the checkpoint's
decode settings (overridable: `--beam-size` etc.) and scores it against the reference side;
`--hyp F --ref F` scores existing translations. Scores are on detokenized, cased text unless
`--lowercase`. `--output F` also saves the translations.
"""
from __future__ import annotations

import json

from nmt.arguments import add_decode_arguments, check_beam, decode_overrides, describe
from nmt.device import resolve_device
from nmt.errors import UserError
from nmt.data.corpus import read_lines
from nmt.evaluation import score_corpus


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--checkpoint", metavar="CKPT", help="checkpoint to translate with")
    parser.add_argument("--split", choices=("test", "valid"), help="with --checkpoint: which split")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="with --checkpoint: data directory (default: the checkpoint config's data.dir)")
    parser.add_argument("--hyp", metavar="FILE", help="translations to score (one per line)")
    parser.add_argument("--ref", metavar="FILE", help="references for --hyp (one per line)")
    parser.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU and chrF")
    parser.add_argument("--output", metavar="FILE", help="with --checkpoint: save the translations")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_decode_arguments(parser)


def run(args) -> int:
    if args.checkpoint and (args.hyp or args.ref):
        raise UserError("give either --checkpoint/--split or --hyp/--ref, not both")
    if args.checkpoint:
        if not args.split:
            raise UserError("--checkpoint needs --split test|valid")
        scores, hypotheses = _evaluate_checkpoint(args)
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="\n") as stream:
                stream.writelines(line + "\n" for line in hypotheses)
    elif args.hyp and args.ref:
        hypotheses, references = read_lines(args.hyp), read_lines(args.ref)
        if len(hypotheses) != len(references):
            raise UserError(f"--hyp {args.hyp} has {len(hypotheses)} lines but --ref {args.ref} "
                            f"has {len(references)}")
        if not hypotheses:
            raise UserError(f"--hyp {args.hyp} and --ref {args.ref} are empty: nothing to score")
        scores = score_corpus(hypotheses, references, lowercase=args.lowercase)
    else:
        raise UserError("give --checkpoint CKPT --split SPLIT, or --hyp FILE --ref FILE")
    print(json.dumps(scores.to_dict()) if args.json else scores.format())
    return 0


def _evaluate_checkpoint(args):
    from nmt.data.files import check_data_files
    from nmt.data.corpus import read_parallel
    from nmt.evaluation import evaluate_translator
    from nmt.translation import load_translator

    overrides = decode_overrides(args)
    overrides["max_src_len"] = overrides["max_src_len"] or 1 << 30  # score every word
    translator, config = load_translator(args.checkpoint, device=resolve_device(args.device),
                                         **overrides)
    check_beam(translator.options)
    if args.data_dir:
        config.data.dir = args.data_dir
    src_path, ref_path = check_data_files(config, [args.split])[args.split]
    src_lines, references = read_parallel(src_path, ref_path)
    return evaluate_translator(translator, src_lines, references, lowercase=args.lowercase)
