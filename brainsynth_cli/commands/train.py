"""``brainsynth train``: fit a generator (default ``instruct-pix2pix``) on a pairs folder.

Generic: the command checks its inputs, picks the generator and the text encoder from the
registries by name and hands everything to the generator's ``train``. torch and diffusers
are imported by the generator, never here.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from brainsynth_cli.errors import InputError, UserError

#: The most optimiser steps a stage may ask for.
MAX_STEPS = 10_000_000


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
        task: str = typer.Option("edit", "--task", help="edit (prior + prompt -> target) or generate (covariates and/or text -> image)."),
        dim: str = typer.Option("2d", "--dim", help="--task generate: 2d (slices, diffusers) or 3d (volumes, MONAI)."),
        condition: str = typer.Option("both", "--condition", help="--task generate: text, covariates or both."),
        labels: str = typer.Option("", "--labels", help="--task generate on a dataset: label maps folder (default DATASET/derivatives/brainsynth-truth)."),
        preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), base (from scratch, one GPU, 256x256) or sd15 (from --pretrained)."),
        pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Local Stable Diffusion diffusers folder or hub id to start from."),
        text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Text encoder plugin: minilm (default), clip, biomedbert."),
        text_encoder_path: Optional[str] = typer.Option(None, "--text-encoder-path", help="Folder or hub id of the text encoder's weights."),
        stage: str = typer.Option("all", "--stage", help="vae (stage 1), unet (stage 2) or all."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps of each stage (default: the preset's)."),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training pairs instead of --steps."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size per device (both stages)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of stage 2 (stage 1: --set vae_lr=...)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Training resolution in pixels (square)."),
        channels: Optional[int] = typer.Option(None, "--channels", help="Image channels of the model: 1 (grey) or 3 (grey replicated to RGB)."),
        mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision", help="no, fp16 or bf16 (through accelerate)."),
        gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
        ema: bool = typer.Option(False, "--ema", help="Keep an exponential moving average of the UNet weights (saved as the model)."),
        conditioning_dropout: Optional[float] = typer.Option(None, "--conditioning-dropout", help="Probability of dropping the text, the image, and both (each; default 0.05)."),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Write a checkpoint (and validation edits) every N steps."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its latest checkpoint."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random step."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
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
        if mixed_precision is not None and mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"--mixed-precision must be no, fp16 or bf16, got {mixed_precision!r}")
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
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
                   "set": _parse_set(set_), "task": task, "dim": dim, "condition": condition, "labels": labels or None},
        )
        from brainsynth_cli.outputs import locked_output, on_interrupt, refuse_folder_over_input

        refuse_folder_over_input(output, {"pairs folder" if task == "edit" else "dataset": pairs,
                                          "labels folder": labels or None})
        run_file = output / "checkpoints" / "run.json"

        def note() -> str:
            if run_file.is_file():
                return (f"the checkpoints in {output} are kept; resume with `brainsynth train {pairs} -o {output} --resume`")
            return "nothing was kept; run the command again"

        with locked_output(output, command="train", keep=run_file.is_file):
            on_interrupt(note)
            with progress_bar("train") as progress:
                model = gen.train(options, progress)
        typer.echo(f"model: {model}")
