"""Poisson blending: brainsynth's numba multigrid-CG against scipy, pyamg and OpenCV, same run.

    python benchmarks/poisson.py [--quick] [--cases 2d-vent,3d-ribbon,...] [--no-cold]

Cases: 2D 256x256 and 3D 160x224x160, each with a ventricle-like mask (one smooth blob, 5% of
the voxels) and a cortical-ribbon-like mask (a thin folded shell, 20%); prior and target differ
in contrast, bias field and noise. Plus two cases on the 1-mm MNI152 grid made from nilearn's
template: the lateral ventricles (enlarged in the target) and the grey-matter ribbon.

Every solver solves the same discrete system (5/7-point Laplacian on the mask, Dirichlet = prior
on its boundary, guidance = target's Laplacian), relative residual 1e-6, starting from the target
(x0 = target where the API takes one). Times are whole calls including matrix assembly and
setup (assembly is also shown on its own), median of repeated warm calls; every (case, solver)
runs in a fresh process with BLAS/OpenMP pools at one thread (on the shared 2-core machine
spinning BLAS threads made the peers' solves stall), whose peak resident memory during one call above the level before it
is the "extra MB". Max diff is max |f - f_direct| / intensity range over the whole image, with
f_direct from scipy's spsolve where it fits (2D) and otherwise from pyamg solved to 1e-11
(spsolve on the 3D systems needs ~9 GB and minutes for the 286k-unknown case and does not fit
in memory for the ribbon: it is skipped there and the table says so).

Peers: scipy.sparse.linalg.cg (rtol 1e-6), scipy.sparse.linalg.spsolve, pyamg smoothed
aggregation with CG acceleration (setup included), cv2.seamlessClone (2D, NORMAL_CLONE, 8-bit
3-channel, as users call it; it is given a copy of the mask because it writes into it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

RTOL = 1e-6


# ------------------------------------------------------------------------------------- cases
def _pair(shape, seed):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float32)
    c = [(s - 1) / 2 for s in shape]
    r2 = sum(((g[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(len(shape)))
    anat = np.where(r2 < 1, 600.0, 40.0).astype(np.float32) + np.where(r2 < 0.55, 300.0, 0.0).astype(np.float32)
    anat = ndi.gaussian_filter(anat, 1.5)
    prior = anat + rng.normal(0, 15, shape).astype(np.float32)
    bias = 1 + 0.15 * (g[-1] / shape[-1] - 0.5) + 0.1 * (g[0] / shape[0] - 0.5)
    target = (1.12 * anat + 40) * bias + rng.normal(0, 25, shape).astype(np.float32)
    return prior.astype(np.float32), target.astype(np.float32), g, c


def _vent(shape, g, c, frac=0.05):
    d = len(shape)
    r = np.sqrt(sum(((g[i] - c[i]) / shape[i]) ** 2 for i in range(d)))
    ang = np.arctan2(g[-1] - c[-1], g[-2] - c[-2])
    field = r / (1 + 0.15 * np.sin(3 * ang))
    return field <= np.quantile(field, frac)


def _ribbon(shape, g, c, frac=0.20):
    d = len(shape)
    rr = np.sqrt(sum(((g[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(d)))
    ang1 = np.arctan2(g[-1] - c[-1], g[-2] - c[-2])
    fold = 0.06 * np.sin(9 * ang1)
    if d == 3:
        ang2 = np.arctan2(g[0] - c[0], np.hypot(g[-1] - c[-1], g[-2] - c[-2]))
        fold = fold + 0.05 * np.sin(11 * ang2)
    dist = np.abs(rr - 0.8 - fold)
    return dist <= np.quantile(dist, frac)


def _mni():
    from nilearn import datasets
    from scipy import ndimage as ndi

    t1 = datasets.load_mni152_template(resolution=1).get_fdata().astype(np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    center = np.array(ndi.center_of_mass(brain))
    g = np.indices(t1.shape)
    near = sum((g[i] - center[i]) ** 2 for i in range(3)) < 40**2
    dark = ndi.binary_opening((t1 < 0.3) & brain & near)
    lab, n = ndi.label(dark)
    sizes = ndi.sum(dark, lab, range(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1  # the two lateral ventricles
    vent = np.isin(lab, keep)
    rng = np.random.default_rng(11)
    prior = 1000 * t1 + rng.normal(0, 10, t1.shape)
    grown = ndi.binary_dilation(vent, iterations=2) & brain  # enlarged ventricles in the target
    anat_t = np.where(grown, 1000 * t1[vent].mean(), 1000 * t1)
    bias = 1 + 0.12 * (g[0] / t1.shape[0] - 0.5) - 0.08 * (g[2] / t1.shape[2] - 0.5)
    target = (1.15 * anat_t + 30) * bias + rng.normal(0, 20, t1.shape)
    vent_mask = ndi.binary_dilation(vent | grown, iterations=3)  # margin 3 voxels, as make-pairs does
    ribbon = ndi.binary_dilation((gm > 0.5) & brain, iterations=1)
    return prior.astype(np.float32), target.astype(np.float32), vent_mask, ribbon


def make_cases(names, folder: Path) -> dict[str, Path]:
    out = {}
    need = set(names)
    if need & {"2d-vent", "2d-ribbon"}:
        p, t, g, c = _pair((256, 256), 1)
        for key, m in (("2d-vent", _vent((256, 256), g, c)), ("2d-ribbon", _ribbon((256, 256), g, c))):
            if key in need:
                out[key] = folder / f"{key}.npz"
                np.savez(out[key], prior=p, target=t, mask=m)
    if need & {"3d-vent", "3d-ribbon"}:
        shape = (160, 224, 160)
        p, t, g, c = _pair(shape, 2)
        for key, fn in (("3d-vent", _vent), ("3d-ribbon", _ribbon)):
            if key in need:
                out[key] = folder / f"{key}.npz"
                np.savez(out[key], prior=p, target=t, mask=fn(shape, g, c))
        del g
    if need & {"mni-vent", "mni-ribbon"}:
        p, t, vent, ribbon = _mni()
        for key, m in (("mni-vent", vent), ("mni-ribbon", ribbon)):
            if key in need:
                out[key] = folder / f"{key}.npz"
                np.savez(out[key], prior=p, target=t, mask=m)
    return out


# ------------------------------------------------------------------------------------ solvers
def _assemble(prior, target, mask):
    from brainsynth_plugins.blend.reference import assemble

    return assemble(prior, target, mask)


def _scatter(prior, idx, x):
    out = prior.astype(np.float32, copy=True)
    out.ravel()[idx] = x
    return out


def solve_ours(prior, target, mask):
    from brainsynth_plugins.blend.poisson import poisson_blend

    out, info = poisson_blend(prior, target, mask, rtol=RTOL, return_info=True)
    return out, info.iterations, None


def solve_cg(prior, target, mask):
    from scipy.sparse.linalg import cg

    t0 = time.perf_counter()
    A, b, idx = _assemble(prior, target, mask)
    t_asm = time.perf_counter() - t0
    count = [0]

    def cb(_):
        count[0] += 1

    x, info = cg(A, b, x0=target.ravel()[idx].astype(np.float64), rtol=RTOL, maxiter=10000, callback=cb)
    if info != 0:
        raise RuntimeError(f"cg did not converge (info={info})")
    return _scatter(prior, idx, x), count[0], t_asm


def solve_spsolve(prior, target, mask):
    from scipy.sparse.linalg import spsolve

    t0 = time.perf_counter()
    A, b, idx = _assemble(prior, target, mask)
    t_asm = time.perf_counter() - t0
    return _scatter(prior, idx, spsolve(A.tocsc(), b)), None, t_asm


def solve_pyamg(prior, target, mask, tol=RTOL):
    import pyamg

    t0 = time.perf_counter()
    A, b, idx = _assemble(prior, target, mask)
    t_asm = time.perf_counter() - t0
    ml = pyamg.smoothed_aggregation_solver(A.tocsr())
    res: list[float] = []
    x = ml.solve(b, x0=target.ravel()[idx].astype(np.float64), tol=tol, accel="cg", residuals=res, maxiter=1000)
    return _scatter(prior, idx, x), len(res) - 1, t_asm


def solve_cv2(prior, target, mask):
    import cv2

    lo = float(min(prior.min(), target.min()))
    hi = float(max(prior.max(), target.max()))
    scale = 255.0 / (hi - lo)
    src = cv2.cvtColor(np.clip((target - lo) * scale, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    dst = cv2.cvtColor(np.clip((prior - lo) * scale, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    m8 = mask.astype(np.uint8) * 255
    ys, xs = np.nonzero(mask)
    center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    out = cv2.seamlessClone(src, dst, m8.copy(), center, cv2.NORMAL_CLONE)
    return (out[..., 0].astype(np.float32) / scale + lo), None, None


SOLVERS = {
    "brainsynth": solve_ours,
    "scipy-cg": solve_cg,
    "scipy-spsolve": solve_spsolve,
    "pyamg-sa": solve_pyamg,
    "cv2-seamlessClone": solve_cv2,
}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(solver: str, case: Path, reps: int, budget: float, result: Path) -> None:
    """Run in a fresh process: a warm-up call for brainsynth (numba), then timed calls; the peak
    resident memory of the first timed call above the level before it is the extra memory."""
    import gc

    data = np.load(case)
    prior, target, mask = data["prior"], data["target"], data["mask"]
    if solver == "reference":
        out, iters, _ = solve_pyamg(prior, target, mask, tol=1e-11)
        np.save(result, out)
        print(json.dumps({"iters": iters}))
        return
    fn = SOLVERS[solver]
    import brainsynth_plugins.blend.poisson  # noqa: F401  (imports are not part of a call)
    import cv2  # noqa: F401
    import pyamg  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401

    first = None
    if solver == "brainsynth":  # the first call loads (or compiles) the numba kernels
        t0 = time.perf_counter()
        fn(prior, target, mask)
        first = time.perf_counter() - t0
    times, asm = [], []
    spent = 0.0
    extra_mb = float("nan")
    while len(times) < reps and (spent < budget or len(times) < min(3, reps)):
        gc.collect()
        if not times:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
                reset = True
            except OSError:
                reset = False
            base = _rss_kb("VmRSS")
        t0 = time.perf_counter()
        out, iters, t_asm = fn(prior, target, mask)
        dt = time.perf_counter() - t0
        if len(times) == 0 and reset:
            extra_mb = (_rss_kb("VmHWM") - base) / 1024
        times.append(dt)
        if t_asm is not None:
            asm.append(t_asm)
        spent += dt
    np.save(result, out)
    print(json.dumps({
        "first": first, "median": float(np.median(times)), "times": times, "iters": iters,
        "extra_mb": extra_mb, "assembly": float(np.median(asm)) if asm else None,
    }))


#: BLAS/OpenMP thread pools at one thread in every worker: on a shared 2-core machine spinning
#: BLAS threads stall iterative solvers (seconds instead of milliseconds); brainsynth's solver is
#: single-threaded and uses no BLAS, so this only protects the peers.
SINGLE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def run_worker(solver, case, reps, budget, folder, timeout=1800, env=None):
    result = folder / f"{case.stem}-{solver}.npy"
    env = dict(os.environ if env is None else env, **SINGLE_THREAD)
    cmd = [sys.executable, __file__, "--worker", solver, str(case), "--reps", str(reps), "--budget", str(budget),
           "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or "no output").splitlines()
        return {"error": lines[-1]}, None
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(result)


def cold_start(folder: Path) -> dict:
    """First call in a fresh process: with an empty numba cache (compiles) and with a filled one."""
    case = folder / "cold.npz"
    p, t, g, c = _pair((24, 28, 24), 5)
    np.savez(case, prior=p, target=t, mask=_vent((24, 28, 24), g, c, 0.2))
    code = (
        "import sys, time, numpy as np; sys.path[:0] = [%r, %r]\n"
        "d = np.load(%r); t0 = time.perf_counter()\n"
        "from brainsynth_plugins.blend.poisson import poisson_blend\n"
        "poisson_blend(d['prior'], d['target'], d['mask']); t1 = time.perf_counter()\n"
        "poisson_blend(d['prior'], d['target'], d['mask']); t2 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1)\n"
    ) % (str(REPO), str(REPO / "plugins"), str(case))
    cache = tempfile.mkdtemp(prefix="numba-cache-", dir=folder)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    res = {}
    for label in ("compile", "cached"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        first, second = (float(v) for v in out.stdout.split())
        res[label] = (first, second)
    return res


SPSOLVE_MAX_3D = 100_000
CASES = ["2d-vent", "2d-ribbon", "3d-vent", "3d-ribbon", "mni-vent", "mni-ribbon"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start measurement")
    ap.add_argument("--worker", nargs=2, metavar=("SOLVER", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=9, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=30.0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.reps, args.budget, Path(args.result))
        return
    names = [c for c in args.cases.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="poisson-bench-") as tmp:
        folder = Path(tmp)
        print(f"# Poisson blending benchmark ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start)")
        if not args.no_cold:
            cold = cold_start(folder)
            print(f"numba cold start (24x28x24 case, fresh process): first call with an empty cache "
                  f"(compiles) {cold['compile'][0]:.1f} s, second call {cold['compile'][1] * 1e3:.2f} ms; "
                  f"first call with the on-disk cache {cold['cached'][0]:.2f} s, second {cold['cached'][1] * 1e3:.2f} ms")
        cases = make_cases(names, folder)
        rows = []
        for name in names:
            case = cases[name]
            data = np.load(case)
            prior, target, mask = data["prior"], data["target"], data["mask"]
            span = float(max(prior.max(), target.max()) - min(prior.min(), target.min()))
            n = int(mask.sum())
            is2d = prior.ndim == 2
            print(f"\n## {name}: shape {prior.shape}, {n} unknowns ({100 * n / mask.size:.1f}% of the voxels)")
            results = {}
            reps = 5 if args.quick else 9
            for solver in SOLVERS:
                if solver == "cv2-seamlessClone" and not is2d:
                    continue
                if solver == "scipy-spsolve" and not is2d and n > SPSOLVE_MAX_3D:
                    results[solver] = ({"skip": f"skipped: 3D with {n} unknowns does not fit (the factorisation "
                                        "needs ~9 GB and minutes at 286k unknowns; out of memory at 1.1M)"}, None)
                    continue
                slow = solver in ("scipy-cg", "pyamg-sa", "scipy-spsolve") and not is2d
                results[solver] = run_worker(solver, case, 3 if (slow and args.quick) else reps,
                                             20.0 if slow else 10.0, folder)
            if "scipy-spsolve" in results and results["scipy-spsolve"][1] is not None:
                ref = results["scipy-spsolve"][1]
                ref_name = "spsolve"
            else:
                meta, ref = run_worker("reference", case, 1, 0.0, folder)
                ref_name = "pyamg 1e-11"
            ours = results["brainsynth"][0]
            print(f"{'solver':<19} {'median s':>9} {'assembly s':>10} {'iters':>6} {'extra MB':>9} "
                  f"{'max diff/range':>15} {'brainsynth faster':>18} {'(vs solve only)':>16}")
            for solver, (meta, out) in results.items():
                if "skip" in meta or "error" in meta:
                    print(f"{solver:<19} {meta.get('skip') or 'failed: ' + meta['error']}")
                    rows.append((name, solver, meta.get("skip") or "failed"))
                    continue
                diff = float(np.abs(out.astype(np.float64) - ref).max()) / span if ref is not None else float("nan")
                ratio = meta["median"] / ours["median"]
                asm = f"{meta['assembly']:.4f}" if meta["assembly"] is not None else "-"
                iters = str(meta["iters"]) if meta["iters"] is not None else "-"
                solve_only = (meta["median"] - meta["assembly"]) / ours["median"] if meta["assembly"] else None
                so = f"{solve_only:>15.1f}x" if solve_only is not None else f"{'-':>16}"
                print(f"{solver:<19} {meta['median']:>9.4f} {asm:>10} {iters:>6} {meta['extra_mb']:>9.1f} "
                      f"{diff:>15.2e} {ratio:>17.1f}x {so}")
                rows.append((name, solver, meta["median"], meta["assembly"], meta["iters"], meta["extra_mb"], diff,
                             ratio, solve_only))
            print(f"(max diff against {ref_name}; brainsynth's first call in its process, loading the cached numba kernels: {ours['first']:.3f} s)")
        print("\nJSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
