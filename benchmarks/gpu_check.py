"""One short GPU run: throughput per precision, the 2048^2 sliding window against MONAI, and the
CUDA tests. Without CUDA it prints why and exits 0.

    python -m benchmarks.gpu_check [--json gpu.json] [--no-compile] [--no-tests]

1. images/s of the demo ``unet`` (base 16, depth 4) and ``deeplabv3plus`` (ResNet-34), batch 8 of
   1 x 1024 x 1024, random weights: eager fp32, ``prepared`` (conv+BN folded, channels_last) in
   fp32 / bf16 / fp16, and ``torch.compile`` of the prepared fp16 model with and without CUDA graphs
   (``mode="reduce-overhead"``); max abs difference of the logits against eager fp32;
2. the 2048^2 sliding window (tile 256, overlap 0.5, batch 4) of seglab against MONAI's
   ``sliding_window_inference`` on the same GPU, in the same run (``benchmarks/bench_inference.py``);
3. the tests that exercise CUDA (losses, metrics, sliding window, trainer device choice, the
   accelerate backends on CUDA), which CI never runs.

Budget: about 3 minutes on an H100, most of it ``torch.compile``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

CUDA_TESTS = [
    "tests/losses/test_cuda.py",
    "tests/metrics/test_meter.py",
    "tests/metrics/test_boundary.py",
    "tests/metrics/test_instance.py",
    "tests/metrics/test_confusion.py",
    "tests/inference/test_sliding_window.py",
    "tests/engine/test_trainer.py",
    "tests/inference/test_accelerate.py",
]


def _time(fn: Callable[[], object], repeat: int = 10) -> float:
    """Median seconds per call after 3 warm-up calls, synchronised."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _variants(model: nn.Module, compile_: bool) -> dict[str, tuple[nn.Module, torch.dtype]]:
    from seglab.inference import prepare

    fp32 = prepare(model, device="cuda")
    out = {
        "eager fp32": (model.cuda().eval(), torch.float32),
        "prepared fp32": (fp32, torch.float32),
        "prepared bf16": (prepare(model, device="cuda").to(torch.bfloat16), torch.bfloat16),
        "prepared fp16": (prepare(model, device="cuda").half(), torch.float16),
    }
    if compile_:
        half = out["prepared fp16"][0]
        out["compile fp16"] = (torch.compile(half), torch.float16)
        out["compile fp16 cuda-graphs"] = (torch.compile(half, mode="reduce-overhead"), torch.float16)
    return out


def throughput(compile_: bool) -> list[dict]:
    """Rows of images/s per model x variant."""
    import seglab

    rows = []
    x32 = torch.randn(8, 1, 1024, 1024, device="cuda")
    for label, name, options in (
        ("unet16", "unet", {"base_channels": 16, "depth": 4}),
        ("deeplabv3plus r34", "deeplabv3plus", {"encoder": "resnet34"}),
    ):
        torch.manual_seed(0)
        model = seglab.create_model(name, in_channels=1, num_classes=2, **options).eval()
        with torch.inference_mode():
            ref = model.cuda()(x32).float()
        for variant, (net, dtype) in _variants(model, compile_).items():
            x = x32.to(dtype).contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            with torch.inference_mode():
                out = net(x).float()  # the first call compiles
                first = time.perf_counter() - start

                def call(net: nn.Module = net, x: torch.Tensor = x) -> object:
                    with torch.inference_mode():
                        return net(x)

                seconds = _time(call)
            diff = float((out - ref).abs().max())
            rows.append(
                {
                    "model": label,
                    "variant": variant,
                    "images_per_s": round(8 / seconds, 1),
                    "ms_per_batch8": round(seconds * 1e3, 2),
                    "max_abs_diff": float(f"{diff:.2g}"),
                    "first_call_s": round(first, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def window() -> list[dict]:
    """seglab vs MONAI sliding window on the GPU (the bench_inference entry, which uses CUDA)."""
    from benchmarks.bench_inference import bench_sliding_window

    rows = [r.as_dict() for r in bench_sliding_window(False)]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def cuda_tests() -> int:
    """Run the tests that take the CUDA branches; returns pytest's exit code."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "cuda or device",
        *CUDA_TESTS,
    ]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-tests", action="store_true", help="skip the CUDA tests")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped.")
        return 0
    print(f"gpu_check: {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(), "throughput": throughput(not args.no_compile)}
    result["window"] = window()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    code = 0 if args.no_tests else cuda_tests()
    result["cuda_tests_exit"] = code
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
