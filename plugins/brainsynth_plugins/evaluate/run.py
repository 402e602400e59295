"""The evaluation loop: edit every selected row, score it, write the report (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError
from brainsynth_cli.interfaces import Progress
from brainsynth_cli.pairs_folder import read_pairs_folder
from brainsynth_cli.structures import default_rules, rules_from_text

from brainsynth_plugins.evaluate import engine, report


def model_generator(model_dir: Path) -> str:
    info = model_dir / "brainsynth.json"
    if not info.is_file():
        raise InputError(model_dir, "has no brainsynth.json", "give a model folder written by `brainsynth train`")
    try:
        return str(json.loads(info.read_text(encoding="utf-8")).get("generator", "instruct-pix2pix"))
    except json.JSONDecodeError as exc:
        raise InputError(info, f"is not valid JSON ({exc.msg})", "re-run the training") from None


def run_evaluation(model_dir: Path | None, pairs_dir: Path, out_dir: Path, settings: engine.EvalSettings, *, device: str = "auto",
                   fid_weights: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    from brainsynth_cli.plugin_manager import registry
    from brainsynth_cli.slices import to_png16
    from brainsynth_cli.images import write_png

    pairs = read_pairs_folder(pairs_dir)
    if pairs.dim != "2d":
        raise InputError(pairs_dir, f"holds {pairs.dim} pairs", "evaluate edits 2D slices: make pairs with --dim 2d")
    rows = engine.select_rows(pairs, settings)
    rules = rules_from_text(pairs.info["rules"], f"{pairs_dir / 'pairs.json'} rules") if pairs.info.get("rules") else default_rules()
    parser = engine.prompt_parser(pairs, rules)
    measure = registry("measure").create(settings.measure)
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise InputError(fid_weights, "FID feature extractor not found", "give a TorchScript file (torch.jit.save) or leave --fid-weights out")
    model = None
    if model_dir is not None:  # None: only the baselines (the measurement's own error on real targets)
        generator = registry("generator").create(model_generator(Path(model_dir)))
        model = generator.load(Path(model_dir), device)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "edits").mkdir(exist_ok=True)
    key = settings.key(model_dir)
    log = out_dir / "rows.jsonl"
    done = engine.read_done(log, key)
    results: list[dict[str, Any]] = []
    with open(log, "a", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            if row.number in done:
                results.append(done[row.number])
                continue
            prior, target = engine.load_slice(row.prior), engine.load_slice(row.target)
            prior_labels, target_labels = engine.row_labels(row)
            requested = engine.requested_intervals(parser, row.prompt)
            edited = None
            if model is not None:
                edited = model.edit([engine.to_model_size(prior, model.resolution)], row.prompt, steps=settings.steps,
                                    scheduler=settings.scheduler, guidance_scale=settings.guidance_scale,
                                    image_guidance_scale=settings.image_guidance_scale, seed=settings.seed + row.number, batch_size=1)[0]
                edited = np.clip(engine.from_model_size(np.asarray(edited, dtype=np.float32), prior.shape), 0, 1)
                write_png(out_dir / "edits" / f"row-{row.number:05d}.png", to_png16(edited))
            result = engine.score_row(row, prior, target, edited, prior_labels, target_labels, requested, measure, rules)
            result["requested_known"] = requested is not None
            fh.write(json.dumps({"key": key, "result": result}) + "\n")
            fh.flush()
            results.append(result)
            if progress is not None:
                progress(i + 1, len(rows), f"row {row.number}")
    summary = engine.summarise(results)
    pairs_pooled = engine.pair_results(results, parser)
    summary["pairs"] = engine.summarise(pairs_pooled)
    summary["settings"] = {**settings.__dict__, "model": str(model_dir) if model_dir is not None else None, "pairs": str(pairs_dir), "device": device,
                           "measure_help": registry("measure").get(settings.measure).help,
                           "prompt_builder": str(pairs.info.get("prompt_builder", "quantized"))}
    summary["fid"] = report.fid(out_dir, rows, fid_weights) if model is not None else {
        "value": None, "reason": "--baselines-only: no edits to compare"}
    report.write_all(out_dir, rows, results, summary, pairs_pooled)
    return summary
