"""``brainsynth demo``: simulate, segment, make pairs, train ``tiny``, evaluate; offline, resumable.

Each step is the documented command run in-process on a sub-folder of DIR, so the demo is also
a worked example of the command line. Every step resumes: re-running after an interruption
skips what is finished. ``--3d`` runs the same chain on whole volumes (3D pairs, the 3D
``tiny`` model, volume change rates) into its own sub-folders, sharing the cohort and labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

STEPS = ("simulate", "segment", "make-pairs", "train", "evaluate")


#: The sub-folders the pairs, model and report of each chain go to (the cohort and labels are shared).
FOLDERS = {False: ("pairs", "model", "report"), True: ("pairs3d", "model3d", "report3d")}


def plan(out: Path, subjects: int, seed: int, volumes: bool = False) -> list[tuple[str, list[str]]]:
    """The commands of the demo, in order (train's --resume is added when a run is under way).

    The cohort is drawn so that, at the default size and seed (8 subjects, seed 12), every
    interval of the default rules (ventricle mild, moderate, severe; cortex atrophy) has real
    training and test pairs: ventricles enlarge by 4-12 % a year over 1-4 years, four subjects
    train, one validates, three are tested (other seeds draw other cohorts; the report lists the
    intervals it could evaluate).
    Training pairs also get deformed targets in every interval (``--deformed``).
    ``volumes``: the 3D chain (``make-pairs --dim 3d``, ``train --dim 3d``; the evaluation then
    measures volume change rates).
    """
    cohort, labels = out / "cohort", out / "labels"
    pairs, model, report = (out / n for n in FOLDERS[volumes])
    if volumes:
        pair_args = ["--dim", "3d"]
        train_args = ["--dim", "3d"]
    else:
        pair_args = ["--slices", "4", "--size", "64"]
        train_args = []
    return [
        ("simulate", ["simulate", "-o", str(cohort), "--subjects", str(subjects), "--sessions", "3", "--resolution", "2",
                      "--ventricle-rate", "4", "12", "--seed", str(seed)]),
        ("segment", ["segment", str(cohort), "--bids", "-o", str(labels), "--segmenter", "atlas", "--jobs", "2"]),
        ("make-pairs", ["make-pairs", str(cohort), "-o", str(pairs), "--labels", str(labels), *pair_args,
                        "--pairing", "all", "--split", "4:1:3", "--deformed", "--deformed-splits", "train,validation",
                        "--jobs", "2", "--seed", str(seed)]),
        ("train", ["train", str(pairs), "-o", str(model), *train_args, "--preset", "tiny", "--seed", str(seed)]),
        ("evaluate", ["evaluate", str(model), str(pairs), "-o", str(report), "--split", "test", "--seed", str(seed),
                      "--jobs", "2"]),
    ]


def pictures(out: Path, volumes: bool = False) -> list[Path]:
    pairs, model, report = FOLDERS[volumes]
    found: list[Path] = []
    for pattern in ("cohort/derivatives/brainsynth-truth/*/figures/*montage*.png", "labels/sub-*/ses-01/anat/*_qc.png",
                    f"{pairs}/montage-*.png", f"{model}/validation/vae*.png", f"{model}/validation/unet*.png",
                    f"{report}/montage.png", f"{report}/montage-deform.png", f"{report}/rates.png"):
        hits = sorted(out.glob(pattern))
        found.extend(hits[-1:] if pattern.startswith(f"{model}/") else hits[:3])  # the last validation of each stage
    return found


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        output: Path = typer.Option(Path("brainsynth-demo"), "-o", "--output", help="Folder for all outputs (re-running resumes)."),
        subjects: int = typer.Option(8, min=3, help="Simulated subjects (3 sessions each; 4:1:3 split by subject)."),
        seed: int = typer.Option(12, help="Seed of every step (12: a cohort whose test subjects show every interval)."),
        volumes: bool = typer.Option(False, "--3d", help="Whole volumes: 3D pairs, the 3D `tiny` model, volume change rates "
                                     "(into DIR/pairs3d, model3d, report3d; about 50 minutes on 2 cores)."),
    ) -> None:
        """Run the whole chain on built-in data, offline: simulate a cohort from the MNI152 template,
        segment it with `atlas`, make pairs, train the `tiny` model on CPU, evaluate it. Prints the
        evaluation table and the paths of the pictures. Resumes if interrupted. `--3d` edits whole
        volumes instead of slices."""
        import os
        import sys

        from brainsynth_cli.main import run

        # torch on at most two threads (the tiny model's 64x64 convolutions train 1.7-2x faster on
        # two than on one); on cores shared with other work OpenMP threads spin and run many
        # times slower, so OMP_NUM_THREADS=1 is then the better choice. OMP_NUM_THREADS wins.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        if output.exists() and not output.is_dir():
            from brainsynth_cli.errors import InputError

            raise InputError(output, "is a file, not a folder", "give a folder for the demo's outputs (-o DIR)")
        output.mkdir(parents=True, exist_ok=True)
        t_all = time.perf_counter()
        _, model_folder, report_folder = FOLDERS[volumes]
        for i, (name, args) in enumerate(plan(output, subjects, seed, volumes), start=1):
            if name == "train":
                model = output / model_folder
                if (model / "brainsynth.json").is_file():
                    typer.echo(f"[{i}/{len(STEPS)}] train: {model} is finished, skipped")
                    continue
                if (model / "checkpoints" / "run.json").is_file():  # a run under way (with or without a checkpoint)
                    args = [*args, "--resume"]
            typer.echo(f"[{i}/{len(STEPS)}] brainsynth {' '.join(args)}")
            t0 = time.perf_counter()
            code = run(args)
            if code != 0:  # the step printed its own one-line error; the demo adds how to go on, on stdout
                typer.echo(f"      {name} failed; fix the problem above and run `brainsynth demo -o {output}` again to resume")
                raise typer.Exit(code)
            typer.echo(f"      {name} done in {time.perf_counter() - t0:.0f} s")
        typer.echo(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s. Pictures:")
        for p in pictures(output, volumes):
            typer.echo(f"  {p}")
        typer.echo(f"report: {output / report_folder / 'report.md'}")
