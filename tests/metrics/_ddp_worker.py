"""Worker for the two-process gloo test of ``SegMeter`` (importable by spawned processes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from seglab.metrics import SegMeter


def run(rank: int, world_size: int, init_file: str, out_dir: str, shards: list) -> None:
    """Feed this rank's batches to a meter, compute on all ranks, write rank 0's results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        meter = SegMeter("multiclass", 3, per_image=True)
        for logits, target, keys in shards[rank]:
            meter.update(logits, target, keys=keys)
        first = meter.compute()
        second = meter.compute()  # computing twice must not double the counts
        rows = meter.per_image_results()
        local = meter._totals.tolist()
        if rank == 0:
            Path(out_dir, "result.json").write_text(
                json.dumps({"first": first, "second": second, "rows": rows, "local": local})
            )
    finally:
        dist.destroy_process_group()
