"""``brainsynth generate``: sample brain MRI from a trained ``ldm`` model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import typer

#: The most samples one ``generate`` writes.
MAX_SAMPLES = 10_000

CSV_FIELDS = ("file", "seed", "prompt", "age", "sex", "ventricle_volume_mm3", "brain_volume_mm3",
              "steps", "scheduler", "guidance_scale", "from", "warnings")


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        model: Path = typer.Argument(..., help="Model folder written by `brainsynth train --task generate` (generator ldm)."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder (created; must be new or empty)."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="Text for text-conditioned models; a `template` caption "
                                             "also sets the covariates it states."),
        age: Optional[float] = typer.Option(None, "--age", help="Age in years (default: the training median)."),
        sex: Optional[Literal["F", "M"]] = typer.Option(None, "--sex", case_sensitive=False, help="F or M, either case (default: the training median)."),
        ventricle_volume: Optional[float] = typer.Option(None, "--ventricle-volume", help="Lateral + inferior lateral ventricle volume, mm^3."),
        brain_volume: Optional[float] = typer.Option(None, "--brain-volume", help="Brain volume, mm^3."),
        n: int = typer.Option(1, "-n", "--num-samples", min=1, help="How many samples."),
        steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps (Brain LDM: DDIM, 50)."),
        scheduler: Literal["ddim", "ddpm", "dpm++", "euler-a"] = typer.Option("ddim", "--scheduler", help="ddim, ddpm, dpm++ or euler-a."),
        seed: int = typer.Option(0, "--seed", help="Sample i starts from the noise of seed + i."),
        guidance_scale: float = typer.Option(1.0, "--guidance-scale", help="Classifier-free guidance (1 = none)."),
        batch_size: int = typer.Option(4, "--batch-size", min=1, help="Samples denoised together."),
        device: Literal["auto", "cpu", "cuda", "mps"] = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    ) -> None:
        """Generate brain MRI from covariates (age, sex, ventricle and brain volume) and/or a text
        prompt: NIfTI on the model's grid with its affine (3D) or 16-bit PNG (2D), plus samples.csv
        of the conditions used. Covariates outside the trained range are allowed, with a warning."""
        from brainsynth_cli.limits import MAX_SEED, check_number, check_seed
        from brainsynth_cli.outputs import locked_output, on_interrupt, refuse_folder_over_input
        from brainsynth_cli.progress import progress_bar

        from brainsynth_plugins.ldm.model import LDMModel, read_info

        check_number("-n", n, low=1, high=MAX_SAMPLES, integer=True, example="-n 8")
        check_number("--steps", steps, low=1, high=1000, integer=True, example="--steps 50")
        check_number("--guidance-scale", guidance_scale, low=0, high=100, example="--guidance-scale 1")
        check_number("--batch-size", batch_size, low=1, high=1024, integer=True)
        check_seed(seed)
        check_number("--seed + samples", seed + n - 1, low=0, high=MAX_SEED, integer=True)
        for name, value, high in (("--age", age, 150), ("--ventricle-volume", ventricle_volume, 1e7),
                                  ("--brain-volume", brain_volume, 1e7)):
            if value is not None:
                check_number(name, value, low=0, high=high)
        read_info(model)
        refuse_folder_over_input(output, {"model folder": model})
        _check_output(output)
        with locked_output(output, command="generate"):
            on_interrupt("nothing was kept; run the command again")
            ldm = LDMModel(model, device)
            cond = ldm.condition(prompt, age=age, sex=sex, ventricle_volume=ventricle_volume, brain_volume=brain_volume)
            for w in cond.warnings:
                typer.echo(f"brainsynth: warning: {w}", err=True)
            conds = [cond] * n
            seeds = [seed + i for i in range(n)]
            with progress_bar("generate") as progress:
                images = ldm.sample(conds, seeds, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                    batch_size=batch_size, progress=progress)
            files = write_samples(ldm, output, images, conds, seeds, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale)
        typer.echo(f"{len(files)} sample(s) in {output} (conditions in {output / 'samples.csv'})")


def _check_output(output: Path) -> None:
    from brainsynth_cli.errors import InputError
    from brainsynth_cli.outputs import is_empty_folder

    if output.exists() and not output.is_dir():
        raise InputError(output, "exists and is not a folder", "choose another --output")
    if output.is_dir() and not is_empty_folder(output):
        raise InputError(output, "exists and is not empty", "choose a new or empty --output folder")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else str(v)


def sample_caption(c: Any, seed: int) -> str:
    """What a sample was asked for: seed, prompt, and the covariates given (not the medians filled in)."""
    asked = [f"“{c.prompt}”"] if c.prompt else []
    units = {"age": "y", "ventricle_volume": "mm³", "brain_volume": "mm³"}
    for k, v in c.covariates.items():
        if k == "sex" or c.sources.get(k) == "median" or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        asked.append(f"{k.replace('_', ' ')} {v:.6g} {units.get(k, '')}".rstrip())
    if c.sex and c.sources.get("sex") != "median":
        asked.append(f"sex {c.sex}")
    return f"seed {seed}: " + (", ".join(asked) if asked else "unconditioned")


def write_samples(ldm: Any, output: Path, images: Sequence[Any], conds: Sequence[Any], seeds: Sequence[int], *,
                  steps: int, scheduler: str, guidance_scale: float, prefix: str = "sample", per_row: int = 8) -> list[Path]:
    """Write samples (NIfTI on the model grid, or 16-bit PNG), a montage and ``samples.csv``."""
    import csv
    import io

    import numpy as np

    from brainsynth_cli.figures.comparison import tiles_figure
    from brainsynth_cli.figures.orientation import axial_view, stored_view
    from brainsynth_cli.figures.save import save_figure
    from brainsynth_cli.images import atomic_write_text, write_png, write_volume
    from brainsynth_cli.slices import CONVENTIONS, to_png16

    output.mkdir(parents=True, exist_ok=True)
    files, rows, tiles = [], [], []
    for i, (img, c, s) in enumerate(zip(images, conds, seeds)):
        if ldm.dim == "3d":
            path = output / f"{prefix}-{i:04d}.nii.gz"
            write_volume(path, img, np.asarray(ldm.info["image"]["affine"], dtype=float))
            tiles.append((sample_caption(c, s), axial_view(img, np.asarray(ldm.info["image"]["affine"], dtype=float))))
        else:
            path = output / f"{prefix}-{i:04d}.png"
            write_png(path, to_png16(img), bits=16)
            tiles.append((sample_caption(c, s), stored_view(img, ldm.info["image"].get("slice_convention", CONVENTIONS[0]))))
        files.append(path)
        cov = c.covariates
        rows.append({"file": path.name, "seed": s, "prompt": c.prompt or "", "age": cov.get("age"), "sex": c.sex,
                     "ventricle_volume_mm3": cov.get("ventricle_volume"), "brain_volume_mm3": cov.get("brain_volume"),
                     "steps": steps, "scheduler": scheduler, "guidance_scale": guidance_scale,
                     "from": ";".join(f"{k}={v}" for k, v in c.sources.items() if v), "warnings": " | ".join(c.warnings)})
    what = "middle axial slice of each sample" if ldm.dim == "3d" else "samples"
    save_figure(tiles_figure(tiles, per_row=per_row, title=f"{what}: {steps} {scheduler} steps, guidance scale {guidance_scale:g}"),
                output / f"{prefix}s.png")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r[k]) for k in CSV_FIELDS})
    atomic_write_text(output / f"{prefix}s.csv", buf.getvalue())
    return files
