"""The ``make-pairs`` command: longitudinal prior/target pairs with prompts, and structure-
disentangled pairs blended by a blender plugin. The engine is
:mod:`brainsynth_plugins.pairs.engine`, imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from brainsynth_cli.cli_options import hidden_aliases
from brainsynth_cli.hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command("make-pairs", cls=hidden_aliases(out="--output"))
    def make_pairs(
        dataset: Path = typer.Argument(..., help="BIDS tree (sub-*/ses-*/anat/*_T1w.nii.gz) or CSV manifest (subject, session, image[, labels, age, date, sex])."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder (the pairs folder; re-running resumes it)."),
        labels: Optional[Path] = typer.Option(None, "--labels", help="Derivatives folder with sub-*/ses-*/anat/*_dseg.nii.gz label maps."),
        rules: Optional[Path] = typer.Option(None, "--rules", help="Rules TOML (structure groups, intervals, phrases); default: BrainEditor's."),
        prompt_builder: str = typer.Option("quantized", "--prompt-builder", help="Prompt builder plugin (quantized, numeric, template, ...; `brainsynth plugins` lists them)."),
        blender: str = typer.Option("poisson", "--blender", help="Blender plugin for disentangled pairs (poisson, copy-paste, warp, none, ...; `brainsynth plugins` lists them)."),
        dim: Literal["2d", "3d"] = typer.Option("2d", "--dim", case_sensitive=False, help="2d: 16-bit PNG axial slices; 3d: NIfTI volumes."),
        slices: int = typer.Option(30, "--slices", help="2d: number of axial slices per pair, centred on the lateral ventricles."),
        size: int = typer.Option(256, "--size", help="2d: slices are padded to a square and resized to SIZE x SIZE."),
        pairing: Literal["consecutive", "all"] = typer.Option("consecutive", "--pairing", help="consecutive: each session with the next; all: every earlier/later pair."),
        split: str = typer.Option("8:1:1", "--split", help="train:validation:test ratios, by subject (seeded)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split, the registration sampling and the template choice."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes."),
        shard: Optional[str] = typer.Option(None, "--shard", help="K/N: make only the pairs of shard K (1..N); finish with --merge."),
        participant_label: list[str] = typer.Option([], "--participant-label", help="Make only the pairs of these participants (labels with or without sub-; repeat the option or separate by commas); finish with --merge."),
        merge: bool = typer.Option(False, "--merge", help="Make nothing; merge the finished pairs of all shards (or participants) into metadata.jsonl."),
        margin: float = typer.Option(2.0, "--margin", help="Ω margin in mm: a structure's voxels (prior ∪ target) dilated by this much."),
        min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Skip pairs whose prior/target PSNR (dB, [0,1] volumes) is below this."),
        montage: int = typer.Option(3, "--montage", help="Pairs shown per kind in montage-real.png / montage-disentangled.png / montage-deformed.png."),
        deformed: bool = typer.Option(False, "--deformed", help="Also add, per pair, the prior deformed to a rate in each interval of the rules and in each combination of intervals of the deformable groups (kind deformed)."),
        deformed_splits: str = typer.Option("train,validation,test", "--deformed-splits", help="With --deformed: the splits whose pairs get deformed rows (comma-separated)."),
        match_intensities: bool = typer.Option(True, "--match-intensities/--no-match-intensities", help="Put each target on its prior's intensity scale (differential bias field divided out, tissue medians matched), so a pair differs by anatomy, not scanner drift."),
        run: str | None = typer.Option(None, "--run", help="BIDS dataset: the T1w run to take where a session has several (default: the last)."),
    ) -> None:
        """Make prior/target training pairs with prompts from a longitudinal dataset, plus one
        structure-disentangled pair per described structure, and with --deformed the prior
        deformed to every interval and combination of intervals (see docs/commands/make-pairs.md)."""
        from brainsynth_cli.errors import UserError
        from brainsynth_cli.participants import participant_labels
        from brainsynth_plugins.pairs.engine import Options, parse_shard
        from brainsynth_plugins.pairs.engine import make_pairs as make

        if jobs < 1:
            raise UserError("--jobs must be at least 1")
        chosen = tuple(x.strip() for x in deformed_splits.split(",") if x.strip())
        if not chosen or any(x not in ("train", "validation", "test") for x in chosen):
            raise UserError(f"--deformed-splits {deformed_splits!r}: give splits from train, validation, test, separated by commas")
        options = Options(
            dataset=dataset, out=output, labels=labels, rules=rules, prompt_builder=prompt_builder, blender=blender,
            dim=dim.lower(), slices=slices, size=size, pairing=pairing, split=split, seed=seed, jobs=jobs,
            shard=parse_shard(shard), participants=participant_labels(participant_label), margin=margin, min_psnr=min_psnr, merge_only=merge, montage=montage,
            deformed=deformed, deformed_splits=tuple(x for x in ("train", "validation", "test") if x in chosen),
            match_intensities=match_intensities, run=run,
        )
        summary = make(options, echo=typer.echo)
        rows = ", ".join(f"{n} {k}" for k, n in sorted(summary.rows.items())) or "no"
        skipped = ", ".join(f"{n} ({k})" for k, n in sorted(summary.pairs_skipped.items()))
        if summary.merged:
            typer.echo(f"{output}: {summary.pairs_total} pairs ({summary.pairs_made} made, {summary.pairs_resumed} resumed"
                       f"{', skipped ' + skipped if skipped else ''}); {rows} rows in metadata.jsonl")
