"""Evaluation of an editing model on the test rows of a pairs folder (BrainEditor's Table 1).

For each row: edit the prior with the row's prompt through the shared edit path (residual
decoding, restriction to the named structures, blender; :mod:`brainsynth_cli.edit_path`),
compare with the real target (PSNR, SSIM, MS-SSIM on the [0, 1] normalised slices, data range
1), measure the achieved change of each structure with a measurement plugin, and score it:
ACC = the achieved rate lies in the interval the prompt requests; MAE = |achieved - target
rate| in percentage points, where the target rate is computed from the row's label slices;
change errors, 0 for the target's change exactly and 1 for no change (the identity row): the
*intensity* change error sum|(edit - prior) - (target - prior)| / sum|target - prior| over the
brain, and the *structure* change error sum|M(edit) - M(target)| / sum|M(prior) - M(target)|, where
M(image) is the named structures' partial-volume map that the measurement carries onto the image
(where the structure is, not how bright: scan-to-scan intensity differences and noise, which no
edit can or should reproduce, dominate the intensity version on real and Poisson targets). The same is done for the
baselines: ``deform`` (the model-free deformation editor, no training), ``identity`` (edited =
prior), ``chance`` (the prior plus faint noise: an image that changes at random, so ACC reads
against chance) and ``target`` (the real target measured as if it were an edit: the ceiling of
the measurement itself).

Per-row results are appended to ``REPORT_DIR/rows.jsonl`` as they are computed, so an
interrupted evaluation resumes where it stopped (rows computed with other settings are redone).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.pairs_folder import PairRow, PairsFolder
from brainsynth_cli.structures import Rules, change_rate

from brainsynth_plugins.evaluate import metrics

METHODS = ("model", "deform", "identity", "chance", "target")
#: Standard deviation of the ``chance`` row's noise ([0, 1] intensities): invisible, yet it moves
#: every measured size a little, as an edit that does nothing in particular would.
CHANCE_NOISE = 0.005


@dataclass
class EvalSettings:
    split: str = "test"
    measure: str = "registration"
    steps: int = 20
    scheduler: str = "ddim"
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    seed: int = 0
    limit: int | None = None
    residual: bool = True
    restrict: bool = True
    margin_mm: float = 3.0
    blender: str = "poisson"
    baselines: bool = True  # the deform and chance rows
    change_floor: float = 0.0  # the model's edits only (the edit path's soft threshold); the deform row keeps every change
    guidance_reference: str = "empty-prompt"  # what the text guidance is measured from (empty-prompt or input)
    feather: bool = False  # the model's edits only: the change halved in the region's outermost voxel layer
    deform_blender: str = "poisson"  # the deform row's blender: --blender when given (``blender`` may be the model's recommendation)
    record: int = 3  # version of the per-row record in rows.jsonl: rows scored by an older version are redone

    def key(self, model_dir: Path | None) -> str:
        model = str(Path(model_dir).resolve()) if model_dir is not None else None
        text = json.dumps({**asdict(self), "limit": None, "model": model}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_slice(path: Path) -> np.ndarray:
    """A PNG slice as float32 in [0, 1]."""
    from brainsynth_cli.slices import read_slice

    return read_slice(path)


def load_label_slice(path: Path) -> np.ndarray:
    from brainsynth_cli.images import read_png

    return read_png(path)[0].astype(np.int32)


def areas(labels: np.ndarray, rules: Rules) -> dict[str, float]:
    """Size (voxels) of each structure group in a label array."""
    return {s.name: float(np.isin(labels, s.labels).sum()) for s in rules.structures}


def group_sizes(sizes: dict[int, float], rules: Rules) -> dict[str, float]:
    """Sum a measurement's per-label sizes into structure groups."""
    return {s.name: float(sum(sizes.get(lab, 0.0) for lab in s.labels)) for s in rules.structures}


def rates_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: change_rate(before[k], after[k]) for k in before}


def measured_rates(base: dict[str, float], measured: dict[str, float], label_areas: dict[str, float]) -> dict[str, float]:
    """R = (measured(image) - measured(prior)) / labelled prior size x 100.

    The change comes from the measurement (bias common to prior and image cancels), the
    denominator from the prior's labels, which are known exactly.
    """
    return {k: (measured[k] - base[k]) / label_areas[k] * 100.0 if label_areas[k] > 0 else math.nan for k in label_areas}


def to_model_size(img: np.ndarray, size: int) -> np.ndarray:
    """A square slice resized to the model's resolution."""
    from brainsynth_cli.slices import to_square

    return img if img.shape == (size, size) else to_square(img, size)


def from_model_size(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An edited slice resized back to the stored slice's shape."""
    from brainsynth_cli.slices import from_square

    return img if img.shape == shape else from_square(img, shape)


def pixel_spacing(row: PairRow, pairs: PairsFolder, margin_mm: float) -> tuple[float, float]:
    """The row's pixel size in mm (its ``pixel_mm`` column, or the pairs folder's); for folders
    that record none, a spacing that makes the edit path's margin one pixel."""
    value = row.data.get("pixel_mm") or pairs.info.get("pixel_mm")
    try:
        mm = float(value)
    except (TypeError, ValueError):
        mm = math.nan
    if not math.isfinite(mm) or mm <= 0:
        mm = max(float(margin_mm), 1e-3)
    return (mm, mm)


def row_labels(row: PairRow) -> tuple[np.ndarray, np.ndarray]:
    a, b = row.path("input_labels_file_name"), row.path("edited_labels_file_name")
    if a is None or b is None:
        raise InputError(row.root / "metadata.jsonl", f"line {row.number} has no label slices (input_labels_file_name, edited_labels_file_name)",
                         "re-run `brainsynth make-pairs` with this version, which writes them")
    for p in (a, b):
        if not p.is_file():
            raise InputError(p, f"is listed on line {row.number} of metadata.jsonl but missing", "re-run make-pairs")
    return load_label_slice(a), load_label_slice(b)


def change_error_terms(prior: np.ndarray, target: np.ndarray, image: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """(sum|(image - prior) - (target - prior)|, sum|target - prior|) over ``brain``: the change error's
    numerator and denominator, kept apart so pairs can pool them."""
    d_t = np.asarray(target, np.float64)[brain] - np.asarray(prior, np.float64)[brain]
    d_e = np.asarray(image, np.float64)[brain] - np.asarray(prior, np.float64)[brain]
    return float(np.abs(d_e - d_t).sum()), float(np.abs(d_t).sum())


def score_row(row: PairRow, prior: np.ndarray, target: np.ndarray, images: dict[str, np.ndarray | None], prior_labels: np.ndarray,
              target_labels: np.ndarray, requested: dict[str, Any] | None, measure: Any, rules: Rules) -> dict[str, Any]:
    """Image metrics, change error and per-structure rates of each method's image for one row
    (``images``: method -> image; identity and target are added here)."""
    prior_areas = areas(prior_labels, rules)
    target_areas = areas(target_labels, rules)
    truth = rates_between(prior_areas, target_areas)
    base = group_sizes(measure.measure(prior, prior_labels, prior), rules)
    described = sorted(requested) if requested else []
    others = [s.name for s in rules.described() if s.name not in described] if row.kind in ("disentangled", "deformed") else []
    named = described + others
    brain = np.asarray(prior_labels) > 0
    out: dict[str, Any] = {"row": row.number, "subject": row.subject, "sessions": list(row.data.get("sessions") or []), "kind": row.kind,
                           "prompt": row.prompt, "structure": row.data.get("structure"), "truth": {k: truth[k] for k in named},
                           "areas": {"prior": {k: prior_areas[k] for k in named}, "target": {k: target_areas[k] for k in named}},
                           "methods": {}}
    candidates = {**images, "identity": prior, "target": target}
    ids = [i for name in named for i in rules[name].labels]
    with_maps = hasattr(measure, "maps") and bool(ids)

    def group_map(maps: dict[int, np.ndarray]) -> np.ndarray:
        return sum((maps[i] for i in ids if i in maps), np.zeros(np.shape(prior), np.float32))

    target_map = group_map(measure.maps(prior, prior_labels, target)) if with_maps else None
    prior_map = np.isin(prior_labels, ids).astype(np.float32) if with_maps else None
    for method in METHODS:
        image = candidates.get(method)
        if image is None:
            continue
        if with_maps:
            maps = measure.maps(prior, prior_labels, image) if method != "target" else None
            sizes = {lab: float(m.sum(dtype=np.float64)) for lab, m in maps.items()} if maps is not None else None
            if sizes is None:
                sizes = measure.measure(prior, prior_labels, image)
            here = group_map(maps) if maps is not None else target_map
            s_num, s_den = float(np.abs(here - target_map).sum()), float(np.abs(prior_map - target_map).sum())
        else:
            sizes = measure.measure(prior, prior_labels, image)
            s_num = s_den = math.nan
        measured = group_sizes(sizes, rules)
        achieved = measured_rates(base, measured, prior_areas)
        num, den = change_error_terms(prior, target, image, brain)
        m: dict[str, Any] = {
            "psnr": metrics.psnr(target, image, 1.0), "ssim": metrics.ssim(target, image, 1.0),
            "ms_ssim": metrics.ms_ssim(target, image, 1.0), "change_error": num / den if den > 0 else math.nan,
            "change_terms": [num, den], "structure_error": s_num / s_den if s_den > 0 else math.nan,
            "structure_terms": [s_num, s_den], "structures": {},
        }
        for name in named:
            m["structures"][name] = {**scored(achieved[name], truth[name], requested.get(name) if requested else None),
                                     "change": measured[name] - base[name]}
        out["methods"][method] = m
    return out


def scored(achieved: float, truth: float, interval: Any | None) -> dict[str, Any]:
    """One structure's score: against the requested ``interval`` (hit, |error| vs ``truth``), or,
    for a structure the prompt does not mention (None), its leak."""
    if interval is None:
        return {"achieved": achieved, "leak": abs(achieved)}
    return {"achieved": achieved, "interval": interval.name, "hit": bool(interval.contains(achieved)),
            "abs_error": abs(achieved - truth) if not math.isnan(truth) else math.nan}


def pair_results(results: list[dict[str, Any]], parser: Any) -> list[dict[str, Any]]:
    """Per-row results pooled per pair (subject, sessions, kind, structure, prompt): the slab of slices.

    A pair's prompt describes the change of whole structures; one slice holds a few pixels of a
    ventricle's top or a thin cut through it, so its own change is noisy and can differ from the
    pair's. Pooling sums the pixel counts over the pair's slices before taking rates:
    achieved = sum(measured change) / sum(prior size), truth = (sum(target) - sum(prior)) / sum(prior).
    ACC and MAE are then scored as for rows. Image metrics are the means over the pair's rows.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if "areas" not in r:
            continue
        key = (r["subject"], tuple(r.get("sessions") or ()), r["kind"], r.get("structure"), r["prompt"])
        groups.setdefault(key, []).append(r)
    out: list[dict[str, Any]] = []
    for number, (key, rows) in enumerate(groups.items()):
        requested = requested_intervals(parser, key[4]) or {}
        names = list(rows[0]["truth"])
        prior = {s: sum(r["areas"]["prior"][s] for r in rows) for s in names}
        target = {s: sum(r["areas"]["target"][s] for r in rows) for s in names}
        truth = rates_between(prior, target)
        pooled: dict[str, Any] = {"row": number, "subject": key[0], "sessions": list(key[1]), "kind": key[2], "structure": key[3],
                                  "prompt": key[4], "rows": len(rows), "truth": truth, "methods": {}}
        for method in methods_of(rows):
            m = {k: _mean([r["methods"][method][k] for r in rows]) for k in ("psnr", "ssim", "ms_ssim")}
            num = sum(r["methods"][method]["change_terms"][0] for r in rows)
            den = sum(r["methods"][method]["change_terms"][1] for r in rows)
            m["change_error"] = num / den if den > 0 else math.nan
            m["change_terms"] = [num, den]
            s_num = sum(r["methods"][method].get("structure_terms", [math.nan, math.nan])[0] for r in rows)
            s_den = sum(r["methods"][method].get("structure_terms", [math.nan, math.nan])[1] for r in rows)
            m["structure_error"] = s_num / s_den if s_den > 0 else math.nan
            m["structure_terms"] = [s_num, s_den]
            m["structures"] = {}
            for s in names:
                change = sum(r["methods"][method]["structures"][s]["change"] for r in rows)
                achieved = change / prior[s] * 100.0 if prior[s] > 0 else math.nan
                m["structures"][s] = scored(achieved, truth[s], requested.get(s))
            pooled["methods"][method] = m
        out.append(pooled)
    return out


def methods_of(results: list[dict[str, Any]]) -> list[str]:
    """The methods scored in these results, in report order."""
    present = {m for r in results for m in r["methods"]}
    return [m for m in METHODS if m in present]


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]  # inf stays: PSNR of identical images
    return float(np.mean(vals)) if vals else math.nan


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``hits / n`` ((nan, nan) when n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per method, overall / per kind / per requested interval; ACC with its 95 % interval."""
    out: dict[str, Any] = {"rows": len(results), "methods": {}}
    for method in methods_of(results):
        groups: dict[str, list[dict[str, Any]]] = {"all": results}
        for r in results:
            groups.setdefault(f"kind={r['kind']}", []).append(r)
        table: dict[str, Any] = {}
        for gname, rows in groups.items():
            items = [(r, s, v) for r in rows for s, v in r["methods"][method]["structures"].items() if "hit" in v]
            leaks = [v["leak"] for r in rows for v in r["methods"][method]["structures"].values() if "leak" in v]
            hits = sum(bool(v["hit"]) for _, _, v in items)
            table[gname] = {
                "rows": len(rows),
                "psnr": _mean([r["methods"][method]["psnr"] for r in rows]),
                "ssim": _mean([r["methods"][method]["ssim"] for r in rows]),
                "ms_ssim": _mean([r["methods"][method]["ms_ssim"] for r in rows]),
                "change_error": _mean([r["methods"][method].get("change_error", math.nan) for r in rows]),
                "structure_error": _mean([r["methods"][method].get("structure_error", math.nan) for r in rows]),
                "acc": _mean([float(v["hit"]) for _, _, v in items]),
                "acc_ci": list(wilson(hits, len(items))),
                "mae": _mean([v["abs_error"] for _, _, v in items]),
                "structure_items": len(items),
                "leak": _mean(leaks),
            }
        intervals: dict[str, Any] = {}
        for r in results:
            for s, v in r["methods"][method]["structures"].items():
                if "hit" in v:
                    intervals.setdefault(f"{s}:{v['interval']}", []).append(v)
        table["intervals"] = {k: {"n": len(v), "acc": _mean([float(x["hit"]) for x in v]),
                                  "acc_ci": list(wilson(sum(bool(x["hit"]) for x in v), len(v))),
                                  "mae": _mean([x["abs_error"] for x in v]), "achieved": _mean([x["achieved"] for x in v])}
                              for k, v in sorted(intervals.items())}
        out["methods"][method] = table
    return out


def prompt_parser(pairs: PairsFolder, rules: Rules) -> Any:
    from brainsynth_cli.plugin_manager import registry

    name = str(pairs.info.get("prompt_builder", "quantized"))
    return registry("prompt-builder").create(name, rules=rules)


def requested_intervals(parser: Any, prompt: str) -> dict[str, Any] | None:
    try:
        return parser.parse(prompt)
    except UserError:
        return None


def select_rows(pairs: PairsFolder, settings: EvalSettings) -> list[PairRow]:
    rows = list(pairs.rows) if settings.split == "all" else pairs.split(settings.split)
    if not rows:
        splits = sorted({r.split for r in pairs.rows})
        raise InputError(pairs.root / "metadata.jsonl", f"has no rows in split {settings.split!r}", f"choose --split from {', '.join(splits)} or all")
    return rows[: settings.limit] if settings.limit else rows


def read_done(path: Path, key: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
            if rec.get("key") == key:
                done[int(rec["result"]["row"])] = rec["result"]
    return done
