"""``brainsynth evaluate``: edit the test rows of a pairs folder and measure the edits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        model: Path = typer.Argument(..., help="Model folder written by `brainsynth train`."),
        pairs: Path = typer.Argument(..., help="Pairs folder written by `brainsynth make-pairs` (with label slices)."),
        output: Path = typer.Option(..., "-o", "--output", help="Report folder (created; re-running resumes)."),
        split: str = typer.Option("test", help="Which split's rows to edit."),
        measure: str = typer.Option("registration", help="Measurement plugin that labels edited slices (see `brainsynth plugins`)."),
        steps: int = typer.Option(20, min=1, help="Denoising steps per edit."),
        scheduler: str = typer.Option("ddim", help="ddim, dpm++ or euler-a."),
        guidance_scale: float = typer.Option(7.5, help="Text guidance scale."),
        image_guidance_scale: float = typer.Option(1.5, help="Image guidance scale."),
        seed: int = typer.Option(0, help="Seed; row N is edited with seed + N."),
        limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N rows of the split."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        fid_weights: Optional[Path] = typer.Option(None, help="TorchScript feature extractor for FID (local file)."),
    ) -> None:
        """Edit every row of a split with its prompt and measure it like BrainEditor's Table 1:
        PSNR, SSIM, MS-SSIM against the real target; achieved change per structure (ACC, MAE), next to
        the identity baseline and the real target measured as if it were an edit."""
        from brainsynth_cli.errors import InputError
        from brainsynth_cli.progress import progress_bar

        from brainsynth_plugins.evaluate.engine import EvalSettings
        from brainsynth_plugins.evaluate.run import run_evaluation

        if not model.is_dir():
            raise InputError(model, "model folder not found", "give the folder written by `brainsynth train`")
        if output.exists() and not output.is_dir():
            raise InputError(output, "exists and is not a folder", "choose another --output")
        settings = EvalSettings(split=split, measure=measure, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                image_guidance_scale=image_guidance_scale, seed=seed, limit=limit)
        with progress_bar("evaluate") as progress:
            summary = run_evaluation(model, pairs, output, settings, device=device, fid_weights=fid_weights, progress=progress)
        print_summary(summary, output)


def print_summary(summary: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from brainsynth_plugins.evaluate.report import _fmt

    table = Table(title=f"evaluation ({summary['rows']} rows, measure {summary['settings']['measure']})")
    for col in ("method", "rows", "PSNR", "SSIM", "MS-SSIM", "ACC", "MAE pp", "leak pp"):
        table.add_column(col)
    for method, groups in summary["methods"].items():
        for group, t in groups.items():
            if group == "intervals":
                continue
            table.add_row(f"{method} ({group})", str(t["rows"]), _fmt(t["psnr"], 2), _fmt(t["ssim"]), _fmt(t["ms_ssim"]),
                          _fmt(t["acc"], 2), _fmt(t["mae"], 2), _fmt(t["leak"], 2))
    console = Console(width=120)
    console.print(table)
    for name in ("report.md", "metrics.csv", "metrics.json", "montage.png", "rates.png"):
        console.print(f"  {output / name}")
