"""Benchmarks: reversal exactness and speed, memory, training speed, scaling, capacity, translation speed."""
from __future__ import annotations

# bench name -> module in nmt.bench defining add_arguments(parser) and run(args).
BENCHES = {
    "reversal": "nmt.bench.reversal",
    "memory": "nmt.bench.memory",
    "speed": "nmt.bench.speed",
    "scaling": "nmt.bench.scaling",
    "capacity": "nmt.bench.capacity",
    "translate": "nmt.bench.translate",
}


def add_arguments(parser) -> None:
    from nmt.cli import add_module_commands

    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    add_module_commands(sub, BENCHES, run_key="run_bench")


def run(args):
    return args.run_bench(args)
