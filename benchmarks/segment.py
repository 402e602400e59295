"""Benchmark of `brainsynth segment` (segmenter ``atlas``) on simulated cohorts with ground truth.

Measured in one run, on subjects from ``brainsynth_plugins.simulate.cohort`` (MNI152 template,
random affine + smooth deformation, skull and scalp, own contrast, bias and noise; the later
session with an exactly known ventricle and cortex change):

- Dice of lateral ventricles (4/43), cerebral cortex (3/42) and white matter (2/41) against the
  truth, for ``atlas`` and two named peers measured on the same scans:
  ``atlas-affine`` (affine registration + label propagation only: DALL-E Brain's scheme) and
  ``atlas-norefine`` (affine + demons, no intensity refinement);
- the ventricle (and cortex) change rate between the two sessions, from ``atlas`` labels,
  segmenting the later session independently and longitudinally (``segment_followup``, what
  ``brainsynth segment --bids`` does by default), against the truth rate: the error
  distribution in percentage points, against the partial-volume truth (``realised_pv``: the
  rate the images hold) and against the nearest-neighbour truth labels' own rate (``realised``,
  which carries the lattice noise of counting whole 2 mm voxels, up to ~3 pp);
- the absolute volume error of the labels ``--bids`` writes (cortex, white matter, lateral
  ventricles) against the truth labels: a bias that cancels in change rates;
- seconds per volume at 2 mm and at 1 mm (one thread), and for ``ants`` when antspyx is installed.

    python benchmarks/segment.py [--subjects 6] [--seed 11] [--no-1mm] [--rates-only] [--resolution 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from brainsynth_cli.structures import change_rate  # noqa: E402

from brainsynth_plugins.segment.atlas import AtlasSegmenter  # noqa: E402
from brainsynth_plugins.simulate import cohort  # noqa: E402

V_IDS, C_IDS, W_IDS = (4, 43), (3, 42), (2, 41)
#: Ventricle change (percent, later vs first session) per subject: small to large.
VENTRICLE = (1.0, 3.0, 6.0, 10.0, 18.0, 30.0, 2.0, 14.0)
CORTEX = (-1.0, -3.0, -2.0, -4.0, -1.5, -2.5, -0.5, -3.5)


def dice(a: np.ndarray, b: np.ndarray, ids: tuple[int, ...]) -> float:
    x, y = np.isin(a, ids), np.isin(b, ids)
    return 2.0 * float((x & y).sum()) / max(float(x.sum() + y.sum()), 1.0)


def volume(labels: np.ndarray, ids: tuple[int, ...]) -> float:
    return float(np.isin(labels, ids).sum())


def summary(errors: list[float]) -> str:
    a = np.abs(errors)
    return (f"mean {statistics.fmean(errors):+.2f}  sd {statistics.pstdev(errors):.2f}  "
            f"MAE {a.mean():.2f}  max|e| {a.max():.2f}  within 2 pp {int((a <= 2).sum())}/{len(a)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--start", type=int, default=0, help="first subject (0-based): split a cohort over processes")
    ap.add_argument("--no-1mm", action="store_true")
    ap.add_argument("--resolution", type=float, default=2.0, help="voxel size (mm) of the Dice / rate cohort")
    ap.add_argument("--refine-rounds", type=int, default=1)
    ap.add_argument("--prior-mm", type=float, default=2.0)
    ap.add_argument("--followup-intensity", default="power", choices=("power", "piecewise", "none"))
    ap.add_argument("--rates-only", action="store_true", help="only atlas: Dice and change rates")
    args = ap.parse_args()
    n = min(args.subjects, len(VENTRICLE))

    peers = {"atlas": AtlasSegmenter(refine_rounds=args.refine_rounds, prior_mm=args.prior_mm,
                                     followup_intensity=args.followup_intensity)}
    if not args.rates_only:
        peers["atlas-affine"] = AtlasSegmenter(deformable=False, refine=False)
        peers["atlas-norefine"] = AtlasSegmenter(refine=False)
    dices: dict[str, list[tuple[float, float, float]]] = {k: [] for k in peers}
    seconds: dict[str, list[float]] = {k: [] for k in peers}
    rows = []
    err_ind: list[float] = []
    err_lon: list[float] = []
    err_lon_nn: list[float] = []
    err_ctx_lon_nn: list[float] = []
    err_ctx_lon: list[float] = []
    err_ctx_ind: list[float] = []
    follow_s: list[float] = []
    dices_lon0: list[tuple[float, float]] = []
    #: absolute volume error (percent) of the labels --bids writes, per group, both sessions
    abs_err: dict[str, list[float]] = {"cortex": [], "white matter": [], "lateral ventricles": []}
    for i in range(args.start, n):
        sim = cohort.simulate_subject(i, sessions=2, resolution=args.resolution, seed=args.seed,
                                      rates={"ventricle": [VENTRICLE[i]], "cortex": [CORTEX[i]]})
        s0, s1 = sim.sessions
        labels0 = {}
        for name, seg in peers.items():
            t = time.perf_counter()
            lab = seg.segment(s0.image).data
            seconds[name].append(time.perf_counter() - t)
            labels0[name] = lab
            dices[name].append(tuple(dice(lab, s0.labels.data, ids) for ids in (V_IDS, C_IDS, W_IDS)))
        atlas = peers["atlas"]
        ind1 = atlas.segment(s1.image).data
        # longitudinal, as `segment --bids` does: both sessions from the first session's labels
        initial = s0.image.with_data(labels0["atlas"])
        lon0 = atlas.segment_followup(s0.image, s0.image, initial).data
        t = time.perf_counter()
        lon1 = atlas.segment_followup(s1.image, s0.image, initial).data
        follow_s.append(time.perf_counter() - t)
        dices_lon0.append((dice(lon0, s0.labels.data, V_IDS), dice(lon0, s0.labels.data, C_IDS)))
        for lab, ses in ((lon0, s0), (lon1, s1)):
            for name, ids in (("cortex", C_IDS), ("white matter", W_IDS), ("lateral ventricles", V_IDS)):
                abs_err[name].append(change_rate(volume(ses.labels.data, ids), volume(lab, ids)))
        truth_v, truth_c = s1.realised_pv["ventricle"], s1.realised_pv["cortex"]
        nn_v, nn_c = s1.realised["ventricle"], s1.realised["cortex"]
        v0, c0 = volume(labels0["atlas"], V_IDS), volume(labels0["atlas"], C_IDS)
        r_ind, c_ind = change_rate(v0, volume(ind1, V_IDS)), change_rate(c0, volume(ind1, C_IDS))
        r_lon = change_rate(volume(lon0, V_IDS), volume(lon1, V_IDS))
        c_lon = change_rate(volume(lon0, C_IDS), volume(lon1, C_IDS))
        err_ind.append(r_ind - truth_v)
        err_lon.append(r_lon - truth_v)
        err_ctx_ind.append(c_ind - truth_c)
        err_ctx_lon.append(c_lon - truth_c)
        err_lon_nn.append(r_lon - nn_v)
        err_ctx_lon_nn.append(c_lon - nn_c)
        rows.append((sim.subject, truth_v, r_ind, r_lon, truth_c, c_ind, c_lon,
                     dice(lon1, s1.labels.data, V_IDS), dice(lon1, s1.labels.data, C_IDS), nn_v))
        print(f"{sim.subject}: ventricle truth {truth_v:+6.2f} (labels {nn_v:+6.2f})  independent {r_ind:+6.2f}  longitudinal {r_lon:+6.2f} | "
              f"cortex truth {truth_c:+5.2f}  independent {c_ind:+5.2f}  longitudinal {c_lon:+5.2f} | "
              f"Dice ses-02 (longitudinal) V {rows[-1][7]:.3f} C {rows[-1][8]:.3f}", flush=True)

    print(f"\n## Dice against the truth, first session, {args.resolution:g} mm (mean over subjects; min in brackets)")
    print("| segmenter | lateral ventricles | cortex | white matter | s / volume |")
    print("|---|---|---|---|---|")
    for name in peers:
        d = np.array(dices[name])
        print(f"| {name} | {d[:, 0].mean():.3f} ({d[:, 0].min():.3f}) | {d[:, 1].mean():.3f} ({d[:, 1].min():.3f}) | "
              f"{d[:, 2].mean():.3f} ({d[:, 2].min():.3f}) | {statistics.median(seconds[name]):.1f} |")
    d = np.array(dices_lon0)
    print(f"| atlas, longitudinal labels of ses-01 (--bids) | {d[:, 0].mean():.3f} ({d[:, 0].min():.3f}) | "
          f"{d[:, 1].mean():.3f} ({d[:, 1].min():.3f}) | | |")
    if "atlas-affine" in dices:
        base = np.array(dices["atlas-affine"]).mean(axis=0)
        mine = np.array(dices["atlas"]).mean(axis=0)
        print(f"ratio atlas / atlas-affine: ventricles {mine[0] / base[0]:.2f}x, cortex {mine[1] / base[1]:.2f}x")

    print(f"\n## Absolute volume error of the --bids labels (percent of the truth labels' volume, both sessions), {args.resolution:g} mm")
    for name, errs in abs_err.items():
        print(f"{name:<18}: mean {statistics.fmean(errs):+.1f} %  range {min(errs):+.1f} .. {max(errs):+.1f} %")

    print(f"\n## Change rate error (estimate - partial-volume truth, percentage points), {args.resolution:g} mm")
    print(f"ventricle, independent : {summary(err_ind)}")
    print(f"ventricle, longitudinal: {summary(err_lon)}")
    print(f"cortex,    independent : {summary(err_ctx_ind)}")
    print(f"cortex,    longitudinal: {summary(err_ctx_lon)}")
    print("against the truth labels' own (nearest-neighbour) rate:")
    print(f"ventricle, longitudinal: {summary(err_lon_nn)}")
    print(f"cortex,    longitudinal: {summary(err_ctx_lon_nn)}")
    print("| subject | ventricle truth (pv) | truth (labels) | independent | longitudinal | cortex truth (pv) | independent | longitudinal |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:+.2f} | {r[9]:+.2f} | {r[2]:+.2f} | {r[3]:+.2f} | {r[4]:+.2f} | {r[5]:+.2f} | {r[6]:+.2f} |")

    print("\n## Seconds per volume (1 thread)")
    print(f"atlas {args.resolution:g} mm: {statistics.median(seconds['atlas']):.1f} s; "
          f"longitudinal follow-up {args.resolution:g} mm: {statistics.median(follow_s):.1f} s")
    if not args.no_1mm:
        sim = cohort.simulate_subject(0, sessions=2, resolution=1.0, seed=args.seed,
                                      rates={"ventricle": [5.0], "cortex": [-2.0]})
        s0 = sim.sessions[0]
        t = time.perf_counter()
        lab = peers["atlas"].segment(s0.image).data
        t1 = time.perf_counter() - t
        print(f"atlas 1 mm: {t1:.1f} s (target < 120 s); Dice V {dice(lab, s0.labels.data, V_IDS):.3f} "
              f"C {dice(lab, s0.labels.data, C_IDS):.3f}")
    if importlib.util.find_spec("ants") is not None:
        from brainsynth_plugins.segment.ants import AntsSegmenter

        sim = cohort.simulate_subject(0, sessions=2, resolution=2.0, seed=args.seed)
        t = time.perf_counter()
        lab = AntsSegmenter().segment(sim.sessions[0].image).data
        print(f"ants 2 mm: {time.perf_counter() - t:.1f} s; Dice V {dice(lab, sim.sessions[0].labels.data, V_IDS):.3f}")
    else:
        print("ants: antspyx not installed (pip install 'brainsynth[ants]'); not measured")


if __name__ == "__main__":
    main()
