"""Writing the evaluation report: metrics.csv, metrics.json, report.md, montage.png, rates.png."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.images import atomic_output, atomic_write_text
from brainsynth_cli.pairs_folder import PairRow

from brainsynth_plugins.evaluate import engine

CSV_COLUMNS = ["row", "subject", "kind", "prompt", "method", "psnr", "ssim", "ms_ssim", "structure", "interval", "truth_rate",
               "achieved_rate", "hit", "abs_error", "leak"]


def csv_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        for method, m in r["methods"].items():
            base = {"row": r["row"], "subject": r["subject"], "kind": r["kind"], "prompt": r["prompt"], "method": method,
                    "psnr": m["psnr"], "ssim": m["ssim"], "ms_ssim": m["ms_ssim"]}
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
    lines = [f"| method | {unit} | PSNR | SSIM | MS-SSIM | ACC | MAE (pp) | leak (pp) |", "|---|---|---|---|---|---|---|---|"]
    for method, table in summary["methods"].items():
        for group, t in table.items():
            if group == "intervals":
                continue
            lines.append(f"| {method} ({group}) | {t['rows']} | {_fmt(t['psnr'], 2)} | {_fmt(t['ssim'])} | {_fmt(t['ms_ssim'])} | "
                         f"{_fmt(t['acc'], 2)} | {_fmt(t['mae'], 2)} | {_fmt(t['leak'], 2)} |")
    return lines


def interval_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["| method | structure:interval | n | ACC | MAE (pp) |", "|---|---|---|---|---|"]
    for method, table in summary["methods"].items():
        for k, v in table["intervals"].items():
            lines.append(f"| {method} | {k} | {v['n']} | {_fmt(v['acc'], 2)} | {_fmt(v['mae'], 2)} |")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    fid = summary["fid"]
    parts = [
        "# brainsynth evaluation", "",
        f"- model: `{s['model']}`" if s["model"] is not None else "- model: none (`--baselines-only`)",
        f"- pairs: `{s['pairs']}` (split `{s['split']}`, {summary['rows']} rows)",
        f"- measurement: `{s['measure']}`: {s['measure_help']}",
        (f"- editing: {s['steps']} steps, scheduler {s['scheduler']}, guidance {s['guidance_scale']}, image guidance "
         f"{s['image_guidance_scale']}, seed {s['seed']}") if s["model"] is not None else "- editing: none",
        f"- prompts read back with prompt builder `{s['prompt_builder']}`", "",
        ("Baselines only (`--baselines-only`): no model; the rows show the measurement's own error on real targets. "
         if s["model"] is None else "")
        + "Methods: `model` = the edit; `identity` = edited image equals the prior (a floor); `target` = the real target "
        "measured as if it were an edit (the ceiling of the measurement itself). PSNR/SSIM (scikit-image definitions) and "
        "MS-SSIM compare with the real target on [0, 1] normalised slices (data range 1). ACC: the achieved change rate "
        "lies in the interval the prompt requests. MAE: |achieved - target rate| in percentage points, the target rate "
        "from the row's label slices. Leak: |achieved rate| of the structures a disentangled prompt does not mention.", "",
        "## Per slice (as BrainEditor's Table 1)", "",
        *table_lines(summary), "", "### Per requested interval", "", *interval_lines(summary), "",
        *pair_section(summary),
        f"FID: {_fmt(fid['value'], 2) if fid.get('value') is not None else 'not computed: ' + fid['reason']}", "",
        "Pictures: `montage.png` (prior, edited, target, edited - prior, target - prior; without a model: prior, target, "
        "target - prior), `rates.png` (achieved vs target rate; "
        "small marks: slices, large marks: pairs).", "",
    ]
    return "\n".join(parts)


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


def montage(path: Path, rows: list[PairRow], results: list[dict[str, Any]], out_dir: Path, n: int = 4) -> None:
    from brainsynth_cli.figures import difference_map, display, save_grid

    by_number = {r.number: r for r in rows}
    chosen = [r for r in results if r["kind"] == "real"][: n // 2] + [r for r in results if r["kind"] == "disentangled"][: n - n // 2]
    chosen = chosen or results[:n]
    edits = bool(results) and "model" in results[0]["methods"]
    tiles, titles = [], []
    for res in chosen:
        row = by_number[res["row"]]
        prior, target = engine.load_slice(row.prior), engine.load_slice(row.target)
        lim = max(float(np.abs(target - prior).max()), 1e-3)
        if edits:
            edited = engine.load_slice(out_dir / "edits" / f"row-{row.number:05d}.png")
            tiles.append([display(prior), display(edited), display(target),
                          display(difference_map(prior, edited, lim)), display(difference_map(prior, target, lim))])
        else:
            tiles.append([display(prior), display(target), display(difference_map(prior, target, lim))])
        titles.append(res["prompt"][:18])
    columns = ["prior", "edited", "target", "edited-prior", "target-prior"] if edits else ["prior", "target", "target-prior"]
    save_grid(path, tiles, row_titles=titles, col_titles=columns, scale=2)


def rates_plot(path: Path, results: list[dict[str, Any]], pooled: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
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
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def fid(out_dir: Path, rows: list[PairRow], weights: Path | None) -> dict[str, Any]:
    """Frechet distance between features of real targets and of edits, with a TorchScript extractor."""
    if weights is None:
        return {"value": None, "reason": "no feature-extractor weights given (--fid-weights PATH to a TorchScript model, "
                "e.g. Inception-v3 pool features); none can be downloaded here"}
    import torch
    from scipy import linalg

    net = torch.jit.load(str(weights), map_location="cpu").eval()

    def feats(paths: list[Path]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for p in paths:
                x = torch.from_numpy(engine.load_slice(p))[None, None].repeat(1, 3, 1, 1)
                out.append(net(x).reshape(1, -1).double().numpy())
        return np.concatenate(out)

    real = feats([r.target for r in rows])
    fake = feats([out_dir / "edits" / f"row-{r.number:05d}.png" for r in rows])
    if len(rows) < 2:
        return {"value": None, "reason": "FID needs at least 2 rows"}
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean, _ = linalg.sqrtm(np.atleast_2d(s1) @ np.atleast_2d(s2), disp=False)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(np.atleast_2d(s1) + np.atleast_2d(s2) - 2 * np.real(covmean)))
    return {"value": value, "reason": f"features from {weights}", "rows": len(rows)}


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
              pooled: list[dict[str, Any]] | None = None) -> None:
    write_csv(out_dir / "metrics.csv", results)
    write_csv(out_dir / "metrics-pairs.csv", pooled or [])
    atomic_write_text(out_dir / "metrics.json", json.dumps(_finite(summary), indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(summary))
    montage(out_dir / "montage.png", rows, results, out_dir)
    rates_plot(out_dir / "rates.png", results, pooled)
