"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--list] [--json PATH]``.

Every ``benchmarks/bench_*.py`` module is imported and its ``@benchmark`` entries registered.
Timings use ``torch.set_num_threads(2)`` (``--threads`` to change) on the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import torch

from benchmarks.harness import BENCHMARKS, print_results


def _load_all() -> None:
    pkg_dir = Path(__file__).parent
    for info in pkgutil.iter_modules([str(pkg_dir)]):
        if info.name.startswith("bench_"):
            importlib.import_module(f"benchmarks.{info.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    _load_all()
    if args.list:
        for name, (_, help_) in sorted(BENCHMARKS.items()):
            print(f"{name:<20} {help_}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(sorted(BENCHMARKS))}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    all_rows = []
    for name in args.names or sorted(BENCHMARKS):
        fn, help_ = BENCHMARKS[name]
        print(
            f"\n== {name}: {help_} (torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True
        )
        rows = fn(args.quick)
        print_results(rows)
        all_rows.extend({"benchmark": name, **r.as_dict()} for r in rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(all_rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
