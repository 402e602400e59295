"""Seconds per sample of `brainsynth generate` (generator ldm), tiny preset, on this machine.

Models: the `tiny` preset (2D 64x64 slices with covariates + MiniLM captions; 3D 4 mm volumes with
covariates, MONAI networks), built by `train --task generate` for one step on a simulated cohort
(sampling time does not depend on how well a model is trained). Measured in the same run:

- DDIM 50 steps (Brain LDM's sampler and step count) — the number asked for;
- peers: DDPM with all 1000 training steps (Brain LDM's "LDM" row, 142.3 s vs 7.6 s per sample on
  a TITAN RTX at 160x224x160), and DPM-Solver++ with 20 steps;
- batch 1 and batch 4 (per sample).

    python benchmarks/generate.py [--threads 1] [--ddpm-steps 1000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def build(root: Path, dim: str, condition: str, device: str, preset: str = "tiny", settings: dict[str, str] | None = None) -> Path:
    """A model of ``preset`` (``settings``: ``--set`` overrides) trained one step per stage on ``root/cohort``."""
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    out = root / f"model-{dim}"
    gen = get_manager().registry("generator").create("ldm")
    gen.train(TrainOptions(data=root / "cohort", output=out, seed=0, device=device,
                           extra={"dim": dim, "condition": condition, "vae_steps": 1, "unet_steps": 1, "preset": preset,
                                  "set": dict(settings or {})}))
    return out


def per_sample(model, n: int, batch: int, steps: int, scheduler: str) -> float:
    cond = model.condition(None, ventricle_volume=model.info["covariates"]["medians"]["ventricle_volume"])
    model.sample([cond], [0], steps=2, scheduler=scheduler, batch_size=1)  # warm-up
    t = time.perf_counter()
    model.sample([cond] * n, list(range(n)), steps=steps, scheduler=scheduler, batch_size=batch)
    return (time.perf_counter() - t) / n


def main() -> None:
    import torch

    from brainsynth_plugins.ldm.model import LDMModel
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dims", default="2d,3d")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        root = Path(tmp)
        simulate_cohort(root / "cohort", subjects=3, sessions=2, resolution=4.0, seed=0)
        for dim in args.dims.split(","):
            condition = "both" if dim == "2d" else "covariates"
            t = time.perf_counter()
            model_dir = build(root, dim, condition, args.device)
            build_s = time.perf_counter() - t
            model = LDMModel(model_dir, args.device)
            info = model.info
            grid = f"{info['image']['resolution']}^2" if dim == "2d" else "x".join(map(str, info["image"]["shape"]))
            latent = "x".join(map(str, [info["latent"]["channels"], *info["latent"]["shape"]]))
            ddim1 = per_sample(model, 2, 1, 50, "ddim")
            ddim4 = per_sample(model, 4, 4, 50, "ddim")
            dpm = per_sample(model, 2, 1, 20, "dpm++")
            ddpm = per_sample(model, 1, 1, args.ddpm_steps, "ddpm")
            rows.append({"dim": dim, "condition": condition, "grid": grid, "latent": latent, "build_s": build_s,
                         "ddim50_b1": ddim1, "ddim50_b4": ddim4, "dpmpp20_b1": dpm, f"ddpm{args.ddpm_steps}_b1": ddpm})
            print(f"{dim} {condition} image {grid} latent {latent}: DDIM 50 {ddim1:.3f} s/sample (batch 1), "
                  f"{ddim4:.3f} s/sample (batch 4); DPM++ 20 {dpm:.3f}; DDPM {args.ddpm_steps} {ddpm:.3f} "
                  f"-> DDIM 50 is {ddpm / ddim1:.1f}x faster than DDPM {args.ddpm_steps}, DPM++ 20 {ddim1 / dpm:.1f}x faster than DDIM 50 "
                  "(Brain LDM, TITAN RTX: DDPM 1000 142.3 s, DDIM 50 7.6 s, 18.7x)", flush=True)
    print(json.dumps({"device": args.device, "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
