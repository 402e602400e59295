"""Benchmark of the model-free ``deform`` editor on a simulated cohort.

Subjects from ``brainsynth_plugins.simulate`` (MNI152 template, random anatomy, skull, contrast,
bias, noise) at 2 mm; each subject's baseline session is deformed to the default rules'
targets, ventricle +5 / +15 / +25 % and cortex -3 %, and to both at once (+15 % and -3 %):

- rates reached: partial-volume rate (what the image shows; solved for, acceptance 0.25 pp)
  and label rate (counted on the deformed label map), error against the target;
- the label rate a plain nearest-neighbour warp of the labels would give (no partial-volume
  rounding), to show why the label map is rounded;
- the other structure's change in single-structure edits, the smallest Jacobian determinant;
- seconds per 3D volume and per 64 x 64 axial slice (the slice through the ventricles,
  padded to a square, resized to 64 px: ~3.3 mm pixels);
- peer measured in the same run: the simulator itself, which reaches the same rates by
  calibrating its deformation on nearest-neighbour label counts while sampling the template
  (``simulate_subject`` with explicit rates): its rate errors and seconds per session;
- what ``make-pairs --deformed`` adds per pair (2D export, 30 slices at 256 px, the default
  rules' four intervals), against the same run without it.

    python benchmarks/deform.py [--subjects 3] [--resolution 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from brainsynth_cli.structures import default_rules  # noqa: E402

from brainsynth_plugins.deform.deformation import deform  # noqa: E402
from brainsynth_plugins.deform.fields import velocity_fields  # noqa: E402
from brainsynth_plugins.deform.flow import Flow  # noqa: E402
from brainsynth_plugins.simulate import cohort  # noqa: E402

IDS = {"ventricle": (4, 5, 43, 44), "cortex": (3, 42)}
TARGETS = ({"ventricle": 5.0}, {"ventricle": 15.0}, {"ventricle": 25.0}, {"cortex": -3.0}, {"ventricle": 15.0, "cortex": -3.0})


def count_rate(before: np.ndarray, after: np.ndarray, name: str) -> float:
    a, b = np.isin(before, IDS[name]).sum(), np.isin(after, IDS[name]).sum()
    return float((b - a) / a * 100.0)


def nearest_only(labels: np.ndarray, spacing, magnitudes: dict[str, float]) -> np.ndarray:
    """The labels warped by nearest neighbour alone through the same map."""
    names = [n for n, m in magnitudes.items() if m]
    flow = Flow(velocity_fields(labels, default_rules(), spacing), names)
    idx = np.rint(flow.positions(magnitudes)).astype(np.int64)
    for d, n in enumerate(labels.shape):
        np.clip(idx[d], 0, n - 1, out=idx[d])
    out = labels.copy()
    out.reshape(-1)[flow.index] = labels[tuple(idx)]
    return out


def slice64(image: np.ndarray, labels: np.ndarray, vox: float):
    from scipy import ndimage as ndi

    z = int(np.argmax(np.isin(labels, IDS["ventricle"]).sum(axis=(0, 1))))
    img, lab = image[:, :, z], labels[:, :, z]
    side = max(img.shape)
    pads = [((side - n) // 2, side - n - (side - n) // 2) for n in img.shape]
    img, lab = np.pad(img, pads), np.pad(lab, pads)
    f = 64 / side
    return ndi.zoom(img, f, order=1), ndi.zoom(lab, f, order=0), (vox / f, vox / f)


def fmt(errors: list[float]) -> str:
    a = np.abs(errors)
    return f"MAE {a.mean():.3f}  max {a.max():.3f} pp"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vox = args.resolution
    sp3 = (vox,) * 3
    print(f"# deform on {args.subjects} simulated subjects at {vox:g} mm (seed {args.seed})\n")

    # warm-up: numba kernels compiled or loaded from the cache
    warm = cohort.simulate_subject(0, sessions=2, resolution=4.0, seed=args.seed, rates={"ventricle": [5.0]})
    deform(warm.sessions[0].image.data, warm.sessions[0].labels.data, {"ventricle": 5.0}, spacing=(4.0,) * 3)
    i2, l2, s2 = slice64(warm.sessions[0].image.data, warm.sessions[0].labels.data, 4.0)
    deform(i2, l2, {"ventricle": 5.0}, spacing=s2)

    err = {"3d pv": [], "3d label": [], "3d nearest only": [], "2d pv": [], "2d label": []}
    cross, jac, t3, t2 = [], [], [], []
    peer_err_label, peer_err_pv, peer_t = [], [], []
    print(f"{'subject':8} {'target':22} {'pv 3d':>8} {'label 3d':>9} {'NN only':>8} {'other':>7} {'minJ':>6} {'s/vol':>6} "
          f"{'pv 2d':>7} {'label 2d':>8} {'ms/slice':>8}")
    for i in range(args.subjects):
        # the peer: the simulator reaching the same rates (one session per target)
        requested = [t for t in TARGETS]
        rates = {n: [t.get(n, 0.0) for t in requested] for n in ("ventricle", "cortex")}
        start = time.perf_counter()
        sim = cohort.simulate_subject(i, sessions=len(requested) + 1, resolution=vox, seed=args.seed, rates=rates)
        peer_t.append((time.perf_counter() - start) / (len(requested) + 1))
        for s in sim.sessions[1:]:
            for n in ("ventricle", "cortex"):
                if s.requested[n]:
                    peer_err_label.append(s.realised[n] - s.requested[n])
                    peer_err_pv.append(s.realised_pv[n] - s.requested[n])
        base = sim.sessions[0]
        img, lab = base.image.data, base.labels.data
        img2, lab2, sp2 = slice64(img, lab, vox)
        for targets in TARGETS:
            start = time.perf_counter()
            d = deform(img, lab, targets, spacing=sp3)
            t3.append(time.perf_counter() - start)
            nn = nearest_only(lab, sp3, d.magnitudes)
            start = time.perf_counter()
            d2 = deform(img2, lab2, targets, spacing=sp2)
            t2.append(time.perf_counter() - start)
            jac += [d.min_jacobian, d2.min_jacobian]
            for n, t in targets.items():
                err["3d pv"].append(d.rates_pv[n] - t)
                err["3d label"].append(d.rates[n] - t)
                err["3d nearest only"].append(count_rate(lab, nn, n) - t)
                err["2d pv"].append(d2.rates_pv[n] - t)
                err["2d label"].append(d2.rates[n] - t)
            other = None
            if len(targets) == 1:
                o = "cortex" if "ventricle" in targets else "ventricle"
                other = d.rates_pv[o]
                cross.append(abs(other))
            what = " ".join(f"{n} {t:+g}%" for n, t in targets.items())
            for k, (n, t) in enumerate(targets.items()):
                print(f"{sim.subject if k == 0 else '':8} {what if k == 0 else '':22} "
                      f"{d.rates_pv[n]:+8.2f} {d.rates[n]:+9.2f} {count_rate(lab, nn, n):+8.2f} "
                      f"{(f'{other:+.3f}' if other is not None and k == 0 else ''):>7} "
                      f"{(f'{d.min_jacobian:.2f}' if k == 0 else ''):>6} {(f'{t3[-1]:.2f}' if k == 0 else ''):>6} "
                      f"{d2.rates_pv[n]:+7.2f} {d2.rates[n]:+8.2f} {(f'{t2[-1] * 1000:.1f}' if k == 0 else ''):>8}")
    print("\n## rate error against the target")
    for k, v in err.items():
        print(f"deform {k:18}: {fmt(v)}  (n = {len(v)})")
    print(f"simulate (peer) label : {fmt(peer_err_label)}  (n = {len(peer_err_label)})")
    print(f"simulate (peer) pv    : {fmt(peer_err_pv)}")
    print(f"other structure in single-structure edits: max |pv change| {max(cross):.3f} pp")
    print(f"smallest Jacobian determinant: {min(jac):.3f}")
    print("\n## speed (one process, OMP_NUM_THREADS as set)")
    print(f"deform 3D volume {img.shape}: mean {statistics.fmean(t3):.2f} s, max {max(t3):.2f} s")
    print(f"deform 64 x 64 slice: mean {statistics.fmean(t2) * 1000:.1f} ms, max {max(t2) * 1000:.1f} ms")
    print(f"simulate (peer), per session incl. anatomy/intensity: {statistics.fmean(peer_t):.2f} s "
          f"(ratio to deform 3D: {statistics.fmean(peer_t) / statistics.fmean(t3):.2f}x)")

    print("\n## make-pairs --deformed")
    import json
    import tempfile

    from brainsynth_plugins.pairs.engine import Options, make_pairs
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        data = simulate_cohort(Path(tmp) / "cohort", subjects=args.subjects, sessions=2, resolution=vox, seed=args.seed)
        seconds = {}
        for deformed in (False, True):
            out = Path(tmp) / f"pairs-{deformed}"
            start = time.perf_counter()
            make_pairs(Options(dataset=data.root, out=out, labels=data.truth_dir, deformed=deformed, seed=args.seed),
                       echo=lambda *a: None, warn=lambda *a: None)
            seconds[deformed] = (time.perf_counter() - start) / args.subjects
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        deformed_rows = [r for r in rows if r["kind"] == "deformed" and r["slice"] == rows[0]["slice"]]
        e = [r["rates"][n] - t for r in deformed_rows for n, t in r["deform_target"].items()]
        kinds = {" + ".join(f"{n} {r['intervals'][n]}" for n in r["deform_target"]) for r in deformed_rows}
        print(f"make-pairs without --deformed: {seconds[False]:.2f} s per pair; with: {seconds[True]:.2f} s per pair "
              f"(+{seconds[True] - seconds[False]:.2f} s for {len(deformed_rows) // args.subjects} deformed targets)")
        print(f"deformed rows: recorded label rate vs drawn target {fmt(e)} (n = {len(e)}); intervals "
              f"{sorted(kinds)}")


if __name__ == "__main__":
    main()
