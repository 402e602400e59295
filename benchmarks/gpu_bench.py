"""GPU check: instruct-pix2pix `base` training and `edit`, and ldm 3D `generate`, in one run.

Run by `benchmarks/gpu.sh` (which sets the paths); writes one JSON file and prints a markdown
table. Measured in the same run, on data made here (nothing is downloaded):

1. `brainsynth train --preset base` (instruct-pix2pix; 256x256 slices, VAE 64-128-256-256,
   UNet 128-256-512-512) in bf16: stage 1 (VAE) and stage 2 (UNet) samples/s and peak GPU
   memory (torch.cuda.max_memory_allocated), against a bare PyTorch loop on the same diffusers
   models and data (benchmarks/gpu_train.py); ratio brainsynth / bare.
2. `edit` with that model: seconds per 256x256 slice (the generator's edit, as `brainsynth edit`
   calls it, batches of 4, the model's sampling settings) and seconds per volume (the whole
   `brainsynth edit` command on a simulated 2 mm T1w with its truth labels: loading, slicing,
   editing every non-empty axial slice, restriction, Poisson blending, writing, figure).
3. 3D `generate` (ldm, preset `base`, 2 mm volumes, covariates): seconds per volume with DDIM 50
   steps against DPM-Solver++ 20 steps (benchmarks/generate.py's helpers).

Data: a simulated cohort (the code of `brainsynth simulate`) and its 2D pairs (`brainsynth
make-pairs` with the truth labels). Models are trained only for the steps being timed: step
and sampling times do not depend on how well a model is trained.

`--dry-run` runs the same code on the CPU at toy sizes (32x32 slices, two-level networks, a few
steps, the ldm `tiny` preset at 8 mm) in under a minute, so the check keeps working without a GPU.
Its numbers are CPU numbers of toy models, not GPU numbers; the CUDA-only ones (peak GPU memory)
are null, with the reason under `not_measured`.

    python benchmarks/gpu_bench.py --out FILE [--dry-run] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "plugins")]

#: What one GPU run does (sized to finish within 8 minutes on one H100/H200; not yet timed on one).
FULL: dict[str, Any] = {
    "device": "cuda",
    "cohort": {"subjects": 3, "sessions": 2, "resolution": 2.0},
    "pairs": {"size": 256, "slices": 30},
    "train": {"mixed_precision": "bf16", "vae_steps": "100", "unet_steps": "100", "checkpoint_every": "0",
              "validation_count": "0"},
    "warmup_steps": 10,
    "edit": {"slices": 32, "batch_size": 4, "volume_slices": "all"},
    "generate": {"preset": "base", "set": {"validation_steps": "2"}, "ddim_steps": 50, "dpm_steps": 20, "samples": 2},
}

#: The same code on the CPU at toy sizes (--dry-run).
DRY: dict[str, Any] = {
    "device": "cpu",
    "cohort": {"subjects": 2, "sessions": 2, "resolution": 4.0},
    "pairs": {"size": 32, "slices": 2},
    "train": {"mixed_precision": "bf16", "vae_steps": "4", "unet_steps": "4", "checkpoint_every": "0",
              "validation_count": "0", "resolution": "32", "vae_batch_size": "4", "unet_batch_size": "4",
              "vae.block_out_channels": "8,16", "vae.layers_per_block": "1", "vae.norm_num_groups": "4",
              "unet.block_out_channels": "16,32", "unet.layers_per_block": "1", "unet.norm_num_groups": "8",
              "unet.down_block_types": "CrossAttnDownBlock2D,DownBlock2D", "unet.up_block_types": "UpBlock2D,CrossAttnUpBlock2D",
              "sampling_steps": "2"},
    "warmup_steps": 1,
    "edit": {"slices": 4, "batch_size": 4, "volume_slices": "center:2"},
    "generate": {"preset": "tiny", "set": {"voxel_mm": "8", "validation_steps": "1"}, "ddim_steps": 5, "dpm_steps": 2, "samples": 1},
}

NO_CUDA = "no CUDA device in this run (--dry-run runs on the CPU); torch.cuda.max_memory_allocated is CUDA-only"


def machine(device: str) -> dict[str, Any]:
    import accelerate
    import diffusers
    import torch

    info: dict[str, Any] = {
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _commit(),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
        "diffusers": diffusers.__version__, "accelerate": accelerate.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info["gpu"] = "none (dry-run on the CPU)"
    return info


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def make_data(root: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """A simulated cohort (root/cohort, with truth labels) and its 2D pairs (root/pairs)."""
    from brainsynth_plugins.ip2p.data import read_pairs
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    from brainsynth_cli.main import run

    c, p = sizes["cohort"], sizes["pairs"]
    t = time.perf_counter()
    simulate_cohort(root / "cohort", subjects=c["subjects"], sessions=c["sessions"], resolution=c["resolution"], seed=0)
    cohort_s = time.perf_counter() - t
    t = time.perf_counter()
    code = run(["make-pairs", str(root / "cohort"), "-o", str(root / "pairs"), "--labels", str(truth(root)),
                "--slices", str(p["slices"]), "--size", str(p["size"]), "--split", "1:0:0", "--seed", "0"])
    if code != 0:
        raise SystemExit(f"gpu_bench: make-pairs failed (exit {code})")
    rows = read_pairs(root / "pairs").split("train")
    return {"cohort": {**c, "seed": 0, "wall_s": cohort_s},
            "pairs": {**p, "train_rows": len(rows), "prompts": len({r.prompt for r in rows}), "wall_s": time.perf_counter() - t}}


def truth(root: Path) -> Path:
    return root / "cohort" / "derivatives" / "brainsynth-truth"


# ---------------------------------------------------------------------------------------------
# the three measures
# ---------------------------------------------------------------------------------------------
def measure_training(root: Path, sizes: dict[str, Any], device: str) -> dict[str, Any]:
    from gpu_train import train_bare, train_brainsynth

    warm = int(sizes["warmup_steps"])
    ours = train_brainsynth(root / "pairs", root / "model", device=device, settings=sizes["train"], warmup=warm)
    bare = train_bare(root / "pairs", root / "model", device=device, steps=max(ours["vae"]["steps"], ours["unet"]["steps"]),
                      warmup=warm)
    out: dict[str, Any] = {"preset": "base", "precision": sizes["train"]["mixed_precision"], "set": sizes["train"],
                           "warmup_steps_left_out": warm}
    for stage in ("vae", "unet"):
        a, b = ours[stage], bare[stage]
        out[stage] = {"brainsynth": a, "bare": b, "ratio": {
            "samples_per_s": a["samples_per_s"] / b["samples_per_s"],
            "peak_gpu_mib": a["peak_gpu_mib"] / b["peak_gpu_mib"] if a["peak_gpu_mib"] and b["peak_gpu_mib"] else None}}
    return out


def edit_prompt(info: dict[str, Any]) -> str:
    """A prompt the model was trained on that names the ventricles (else its first prompt)."""
    prompts = list(info.get("prompts") or [])
    return next((p for p in prompts if "ventricle" in p), prompts[0])


def measure_edit(root: Path, sizes: dict[str, Any], device: str) -> dict[str, Any]:
    import nibabel as nib
    from brainsynth_plugins.ip2p.data import load_slice, read_pairs

    from brainsynth_cli import edit_io
    from brainsynth_cli.main import run
    from brainsynth_cli.plugin_manager import registry
    from brainsynth_cli.sampling import resolve

    model, e = root / "model", sizes["edit"]
    info = json.loads((model / "brainsynth.json").read_text(encoding="utf-8"))
    prompt, res = edit_prompt(info), int(info["resolution"])
    sampling, _ = resolve(info)
    loaded = registry("generator").create(info["generator"]).load(model, device)
    priors = sorted({r.prior for r in read_pairs(root / "pairs").split("train")})[: e["slices"]]
    images = [load_slice(p, res) for p in priors]
    loaded.edit(images[: e["batch_size"]], prompt, **{**sampling, "steps": 2}, batch_size=e["batch_size"])  # warm-up
    t = time.perf_counter()
    loaded.edit(images, prompt, **sampling, seed=0, batch_size=e["batch_size"])
    per_slice = (time.perf_counter() - t) / len(images)
    del loaded

    t1w = root / "cohort" / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_T1w.nii.gz"
    labels = truth(root) / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-truth_dseg.nii.gz"
    out = root / "edit" / "sub-001_ses-01_edited.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    code = run(["edit", str(model), str(t1w), "-p", prompt, "-o", str(out), "--labels", str(labels),
                "--slices", e["volume_slices"], "--batch-size", str(e["batch_size"]), "--device", device])
    per_volume = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"gpu_bench: brainsynth edit failed (exit {code})")
    record = json.loads(edit_io.sidecar_path(out).read_text(encoding="utf-8"))
    return {"prompt": prompt, "sampling": sampling, "batch_size": e["batch_size"],
            "slice": {"size": res, "slices": len(images), "s_per_slice": per_slice},
            "volume": {"input": f"simulated T1w, {sizes['cohort']['resolution']:g} mm, shape {list(nib.load(t1w).shape)}",
                       "slices_option": e["volume_slices"], "slices_edited": int(record["edited_slices"]),
                       "s_per_volume": per_volume,
                       "includes": "the whole brainsynth edit command: model load, slicing, edit, restriction, "
                                   "Poisson blend, NIfTI, sidecar and figure"}}


def measure_generate(root: Path, sizes: dict[str, Any], device: str) -> dict[str, Any]:
    from brainsynth_plugins.ldm.model import LDMModel
    from generate import build, per_sample

    g = sizes["generate"]
    t = time.perf_counter()
    # the one-step build trains in the same precision as the training above (the sampler runs
    # the networks in float32 whatever the model was trained in)
    settings = {**g["set"], "mixed_precision": sizes["train"]["mixed_precision"]}
    model_dir = build(root, "3d", "covariates", device, preset=g["preset"], settings=settings)
    build_s = time.perf_counter() - t
    model = LDMModel(model_dir, device)
    info = model.info
    ddim = per_sample(model, g["samples"], 1, g["ddim_steps"], "ddim")
    dpm = per_sample(model, g["samples"], 1, g["dpm_steps"], "dpm++")
    return {"preset": g["preset"], "set": settings, "condition": "covariates", "precision": "float32 (the ldm sampler's)",
            "grid": info["image"]["shape"], "voxel_mm": info["image"]["voxel_mm"],
            "latent": [info["latent"]["channels"], *info["latent"]["shape"]], "samples": g["samples"], "batch_size": 1,
            "build_s": build_s, "ddim": {"steps": g["ddim_steps"], "s_per_volume": ddim},
            "dpmpp": {"steps": g["dpm_steps"], "s_per_volume": dpm}, "ddim_over_dpmpp": ddim / dpm}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def nulls(obj: Any, path: str = "") -> Iterator[str]:
    """Dotted paths of the None values in ``obj``."""
    if obj is None:
        yield path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from nulls(v, f"{path}.{k}" if path else str(k))


def not_measured(result: dict[str, Any]) -> dict[str, str]:
    """Why each null is null; a null without a known reason is a bug of this script."""
    reasons = {}
    for path in nulls(result):
        if path.endswith("peak_gpu_mib"):
            reasons[path] = NO_CUDA if ".ratio." not in path else "the peaks it divides are not measured: " + NO_CUDA
        else:
            raise AssertionError(f"gpu_bench: {path} is null without a reason")
    return reasons


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "not measured"
    return f"{x:.3g}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"


def markdown(r: dict[str, Any]) -> str:
    t, e, g = r["train"], r["edit"], r["generate_3d"]
    lines = [f"GPU check ({r['mode']}): {r['machine'].get('gpu')}, torch {r['machine']['torch']}, commit {r['machine']['commit']}",
             "", "| measure | brainsynth | peer (same run) | ratio |", "|---|---|---|---|"]
    for stage, name in (("vae", "stage 1 (VAE)"), ("unet", "stage 2 (UNet)")):
        s = t[stage]
        lines.append(f"| train {name}, samples/s ({t['precision']}, batch {s['brainsynth']['batch']}) | "
                     f"{_num(s['brainsynth']['samples_per_s'])} | bare loop {_num(s['bare']['samples_per_s'])} | "
                     f"{_num(s['ratio']['samples_per_s'])} |")
        lines.append(f"| train {name}, peak GPU MiB | {_num(s['brainsynth']['peak_gpu_mib'])} | "
                     f"bare loop {_num(s['bare']['peak_gpu_mib'])} | {_num(s['ratio']['peak_gpu_mib'])} |")
    sm = e["sampling"]
    lines.append(f"| edit, s per {e['slice']['size']}x{e['slice']['size']} slice ({sm['steps']} {sm['scheduler']} steps, "
                 f"batch {e['batch_size']}) | {_num(e['slice']['s_per_slice'])} | - | - |")
    lines.append(f"| edit, s per volume (`brainsynth edit`, {e['volume']['slices_edited']} slices) | "
                 f"{_num(e['volume']['s_per_volume'])} | - | - |")
    lines.append(f"| generate 3D ({g['preset']}, grid {'x'.join(map(str, g['grid']))}), s per volume, DDIM {g['ddim']['steps']} | "
                 f"{_num(g['ddim']['s_per_volume'])} | DPM-Solver++ {g['dpmpp']['steps']}: {_num(g['dpmpp']['s_per_volume'])} | "
                 f"{_num(g['ddim_over_dpmpp'])} |")
    lines += ["", f"whole run: {r['wall_s']:.0f} s"]
    if r["mode"] == "dry-run":
        lines.append("dry-run: CPU numbers of toy models, not GPU numbers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (no GPU needed)")
    ap.add_argument("--work", type=Path, default=None, help="work folder to keep (cohort, pairs, models)")
    args = ap.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    if args.dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # shared CPUs: one thread (see RESULTS, train / edit)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    device = sizes["device"]
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    root = args.work or Path(tempfile.mkdtemp(prefix="brainsynth-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result: dict[str, Any] = {"format": "brainsynth-gpu-check", "version": 1, "mode": "dry-run" if args.dry_run else "gpu",
                                  "machine": machine(device)}
        result["data"] = make_data(root, sizes)
        result["train"] = measure_training(root, sizes, device)
        result["edit"] = measure_edit(root, sizes, device)
        result["generate_3d"] = measure_generate(root, sizes, device)
        result["wall_s"] = time.perf_counter() - t0
        result["not_measured"] = not_measured(result)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    bad = [p for p, v in _numbers(result) if not math.isfinite(v)]
    if bad:
        raise AssertionError(f"gpu_bench: not finite: {', '.join(bad)}")
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print("\n" + markdown(result))
    print(f"\nwritten: {args.out}")
    return 0


def _numbers(obj: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


if __name__ == "__main__":
    sys.exit(main())
