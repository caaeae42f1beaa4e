"""Timing harness: seglab and its peer timed in the same process, alternating, after warm-up.

Write an entry in ``benchmarks/bench_<topic>.py``::

    from benchmarks.harness import Result, benchmark, compare

    @benchmark("unet", help="U-Net vs MONAI BasicUNet, batch 4, 1x256x256", peers=("monai",))
    def bench_unet(quick: bool) -> list[Result]:
        size = 64 if quick else 256  # --quick: tiny sizes, the whole entry in a few seconds
        ...
        return [compare("unet inference", seglab_fn, monai_fn, items=4, peer_name="monai")]

``compare`` runs ``warmup`` calls of each, then ``repeat`` rounds; each round times one call of
each function in alternating order (seglab first on even rounds, peer first on odd ones), so slow
drifts of the machine (thermal, other processes) hit both alike. It reports the median time per
call, items/s, and the ratio ``seglab_throughput / peer_throughput`` (> 1: seglab is faster).
A "peer" may also be seglab itself in another configuration (the full U-Net++ against a pruned
one, a plain forward against a prepared one): the pair is still timed alternately.

``--quick`` (a smoke run, what the test suite does) calls :func:`set_quick`: every ``compare`` and
``measure`` then makes one timed call of each function and no warm-up, and the entry is expected
to pick tiny sizes from its ``quick`` argument, so that a broken benchmark fails CI in seconds.
Quick figures mean nothing and ``python -m benchmarks.render`` leaves them out of the docs.

``peers`` names the modules an entry imports besides seglab (the runner checks them first, the
smoke test requires them like any cross-check).
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "BENCHMARKS",
    "Entry",
    "Result",
    "benchmark",
    "compare",
    "is_quick",
    "load_entries",
    "measure",
    "print_results",
    "set_quick",
]


@dataclass
class Result:
    """One benchmark row: seconds per call of seglab (and of the peer), items per call, extras."""

    name: str
    seglab_s: float  # median seconds per call
    peer_s: float | None = None
    items: int = 1
    peer_name: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def seglab_rate(self) -> float:
        return self.items / self.seglab_s

    @property
    def peer_rate(self) -> float | None:
        return None if self.peer_s is None else self.items / self.peer_s

    @property
    def ratio(self) -> float | None:
        """seglab throughput / peer throughput (> 1 means seglab is faster)."""
        return None if self.peer_s is None else self.peer_s / self.seglab_s

    def as_dict(self) -> dict[str, object]:
        """The row as stored in the results JSON (see ``benchmarks.results``)."""
        return {
            "name": self.name,
            "items": self.items,
            "seglab_s": self.seglab_s,
            "seglab_items_per_s": self.seglab_rate,
            "peer": self.peer_name or None,
            "peer_s": self.peer_s,
            "peer_items_per_s": self.peer_rate,
            "ratio": self.ratio,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, row: dict[str, object]) -> Result:
        """Inverse of :meth:`as_dict`."""
        return cls(
            str(row["name"]),
            float(row["seglab_s"]),  # type: ignore[arg-type]
            None if row.get("peer_s") is None else float(row["peer_s"]),  # type: ignore[arg-type]
            int(row.get("items", 1)),  # type: ignore[arg-type]
            str(row.get("peer") or ""),
            dict(row.get("extra") or {}),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Entry:
    """A registered benchmark: ``fn(quick) -> rows``, a one-line description, the peer modules."""

    name: str
    fn: Callable[[bool], list[Result]]
    help: str = ""
    peers: tuple[str, ...] = ()


BENCHMARKS: dict[str, Entry] = {}

_QUICK = False


def benchmark(name: str, *, help: str = "", peers: tuple[str, ...] = ()) -> Callable:
    """Register a benchmark entry ``fn(quick: bool) -> list[Result]`` under ``name``."""

    def deco(fn: Callable[[bool], list[Result]]) -> Callable[[bool], list[Result]]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Entry(name, fn, help, tuple(peers))
        return fn

    return deco


def load_entries() -> dict[str, Entry]:
    """Import every ``benchmarks/bench_*.py`` module (registering its entries); returns the registry."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("bench_"):
            importlib.import_module(f"benchmarks.{info.name}")
    return BENCHMARKS


def set_quick(quick: bool) -> None:
    """Smoke mode on or off: one timed call per function, no warm-up (see the module docstring)."""
    global _QUICK
    _QUICK = bool(quick)


def is_quick() -> bool:
    """Whether smoke mode is on."""
    return _QUICK


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _collect() -> None:
    """A garbage collection before timing (skipped in smoke mode: in a big process it takes seconds)."""
    if not _QUICK:
        gc.collect()


def _rounds(warmup: int, repeat: int) -> tuple[int, int]:
    return (0, 1) if _QUICK else (warmup, repeat)


def measure(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 10) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    warmup, repeat = _rounds(warmup, repeat)
    for _ in range(warmup):
        fn()
    _collect()
    return statistics.median(_time_once(fn) for _ in range(repeat))


def compare(
    name: str,
    seglab_fn: Callable[[], object],
    peer_fn: Callable[[], object] | None = None,
    *,
    items: int = 1,
    peer_name: str = "peer",
    warmup: int = 2,
    repeat: int = 10,
) -> Result:
    """Time ``seglab_fn`` against ``peer_fn`` alternately and return a :class:`Result`."""
    if peer_fn is None:
        return Result(name, measure(seglab_fn, warmup=warmup, repeat=repeat), None, items)
    warmup, repeat = _rounds(warmup, repeat)
    for _ in range(warmup):
        seglab_fn()
        peer_fn()
    _collect()
    ts: list[float] = []
    tp: list[float] = []
    for r in range(repeat):
        if r % 2 == 0:
            ts.append(_time_once(seglab_fn))
            tp.append(_time_once(peer_fn))
        else:
            tp.append(_time_once(peer_fn))
            ts.append(_time_once(seglab_fn))
    return Result(name, statistics.median(ts), statistics.median(tp), items, peer_name)


def print_results(results: list[Result]) -> None:
    """Print a table: name, seglab items/s, peer items/s, ratio."""
    w = max([len(r.name) for r in results] + [9])
    print(f"{'benchmark':<{w}}  {'seglab/s':>10}  {'peer':>14}  {'peer/s':>10}  {'ratio':>6}")
    for r in results:
        peer = f"{r.peer_rate:10.2f}" if r.peer_rate is not None else f"{'-':>10}"
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        extra = "  " + " ".join(f"{k}={v}" for k, v in r.extra.items()) if r.extra else ""
        print(
            f"{r.name:<{w}}  {r.seglab_rate:10.2f}  {r.peer_name or '-':>14}  {peer}  {ratio}{extra}",
            flush=True,
        )
