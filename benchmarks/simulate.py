"""`brainsynth simulate`: time and accuracy, against named peers measured in the same run.

1. Template: deriving the reference labels from nilearn's files (cold cache, 1 mm derivation
   + resampling to 2 mm) vs nilearn's own ``load_mni152_template(resolution=2)`` (read and
   resample the T1 only), and the warm (cached) load.
2. Cohort: ``simulate_cohort`` 4 subjects x 3 sessions at 2 mm (the issue's target: < 60 s),
   with the calibration error (|realised - requested|) and the change of the other structure
   in single-structure sessions.
3. Hot loop: sampling a 3-component field at the moving voxels of a session, our numba
   trilinear kernel vs ``scipy.ndimage.map_coordinates`` (one call per component) and
   SimpleITK (``sitk.Warp`` of the whole volume, the usual way to apply a displacement field).
4. Calibration strategy for one session (ventricle +20 %): ours (moving voxels only, numba,
   regula falsi) vs the straightforward one (bisection, resampling the whole volume with scipy
   at each step).

Usage: python benchmarks/simulate.py [--subjects 4] [--sessions 3] [--resolution 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(fn, repeat: int = 1):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold template build (~10-20 s)")
    args = ap.parse_args()

    import numpy as np
    import scipy.ndimage as ndi
    from brainsynth_plugins.simulate import cohort, template
    from brainsynth_plugins.simulate._interp import trilinear

    res = args.resolution
    print(f"# brainsynth simulate benchmark ({os.cpu_count()} CPUs, python {sys.version.split()[0]})")

    # 1. template ------------------------------------------------------------------------------
    print("\n## 1. reference template")
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as cache:
            old = os.environ.get("BRAINSYNTH_CACHE")
            os.environ["BRAINSYNTH_CACHE"] = cache
            template._memory.clear()
            cold, _ = timed(lambda: template.reference(res))
            template._memory.clear()
            warm, _ = timed(lambda: template.reference(res), repeat=3)
            if old is None:
                del os.environ["BRAINSYNTH_CACHE"]
            else:
                os.environ["BRAINSYNTH_CACHE"] = old
            template._memory.clear()
        from nilearn.datasets import load_mni152_template

        def nilearn_load():
            getattr(load_mni152_template, "cache_clear", lambda: None)()  # it is memoised
            return load_mni152_template(resolution=int(res))

        nil, _ = timed(nilearn_load, repeat=3)
        print(f"brainsynth reference({res:g}) cold (derive labels + cache): {cold:7.2f} s")
        print(f"brainsynth reference({res:g}) warm (read cache):           {warm:7.2f} s")
        print(f"nilearn load_mni152_template({int(res)}) (T1 only):          {nil:7.2f} s")
        print(f"ratio cold / nilearn: {cold / nil:.1f}x   warm / nilearn: {warm / nil:.2f}x")
    template.reference(res)
    template.head(res)

    # 2. cohort --------------------------------------------------------------------------------
    print(f"\n## 2. cohort {args.subjects} x {args.sessions} at {res:g} mm")
    cohort.simulate_subject(0, sessions=2, resolution=res, rates={"cortex": [-1.0]})  # numba compile
    with tempfile.TemporaryDirectory() as tmp:
        seconds, result = timed(lambda: cohort.simulate_cohort(Path(tmp) / "c", subjects=args.subjects,
                                                                sessions=args.sessions, resolution=res, seed=0))
        errors, cross = [], []
        for plan in result.plans:
            rows = (Path(tmp) / "c" / plan.subject / f"{plan.subject}_sessions.tsv").read_text().splitlines()
            head = rows[0].split("\t")
            for line in rows[2:]:
                row = dict(zip(head, line.split("\t")))
                for g in ("ventricle", "cortex"):
                    errors.append(abs(float(row[f"{g}_rate_realised"]) - float(row[f"{g}_rate_requested"])))
                if plan.pattern in ("ventricle", "cortex"):
                    other = "cortex" if plan.pattern == "ventricle" else "ventricle"
                    cross.append(abs(float(row[f"{other}_rate_realised"])))
        size = sum(p.stat().st_size for p in (Path(tmp) / "c").rglob("*") if p.is_file()) / 2**20
    n = args.subjects * args.sessions
    print(f"wall time: {seconds:.1f} s ({seconds / n:.2f} s per session, {size:.1f} MiB written); target < 60 s: "
          f"{'met' if seconds < 60 else 'MISSED'}")
    print(f"rate error |realised - requested|: max {max(errors):.3f} pp, mean {statistics.mean(errors):.3f} pp "
          f"over {len(errors)} (acceptance 1 pp)")
    if cross:
        print(f"other structure in single-structure sessions: max |change| {max(cross):.3f} pp (acceptance 0.5 pp)")

    # 3. hot loop ------------------------------------------------------------------------------
    print("\n## 3. sampling a displacement field at the moving voxels")
    opts = cohort.make_options(sessions=2, resolution=res, seed=0)
    plan = cohort.plan_subject(0, opts)
    _, lab = template.head(res)
    anatomy = cohort._anatomy(plan, opts, lab.data)
    base = cohort.sample_labels(lab.data, anatomy.positions)
    fields = cohort._fields(base, res)
    calib = cohort._Calibrator(lab.data, anatomy, fields, base)
    pts = calib.points + calib.displacement(1.0, 0.5)
    field = anatomy.positions
    t_numba, a = timed(lambda: trilinear(field, pts, clamp=True), repeat=5)
    t_scipy, b = timed(lambda: np.stack([ndi.map_coordinates(field[i], pts, order=1, mode="nearest") for i in range(3)]), repeat=5)
    print(f"{pts.shape[1]} points of a {field.shape[1:]} grid; max |numba - scipy| = {np.abs(a - b).max():.2e} voxels")
    print(f"numba trilinear (3 components, one pass): {t_numba * 1000:7.1f} ms")
    print(f"scipy map_coordinates (3 calls):          {t_scipy * 1000:7.1f} ms   ratio {t_scipy / t_numba:.1f}x")
    try:
        import SimpleITK as sitk

        disp = np.zeros((3,) + base.shape, dtype=np.float64)
        disp.reshape(3, -1)[:, calib.index] = calib.displacement(1.0, 0.5)
        img = sitk.GetImageFromArray(np.ascontiguousarray(field[0].transpose(2, 1, 0)).astype(np.float32))
        dfield = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(disp, 0, -1).transpose(2, 1, 0, 3)), isVector=True)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        t_itk, _ = timed(lambda: [sitk.Warp(img, dfield, sitk.sitkLinear) for _ in range(3)], repeat=3)
        print(f"SimpleITK Warp, whole volume (3 comps):   {t_itk * 1000:7.1f} ms   ratio {t_itk / t_numba:.1f}x")
    except Exception as exc:  # pragma: no cover - optional peer
        print(f"SimpleITK peer skipped: {exc}")

    # 4. calibration strategy ------------------------------------------------------------------
    print("\n## 4. calibrating one session (ventricle +20 %)")
    target = 20.0
    only = cohort._Calibrator(lab.data, anatomy, fields, base, which="ventricle")
    limit = 8.0 / res
    t_ours, a_ours = timed(lambda: cohort._solve(lambda m: only.rate("ventricle", m, 0.0), target, limit, cohort.TOLERANCE_PP / 2))
    r_ours = calib.rate("ventricle", a_ours, 0.0)
    base_count = int(np.isin(base, (4, 43)).sum())
    grid = np.indices(base.shape, dtype=np.float32)
    evaluations = [0]

    def naive_rate(m: float) -> float:
        evaluations[0] += 1
        steps = max(0, int(math.ceil(math.log2(m / 0.25)))) if m > 0.25 else 0
        u = (m / 2 ** steps) * fields.ventricle
        for _ in range(steps):
            q = grid + u
            u = u + np.stack([ndi.map_coordinates(u[i], q, order=1, mode="constant") for i in range(3)])
        y = grid + u
        pos = np.stack([ndi.map_coordinates(anatomy.positions[i], y, order=1, mode="nearest") for i in range(3)])
        labels = ndi.map_coordinates(lab.data, pos, order=0, mode="constant")
        return (np.isin(labels, (4, 43)).sum() - base_count) / base_count * 100.0

    def bisect() -> float:
        lo, hi = 0.0, limit
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            r = naive_rate(mid)
            if abs(r - target) <= cohort.TOLERANCE_PP / 2:
                return mid
            lo, hi = (mid, hi) if r < target else (lo, mid)
        return mid

    t_naive, a_naive = timed(bisect)
    r_naive = naive_rate(a_naive)
    print(f"ours (moving voxels, numba, regula falsi): {t_ours:6.2f} s -> {r_ours:+.2f} %")
    print(f"whole-volume scipy bisection:              {t_naive:6.2f} s -> {r_naive:+.2f} % "
          f"({evaluations[0] - 1} resamplings)   ratio {t_naive / t_ours:.1f}x")


if __name__ == "__main__":
    main()
