"""``brainsynth edit``: apply a prompt to a NIfTI volume or a PNG slice.

Generic over generators: MODEL is a model folder (its ``brainsynth.json`` names the generator,
which the registry loads) or the name of a generator that needs no training (``deform``). The
command checks the prompt against what the model was trained on, finds the labels of the
structures the prompt names (``--labels`` or a segmenter), gives the model its view of the input
(axial slices at its resolution, or the whole volume), and puts the predicted change into the
input through the shared edit path (:mod:`brainsynth_cli.edit_path`): residual decoding,
restriction to the named structures plus a margin, a blender. Outside that region the output
is the input, bit for bit. Writes the output, a JSON sidecar saying how it was made, and a
before/after figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer

from brainsynth_cli.errors import InputError, UserError


def _norm(text: str) -> str:
    return " ".join(text.lower().replace(",", " , ").split())


def known_prompts(info: dict[str, Any], rules: Any) -> str:
    """What a model knows, in words: its trained intervals per structure, else its prompts."""
    intervals = info.get("intervals")
    if isinstance(intervals, dict) and intervals:
        phrases = []
        for s in rules.described():
            for iv in s.intervals:
                if iv.name in intervals.get(s.name, []):
                    phrases.append(f"'{iv.phrase}'")
        return ", ".join(phrases) + " (alone or joined by 'and')"
    return "; ".join(info.get("prompts", [])) or "nothing"


def check_prompt(prompt: str, info: dict[str, Any], rules: Any, parser: Any, where: Path | str) -> None:
    """Accept a prompt whose every requested interval the model was trained on (or, for a model
    without that record, one of its training prompts or phrases of its rules); else a one-line
    error listing what it knows."""
    text = _norm(prompt)
    if not text:
        raise UserError("--prompt is empty; say what to change, e.g. 'mild ventricle enlargement'")
    trained = info.get("intervals")
    try:
        requested = parser.parse(prompt)
    except UserError:
        requested = None
    fix = f"it knows {known_prompts(info, rules)} (or pass --free-prompt to use it anyway)"
    if isinstance(trained, dict):
        if requested is None:
            if text in {_norm(p) for p in info.get("prompts", [])}:
                return
            raise InputError(where, f"the model cannot read the prompt {prompt!r}", fix)
        missing = [f"{s} {iv.name}" for s, iv in requested.items() if iv.name not in trained.get(s, [])]
        if missing:
            raise InputError(where, f"the model was not trained on {', '.join(missing)} (prompt {prompt!r})", fix)
        return
    known = {_norm(p) for p in info.get("prompts", [])} | {_norm(iv.phrase) for s in rules.described() for iv in s.intervals}
    parts = [p.strip() for chunk in text.split(" , ") for p in chunk.split(" and ")]
    if text in known or (parts and all(p in known for p in parts if p)):
        return
    raise InputError(where, f"the model does not know the prompt {prompt!r}", fix)


def _resolve_model(model: str) -> tuple[Path | None, str, dict[str, Any]]:
    """(model folder or None, generator name, brainsynth.json) for MODEL."""
    from brainsynth_cli.plugin_manager import registry

    path = Path(model)
    if path.is_dir():
        info_file = path / "brainsynth.json"
        if not info_file.is_file():
            raise InputError(path, "is missing brainsynth.json", "give a complete model folder written by `brainsynth train`")
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError
            return path, str(info.get("generator", "instruct-pix2pix")), info
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise InputError(info_file, "is not valid JSON", "re-run the training") from None
    gens = registry("generator")
    if model in gens:
        gen = gens.create(model)
        if getattr(gen, "needs_training", True) is False:
            return None, model, {}
        raise InputError(path, f"is the name of generator {model!r}, which needs a trained model folder",
                         f"train one with `brainsynth train PAIRS --generator {model} -o MODEL` and give MODEL")
    free = [n for n in gens.names() if getattr(gens.create(n), "needs_training", True) is False] if len(gens) else []
    raise InputError(path, "is not a model folder", "give the folder written by `brainsynth train -o MODEL`"
                     + (f", or a generator that needs no training ({', '.join(free)})" if free else ""))


def register(app: typer.Typer) -> None:
    @app.command("edit")
    def edit(
        model: str = typer.Argument(..., help="Model folder written by `brainsynth train`, or a generator that needs no training (deform)."),
        input: Path = typer.Argument(..., help="NIfTI volume (.nii/.nii.gz) or PNG slice to edit."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What to change, e.g. 'mild ventricle enlargement'."),
        output: Path = typer.Option(..., "-o", "--output", help="Edited image (same type as INPUT); a JSON sidecar is written beside it."),
        labels: Path | None = typer.Option(None, "--labels", help="Label map of INPUT (aseg ids, same grid); default: --segmenter on a volume, the make-pairs label slice beside a PNG."),
        segmenter: str = typer.Option("atlas", "--segmenter", help="Segmenter that labels a NIfTI input when --labels is not given (see `brainsynth plugins`)."),
        restrict: bool = typer.Option(True, "--restrict/--no-restrict", help="Keep the change inside the structures the prompt names, dilated by --margin."),
        margin: float = typer.Option(3.0, "--margin", help="Margin around the named structures, mm."),
        blender: str | None = typer.Option(None, "--blender", help="How the change is merged into the input inside the region (see `brainsynth plugins`; default: the model's, else poisson)."),
        residual: bool = typer.Option(True, "--residual/--no-residual", help="Decode the change and add it to the input (a latent model's autoencoder then touches nothing else)."),
        steps: int | None = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation, else 20)."),
        scheduler: Literal["ddim", "dpm++", "euler-a"] | None = typer.Option(None, "--scheduler", help="ddim, dpm++ or euler-a (default: the model's, else ddim)."),
        guidance_scale: float | None = typer.Option(None, "--guidance-scale", help="Text guidance scale (default: the model's, else 7.5)."),
        image_guidance_scale: float | None = typer.Option(None, "--image-guidance-scale", help="Image guidance scale, closeness to INPUT (default: the model's, else 1.5)."),
        guidance_reference: Literal["empty-prompt", "input"] | None = typer.Option(None, "--guidance-reference", help="What the text guidance is measured from: empty-prompt (InstructPix2Pix) or input (the input unchanged: the guidance scales the prompt's own change; default: the model's, else empty-prompt)."),
        change_floor: float | None = typer.Option(None, "--change-floor", help="Drop changes smaller than this fraction of the intensity window (soft threshold; default: the model's, else 0)."),
        feather: bool | None = typer.Option(None, "--feather/--no-feather", help="Halve the change in the region's outermost voxel layer, where the blender joins it to the input (default: the model's, else off)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise."),
        slices: str = typer.Option("all", "--slices", help="2D models: axial slices of a volume to edit: all, center:N or A:B (empty slices are skipped)."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="2D models: slices per batch (default 4). A 3D model edits the whole volume in one pass and refuses it."),
        pixel_size: float | None = typer.Option(None, "--pixel-size", help="PNG input: pixel size in mm for --margin (default: the model's training slices', else 1)."),
        device: Literal["auto", "cpu", "cuda", "mps"] = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
        free_prompt: bool = typer.Option(False, "--free-prompt", help="Use a prompt the model was not trained on."),
        figure: Path | None = typer.Option(None, "--figure", help="Before/after/difference PNG (default: OUTPUT name + _before_after.png)."),
    ) -> None:
        """Edit a scan or slice by a text prompt; the output keeps the input's grid, affine and header,
        and equals the input outside the named structures (plus --margin)."""
        import dataclasses

        import numpy as np

        from brainsynth_cli import __version__, edit_io
        from brainsynth_cli import edit_path as ep
        from brainsynth_cli.limits import check_number, check_seed
        from brainsynth_cli.outputs import check_writable, on_interrupt, refuse_overwriting_inputs, staged_outputs
        from brainsynth_cli.plugin_manager import registry
        from brainsynth_cli.progress import progress_bar
        from brainsynth_cli.sampling import resolve as resolve_sampling
        from brainsynth_cli.structures import default_rules, rules_from_text

        kind = edit_io.kind_of(input)
        if not input.is_file():
            raise InputError(input, "no such file", "check the path")
        if kind is None:
            raise InputError(input, "is neither NIfTI (.nii, .nii.gz) nor PNG", "give a volume or a PNG slice")
        if edit_io.kind_of(output) != kind:
            want = ".nii.gz" if kind == "nifti" else ".png"
            raise InputError(output, f"must be a {want} file like the input", f"name the output *{want}")
        if steps is not None:
            check_number("--steps", steps, low=1, high=1000, integer=True)
        if batch_size is not None:
            check_number("--batch-size", batch_size, low=1, high=1024, integer=True)
        if guidance_scale is not None:
            check_number("--guidance-scale", guidance_scale, low=0, high=100)
        if image_guidance_scale is not None:
            check_number("--image-guidance-scale", image_guidance_scale, low=0, high=100)
        check_seed(seed)
        if pixel_size is not None:
            check_number("--pixel-size", pixel_size, low=1e-3, high=20)
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
        settings = ep.EditSettings(residual=residual, restrict=restrict, margin_mm=float(margin), blender=blender or ep.DEFAULT_BLENDER,
                                   change_floor=float(change_floor or 0.0))
        settings.check()
        fig = figure or output.with_name(output.name.split(".")[0] + "_before_after.png")
        sidecar = edit_io.sidecar_path(output)
        if labels is not None and not labels.is_file():
            raise InputError(labels, "no such file", "check the path given to --labels")
        if not fig.name.lower().endswith(".png"):
            raise InputError(fig, "the figure must end in .png", "rename it")
        refuse_overwriting_inputs([output, fig, sidecar], [input] + ([labels] if labels is not None else []))
        check_writable([output, fig, sidecar])
        on_interrupt("nothing was written (the edited image, its sidecar and the figure are written together at the end); "
                     "run the command again")

        model_dir, generator_name, info = _resolve_model(model)
        if batch_size is not None and "3d" in (info.get("dims") or []):
            raise UserError(f"--batch-size counts the slices a 2D model edits at once; {model_dir} is a 3D model that "
                            "edits the whole volume in one pass: leave out --batch-size")
        rules = rules_from_text(info["rules"], f"{model_dir}/brainsynth.json rules") if info.get("rules") else default_rules()
        builder = str((info.get("pairs") or {}).get("prompt_builder", "quantized"))
        parser = registry("prompt-builder").create(builder, rules=rules)
        if not free_prompt and model_dir is not None:
            check_prompt(prompt, info, rules, parser, model_dir)
        structures = ep.named_structures(prompt, rules, builder)
        gen = registry("generator").create(generator_name)
        if model_dir is not None and hasattr(gen, "check"):
            gen.check(model_dir)  # missing parts -> one line, before anything heavy is loaded
        needs_labels = bool(getattr(gen, "needs_labels", False))
        if restrict and not structures:
            raise UserError(f"the prompt {prompt!r} names no structure of the rules, so the edit cannot be restricted to one; "
                            "use a prompt such as 'mild ventricle enlargement', or --no-restrict")
        canvas = edit_io.read_canvas(input, kind, pixel_size or float(info.get("pixel_mm") or 1.0))
        label_source = None
        if restrict or needs_labels:
            if labels is not None:
                canvas.labels = edit_io.read_canvas_labels(canvas, labels)
                label_source = str(labels)
            elif kind == "png":
                sibling = edit_io.png_label_sibling(input)
                if sibling is None:
                    raise InputError(input, "has no label slice beside it (X_z045.png -> X_dseg_z045.png)",
                                     "give --labels LABELS.png (aseg ids, same size), or --no-restrict")
                canvas.labels = edit_io.read_canvas_labels(canvas, sibling)
                label_source = str(sibling)
            else:
                with progress_bar(f"segment ({segmenter})") as progress:
                    canvas.labels = edit_io.segment_canvas(canvas, segmenter, progress)
                label_source = f"segmenter {segmenter}"
            present = [s.name for s in structures if np.isin(canvas.labels, s.labels).any()]
            if restrict and not present:
                raise InputError(labels or input, f"has no voxel of {', '.join(s.name for s in structures)} in its labels",
                                 "check the label map (aseg ids), or --no-restrict")

        loaded = gen.load(model_dir, device)
        dims = tuple(getattr(loaded, "dims", ("2d",)))
        if "2d" not in dims and kind == "png":
            raise InputError(input, "is a 2D slice but the model edits whole 3D volumes", "give a NIfTI volume (.nii, .nii.gz)")
        resolution = getattr(loaded, "resolution", None)
        convention = str((info.get("intensity_normalisation") or {}).get("slice_convention") or "brainsynth_cli.slices v1")
        sampling, sampling_from = resolve_sampling(info, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale,
                                                   image_guidance_scale=image_guidance_scale, change_floor=change_floor,
                                                   guidance_reference=guidance_reference, feather=feather, blender=blender)
        settings = dataclasses.replace(settings, change_floor=float(sampling.pop("change_floor")), feather=bool(sampling.pop("feather")),
                                       blender=str(sampling.pop("blender")))
        settings.check()
        volume_edit = kind == "nifti" and "3d" in dims
        options = dict(**sampling, seed=seed, residual=residual, **({} if volume_edit else {"batch_size": batch_size or 4}))
        within = None
        if volume_edit:
            with progress_bar("edit (volume)", 1) as progress:
                edit_io.edit_whole_volume(loaded, canvas, prompt, options, progress)
            edited_slices = canvas.data.shape[2]
        else:
            jobs = edit_io.slice_jobs(canvas, int(resolution) if resolution else None, edit_io.chosen_slices(canvas, slices), convention)
            if not jobs.squares:
                raise InputError(input, "has no non-empty slice in the chosen range", "choose other --slices")
            with progress_bar("edit", len(jobs.squares)) as progress:
                within = edit_io.edit_slice_by_slice(loaded, canvas, jobs, prompt, options, progress)
            edited_slices = len(jobs.squares)
        result, mask = ep.apply(canvas.data, canvas.change, canvas.labels, structures, canvas.spacing, settings, within,
                                edit_io.intensity_window(canvas))
        kept = ep.change_kept(canvas.data, canvas.change, result, canvas.labels, structures, canvas.spacing) if mask is not None else None

        record = {
            "brainsynth": __version__, "input": str(input), "output": str(output), "model": str(model_dir) if model_dir else None,
            "generator": generator_name, "prompt": prompt, "free_prompt": free_prompt,
            "structures": [s.name for s in structures], "labels": label_source,
            "edit_path": {**settings.as_dict(), "region_voxels": int(mask.sum()) if mask is not None else None,
                          "change_kept": round(kept, 4) if kept is not None else None,
                          "description": settings.describe()},
            "sampling": {k: v for k, v in options.items() if k != "residual"}, "sampling_from": sampling_from, "edited_slices": edited_slices,
            "slice_convention": convention if "3d" not in dims or kind == "png" else None,
        }
        with staged_outputs([output, sidecar, fig]) as staged:  # all three or none
            edit_io.write_output(canvas, result, staged[output])
            edit_io.write_sidecar(staged[sidecar], record)
            _figure(staged[fig], canvas, result, mask, prompt, settings)
        typer.echo(f"edited: {output} ({settings.describe()})")
        if kept is not None:  # how much of the model's change the merge left where the anatomy moves
            typer.echo(f"kept: {kept:.0%} of the model's change at the named structures (their voxels and the "
                       f"{ep.MIN_MARGIN_VOXELS} around them; low: the change reaches past --margin and the merge took it back)")
        typer.echo(f"metadata: {sidecar}")
        typer.echo(f"figure: {fig}")


def _figure(path: Path, canvas: Any, result: Any, mask: Any, prompt: str, settings: Any) -> None:
    """Before/after/difference of the slice the edit changed most, the region outlined."""
    import numpy as np

    from brainsynth_cli import slices as sl
    from brainsynth_cli.edit_montage import EditRow, edit_montage

    before, after = canvas.data, np.asarray(result, np.float32)
    if canvas.kind == "png":
        rows = [EditRow(prompt, before, after, outline=mask)]
    else:
        norm = canvas.meta["norm"]
        k = int(np.argmax(np.abs(after - before).sum(axis=(0, 1))))
        if mask is not None and mask.any():
            k = int(np.argmax(mask.sum(axis=(0, 1))))
        rows = [EditRow(prompt, sl.to_view(sl.normalise(before[:, :, k], norm)), sl.to_view(sl.normalise(after[:, :, k], norm)),
                        outline=None if mask is None else sl.to_view(mask[:, :, k]), note=f"axial slice {k}")]
    edit_montage(path, rows, title=settings.describe())
