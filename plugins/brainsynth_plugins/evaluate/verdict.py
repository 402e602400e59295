"""The first screen of an evaluation: does the model work, in plain words and one table.

Everything is read per pair (a pair's slices pooled, so a rate is the change of a slab of the
structure, not of one cut through it) over the rows that have a real target, real or
disentangled; deformed rows (targets made by a known deformation) are reported apart. The
model is judged against the rows beside it:

- ACC against the ``chance`` row (the prior plus faint noise): intervals open at 0 are hit about
  half the time by an image that changes at random;
- the change error against the ``identity`` row (1 by construction) and the ``deform`` row;
- PSNR/SSIM against the identity row, which wins them by copying the prior: an edit that keeps the
  scan stays within 1 dB and 0.01 of it;
- everything against the ``target`` row, the measurement's own ceiling on these pairs: "Yes" needs
  the model's ACC not clearly below it (the ceiling within or below the model's 95 % interval).
"""

from __future__ import annotations

import math
from typing import Any

#: Labels of the methods in reports.
LABELS = {
    "model": "model",
    "deform": "deform (no training)",
    "identity": "identity (no edit)",
    "chance": "chance (prior + faint noise)",
    "target": "real target, measured (ceiling)",
}
MEASURED_KINDS = ("real", "disentangled")
#: An interval the model hits less often than this is reported as missed.
MIN_INTERVAL_ACC = 0.5


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def pooled_table(pairs: list[dict[str, Any]], kinds: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per method: pairs, ACC with 95 % interval and its n, MAE, leak, change error, PSNR, SSIM,
    over the pooled pairs of ``kinds``."""
    from brainsynth_plugins.evaluate.engine import METHODS, wilson

    chosen = [p for p in pairs if p["kind"] in kinds]
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        rows = [p for p in chosen if method in p["methods"]]
        if not rows:
            continue
        items = [v for p in rows for v in p["methods"][method]["structures"].values() if "hit" in v]
        leaks = [v["leak"] for p in rows for v in p["methods"][method]["structures"].values() if "leak" in v]
        hits = sum(bool(v["hit"]) for v in items)
        num = sum(p["methods"][method]["change_terms"][0] for p in rows)
        den = sum(p["methods"][method]["change_terms"][1] for p in rows)
        s_num = sum(p["methods"][method].get("structure_terms", [math.nan, math.nan])[0] for p in rows)
        s_den = sum(p["methods"][method].get("structure_terms", [math.nan, math.nan])[1] for p in rows)

        def mean(values: list[float]) -> float:
            vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            return float(sum(vals) / len(vals)) if vals else math.nan

        out[method] = {
            "pairs": len(rows), "n": len(items), "hits": hits, "acc": hits / len(items) if items else math.nan,
            "acc_ci": list(wilson(hits, len(items))), "mae": mean([v["abs_error"] for v in items]), "leak": mean(leaks),
            "change_error": num / den if den > 0 else math.nan, "structure_error": s_num / s_den if s_den > 0 else math.nan,
            "psnr": mean([p["methods"][method]["psnr"] for p in rows if math.isfinite(p["methods"][method]["psnr"])]),
            "ssim": mean([p["methods"][method]["ssim"] for p in rows]),
        }
    return out


def table_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| method | pairs | ACC (95 % interval, n items) | MAE pp | leak pp | structure change error | intensity change error "
             "| PSNR | SSIM |", "|---|---|---|---|---|---|---|---|---|"]
    for method, t in table.items():
        lo, hi = t["acc_ci"]
        acc = f"{_f(t['acc'])} ({_f(lo)}–{_f(hi)}, n={t['n']})" if t["n"] else "n/a"
        lines.append(f"| {LABELS.get(method, method)} | {t['pairs']} | {acc} | {_f(t['mae'])} | {_f(t['leak'])} | "
                     f"{_f(t['structure_error'])} | {_f(t['change_error'])} | {_f(t['psnr'])} | {_f(t['ssim'], 3)} |")
    return lines


def verdict(table: dict[str, dict[str, Any]], vae: dict[str, Any] | None = None,
            intervals: list[dict[str, Any]] | None = None, structure_maps: bool = True) -> tuple[str, list[str]]:
    """(headline, reasons): whether the model does what the prompts say and keeps the scan.

    "Yes" needs every criterion of the module docstring and every requested interval hit at least
    half the time (``intervals`` from :func:`interval_rows`); "Partly" when only intervals are
    missed or the ACC is clearly below the ceiling (e.g. a model that enlarges the ventricles by the same amount whatever the prompt
    asks); "Not yet" otherwise. ``structure_maps=False``: the measurement gives labels, not the
    partial-volume maps the structure change error needs (a segmenter's longitudinal mode on 3D
    volumes); that criterion is then left out and the reasons say so."""
    m = table.get("model")
    if m is None:
        head = "No model was evaluated: the rows below are the baselines (the measurement's own error on real targets)."
        return head, []
    reasons: list[str] = []
    ok = True
    chance, ident, deform, target = (table.get(k) for k in ("chance", "identity", "deform", "target"))
    lo, hi = m["acc_ci"]
    line = (f"The edits land in the requested interval for {m['hits']} of {m['n']} structure changes "
            f"(ACC {_f(m['acc'])}, 95 % interval {_f(lo)}–{_f(hi)})")
    if chance is not None and chance["n"]:
        beats = lo > chance["acc"]
        ok &= beats
        line += f"; an image that changes at random scores {_f(chance['acc'])}" + (" — the model is above chance." if beats else
                                                                                   " — the model is not clearly above chance.")
    reasons.append(line + ("" if chance else "."))
    if ident is not None:
        closer = math.isfinite(m["mae"]) and m["mae"] < ident["mae"]
        ok &= closer
        reasons.append(f"MAE (|achieved − real rate|) {_f(m['mae'])} pp against {_f(ident['mae'])} pp for no edit: "
                       + ("the edits come closer to the real change than doing nothing." if closer
                          else "the edits are no closer to the real change than doing nothing (changes too small or too large)."))
    near_ceiling = True
    if target is not None:
        text = (f"The measurement itself, applied to the real targets, reaches ACC {_f(target['acc'])} and MAE "
                f"{_f(target['mae'])} pp: that is the ceiling")
        if math.isfinite(target["acc"]) and math.isfinite(hi):
            near_ceiling = hi >= target["acc"]
            text += ("; the model's ACC is within reach of it." if near_ceiling
                     else f"; the model's ACC is clearly below it (95 % interval up to {_f(hi)}).")
        else:
            text += "."
        reasons.append(text)
    if ident is not None:
        dp = m["psnr"] - ident["psnr"]
        keeps = dp >= -1.0 and m["ssim"] >= ident["ssim"] - 0.01
        ok &= keeps
        reasons.append(f"Image quality against the real target: PSNR {_f(m['psnr'])} dB vs {_f(ident['psnr'])} for no edit "
                       f"({dp:+.2f} dB), SSIM {_f(m['ssim'], 3)} vs {_f(ident['ssim'], 3)}: "
                       + ("the edit keeps the scan." if keeps else "the edit degrades the scan."))
    se = m["structure_error"]
    if structure_maps:
        better = math.isfinite(se) and se < 1.0
        ok &= better
        text = (f"Structure change error (where the named structures end up; 0 = where the real target has them, 1 = where "
                f"they were before) {_f(se)}: " + ("the edit moves them towards the real change" if better
                                                   else "the edit does not move them towards the real change"))
        if deform is not None:
            text += f" (model-free deform baseline: {_f(deform['structure_error'])})"
        reasons.append(text + ".")
    else:
        reasons.append("Structure change error: not measured (the measurement gives label maps, not the partial-volume maps "
                       "it needs); the verdict rests on ACC, MAE and image quality.")
    reasons.append(f"Intensity change error {_f(m['change_error'])} (deform {_f(deform['change_error']) if deform else 'n/a'}; "
                   "no edit 1.00): against real and Poisson targets it is dominated by scan-to-scan intensity differences "
                   "and noise, which an edit cannot reproduce.")
    if math.isfinite(m["leak"]):
        reasons.append(f"Leak into structures a disentangled prompt does not name: {_f(m['leak'])} pp"
                       + (" (over 1 pp: the edit also changes what the prompt leaves alone)." if m["leak"] > 1.0 else "."))
    if vae:
        unit = "volumes" if "volumes" in vae and "slices" not in vae else "slices"  # a 3D model's record counts volumes
        reasons.append(f"The model's autoencoder reconstructs {vae.get('split', 'validation')} {unit} at PSNR {_f(vae.get('psnr'))} dB, "
                       f"SSIM {_f(vae.get('ssim'), 3)} ({vae.get(unit)} {unit}): the ceiling of any edit that decodes whole images.")
    if deform is not None and math.isfinite(deform["mae"]):
        better_acc, better_mae = m["acc"] > deform["acc"], m["mae"] < deform["mae"]
        word = ("the model is more accurate" if better_acc and better_mae
                else "the baseline is more accurate" if not better_acc and not better_mae and (m["acc"] < deform["acc"] or m["mae"] > deform["mae"])
                else "neither is clearly more accurate")
        reasons.append(f"Against the model-free deform baseline: ACC {_f(m['acc'])} vs {_f(deform['acc'])}, MAE {_f(m['mae'])} vs "
                       f"{_f(deform['mae'])} pp: {word}.")
    missed = [r for r in intervals or [] if math.isfinite(r["acc"]) and r["acc"] < MIN_INTERVAL_ACC]
    if missed:
        reasons.insert(0, "Missed: " + "; ".join(
            f"{r['name']} (real targets {r['truth']:+.1f} %, model {r['model']:+.1f} %, ACC {_f(r['acc'])}, n={r['n']})"
            for r in missed) + ".")
    moves = " and moves the structures towards the real change" if structure_maps else ""  # not measured without maps
    if ok and not missed and near_ceiling:
        head = "**Yes: the model does what the prompts say and keeps the scan.**"
    elif ok and missed:
        head = (f"**Partly: the model keeps the scan{moves}, but misses "
                + ", ".join(r["name"] for r in missed) + " (below).**")
    elif ok:
        head = (f"**Partly: the model keeps the scan{moves}, but lands in the "
                "requested interval clearly less often than the real targets do (below).**")
    else:
        head = "**Not yet: the model does not both follow the prompts and keep the scan (reasons below).**"
    return head, reasons


def interval_rows(pairs: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per requested interval (``"ventricle moderate"``): how many structure changes, what the real
    targets did, what the model and the deform baseline achieved (means over pooled pairs, %), and
    the model's ACC."""
    groups: dict[str, dict[str, list[float]]] = {}
    for p in pairs:
        if p["kind"] not in kinds:
            continue
        for method in ("model", "deform", "target"):
            for s, v in p["methods"].get(method, {}).get("structures", {}).items():
                if "interval" not in v:
                    continue
                g = groups.setdefault(f"{s} {v['interval']}", {})
                g.setdefault(method, []).append(v["achieved"])
                if method == "model":
                    g.setdefault("hit", []).append(float(v["hit"]))
                g.setdefault("truth:" + method, []).append(p["truth"].get(s, math.nan))

    def mean(values: list[float] | None) -> float:
        vals = [v for v in values or [] if isinstance(v, (int, float)) and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    return [{"name": name, "n": len(g.get("target", []) or g.get("deform", []) or g.get("model", [])),
             "truth": mean(g.get("truth:target") or g.get("truth:deform") or g.get("truth:model")),
             "model": mean(g.get("model")), "acc": mean(g.get("hit")), "deform": mean(g.get("deform"))}
            for name, g in sorted(groups.items())]


def interval_table(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`interval_rows` as a markdown table."""

    def pct(x: float) -> str:
        return f"{x:+.1f}" if math.isfinite(x) else "n/a"

    lines = ["| requested | n | real targets' rate (%) | model achieved (%) | model ACC | deform achieved (%) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['n']} | {pct(r['truth'])} | {pct(r['model'])} | {_f(r['acc'])} | {pct(r['deform'])} |")
    return lines
