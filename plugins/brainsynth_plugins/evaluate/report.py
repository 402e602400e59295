"""Writing the evaluation report: metrics.csv, metrics.json, report.md, montage.png, rates.png."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.images import atomic_write_text
from brainsynth_cli.pairs_folder import PairRow
from brainsynth_plugins.evaluate import engine

CSV_COLUMNS = ["row", "subject", "kind", "prompt", "method", "psnr", "ssim", "ms_ssim", "change_error", "structure_error", "structure", "interval",
               "truth_rate", "achieved_rate", "hit", "abs_error", "leak"]

#: How the report names what the text guidance was measured from.
GUIDANCE_FROM = {"empty-prompt": "the empty prompt, as InstructPix2Pix", "input": "the input left unchanged"}


def csv_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        for method, m in r["methods"].items():
            base = {"row": r["row"], "subject": r["subject"], "kind": r["kind"], "prompt": r["prompt"], "method": method,
                    "psnr": m["psnr"], "ssim": m["ssim"], "ms_ssim": m["ms_ssim"], "change_error": m.get("change_error"),
                    "structure_error": m.get("structure_error")}
            if not m["structures"]:
                out.append(base)
            for s, v in m["structures"].items():
                out.append({**base, "structure": s, "interval": v.get("interval", ""), "truth_rate": r["truth"].get(s),
                            "achieved_rate": v["achieved"], "hit": v.get("hit", ""), "abs_error": v.get("abs_error", ""),
                            "leak": v.get("leak", "")})
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{digits}f}")
    return str(x)


def table_lines(summary: dict[str, Any], unit: str = "rows") -> list[str]:
    lines = [f"| method | {unit} | PSNR | SSIM | MS-SSIM | structure change error | intensity change error | ACC (95 % interval) "
             "| MAE (pp) | leak (pp) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, table in summary["methods"].items():
        for group, t in table.items():
            if group == "intervals":
                continue
            lo, hi = t.get("acc_ci", [math.nan, math.nan])
            lines.append(f"| {method} ({group}) | {t['rows']} | {_fmt(t['psnr'], 2)} | {_fmt(t['ssim'])} | {_fmt(t['ms_ssim'])} | "
                         f"{_fmt(t.get('structure_error', math.nan), 2)} | {_fmt(t.get('change_error', math.nan), 2)} | {_fmt(t['acc'], 2)} ({_fmt(lo, 2)}–{_fmt(hi, 2)}, n={t['structure_items']}) | "
                         f"{_fmt(t['mae'], 2)} | {_fmt(t['leak'], 2)} |")
    return lines


def interval_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["| method | structure:interval | n | ACC (95 % interval) | achieved rate, mean (%) | MAE (pp) |", "|---|---|---|---|---|---|"]
    for method, table in summary["methods"].items():
        for k, v in table["intervals"].items():
            lo, hi = v.get("acc_ci", [math.nan, math.nan])
            lines.append(f"| {method} | {k} | {v['n']} | {_fmt(v['acc'], 2)} ({_fmt(lo, 2)}–{_fmt(hi, 2)}) | "
                         f"{_fmt(v.get('achieved', math.nan), 2)} | {_fmt(v['mae'], 2)} |")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    from brainsynth_plugins.evaluate import verdict as vd

    s = summary["settings"]
    fid = summary["fid"]
    first = summary.get("first_screen") or {}
    volumes = s.get("dim") == "3d"
    parts = ["# brainsynth evaluation", ""]
    if first:
        parts += ["## Does the model work?", "", first["headline"], ""]
        parts += [f"- {r}" for r in first["reasons"]] + [""]
        pooled_how = "one volume each" if volumes else "the pair's slices pooled"
        parts += [f"Per pair, over the {first['kinds']} pairs ({pooled_how}):", "", *vd.table_lines(first["table"]), ""]
        if volumes:
            parts += through_plane_lines(summary.get("through_plane") or {})
        if first.get("intervals") and len(first["intervals"]) > 2:
            parts += ["What each prompt asked for and what happened (per pair, means):", "", *first["intervals"], ""]
        if first.get("deformed"):
            parts += ["Pairs whose target is the prior deformed to a known rate (`deformed`), scored apart:", "",
                      *vd.table_lines(first["deformed"]), ""]
        if first.get("untrained"):
            parts += [f"Intervals the model was not trained on (its answer there is a guess): {', '.join(first['untrained'])}.", ""]
    methods_text = (
        "Methods: `model` = the edit; `deform` = the model-free deformation editor (no training) to the middle of the "
        f"requested interval, merged by `{s.get('deform_blender', 'poisson')}`; `identity` = edited image equals the prior; `chance` = the prior plus faint noise (an image "
        "that changes at random: ACC is read against it); `target` = the real target measured as if it were an edit (the "
        "ceiling of the measurement itself). PSNR/SSIM (scikit-image definitions) and MS-SSIM compare with the real target "
        "on [0, 1] normalised slices (data range 1); they reward copying the prior. Structure change error: "
        "sum|M(edit) - M(target)| / sum|M(prior) - M(target)|, M the named structures' partial-volume map the measurement "
        "carries onto an image (0 = the structures end where the real target has them, 1 = where they were). Intensity "
        "change error: sum|(edit - prior) - (target - prior)| / sum|target - prior| over the brain (0 = the target's "
        "change, 1 = no change; dominated by scan-to-scan intensity differences and noise on real and Poisson targets). ACC: the achieved change rate lies in the interval the prompt requests, with its 95 % Wilson interval and "
        "the number of structure changes behind it. MAE: |achieved - target rate| in percentage points, the target rate "
        "from the row's label slices. Leak: |achieved rate| of the structures a disentangled or deformed prompt does not "
        "mention.")
    if volumes:
        methods_text = (methods_text.replace("[0, 1] normalised slices", "[0, 1] windowed volumes (7×7×7 SSIM window)")
                        .replace("the row's label slices", "the pair's label volumes")
                        + " Rates are volume change rates: the segmenter's longitudinal mode labels each image from the prior "
                        "and the prior's labels, and the voxels of each structure are counted. It gives label maps, not "
                        "partial-volume maps, so the structure change error is not computed (n/a).")
    parts += [
        "## How this was measured", "",
        f"- model: `{s['model']}`" if s["model"] is not None else "- model: none (`--baselines-only`)",
        f"- pairs: `{s['pairs']}` (split `{s['split']}`, {summary['rows']} rows)",
        f"- measurement: `{s['measure']}`: {s['measure_help']}",
        (f"- editing: {s['steps']} steps, scheduler {s['scheduler']}, guidance {s['guidance_scale']}, image guidance "
         f"{s['image_guidance_scale']} (text guidance from {GUIDANCE_FROM[s.get('guidance_reference', 'empty-prompt')]}), "
         f"seed {s['seed']}; edit path: {s.get('edit_path', 'n/a')}") if s["model"] is not None else "- editing: none",
        f"- prompts read back with prompt builder `{s['prompt_builder']}`", "",
        ("Baselines only (`--baselines-only`): no model; the rows show the measurement's own error on real targets. "
         if s["model"] is None else "")
        + methods_text, "",
        "## Per volume (one row per pair)" if volumes else "## Per slice (as BrainEditor's Table 1)", "",
        *table_lines(summary), "", "### Per requested interval", "", *interval_lines(summary), "",
        *([] if volumes else pair_section(summary)),
        f"FID: {_fmt(fid['value'], 2) if fid.get('value') is not None else 'not computed: ' + fid['reason']}", "",
        "Pictures: `montage.png` (per requested interval: prior, edit, target, edit − prior, target − prior on one colour "
        "scale, the named structures outlined), `montage-deform.png` (the same for the deform baseline), `rates.png` "
        "(achieved vs target rate; small marks: slices, large marks: pairs).", "",
    ]
    return "\n".join(parts)


def through_plane_lines(table: dict[str, Any]) -> list[str]:
    """The through-plane consistency table of a 3D evaluation (:mod:`.through_plane`)."""
    if not table:
        return []
    lines = [("Through-plane consistency at the named structures' border (within 2 voxels, prior labels): the change map "
             "(image − prior) between neighbouring axial slices, as a ratio to the real target's on the same row (1 = as "
             "smooth as the real change, > 1 rougher, e.g. striped). `ratio`: mean |Δ between slices| / the target's; "
             "`anisotropy ratio`: (through-plane / in-plane roughness) / the target's, which does not depend on how strong "
             "the change is. Means over the rows."), "",
             "| method | rows | ratio | anisotropy ratio | through-plane (per mm) | in-plane (per mm) |", "|---|---|---|---|---|---|"]
    for method, t in table.items():
        lines.append(f"| {method} | {t['rows']} | {_fmt(t['ratio'], 2)} | {_fmt(t['anisotropy_ratio'], 2)} | "
                     f"{_fmt(t['through'], 4)} | {_fmt(t['in_plane'], 4)} |")
    return lines + [""]


def pair_section(summary: dict[str, Any]) -> list[str]:
    pooled = summary.get("pairs")
    if not pooled or not pooled.get("rows"):
        return []
    return [
        "## Per pair (the pair's slices pooled)", "",
        "A prompt describes the change of whole structures, but one slice holds only a cut through them (a few pixels of a "
        "ventricle's top, say), so a slice's own change is noisy and can differ from the pair's. Here pixel counts are summed "
        "over the evaluated slices of each pair (subject, sessions, kind, prompt) before rates are taken: ACC and MAE of the "
        "slab, image metrics averaged over its slices. Per-pair rows are in `metrics-pairs.csv`.", "",
        *table_lines(pooled, "pairs"), "", "### Per requested interval", "", *interval_lines(pooled), "",
    ]


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in csv_rows(results):
        w.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def slice_views(out_dir: Path, rules: Any) -> Any:
    """For :func:`montage`: (prior, edited, target, named-structure outline) of a 2D row's slices."""

    def views(row: PairRow, res: dict[str, Any], method: str) -> tuple[np.ndarray, ...]:
        prior, target = engine.load_slice(row.prior), engine.load_slice(row.target)
        labels = engine.row_labels(row)[0]
        named = [s for s, v in res["methods"].get(method, res["methods"]["identity"])["structures"].items() if "interval" in v]
        outline = np.isin(labels, [i for s in named for i in rules[s].labels])
        if method == "model":
            edited = engine.load_slice(out_dir / "edits" / f"row-{row.number:05d}.png")
        elif method == "deform":
            edited = engine.load_slice(out_dir / "edits" / f"deform-{row.number:05d}.png")
        else:
            edited = prior
        return prior, edited, target, outline

    return views


def montage(path: Path, rows: list[PairRow], results: list[dict[str, Any]], out_dir: Path, method: str = "model",
            rules: Any = None, n: int = 6, views: Any = None) -> bool:
    """One row per (kind, requested interval): the slice of that kind and interval whose named
    structures are largest, with ``method``'s edit. False (nothing written) when no row has one.
    ``views(row, result, method)`` gives the four pictures (default: the 2D row's slices, :func:`slice_views`)."""
    from brainsynth_cli.edit_montage import EditRow, edit_montage
    from brainsynth_cli.structures import default_rules

    rules = rules or default_rules()
    views = views or slice_views(out_dir, rules)
    by_number = {r.number: r for r in rows}
    best: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    for res in results:
        if method not in res["methods"] and method != "identity":
            continue
        named = [s for s, v in res["methods"].get(method, res["methods"]["identity"])["structures"].items() if "interval" in v]
        if not named:
            continue
        key = (res["kind"], res["prompt"])
        size = sum(res["areas"]["prior"].get(s, 0.0) for s in named)
        if key not in best or size > best[key][0]:
            best[key] = (size, res)
    if not best:
        return False
    order = {"real": 0, "disentangled": 1, "deformed": 2}
    chosen = [res for _, res in sorted(best.values(), key=lambda t: (order.get(t[1]["kind"], 3), t[1]["prompt"]))][:n]
    tiles = []
    for res in chosen:
        row = by_number[res["row"]]
        prior, edited, target, outline = views(row, res, method)
        named = [s for s, v in res["methods"].get(method, res["methods"]["identity"])["structures"].items() if "interval" in v]
        truth = ", ".join(f"{s} {res['truth'][s]:+.1f} %" for s in named if s in res["truth"])
        got = ", ".join(f"{res['methods'][method]['structures'][s]['achieved']:+.1f} %" for s in named) if method in res["methods"] else ""
        tiles.append(EditRow(title=res["prompt"], prior=prior, edited=edited, target=target, outline=outline,
                             note=f"{res['kind']} · {res['subject']} · target {truth}; edit measured {got}"))
    title = {"model": "model edits", "deform": "deform baseline (no training)"}.get(method, method)
    edit_montage(path, tiles, title=f"{title}: one slice per prompt (named structures outlined in yellow)")
    return True


def rates_plot(path: Path, results: list[dict[str, Any]], pooled: list[dict[str, Any]] | None = None) -> None:
    from matplotlib.figure import Figure

    from brainsynth_cli.figures.save import save_figure

    fig = Figure(figsize=(5.5, 5), dpi=110)
    ax = fig.subplots()
    markers = {"model": "o", "target": "x"}
    colours = {}
    palette = ["tab:purple", "tab:orange", "tab:green", "tab:blue"]
    lo, hi = 0.0, 1.0
    drawn: set[str] = set()
    for items, size in ((results, 14), (pooled or [], 70)):
        for method in ("model", "target"):
            for r in items:
                if method not in r["methods"]:
                    continue
                for s, v in r["methods"][method]["structures"].items():
                    if "hit" not in v or not math.isfinite(r["truth"].get(s, math.nan)) or not math.isfinite(v["achieved"]):
                        continue
                    c = colours.setdefault(s, palette[len(colours) % len(palette)])
                    x, y = r["truth"][s], v["achieved"]
                    lo, hi = min(lo, x, y), max(hi, x, y)
                    ax.scatter([x], [y], marker=markers[method], color=c, alpha=0.75 if method == "model" else 0.5, s=size)
                    drawn.add(method)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    for s, c in colours.items():
        if "model" in drawn:
            ax.scatter([], [], color=c, marker="o", label=f"{s}: edit")
        ax.scatter([], [], color=c, marker="x", label=f"{s}: real target (measured)")
    ax.set_xlabel("target change rate from labels (%)")
    ax.set_ylabel("achieved change rate, measured (%)")
    ax.set_title("achieved vs requested change")
    if colours:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: write null instead."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_all(out_dir: Path, rows: list[PairRow], results: list[dict[str, Any]], summary: dict[str, Any],
              pooled: list[dict[str, Any]] | None = None, rules: Any = None, views: Any = None) -> None:
    """Every report file (``views``: the montage's pictures of a row, default the 2D slices)."""
    write_csv(out_dir / "metrics.csv", results)
    write_csv(out_dir / "metrics-pairs.csv", pooled or [])
    atomic_write_text(out_dir / "metrics.json", json.dumps(_finite(summary), indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(summary))
    if not montage(out_dir / "montage.png", rows, results, out_dir, "model", rules, views=views):
        montage(out_dir / "montage.png", rows, results, out_dir, "identity", rules, views=views)
    montage(out_dir / "montage-deform.png", rows, results, out_dir, "deform", rules, views=views)
    rates_plot(out_dir / "rates.png", results, pooled)
