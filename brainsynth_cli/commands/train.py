"""``brainsynth train``: fit a generator (default ``instruct-pix2pix``) on a pairs folder.

Generic: the command checks its inputs, picks the generator and the text encoder from the
registries by name and hands everything to the generator's ``train``. torch and diffusers
are imported by the generator, never here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Literal, Optional

import typer

from brainsynth_cli.errors import InputError, UserError

log = logging.getLogger(__name__)

#: The most optimiser steps a stage may ask for.
MAX_STEPS = 10_000_000

#: ``--report-to`` choices: accelerate trackers (besides logs/loss.csv) and the package each needs.
TRACKERS = {"none": None, "tensorboard": "tensorboard"}


def check_report_to(report_to: str) -> None:
    """``--report-to``: a known tracker whose package is installed (found without importing it)."""
    import importlib.util

    if report_to not in TRACKERS:
        raise UserError(f"--report-to must be {' or '.join(TRACKERS)}, got {report_to!r}")
    package = TRACKERS[report_to]
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"--report-to {report_to}: the {package} package is not installed; "
                        f"install it with pip install 'brainsynth[{package}]' (or pip install {package}), or leave --report-to out")


_CHECKPOINT = re.compile(r"^([A-Za-z0-9]+)-(\d+)$")


def latest_checkpoint(output: Path) -> tuple[Path, str, int] | None:
    """The checkpoint folder written last under ``OUTPUT/checkpoints`` (``STAGE-STEP`` holding a
    ``state.json``) as (path, stage, step), or None."""
    found = []
    root = output / "checkpoints"
    if root.is_dir():
        for d in root.iterdir():
            m = _CHECKPOINT.match(d.name)
            if m and (d / "state.json").is_file():
                found.append(((d / "state.json").stat().st_mtime_ns, d, m.group(1), int(m.group(2))))
    if not found:
        return None
    _, path, stage, step = max(found)
    return path, stage, step


def interrupt_note(output: Path, resume_command: str) -> str:
    """What an interrupted training run kept and how to go on (after ``brainsynth: interrupted;``)."""
    if not (output / "checkpoints" / "run.json").is_file():
        return "nothing was kept; run the command again"
    latest = latest_checkpoint(output)
    if latest is None:
        return (f"no checkpoint was written yet, the run's settings are kept in {output}; "
                f"`{resume_command}` starts it again from step 0")
    path, stage, step = latest
    return f"kept checkpoint {path} (stage {stage}, step {step}); resume with `{resume_command}`"


def _parse_set(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. --set vae_steps=100)")
        out[key.strip()] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        pairs: Path = typer.Argument(..., help="Pairs folder written by `brainsynth make-pairs` (metadata.jsonl + images); with --task generate also a dataset (BIDS folder or CSV manifest)."),
        output: Path = typer.Option(..., "-o", "--output", help="Model folder to write (diffusers pipeline layout + brainsynth.json)."),
        generator: str = typer.Option("", "--generator", help="Generator plugin (default: instruct-pix2pix for --task edit, ldm for --task generate; see `brainsynth plugins`)."),
        task: Literal["edit", "generate"] = typer.Option("edit", "--task", help="edit (prior + prompt -> target) or generate (covariates and/or text -> image)."),
        dim: Literal["2d", "3d"] = typer.Option("2d", "--dim", case_sensitive=False, help="2d (slices, diffusers) or 3d (whole volumes, MONAI networks): for --task edit (instruct-pix2pix) and --task generate."),
        condition: Literal["text", "covariates", "both"] = typer.Option("both", "--condition", help="--task generate: text, covariates or both."),
        labels: str = typer.Option("", "--labels", help="--task generate on a dataset: label maps folder (default DATASET/derivatives/brainsynth-truth)."),
        run: str | None = typer.Option(None, "--run", help="--task generate on a BIDS dataset: the T1w run to take where a session has several (default: the last)."),
        preset: str = typer.Option("tiny", "--preset", help="tiny (CPU: minutes; with --dim 3d under an hour), base (from scratch, one GPU; 256x256, or 1.5 mm volumes with --dim 3d) or sd15 (from --pretrained, 2D)."),
        pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Local Stable Diffusion diffusers folder or hub id to start from."),
        text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Text encoder plugin: minilm (default), clip, biomedbert, ... (`brainsynth plugins` lists them)."),
        text_encoder_path: Optional[str] = typer.Option(None, "--text-encoder-path", help="Folder or hub id of the text encoder's weights."),
        stage: Literal["vae", "unet", "all"] = typer.Option("all", "--stage", help="vae (stage 1), unet (stage 2) or all."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps of each stage (default: the preset's)."),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training pairs instead of --steps."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size per device (both stages)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of stage 2 (stage 1: --set vae_lr=...)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Training resolution in pixels (square)."),
        channels: Optional[int] = typer.Option(None, "--channels", help="Image channels of the model: 1 (grey) or 3 (grey replicated to RGB)."),
        mixed_precision: Optional[Literal["no", "fp16", "bf16", "auto"]] = typer.Option(None, "--mixed-precision", help="no, fp16, bf16 or auto (bf16 where the device computes it natively; through accelerate). A 2D model's autoencoder stage trains in float32."),
        gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
        ema: bool = typer.Option(False, "--ema", help="Keep an exponential moving average of the UNet weights (saved as the model)."),
        conditioning_dropout: Optional[float] = typer.Option(None, "--conditioning-dropout", help="Probability of dropping the text, the image, and both (each; default 0.05)."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Write a checkpoint (and validation edits) every N steps."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its latest checkpoint."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random step."),
        device: Literal["auto", "cpu", "cuda", "mps"] = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
        report_to: Literal["none", "tensorboard"] = typer.Option("none", "--report-to", help="Also send the training metrics to: none or tensorboard (event files in OUTPUT/logs/tensorboard; needs the tensorboard extra). logs/loss.csv is always written."),
        set_: List[str] = typer.Option([], "--set", help="Generator setting KEY=VALUE (repeatable), e.g. vae_steps=100, unet.block_out_channels=32,64."),
    ) -> None:
        """Train a text-conditioned image editing model (InstructPix2Pix latent diffusion by default).

        Stage 1 trains the autoencoder on the pair images, stage 2 the 8-channel UNet on
        (prior latent, prompt) -> target latent. Checkpoints can be resumed with --resume.
        Multi-GPU: run it under `accelerate launch -m brainsynth_cli.main train ...`.
        """
        from brainsynth_cli.interfaces import TrainOptions
        from brainsynth_cli.plugin_manager import get_manager
        from brainsynth_cli.progress import progress_bar

        if task not in ("edit", "generate"):
            raise UserError(f"--task must be edit or generate, got {task!r}")
        if task == "edit" and not pairs.is_dir():
            raise InputError(pairs, "is not a folder", "give the pairs folder written by `brainsynth make-pairs`")
        if task == "edit" and not (pairs / "metadata.jsonl").is_file():
            raise InputError(pairs, "has no metadata.jsonl", "give the pairs folder written by `brainsynth make-pairs`")
        if steps is not None and epochs is not None:
            raise UserError("give --steps or --epochs, not both")
        from brainsynth_cli.limits import check_number, check_seed

        for name, value, low, high, integer in (
                ("--steps", steps, 1, MAX_STEPS, True), ("--epochs", epochs, 0, 100_000, False),
                ("--batch-size", batch_size, 1, 4096, True), ("--lr", lr, 0, 1, False),
                ("--resolution", resolution, 8, 4096, True), ("--checkpoint-every", checkpoint_every, 1, MAX_STEPS, True),
                ("--conditioning-dropout", conditioning_dropout, 0, 1, False)):
            if value is not None:
                check_number(name, value, low=low, high=high, integer=integer, low_open=name in ("--epochs", "--lr"))
        check_seed(seed)
        if stage not in ("vae", "unet", "all"):
            raise UserError(f"--stage must be vae, unet or all, got {stage!r}")
        if channels is not None and channels not in (1, 3):
            raise UserError(f"--channels must be 1 or 3, got {channels}")
        if mixed_precision is not None and mixed_precision not in ("no", "fp16", "bf16", "auto"):
            raise UserError(f"--mixed-precision must be no, fp16, bf16 or auto, got {mixed_precision!r}")
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
        check_report_to(report_to)
        manager = get_manager()
        if text_encoder is not None:
            manager.registry("text-encoder").get(text_encoder)  # one-line error listing the available ones
        gen = manager.registry("generator").create(generator or ("ldm" if task == "generate" else "instruct-pix2pix"))
        options = TrainOptions(
            data=pairs, output=output, seed=seed, device=device, resume=resume,
            extra={"preset": preset, "pretrained": pretrained, "text_encoder": text_encoder,
                   "text_encoder_path": text_encoder_path, "stage": stage, "steps": steps, "epochs": epochs,
                   "batch_size": batch_size, "lr": lr, "resolution": resolution, "channels": channels,
                   "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing, "ema": ema,
                   "conditioning_dropout": conditioning_dropout, "checkpoint_every": checkpoint_every,
                   "set": _parse_set(set_), "task": task, "dim": dim, "condition": condition, "labels": labels or None,
                   "run": run, "report_to": report_to},
        )
        log.debug("train: generator %s, options %s", type(gen).__name__, options)
        from brainsynth_cli.outputs import locked_output, on_interrupt, refuse_folder_over_input

        refuse_folder_over_input(output, {"pairs folder" if task == "edit" else "dataset": pairs,
                                          "labels folder": labels or None})
        run_file = output / "checkpoints" / "run.json"

        def note() -> str:
            return interrupt_note(output, f"brainsynth train {pairs} -o {output} --resume")

        from brainsynth_cli.launch import process_rank

        rank, world = process_rank()  # the processes of one launch share the folder; another run is refused
        with locked_output(output, command="train", keep=run_file.is_file, shared=world > 1,
                           slot=f"process-{rank}-of-{world}" if world > 1 else None):
            on_interrupt(note)
            with progress_bar("train", unit="step") as progress:
                model = gen.train(options, progress)
        if rank == 0:
            typer.echo(f"model: {model}")
