"""The measurement's own error: evaluate --baselines-only on pairs made from exact labels.

A simulated cohort's truth labels give every real pair's exact change. Its pairs are measured as
if the real target were an edit (`brainsynth evaluate --baselines-only`), per slice and per pair
(the pair's slices pooled). Peers in the same run: the `tissue` measurement, and the identity
baseline (no change measured at all). Reported for real and disentangled targets: ACC (the
measured rate lies in the prompt's interval), MAE (pp, against the truth of the label slices)
and the seconds per row.

Usage: python benchmarks/measure.py [--resolution 2] [--subjects 6] [--sessions 3] [--slices 8]
                                    [--size 64] [--measures registration,tissue] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--measures", default="registration,tissue")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (cohort, pairs, reports)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from brainsynth_plugins.simulate.cohort import simulate_cohort

    from brainsynth_cli.main import run

    root = args.keep or Path(tempfile.mkdtemp(prefix="brainsynth-measure-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    simulate_cohort(root / "cohort", subjects=args.subjects, sessions=args.sessions, resolution=args.resolution, seed=args.seed)
    print(f"cohort: {args.subjects} subjects x {args.sessions} sessions at {args.resolution:g} mm ({time.perf_counter() - t0:.0f} s)")
    pairs = root / "pairs"
    code = run(["make-pairs", str(root / "cohort"), "-o", str(pairs), "--labels", str(root / "cohort/derivatives/brainsynth-truth"),
                "--slices", str(args.slices), "--size", str(args.size), "--pairing", "all", "--seed", str(args.seed)])
    assert code == 0, "make-pairs failed"
    print("\n| measure | level | kind | n | target ACC | target MAE (pp) | identity MAE (pp) | s/row |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.measures.split(","):
        out = root / f"report-{name}"
        shutil.rmtree(out, ignore_errors=True)
        t1 = time.perf_counter()
        code = run(["evaluate", "--baselines-only", str(pairs), "-o", str(out), "--split", "all", "--measure", name])
        assert code == 0, f"evaluate --measure {name} failed"
        seconds = time.perf_counter() - t1
        summary = json.loads((out / "metrics.json").read_text())
        for level, source in (("slice", summary), ("pair", summary["pairs"])):
            for kind in ("kind=real", "kind=disentangled"):
                t, i = source["methods"]["target"].get(kind), source["methods"]["identity"].get(kind)
                if not t:
                    continue
                print(f"| {name} | {level} | {kind[5:]} | {t['rows']} | {t['acc']:.2f} | {t['mae']:.2f} | {i['mae']:.2f} | "
                      f"{seconds / summary['rows']:.3f} |")
            intervals = source["methods"]["target"]["intervals"]
            print("|  |  | per interval: " + "; ".join(f"{k} n={v['n']} ACC {v['acc']:.2f} MAE {v['mae']:.2f}" for k, v in intervals.items()) + " | | | | | |")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
