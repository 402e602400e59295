"""``brainsynth edit``: apply a prompt to a NIfTI volume or a PNG slice with a trained model.

Generic: the model folder's ``brainsynth.json`` names its generator, which is picked from the
registry and asked to load the model; the command does the slicing (``brainsynth_cli.slices``,
the convention the model was trained with), checks the prompt against the model's rules, and
writes the edited image on the input grid plus a before/after/difference figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from brainsynth_cli.errors import InputError, UserError

NIFTI = (".nii", ".nii.gz")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    return None


def _norm(text: str) -> str:
    return " ".join(text.lower().replace(",", " , ").split())


def known_phrases(rules: Any, prompts: list[str]) -> list[str]:
    """What a model understands: its training prompts and the interval phrases of its rules."""
    phrases = [iv.phrase for s in rules.described() for iv in s.intervals] if rules is not None else []
    return list(dict.fromkeys([*prompts, *phrases]))


def check_prompt(prompt: str, rules: Any, prompts: list[str], model_dir: Path) -> None:
    """Accept a training prompt, or phrases of the rules joined by "and" / ","; else a one-line error."""
    known = known_phrases(rules, prompts)
    norm_known = {_norm(k) for k in known}
    text = _norm(prompt)
    if not text:
        raise UserError("--prompt is empty; say what to change, e.g. 'mild ventricle enlargement'")
    if text in norm_known:
        return
    parts = [p.strip() for chunk in text.split(" , ") for p in chunk.split(" and ")]
    if parts and all(p in norm_known for p in parts if p):
        return
    raise InputError(model_dir, f"the model does not know the prompt {prompt!r}",
                     f"it knows: {'; '.join(known) or 'nothing'} (or pass --free-prompt to use it anyway)")


def parse_slices(spec: str, depth: int) -> list[int]:
    """``all`` | ``center:N`` (N central slices) | ``A:B`` (A..B-1), canonical axial indices."""
    s = spec.strip().lower()
    if s == "all":
        return list(range(depth))
    head, sep, tail = s.partition(":")
    try:
        if head == "center" and sep:
            n = int(tail)
            if n <= 0:
                raise ValueError
            start = max(0, depth // 2 - n // 2)
            return list(range(start, min(depth, start + n)))
        if sep:
            a, b = int(head), int(tail)
            if not 0 <= a < b <= depth:
                raise UserError(f"--slices {spec}: the volume has axial slices 0..{depth - 1}; give A:B with 0 <= A < B <= {depth}")
            return list(range(a, b))
    except ValueError:
        pass
    raise UserError(f"--slices {spec!r}: use all, center:N or A:B")


def register(app: typer.Typer) -> None:
    @app.command("edit")
    def edit(
        model: Path = typer.Argument(..., help="Model folder written by `brainsynth train`."),
        input: Path = typer.Argument(..., help="NIfTI volume (.nii/.nii.gz) or PNG slice to edit."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What to change, e.g. 'mild ventricle enlargement'."),
        output: Path = typer.Option(..., "-o", "--output", help="Edited image (same type as INPUT)."),
        steps: int = typer.Option(20, "--steps", help="Denoising steps."),
        scheduler: str = typer.Option("ddim", "--scheduler", help="ddim, dpm++ or euler-a."),
        guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Text guidance scale."),
        image_guidance_scale: float = typer.Option(1.5, "--image-guidance-scale", help="Image guidance scale (closeness to INPUT)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise."),
        slices: str = typer.Option("all", "--slices", help="Axial slices of a volume to edit: all, center:N or A:B (empty slices are skipped)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Slices per batch."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
        free_prompt: bool = typer.Option(False, "--free-prompt", help="Use a prompt the model's rules do not describe."),
        figure: Path | None = typer.Option(None, "--figure", help="Before/after/difference PNG (default: OUTPUT name + _before_after.png)."),
    ) -> None:
        """Edit a scan or slice by a text prompt; the output keeps the input's grid, affine and header."""
        from brainsynth_cli.plugin_manager import get_manager
        from brainsynth_cli.progress import progress_bar

        kind = _kind(input)
        if not input.is_file():
            raise InputError(input, "no such file", "check the path")
        if kind is None:
            raise InputError(input, "is neither NIfTI (.nii, .nii.gz) nor PNG", "give a volume or a PNG slice")
        if _kind(output) != kind:
            want = ".nii.gz" if kind == "nifti" else ".png"
            raise InputError(output, f"must be a {want} file like the input", f"name the output *{want}")
        if steps <= 0 or batch_size <= 0:
            raise UserError("--steps and --batch-size must be positive")
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
        info_file = model / "brainsynth.json"
        if not model.is_dir():
            raise InputError(model, "is not a model folder", "give the folder written by `brainsynth train -o MODEL`")
        if not info_file.is_file():
            raise InputError(model, "is missing brainsynth.json", "give a complete model folder written by `brainsynth train`")
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            generator_name = str(info.get("generator", "instruct-pix2pix"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputError(info_file, "is not valid JSON", "re-run the training") from None
        if not free_prompt:  # before anything heavy: the rules and prompts the model was trained with
            from brainsynth_cli.structures import default_rules, rules_from_text

            rules = rules_from_text(info["rules"], f"{info_file} rules") if info.get("rules") else default_rules()
            check_prompt(prompt, rules, [str(p) for p in info.get("prompts", [])], model)
        gen = get_manager().registry("generator").create(generator_name)
        if hasattr(gen, "check"):
            gen.check(model)  # missing parts -> one line, before anything heavy is loaded
        image = _read_input(input, kind)  # bad input -> one line, before loading the model
        loaded = gen.load(model, device)
        res = int(loaded.resolution)
        jobs, place = _prepare(image, kind, res, slices)
        if not jobs:
            raise InputError(input, "has no non-empty slice in the chosen range", "choose other --slices")
        with progress_bar("edit", len(jobs)) as progress:
            edited = loaded.edit(jobs, prompt, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                 image_guidance_scale=image_guidance_scale, seed=seed, batch_size=batch_size, progress=progress)
        output.parent.mkdir(parents=True, exist_ok=True)
        before, after = place(edited, output)
        fig = figure or output.with_name(output.name.split(".")[0] + "_before_after.png")
        _figure(fig, before, after, prompt)
        typer.echo(f"edited: {output} ({len(jobs)} slice{'s' if len(jobs) != 1 else ''})")
        typer.echo(f"figure: {fig}")


def _read_input(path: Path, kind: str) -> Any:
    from brainsynth_cli.images import read_png, read_volume

    if kind == "png":
        return read_png(path)
    return read_volume(path)


def _prepare(image: Any, kind: str, res: int, slices: str) -> tuple[list[Any], Any]:
    """Model-ready [0, 1] squares and a function that puts edited squares back and writes the output."""
    import numpy as np

    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import write_png, write_volume

    if kind == "png":
        arr, bits = image
        top = np.float32(65535 if bits == 16 else 255)
        x = arr.astype(np.float32) / top
        square = np.clip(sl.to_square(x, res), 0, 1) if x.shape != (res, res) else x

        def place_png(edited: list[Any], out: Path) -> tuple[Any, Any]:
            y = edited[0] if x.shape == (res, res) else np.clip(sl.from_square(edited[0], x.shape), 0, 1)
            write_png(out, np.round(y.astype(np.float64) * float(top)).astype(np.uint16 if bits == 16 else np.uint8), bits=bits)
            return x, y

        return [square], place_png

    vol = image
    canon, ornt = sl.to_canonical(vol.data, vol.affine)
    norm = sl.normalisation(canon)
    chosen = [k for k in parse_slices(slices, canon.shape[2]) if np.any(canon[:, :, k] != 0)]
    jobs = [sl.to_square(sl.normalise(canon[:, :, k], norm), res) for k in chosen]

    def place_nifti(edited: list[Any], out: Path) -> tuple[Any, Any]:
        result = canon.astype(np.float32).copy()
        for k, y in zip(chosen, edited):
            result[:, :, k] = sl.denormalise(sl.from_square(y, canon.shape[:2]), norm)
        write_volume(out, sl.from_canonical(result, ornt), vol.affine, vol.header)
        mid = chosen[len(chosen) // 2]
        from brainsynth_cli.figures import display

        return display(sl.normalise(canon[:, :, mid], norm)), display(sl.normalise(result[:, :, mid], norm))

    return jobs, place_nifti


def _figure(path: Path, before: Any, after: Any, prompt: str) -> None:
    from brainsynth_cli.figures import difference_map, save_grid, to_uint8

    scale = max(1, 256 // max(before.shape))
    tiles = [to_uint8(before, 0.0, 1.0), to_uint8(after, 0.0, 1.0), difference_map(before, after)]
    save_grid(path, [tiles], col_titles=["before", "after", "after - before"],
              row_titles=[prompt[:18]], scale=scale)
