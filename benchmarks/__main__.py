"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--list] [--json PATH] [--json-dir DIR]``.

Every ``benchmarks/bench_*.py`` module is imported and its ``@benchmark`` entries registered.
Timings use ``torch.set_num_threads(2)`` (``--threads`` to change) on the CPU. ``--json PATH``
writes every entry of the run into one results file, ``--json-dir DIR`` one file per entry
(``DIR/<name>.json``, what ``make bench`` does into ``benchmarks/results``); the format is
described in ``benchmarks/results.py`` and ``python -m benchmarks.render`` turns the files into
``docs/benchmarks.md``. ``--quick`` is a smoke run on tiny sizes: its files are marked
``"quick": true`` and never rendered.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import results
from benchmarks.harness import Entry, load_entries, print_results, set_quick


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one call each")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results into this file")
    parser.add_argument("--json-dir", type=Path, metavar="DIR", help="write DIR/<name>.json per entry")
    return parser


def _missing_peers(entries: list[Entry]) -> list[str]:
    missing = []
    for entry in entries:
        for module in entry.peers:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                missing.append(f"{entry.name} needs {module}")
    return missing


def _is_measured(path: Path) -> bool:
    """Whether ``path`` holds results of a real (not ``--quick``) run."""
    try:
        return not results.read(path).get("quick", False)
    except (OSError, ValueError):
        return False


def _command(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks", *argv])


def run(entry: Entry, quick: bool) -> dict:
    """Run one entry, print its table, and return its results record."""
    print(f"\n== {entry.name}: {entry.help} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
          flush=True)  # fmt: skip
    date, load0, t0 = results.now(), results.load_avg(), time.perf_counter()
    torch.manual_seed(0)
    rows = entry.fn(quick)
    seconds = time.perf_counter() - t0
    print_results(rows)
    return results.entry_record(entry, rows, date=date, seconds=seconds, loads=[load0, results.load_avg()])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    registry = load_entries()
    if args.list:
        for name, entry in sorted(registry.items()):
            print(f"{name:<20} {entry.help}")
        return 0
    unknown = [n for n in args.names if n not in registry]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(sorted(registry))}",
              file=sys.stderr)  # fmt: skip
        return 2
    entries = [registry[n] for n in (args.names or sorted(registry))]
    missing = _missing_peers(entries)
    if missing:
        print(
            f"missing peer libraries ({'; '.join(missing)}): pip install -e '.[peers,onnx]'", file=sys.stderr
        )
        return 2
    if args.quick and args.json_dir:
        measured = [e.name for e in entries if _is_measured(args.json_dir / f"{e.name}.json")]
        if measured:
            print(f"--quick would overwrite measured results in {args.json_dir} ({', '.join(measured)}); "
                  "write smoke results elsewhere", file=sys.stderr)  # fmt: skip
            return 2
    torch.set_num_threads(args.threads)
    start, command = results.now(), _command(argv)
    records, failed = _run_all(entries, args, command)
    if args.json:
        results.write(args.json, results.document(records, command=command, quick=args.quick, date=start))
    if failed:
        print(f"benchmark(s) that failed (tracebacks above): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _run_all(entries: list[Entry], args: argparse.Namespace, command: str) -> tuple[list[dict], list[str]]:
    """Run every entry; each entry's file is written as soon as it is done (``--json-dir``), and an
    entry that raises is reported and skipped, so one broken entry does not lose the others."""
    records, failed = [], []
    set_quick(args.quick)
    try:
        for entry in entries:
            try:
                record = run(entry, args.quick)
            except Exception:  # reported with its traceback; the run goes on
                traceback.print_exc()
                failed.append(entry.name)
                continue
            records.append(record)
            if args.json_dir:
                doc = results.document([record], command=command, quick=args.quick, date=record["date"])
                results.write(args.json_dir / f"{record['name']}.json", doc)
    finally:
        set_quick(False)
    return records, failed


if __name__ == "__main__":
    raise SystemExit(main())
