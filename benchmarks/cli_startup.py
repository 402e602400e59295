"""Median wall time of `brainsynth --help`, against named peers in the same run.

Peers: the bare interpreter (`python -c pass`, the floor), nibabel's `nib-ls --help` (a small
neuroimaging CLI) and `python -c "import torch"` (what --help would cost if the kernel imported
torch). Usage: python benchmarks/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    cases = {
        "brainsynth --help": [sys.executable, "-m", "brainsynth_cli.main", "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    if shutil.which("nib-ls"):
        cases["nib-ls --help"] = [shutil.which("nib-ls"), "--help"]
    cases["python -c 'import torch'"] = [sys.executable, "-c", "import torch"]
    results = {name: median_seconds(cmd, args.runs) for name, cmd in cases.items()}
    ours = results["brainsynth --help"]
    print(f"{'command':32s} {'median s':>9s} {'brainsynth / this':>18s}")
    for name, sec in results.items():
        print(f"{name:32s} {sec:9.3f} {ours / sec:18.2f}")
    print(f"\ntarget: brainsynth --help under 0.300 s -> {'met' if ours < 0.3 else 'NOT met'} ({ours:.3f} s)")


if __name__ == "__main__":
    main()
