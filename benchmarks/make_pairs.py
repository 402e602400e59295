"""make-pairs on a simulated cohort: time per pair by blender and --jobs, and disentanglement.

Peers measured in the same run: the blenders `none` (the floor: no blend), `copy-paste` and
`poisson`; `--jobs 1` vs `--jobs 2`; and, for disentanglement, Ω as make-pairs builds it
(dilated structure, other described structures protected) against Ω without protection and
Ω without margin. Disentanglement numbers are realised rates on the ground-truth labels of
`brainsynth_plugins.simulate`.

Usage: python benchmarks/make_pairs.py [--subjects 4] [--sessions 3] [--resolution 2] [--slices 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def run(options) -> tuple[float, dict]:
    from brainsynth_plugins.pairs.engine import make_pairs

    shutil.rmtree(options.out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = make_pairs(options, echo=lambda *a: None, warn=lambda *a: None)
    return time.perf_counter() - t0, {"pairs": summary.pairs_total, "rows": summary.rows}


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def disentanglement(rows: list[dict], described=("ventricle", "cortex")) -> dict[str, float]:
    real = {(r["subject"], tuple(r["sessions"])): r for r in rows if r["kind"] == "real"}
    worst_s = worst_other = worst_wm = 0.0
    n = 0
    seen = set()
    for r in rows:
        key = (r["subject"], tuple(r["sessions"]), r["structure"])
        if r["kind"] != "disentangled" or key in seen:
            continue
        seen.add(key)
        n += 1
        ref = real[key[:2]]["rates"]
        s = r["structure"]
        worst_s = max(worst_s, abs(r["rates"][s] - ref[s]))
        worst_other = max([worst_other] + [abs(r["rates"][o]) for o in described if o != s])
        worst_wm = max(worst_wm, abs(r["rates"]["white-matter"]))
    return {"rows": n, "S_vs_real_pp": worst_s, "other_described_pp": worst_other, "white_matter_pp": worst_wm}


def omega_ablation(root: Path, truth: Path, margin: float) -> dict[str, dict[str, float]]:
    """Worst drift of the other described structures, by the way Ω is built (labels only), over
    the (pair, S) that get an S-disentangled row."""
    import numpy as np
    from brainsynth_plugins.pairs.engine import _rate, group_vols, omega

    from brainsynth_cli.datasets import read_dataset
    from brainsynth_cli.images import read_labels
    from brainsynth_cli.structures import default_rules

    rules = default_rules()
    variants = {"make-pairs (margin, protected)": (margin, True), "no protection": (margin, False), "no margin": (0.0, True)}
    out = {k: {"other_described_pp": 0.0, "omega_voxels": 0} for k in variants}
    for subject, sessions in read_dataset(root, truth).subjects().items():
        for p, t in zip(sessions, sessions[1:]):
            lp, lt = read_labels(p.labels), read_labels(t.labels)
            vp = group_vols(lp.data, lp.voxel_volume, rules)
            vt = group_vols(lt.data, lt.voxel_volume, rules)
            for s in rules.described():
                if s.interval_for(_rate(vp[s.name], vt[s.name])) is None:
                    continue  # make-pairs makes no S-disentangled row for this pair
                for name, (m, protect) in variants.items():
                    mask = omega(lp.data, lt.data, s, m, lp.voxel_size, protect=rules.described() if protect else ())
                    vb = group_vols(np.where(mask, lt.data, lp.data), lp.voxel_volume, rules)
                    for o in rules.described():
                        if o.name != s.name:
                            out[name]["other_described_pp"] = max(out[name]["other_described_pp"], abs(_rate(vp[o.name], vb[o.name])))
                    out[name]["omega_voxels"] += int(mask.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    from brainsynth_plugins.pairs.engine import Options
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-make-pairs-"))
    root = work / "cohort"
    simulate_cohort(root, subjects=args.subjects, sessions=args.sessions, resolution=args.resolution, seed=0)
    truth = root / "derivatives" / "brainsynth-truth"
    base = dict(dataset=root, labels=truth, slices=args.slices, size=256, seed=0)
    print(f"cohort: {args.subjects} subjects x {args.sessions} sessions at {args.resolution:g} mm; 2d, {args.slices} slices of 256^2")
    print(f"{'run':<28} {'pairs':>5} {'rows':>6} {'s/pair':>8} {'vs none':>8}")
    results = {}
    for name, extra in (("none", dict(blender="none")), ("copy-paste", dict(blender="copy-paste")),
                        ("poisson", dict(blender="poisson")), ("poisson --jobs 2", dict(blender="poisson", jobs=2)),
                        ("poisson --dim 3d", dict(blender="poisson", dim="3d"))):
        out = work / name.replace(" ", "_")
        seconds, info = run(Options(out=out, **base, **extra))
        results[name] = (seconds, info, out)
    floor = results["none"][0] / max(1, results["none"][1]["pairs"])
    for name, (seconds, info, _) in results.items():
        per = seconds / max(1, info["pairs"])
        print(f"{name:<28} {info['pairs']:>5} {sum(info['rows'].values()):>6} {per:>8.2f} {per / floor:>7.2f}x")
    print()
    print("disentangled rows (realised rates on the blended targets' labels, worst case, percentage points):")
    d = disentanglement(rows_of(results["poisson"][2]))
    print(f"  rows {d['rows']}: |R_S - R_S(real)| {d['S_vs_real_pp']:.3f}; other described {d['other_described_pp']:.3f}; "
          f"white matter {d['white_matter_pp']:.3f}  (acceptance: 1 and 0.5)")
    print("Ω variants (other described structures' worst drift, pp; total Ω voxels):")
    for name, v in omega_ablation(root, truth, 2.0).items():
        print(f"  {name:<32} {v['other_described_pp']:.3f}   {v['omega_voxels']}")


if __name__ == "__main__":
    main()
