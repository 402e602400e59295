"""The evaluation loop: edit every selected row, score it, write the report (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError
from brainsynth_cli.interfaces import Progress
from brainsynth_cli.pairs_folder import read_pairs_folder

from brainsynth_plugins.evaluate import engine, fid, report
from brainsynth_plugins.evaluate import rows as rows_mod


def model_info(model_dir: Path | None) -> dict[str, Any]:
    """The model folder's ``brainsynth.json`` ({} when there is none or it is unreadable: the
    evaluation itself then says what is wrong)."""
    info = None if model_dir is None else Path(model_dir) / "brainsynth.json"
    try:
        data = json.loads(info.read_text(encoding="utf-8")) if info is not None and info.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pairs_dim(pairs_dir: Path | None) -> str:
    """``dim`` of a pairs folder's ``pairs.json`` ("2d" when there is none or it is unreadable: reading
    the folder itself then says what is wrong)."""
    path = None if pairs_dir is None else Path(pairs_dir) / "pairs.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return "2d"
    return str(info.get("dim", "2d")) if isinstance(info, dict) else "2d"


def volume_measure(measure: str, segmenter: str) -> str:
    """``EvalSettings.measure`` for 3D pairs: the segmenter's longitudinal mode (``followup:NAME``);
    a 2D measurement other than the default is refused in one line."""
    from brainsynth_plugins.evaluate.volumes import FOLLOWUP, followup_segmenter

    if measure != "registration":
        raise InputError(None, f"--measure {measure} measures 2D slices; 3D pairs are measured by a segmenter's longitudinal mode",
                         "leave out --measure (give --segmenter NAME, default atlas)")
    followup_segmenter(segmenter)  # before the report folder is made
    return f"{FOLLOWUP}{segmenter}"


def refuse_mismatch(pairs_dir: Path, volumes: bool, model_dims: Any, fid_weights: Path | None) -> None:
    """One-line refusals of what cannot be evaluated together: FID on 3D pairs, a 3D model on 2D pairs."""
    if volumes and fid_weights is not None:
        raise InputError(fid_weights, "FID is computed on 2D slices", "leave out --fid-weights for 3D pairs")
    if not volumes and "3d" in tuple(model_dims or ()):
        raise InputError(Path(pairs_dir) / "pairs.json", "holds 2D pairs (slices) but the model is a 3D model",
                         "evaluate it on 3D pairs: `brainsynth make-pairs DATASET --dim 3d -o PAIRS3D`")


#: The file in a report folder recording the settings its rows were computed with.
SETTINGS_FILE = "evaluate.json"

#: What an evaluation writes into its report folder (``--overwrite`` removes these, nothing else).
REPORT_FILES = (SETTINGS_FILE, "edits", "rows.jsonl", "metrics.csv", "metrics-pairs.csv", "metrics.json", "report.md",
                "montage.png", "montage-deform.png", "rates.png")

#: How each recorded setting is spelled on the command line (for the refusal message).
_OPTION_NAMES = {"model": "MODEL", "pairs": "PAIRS", "split": "--split", "measure": "--measure", "steps": "--steps",
                 "scheduler": "--scheduler", "guidance_scale": "--guidance-scale",
                 "image_guidance_scale": "--image-guidance-scale", "seed": "--seed", "residual": "--residual",
                 "restrict": "--restrict", "margin_mm": "--margin", "blender": "--blender", "baselines": "--baselines",
                 "change_floor": "--change-floor", "guidance_reference": "--guidance-reference", "feather": "--feather",
                 "deform_blender": "--blender"}


def report_settings(model_dir: Path | None, pairs_dir: Path, settings: engine.EvalSettings) -> dict[str, Any]:
    """What a report folder's rows depend on: the model, the pairs and every setting but --limit
    (a longer or shorter run of the same evaluation resumes) and the record version (rows of an
    older version are redone anyway)."""
    return {"model": str(Path(model_dir).resolve()) if model_dir is not None else None, "pairs": str(Path(pairs_dir).resolve()),
            **{k: v for k, v in settings.__dict__.items() if k not in ("limit", "record")}}


def claim_report_folder(out_dir: Path, want: dict[str, Any], *, overwrite: bool) -> None:
    """Make ``out_dir`` this evaluation's report folder (call it with the folder locked).

    A folder whose :data:`SETTINGS_FILE` records other settings is refused in one line naming
    the setting (old -> new), unless ``overwrite``, which first removes the old report's files (:data:`REPORT_FILES`);
    the same settings resume. A folder from before the settings were recorded resumes as before
    (rows computed with other settings are redone)."""
    import shutil

    path = out_dir / SETTINGS_FILE
    if overwrite:  # only what an evaluation writes: -o may name a folder that holds other files too
        for name in REPORT_FILES:
            child = out_dir / name
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.exists() or child.is_symlink():
                child.unlink()
    elif path.is_file():
        try:
            have = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if not isinstance(have, dict):
            raise InputError(path, "is not a readable evaluate settings file", "use another -o or pass --overwrite")
        # a setting added since the folder was written reads as its default (what that evaluation used)
        have = {**{k: v for k, v in engine.EvalSettings().__dict__.items() if k not in have}, **have}
        changed = [f"{_OPTION_NAMES.get(k, k)} {have.get(k)!r} -> {v!r}" for k, v in want.items() if have.get(k) != v]
        if changed:
            raise InputError(out_dir, f"holds a report made with other settings ({', '.join(changed)})",
                             "use another -o or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_generator(model_dir: Path) -> str:
    info = model_dir / "brainsynth.json"
    if not info.is_file():
        raise InputError(model_dir, "has no brainsynth.json", "give a model folder written by `brainsynth train`")
    try:
        return str(json.loads(info.read_text(encoding="utf-8")).get("generator", "instruct-pix2pix"))
    except json.JSONDecodeError as exc:
        raise InputError(info, f"is not valid JSON ({exc.msg})", "re-run the training") from None


def first_screen(pooled: list[dict[str, Any]], model_info: dict[str, Any], structure_maps: bool = True) -> dict[str, Any]:
    """The verdict, its reasons and the per-pair table of the measured pairs; deformed pairs apart
    (``structure_maps``: whether the measurement gives the structure change error's maps)."""
    from brainsynth_plugins.evaluate import verdict

    table = verdict.pooled_table(pooled, verdict.MEASURED_KINDS)
    intervals = verdict.interval_rows(pooled, verdict.MEASURED_KINDS)
    head, reasons = verdict.verdict(table, model_info.get("vae_reconstruction"), intervals if "model" in table else None,
                                    structure_maps=structure_maps)
    trained = model_info.get("intervals")
    untrained = sorted({f"{s} {v['interval']}" for p in pooled for m in p["methods"].values() for s, v in m["structures"].items()
                        if "interval" in v and isinstance(trained, dict) and v["interval"] not in trained.get(s, [])})
    deformed = verdict.pooled_table(pooled, ("deformed",))
    return {"headline": head, "reasons": reasons, "table": table, "kinds": " and ".join(verdict.MEASURED_KINDS),
            "deformed": deformed, "untrained": untrained, "intervals": verdict.interval_table(intervals)}


def run_evaluation(model_dir: Path | None, pairs_dir: Path, out_dir: Path, settings: engine.EvalSettings, *, device: str = "auto",
                   fid_weights: Path | None = None, progress: Progress | None = None, jobs: int = 1) -> dict[str, Any]:
    """Edit and score every selected row (``jobs`` worker processes score rows while this one
    edits; the numbers do not depend on it), then write the report."""
    from brainsynth_cli.images import write_png
    from brainsynth_cli.plugin_manager import registry
    from brainsynth_cli.slices import to_png16

    pairs = read_pairs_folder(pairs_dir)
    if pairs.dim not in ("2d", "3d"):
        raise InputError(pairs_dir / "pairs.json", f"records dim {pairs.dim!r}", "make pairs with --dim 2d or --dim 3d")
    volumes = pairs.dim == "3d"
    rows = engine.select_rows(pairs, settings)
    if volumes:
        from brainsynth_plugins.evaluate import volumes as vol

        ctx: Any = vol.VolumeContext.build(pairs_dir, settings, out_dir, device, pairs=pairs)
    else:
        ctx = rows_mod.RowContext.build(pairs_dir, settings, out_dir, device, pairs=pairs)
    rules, parser, path_settings = ctx.rules, ctx.parser, ctx.path_settings
    refuse_mismatch(pairs_dir, volumes, (), fid_weights)
    fid_net = fid.load_extractor(Path(fid_weights)) if fid_weights is not None else None  # a bad file fails now, not after the edits
    model = None
    model_info: dict[str, Any] = {}
    if model_dir is not None:  # None: only the baselines (the measurement's own error on real targets)
        generator = registry("generator").create(model_generator(Path(model_dir)))
        model = generator.load(Path(model_dir), device)
        refuse_mismatch(pairs_dir, volumes, getattr(model, "dims", ("2d",)), None)
        model_info = dict(getattr(model, "info", {}) or {})
        check = getattr(model, "check_sampling", None)  # guidance the model never learned: refused before any output
        if check is not None:
            check(guidance_scale=settings.guidance_scale, image_guidance_scale=settings.image_guidance_scale,
                  guidance_reference=settings.guidance_reference)
        if jobs > 1:  # the workers take the other cores; this process's edits run on one thread
            import torch

            torch.set_num_threads(1)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "edits").mkdir(exist_ok=True)
    key = settings.key(model_dir)
    log = out_dir / "rows.jsonl"
    done = engine.read_done(log, key)
    results: list[dict[str, Any]] = []
    with open(log, "a", encoding="utf-8") as fh:
        def finished(row: Any, result: dict[str, Any]) -> None:
            if row.number not in done:
                fh.write(json.dumps({"key": key, "result": result}) + "\n")
                fh.flush()
            results.append(result)
            if progress is not None:
                progress(len(results), len(rows), f"row {row.number}")

        scoring = {"score_fn": vol.score, "build": vol.VolumeContext.build} if volumes else {}
        with rows_mod.Scorer(ctx, pairs_dir, jobs, finished, **scoring) as scorer:
            for row in rows:
                if row.number in done:
                    scorer.submit(row, None, done=done[row.number])
                    continue
                edited = x = None
                if model is not None and volumes:
                    x = ctx.inputs(row)
                    options = {"steps": settings.steps, "scheduler": settings.scheduler, "guidance_scale": settings.guidance_scale,
                               "image_guidance_scale": settings.image_guidance_scale, "seed": settings.seed + row.number,
                               "batch_size": 4, "residual": settings.residual, "guidance_reference": settings.guidance_reference}
                    edited = vol.model_edit(ctx, model, model_info, row, x, options)
                    vol.write_edit(out_dir / "edits" / f"row-{row.number:05d}.nii.gz", edited, row)
                elif model is not None:
                    x = ctx.inputs(row)
                    square = engine.to_model_size(x.prior, model.resolution)
                    out = model.edit([square], row.prompt, steps=settings.steps, scheduler=settings.scheduler,
                                     guidance_scale=settings.guidance_scale, image_guidance_scale=settings.image_guidance_scale,
                                     seed=settings.seed + row.number, batch_size=1, residual=settings.residual,
                                     guidance_reference=settings.guidance_reference)[0]
                    change = engine.from_model_size(np.asarray(out, dtype=np.float32) - square, x.prior.shape)
                    edited = rows_mod.edited_slice(x.prior, change, x.prior_labels, x.structures, x.spacing, path_settings)
                    write_png(out_dir / "edits" / f"row-{row.number:05d}.png", to_png16(edited))
                scorer.submit(row, edited, inputs=x)
            scorer.finish()
    summary = engine.summarise(results)
    pairs_pooled = engine.pair_results(results, parser)
    summary["pairs"] = engine.summarise(pairs_pooled)
    if volumes:
        measure_help = (f"the `{vol.segmenter_name(settings.measure)}` segmenter's longitudinal mode (segment_followup: each "
                        f"image labelled from the prior and its labels; voxels counted): "
                        + registry("segmenter").get(vol.segmenter_name(settings.measure)).help)
    else:
        measure_help = registry("measure").get(settings.measure).help
    summary["settings"] = {**settings.__dict__, "model": str(model_dir) if model_dir is not None else None, "pairs": str(pairs_dir), "device": device,
                           "edit_path": path_settings.describe(), "vae_reconstruction": model_info.get("vae_reconstruction"),
                           "trained_intervals": model_info.get("intervals"),
                           "measure_help": measure_help,
                           "prompt_builder": str(pairs.info.get("prompt_builder", "quantized"))}
    if volumes:
        from brainsynth_plugins.evaluate import through_plane

        summary["settings"]["dim"] = "3d"
        summary["settings"]["model_dims"] = list(getattr(model, "dims", ("2d",))) if model is not None else None
        summary["through_plane"] = through_plane.summarise(results)
        summary["fid"] = {"value": None, "reason": "3D volumes: FID is defined on 2D images"}
    else:
        summary["fid"] = fid.fid(out_dir, rows, fid_weights, fid_net) if model is not None else {
            "value": None, "reason": "--baselines-only: no edits to compare"}
    summary["first_screen"] = first_screen(pairs_pooled, model_info, structure_maps=not volumes)
    report.write_all(out_dir, rows, results, summary, pairs_pooled, rules, views=vol.montage_views(out_dir, rules) if volumes else None)
    return summary
