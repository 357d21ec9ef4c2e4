"""Peak matmul FLOP/s of this machine per dtype: the `cpu` entry of pipeline/hardware.yaml.

    .venv/bin/python -P bench/matmul_peak.py [--size 2048] [--repeats 5]   # -P: bench/ holds a tokenize.py

Best of `repeats` square matmuls after a warm-up, on torch's default thread count. Run it on a
quiet machine: other processes on the same cores lower the number.
"""
from __future__ import annotations

import argparse
import time

import torch


def peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        # bf16/fp16 without native support can be ~1000x slower: keep their matrices small
        size = args.size if dtype == torch.float32 else min(args.size, 512)
        print(f"{name}: {peak(dtype, size, args.repeats) / 1e9:,.1f} GFLOP/s ({size}x{size})")


if __name__ == "__main__":
    main()
