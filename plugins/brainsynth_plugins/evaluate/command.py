"""``brainsynth evaluate``: edit the test rows of a pairs folder and measure the edits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        model: Path = typer.Argument(..., help="Model folder written by `brainsynth train` (with --baselines-only: the pairs folder)."),
        pairs: Optional[Path] = typer.Argument(None, help="Pairs folder written by `brainsynth make-pairs` (2D slices or --dim 3d volumes, with labels); not with --task generate."),
        output: Path = typer.Option(..., "-o", "--output", help="Report folder (created; re-running with the same settings resumes, other settings need --overwrite)."),
        split: Literal["train", "validation", "test", "all"] = typer.Option("test", help="Which split's rows to edit (train, validation, test, or all)."),
        measure: str = typer.Option("registration", help="Measurement plugin that labels edited slices (see `brainsynth plugins`); 3D pairs use --segmenter."),
        steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps per edit (default: the model's recommendation, else 20) or sample (--task generate: 50)."),
        scheduler: Optional[Literal["ddim", "dpm++", "euler-a", "ddpm"]] = typer.Option(None, help="ddim, dpm++ or euler-a (default: the model's, else ddim); ddpm only with --task generate."),
        guidance_scale: Optional[float] = typer.Option(None, help="Text guidance scale (default: the model's, else 7.5; --task generate: 1, no guidance)."),
        image_guidance_scale: Optional[float] = typer.Option(None, help="Image guidance scale (default: the model's, else 1.5)."),
        guidance_reference: Literal["empty-prompt", "input"] | None = typer.Option(None, "--guidance-reference", help="What the text guidance is measured from: empty-prompt (InstructPix2Pix) or input (default: the model's, else empty-prompt)."),
        seed: int = typer.Option(0, help="Seed; row N is edited with seed + N."),
        limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N rows of the split."),
        device: Literal["auto", "cpu", "cuda", "mps"] = typer.Option("auto", help="auto, cpu, cuda or mps."),
        fid_weights: Optional[Path] = typer.Option(None, help="TorchScript feature extractor for FID (local file)."),
        task: Literal["edit", "generate"] = typer.Option("edit", "--task", help="edit (an editing model on PAIRS) or generate (an ldm model: conditioning r, MS-SSIM)."),
        grid: int = typer.Option(5, "--grid", min=2, help="--task generate: requested ventricle volumes over the trained range."),
        per_value: int = typer.Option(4, "--per-value", min=1, help="--task generate: samples per requested volume."),
        segmenter: str = typer.Option("atlas", "--segmenter", help="3D pairs and --task generate, 3D: segmenter plugin that measures the volumes (its longitudinal mode for pairs; see `brainsynth plugins`)."),
        data: Optional[Path] = typer.Option(None, "--data", help="--task generate: real images (default: the model's training data)."),
        baselines_only: bool = typer.Option(False, "--baselines-only", help="No model: `evaluate --baselines-only PAIRS -o REPORT` scores the identity and real-target baselines, i.e. the measurement's own error."),
        residual: bool = typer.Option(True, "--residual/--no-residual", help="Edit path: decode the change and add it to the prior."),
        restrict: bool = typer.Option(True, "--restrict/--no-restrict", help="Edit path: keep the change inside the named structures (row's prior labels) plus --margin."),
        margin: float = typer.Option(3.0, "--margin", help="Edit path: margin around the named structures, mm."),
        blender: str | None = typer.Option(None, "--blender", help="Edit path: how the change is merged into the prior (blender plugin; see `brainsynth plugins`; default: the model's, else poisson)."),
        change_floor: float | None = typer.Option(None, "--change-floor", help="Edit path: drop the model's changes below this fraction of the intensity window (default: the model's, else 0)."),
        feather: bool | None = typer.Option(None, "--feather/--no-feather", help="Edit path: halve the model's change in the region's outermost voxel layer (default: the model's, else off)."),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also score the deform and chance rows."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes that measure rows while the model edits the next ones (same numbers, less time)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a report made in OUTPUT with other settings (its files are removed first)."),
    ) -> None:
        """Edit every row of a split with its prompt and measure it like BrainEditor's Table 1:
        PSNR, SSIM, MS-SSIM against the real target; achieved change per structure (ACC, MAE), next to
        the identity baseline and the real target measured as if it were an edit."""
        from brainsynth_cli.errors import InputError
        from brainsynth_cli.limits import MAX_JOBS, check_number, check_seed
        from brainsynth_cli.outputs import locked_output, on_interrupt, refuse_folder_over_input
        from brainsynth_cli.progress import progress_bar
        from brainsynth_cli.sampling import FALLBACK as sampling_defaults
        from brainsynth_cli.sampling import resolve as resolve_sampling

        from brainsynth_plugins.evaluate.engine import EvalSettings
        from brainsynth_plugins.evaluate.run import (claim_report_folder, model_info, pairs_dim, refuse_mismatch, report_settings,
                                                     run_evaluation, volume_measure)

        if task == "generate":
            from brainsynth_plugins.ldm.evaluation import run_command

            run_command(model, output, steps=steps or 50, scheduler=scheduler or "ddim", seed=seed, grid=grid, per_value=per_value,
                        guidance_scale=1.0 if guidance_scale is None else guidance_scale,
                        segmenter=segmenter, measure=measure, data=data, device=device)
            return
        if task != "edit":
            raise InputError(None, f"--task must be edit or generate, got {task!r}")
        if baselines_only:
            if pairs is not None:
                raise InputError(pairs, "--baselines-only takes one folder, the pairs", "write `brainsynth evaluate --baselines-only PAIRS -o REPORT`")
            model, pairs = None, model
        elif pairs is None:
            raise InputError(None, "missing PAIRS", "give the pairs folder written by `brainsynth make-pairs`")
        if model is not None and not model.is_dir():
            raise InputError(model, "model folder not found", "give the folder written by `brainsynth train`")
        sampling, _ = resolve_sampling(model_info(model), steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                       image_guidance_scale=image_guidance_scale, change_floor=change_floor,
                                       guidance_reference=guidance_reference, feather=feather, blender=blender)
        steps, scheduler = sampling["steps"], sampling["scheduler"]
        change_floor = sampling["change_floor"] if model is not None else 0.0
        feather = bool(sampling["feather"]) if model is not None else False
        deform_blender = blender or sampling_defaults["blender"]  # the deform row: the option, never the model's recommendation
        blender = str(sampling["blender"])
        guidance_scale, image_guidance_scale = sampling["guidance_scale"], sampling["image_guidance_scale"]
        guidance_reference = sampling["guidance_reference"]
        if output.exists() and not output.is_dir():
            raise InputError(output, "exists and is not a folder", "choose another --output")
        check_number("--guidance-scale", guidance_scale, low=0, high=100)
        check_number("--image-guidance-scale", image_guidance_scale, low=0, high=100)
        check_number("--steps", steps, low=1, high=1000, integer=True)
        check_number("--margin", margin, low=0, high=50)
        check_number("--change-floor", change_floor, low=0, high=0.1)
        check_seed(seed)
        check_number("--jobs", jobs, low=1, high=MAX_JOBS, integer=True)
        refuse_folder_over_input(output, {"model folder": model, "pairs folder": pairs})
        volumes = pairs_dim(pairs) == "3d"
        refuse_mismatch(pairs, volumes, model_info(model).get("dims"), fid_weights)  # before the report folder is made
        if volumes:  # rates measured by --segmenter's longitudinal mode
            measure = volume_measure(measure, segmenter)
        settings = EvalSettings(split=split, measure=measure, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                image_guidance_scale=image_guidance_scale, seed=seed, limit=limit, residual=residual, restrict=restrict,
                                margin_mm=margin, blender=blender, baselines=baselines, change_floor=change_floor,
                                guidance_reference=guidance_reference, feather=feather, deform_blender=deform_blender)
        log = output / "rows.jsonl"
        with locked_output(output, command="evaluate", keep=log.is_file):
            claim_report_folder(output, report_settings(model, pairs, settings), overwrite=overwrite)
            on_interrupt(lambda: f"the rows evaluated so far are kept in {log}; run the same command again to resume"
                         if log.is_file() else "nothing was kept; run the command again")
            with progress_bar("evaluate") as progress:
                summary = run_evaluation(model, pairs, output, settings, device=device, fid_weights=fid_weights, progress=progress,
                                         jobs=jobs)
        print_summary(summary, output)


def print_summary(summary: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from brainsynth_plugins.evaluate.verdict import LABELS, _f

    console = Console(width=120)
    first = summary.get("first_screen") or {}
    if first:
        console.print(first["headline"].replace("**", ""), style="bold")
        for reason in first["reasons"]:
            console.print(f"  - {reason}")
        volumes = (summary.get("settings") or {}).get("dim") == "3d"
        table = Table(title=f"per pair, {first['kinds']} pairs ({'one volume each' if volumes else 'slices pooled'})")
        for col in ("method", "pairs", "ACC (95 % interval, n)", "MAE pp", "leak pp", "structure change err.", "intensity change err.",
                    "PSNR", "SSIM"):
            table.add_column(col)
        for method, t in first["table"].items():
            lo, hi = t["acc_ci"]
            table.add_row(LABELS.get(method, method), str(t["pairs"]), f"{_f(t['acc'])} ({_f(lo)}–{_f(hi)}, n={t['n']})" if t["n"] else "n/a",
                          _f(t["mae"]), _f(t["leak"]), _f(t["structure_error"]), _f(t["change_error"]), _f(t["psnr"]), _f(t["ssim"], 3))
        console.print(table)
        for method, t in (summary.get("through_plane") or {}).items():
            console.print(f"  through-plane consistency, {method}: ratio {_f(t['ratio'])}, anisotropy ratio "
                          f"{_f(t['anisotropy_ratio'])} (real target 1; > 1 rougher across axial slices)")
        if first.get("intervals") and len(first["intervals"]) > 2:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in first["intervals"]]
            itable = Table(title="what each prompt asked for and what happened (per pair, means)")
            for col in rows[0]:
                itable.add_column(col)
            for r in rows[2:]:
                itable.add_row(*r)
            console.print(itable)
        if first.get("untrained"):
            console.print(f"  intervals the model was not trained on: {', '.join(first['untrained'])}")
    console.print(f"  per slice, per kind and per interval: {output / 'report.md'}")
    for name in ("report.md", "metrics.csv", "metrics-pairs.csv", "metrics.json", "montage.png", "montage-deform.png", "rates.png"):
        if (output / name).exists():
            console.print(f"  {output / name}")
