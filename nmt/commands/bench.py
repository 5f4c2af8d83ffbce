"""Benchmarks: reversal exactness and speed, memory, training speed, scaling, translation speed."""
from __future__ import annotations

import importlib

# bench name -> module in nmt.bench defining add_arguments(parser) and run(args).
BENCHES = {
    "reversal": "nmt.bench.reversal",
    "memory": "nmt.bench.memory",
    "speed": "nmt.bench.speed",
    "scaling": "nmt.bench.scaling",
    "translate": "nmt.bench.translate",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module_name in BENCHES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        help_text = doc[0] if doc else ""
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(bench_parser)
        bench_parser.set_defaults(run_bench=module.run)


def run(args):
    return args.run_bench(args)
