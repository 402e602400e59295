"""Conditioning evaluation of an ``ldm`` model (Brain LDM section 3.2, and Table 1's diversity).

1. **Conditioning**: samples over a grid of requested ventricle volumes (evenly spaced over the
   trained range; the other covariates at their training medians; for text models the caption
   the ``template`` builder writes for those values). Each sample's ventricles are measured and
   the Pearson r between requested and measured volumes is reported (Brain LDM: r = 0.972 with
   SynthSeg on 1000 samples).

   - 3D: a segmenter plugin (default ``atlas``: template registration and label propagation)
     labels every sample; ventricle = lateral + inferior lateral ventricles (aseg 4/5/43/44),
     the same structures Brain LDM measured.
   - 2D: a slice has no ventricle *volume*, so the measured quantity is the ventricle *area* of
     the sample (mm^2), labelled by the evaluate plugin's ``registration`` measure: the real
     training slice of median ventricle volume, with its true labels, is registered (demons)
     onto the sample and its labels carried along (the measure returns sub-pixel sizes per label). That is the 2D counterpart of the atlas
     segmenter (one labelled atlas, deformable registration). The same measurement on the real
     training slices, against their true 3D ventricle volumes, is reported next to it: it is the
     best r a perfectly conditioned 2D model can reach with this measurement.

2. **Diversity**: mean MS-SSIM over random pairs of samples, and over random pairs of real images
   of different subjects from the training data (Brain LDM: 0.6704 for LDM + DDIM, 0.6536 real).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from brainsynth_cli.errors import InputError, UserError

Progress = Callable[[float, float, str], None]


def pearson(x: Any, y: Any) -> float:
    import numpy as np

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _pairs(n: int, count: int, rng: Any, groups: list[str] | None = None) -> list[tuple[int, int]]:
    """Up to ``count`` distinct random index pairs (of different groups when given)."""
    allowed = [(i, j) for i in range(n) for j in range(i + 1, n) if groups is None or groups[i] != groups[j]]
    if len(allowed) <= count:
        return allowed
    pick = rng.choice(len(allowed), size=count, replace=False)
    return [allowed[int(k)] for k in sorted(pick)]


def _ventricle(sizes: Any, unit: float) -> float:
    """Ventricle size from a Measure's ``{label: size in voxels}`` (or a label array), times ``unit``."""
    import numpy as np

    from brainsynth_cli.structures import default_rules

    ids = list(default_rules()["ventricle"].labels)
    if isinstance(sizes, dict):
        return float(sum(float(sizes.get(i, 0.0)) for i in ids) * unit)
    return float(np.isin(sizes, ids).sum() * unit)


def evaluate_generation(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, grid: int = 5,
                        per_value: int = 4, steps: int = 50, scheduler: str = "ddim", guidance_scale: float = 1.0,
                        seed: int = 0, segmenter: str = "atlas", measure: str = "registration", pairs: int = 50,
                        real: int = 16, data: str | os.PathLike[str] | None = None,
                        labels: str | os.PathLike[str] | None = None, device: str = "auto",
                        progress: Progress | None = None) -> dict[str, Any]:
    """Sample, measure and write ``OUT/report.md``, ``summary.json``, ``conditioning.csv`` and the
    samples (``OUT/samples/``); returns the summary."""
    import numpy as np

    from brainsynth_cli.images import Volume, atomic_write_text
    from brainsynth_cli.plugin_manager import get_manager
    from brainsynth_cli.structures import group_volumes, label_volumes

    from brainsynth_plugins.evaluate.metrics import ms_ssim
    from brainsynth_plugins.ldm.command import write_samples
    from brainsynth_plugins.ldm.data import read_training_set
    from brainsynth_plugins.ldm.model import LDMModel, read_info

    progress = progress or (lambda done, total, message="": None)
    if grid < 2 or per_value < 1:
        raise UserError("--grid must be at least 2 and --per-value at least 1")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder", "choose another --output")
    if (out / "samples").is_dir() and any((out / "samples").iterdir()):
        raise InputError(out, "already holds an evaluation (samples/)", "choose a new --output folder")
    info = read_info(Path(model_dir))
    dim = info["dim"]
    src = data or info["data"]["path"]
    if not Path(src).exists():
        raise InputError(src, "the model's training data is not there", "give --data DATASET (the real images to compare with)")
    tr = info["training"]
    same_data = Path(src).resolve() == Path(info["data"]["path"]).resolve()  # then the runs the model was trained on
    ts = read_training_set(src, dim=dim, resolution=int(tr["resolution"]), voxel_mm=float(tr["voxel_mm"]),
                           labels_dir=labels or info["data"].get("labels"), captions_per_image=1,
                           run=info["data"].get("run") if same_data else None)
    manager = get_manager()
    ref = None  # 2D: the labelled real slice the measurement registers onto each image
    if dim == "3d":
        seg = manager.registry("segmenter").create(segmenter)
        affine = np.asarray(info["image"]["affine"], dtype=float)
        unit = float(abs(np.linalg.det(affine[:3, :3])))

        def measure_one(img: Any) -> float:
            lab = seg.segment(Volume(np.asarray(img, dtype=np.float32), affine, None, None)).data
            return float(group_volumes(label_volumes(lab, unit)).get("ventricle", 0.0))

        quantity, method = "ventricle volume (mm3)", f"segmenter {segmenter}"
    else:
        if any(it.labels is None for it in ts.items):
            raise InputError(src, "has no label slices for the 2D measurement", "give --data DATASET with labels (--labels)")
        meas = manager.registry("measure").create(measure)
        vent = np.asarray([it.volumes.get("ventricle", math.nan) for it in ts.items])
        ref = ts.items[int(np.nanargmin(np.abs(vent - np.nanmedian(vent))))]
        px = float(ref.pixel_mm or 1.0)

        def measure_one(img: Any) -> float:
            sizes = meas.measure(ref.image, ref.labels, np.asarray(img, dtype=np.float32), spacing=(px, px))
            return _ventricle(sizes, px * px)

        quantity, method = "ventricle area in the slice (mm2)", f"measure {measure} from {ref.subject} {ref.session}"
    ldm = LDMModel(Path(model_dir), device)
    lo, hi = ldm.ranges["ventricle_volume"]
    values = [float(v) for v in np.linspace(lo, hi, grid)]
    conds, seeds, requested = [], [], []
    for gi, v in enumerate(values):
        c = ldm.condition(None, ventricle_volume=v)
        for k in range(per_value):
            conds.append(c)
            seeds.append(seed + gi * per_value + k)
            requested.append(v)
    n = len(conds)
    total = n * 2 + min(real, len(ts.items))  # progress only
    images = ldm.sample(conds, seeds, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, batch_size=8,
                        progress=lambda d, t, m="": progress(n * d / max(t, 1), total, "sampling"))
    measured = []
    for i, img in enumerate(images):
        measured.append(measure_one(img))
        progress(n + i + 1, total, "measuring samples")
    real_items = [it for it in ts.items if it is not ref][: max(0, real)]  # the 2D reference is not its own check
    real_truth = [float(it.volumes.get("ventricle", math.nan)) for it in real_items]
    real_measured = []
    for i, it in enumerate(real_items):
        real_measured.append(measure_one(it.image))
        progress(2 * n + i + 1, total, "measuring real images")
    rng = np.random.default_rng(seed)
    sample_pairs = _pairs(n, pairs, rng)
    real_pairs = _pairs(len(ts.items), pairs, rng, [it.subject for it in ts.items])
    ms_samples = [ms_ssim(images[i], images[j], data_range=1.0) for i, j in sample_pairs]
    ms_real = [ms_ssim(ts.items[i].image, ts.items[j].image, data_range=1.0) for i, j in real_pairs]
    r = pearson(requested, measured)
    summary = {
        "model": str(Path(model_dir).resolve()), "dim": dim, "condition": info["condition"],
        "settings": {"grid": grid, "per_value": per_value, "steps": steps, "scheduler": scheduler,
                     "guidance_scale": guidance_scale, "seed": seed, "method": method, "pairs": pairs},
        "conditioning": {"quantity": quantity, "requested_range": [lo, hi], "samples": n, "pearson_r": r,
                         "measured_mean_by_request": {f"{v:.6g}": float(np.mean(measured[i * per_value:(i + 1) * per_value]))
                                                      for i, v in enumerate(values)}},
        "measurement_check": {"images": len(real_items), "pearson_r_truth_vs_measured": pearson(real_truth, real_measured)},
        "diversity": {"ms_ssim_samples": float(np.mean(ms_samples)) if ms_samples else math.nan, "sample_pairs": len(ms_samples),
                      "ms_ssim_real": float(np.mean(ms_real)) if ms_real else math.nan, "real_pairs": len(ms_real)},
        "paper": {"brain_ldm_pearson_r": 0.972, "brain_ldm_ms_ssim_ldm_ddim": 0.6704, "brain_ldm_ms_ssim_real": 0.6536},
    }
    if dim == "3d":
        summary["conditioning"]["mae_mm3"] = float(np.mean(np.abs(np.asarray(measured) - np.asarray(requested))))
    files = write_samples(ldm, out / "samples", images, conds, seeds, steps=steps, scheduler=scheduler,
                          guidance_scale=guidance_scale, per_row=per_value)
    lines = ["file,seed,requested_ventricle_volume_mm3,measured"]
    lines += [f"{f.name},{s},{q:.6g},{m:.6g}" for f, s, q, m in zip(files, seeds, requested, measured)]
    atomic_write_text(out / "conditioning.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, allow_nan=True) + "\n")
    atomic_write_text(out / "report.md", report(summary))
    progress(total, total, "done")
    return summary


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def report(s: dict[str, Any]) -> str:
    c, d, m = s["conditioning"], s["diversity"], s["measurement_check"]
    st = s["settings"]
    rows = "\n".join(f"| {k} | {_f(v, 1)} |" for k, v in c["measured_mean_by_request"].items())
    return f"""# Generation evaluation ({s['dim']}, condition {s['condition']})

Model: `{s['model']}`; {c['samples']} samples, {st['scheduler']} {st['steps']} steps, guidance {st['guidance_scale']}, seed {st['seed']}.

## Conditioning (Brain LDM: r = 0.972)

Requested ventricle volume vs measured {c['quantity']} ({st['method']}):

| | this model | Brain LDM |
|---|---|---|
| Pearson r (requested vs measured) | {_f(c['pearson_r'])} | 0.972 |
| measurement on real images: r (true volume vs measured) | {_f(m['pearson_r_truth_vs_measured'])} ({m['images']} images) | |

| requested ventricle volume (mm3) | mean measured |
|---|---|
{rows}

## Diversity (MS-SSIM of random pairs; lower = more diverse)

| | this model | Brain LDM (LDM + DDIM) |
|---|---|---|
| samples | {_f(d['ms_ssim_samples'])} ({d['sample_pairs']} pairs) | 0.6704 |
| real images (different subjects) | {_f(d['ms_ssim_real'])} ({d['real_pairs']} pairs) | 0.6536 |
"""


def run_command(model: Path, output: Path, *, steps: int, scheduler: str, seed: int, grid: int, per_value: int,
                segmenter: str, measure: str, data: Path | None, device: str, guidance_scale: float = 1.0) -> dict[str, Any]:
    """``brainsynth evaluate MODEL --task generate -o OUT``: run, then print the summary table."""
    from rich.console import Console
    from rich.table import Table

    from brainsynth_cli.progress import progress_bar

    with progress_bar("evaluate generation") as progress:
        s = evaluate_generation(model, output, grid=grid, per_value=per_value, steps=steps, scheduler=scheduler, seed=seed,
                                guidance_scale=guidance_scale,
                                segmenter=segmenter, measure=measure, data=data, device=device, progress=progress)
    c, d, m = s["conditioning"], s["diversity"], s["measurement_check"]
    table = Table(title=f"generation ({s['dim']}, {s['condition']}, {c['samples']} samples)")
    for col in ("metric", "this model", "Brain LDM"):
        table.add_column(col)
    table.add_row("Pearson r, requested vs measured ventricles", _f(c["pearson_r"]), "0.972")
    table.add_row("  measurement check on real images (r)", _f(m["pearson_r_truth_vs_measured"]), "")
    table.add_row("MS-SSIM, sample pairs", _f(d["ms_ssim_samples"]), "0.6704")
    table.add_row("MS-SSIM, real pairs", _f(d["ms_ssim_real"]), "0.6536")
    console = Console(width=120)
    console.print(table)
    for name in ("report.md", "summary.json", "conditioning.csv", "samples/samples.png"):
        console.print(f"  {Path(output) / name}")
    return s
