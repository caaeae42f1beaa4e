"""Timing harness: seglab and its peer timed in the same process, alternating, after warm-up.

Write an entry in ``benchmarks/bench_<topic>.py``::

    from benchmarks.harness import benchmark, compare

    @benchmark("unet", help="U-Net vs MONAI BasicUNet, batch 4, 1x256x256")
    def bench_unet(quick: bool) -> list[Result]:
        ...
        return [compare("unet inference", seglab_fn, monai_fn, items=4, peer_name="monai")]

``compare`` runs ``warmup`` calls of each, then ``repeat`` rounds; each round times one call of
each function in alternating order (seglab first on even rounds, peer first on odd ones), so slow
drifts of the machine (thermal, other processes) hit both alike. It reports the median time per
call, items/s, and the ratio ``seglab_throughput / peer_throughput`` (> 1: seglab is faster).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["BENCHMARKS", "Result", "benchmark", "compare", "measure", "print_results"]


@dataclass
class Result:
    """One benchmark row."""

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
        return {
            "name": self.name,
            "seglab_s": self.seglab_s,
            "seglab_items_per_s": self.seglab_rate,
            "peer": self.peer_name or None,
            "peer_s": self.peer_s,
            "peer_items_per_s": self.peer_rate,
            "ratio": self.ratio,
            **self.extra,
        }


BENCHMARKS: dict[str, tuple[Callable[[bool], list[Result]], str]] = {}


def benchmark(name: str, *, help: str = "") -> Callable:
    """Register a benchmark entry ``fn(quick: bool) -> list[Result]`` under ``name``."""

    def deco(fn: Callable[[bool], list[Result]]) -> Callable[[bool], list[Result]]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = (fn, help)
        return fn

    return deco


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def measure(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 10) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    gc.collect()
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
    for _ in range(warmup):
        seglab_fn()
        peer_fn()
    gc.collect()
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
