"""Sweep the edit's sampling settings of a trained model on a pairs folder's validation split.

    python benchmarks/edit_sweep.py MODEL PAIRS [--split validation] [--limit 96] [-o DIR] [--change-floor 0 0.005 0.01]
        [--guidance-reference empty-prompt input] [--feather]

Guidance reference x text guidance x image guidance at 10 DDIM steps first, then steps and scheduler at the best pair,
then the edit path's change floors (soft threshold of the model's change) at the best setting
(the largest floor that keeps ACC and the structure change error, MAE within 0.1 pp);
each setting is scored by `brainsynth evaluate`'s own engine (registration measure, edit path
as `edit` uses it), per pair: ACC, MAE, change error, PSNR/SSIM, with the identity row of the same
run beside it. The best setting maximises ACC, then minimises MAE, among those within 1 dB of
the identity row's PSNR (when none is, the smallest PSNR loss among those within 0.05 of the best
ACC). Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path


def score(model: Path, pairs: Path, out: Path, split: str, limit: int, **kw) -> dict:
    from brainsynth_plugins.evaluate.engine import EvalSettings
    from brainsynth_plugins.evaluate.run import run_evaluation
    from brainsynth_plugins.evaluate.verdict import MEASURED_KINDS, pooled_table

    settings = EvalSettings(split=split, limit=limit, baselines=False, **kw)
    tag = "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
    t0 = time.perf_counter()
    run_evaluation(model, pairs, out / tag, settings, device="cpu")
    from brainsynth_plugins.evaluate import engine
    from brainsynth_cli.pairs_folder import read_pairs_folder

    results = list(engine.read_done(out / tag / "rows.jsonl", settings.key(model)).values())
    parser = engine.prompt_parser(read_pairs_folder(pairs), _rules(pairs))
    table = pooled_table(engine.pair_results(results, parser), MEASURED_KINDS + ("deformed",))
    return {"settings": kw, "seconds": time.perf_counter() - t0, "model": table["model"], "identity": table["identity"]}


def _rules(pairs: Path):
    import json

    from brainsynth_cli.structures import default_rules, rules_from_text

    info = json.loads((pairs / "pairs.json").read_text())
    return rules_from_text(info["rules"]) if info.get("rules") else default_rules()


def line(r: dict) -> str:
    m, i = r["model"], r["identity"]
    s = r["settings"]
    return (f"| {s.get('guidance_reference', 'empty-prompt')} | {s.get('guidance_scale')} | {s.get('image_guidance_scale')} | {s.get('steps')} | {s.get('scheduler')} | "
            f"{s.get('change_floor', 0.0):g} | {m['acc']:.2f} (n={m['n']}) | {m['mae']:.2f} | {m['leak']:.2f} | {m['change_error']:.3f} | {m['psnr']:.2f} ({m['psnr'] - i['psnr']:+.2f}) | "
            f"{m['ssim']:.3f} | {r['seconds']:.0f} |")


def main() -> None:
    from brainsynth_cli.sampling import GUIDANCE_REFERENCES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("pairs", type=Path)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("-o", "--output", "--out", dest="out", type=Path, default=Path("sweep-out"),
                    help="folder for the runs (--out: the old spelling)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[3.0, 7.5, 15.0, 25.0])
    ap.add_argument("--image-guidance", type=float, nargs="+", default=[1.0, 1.5])
    ap.add_argument("--guidance-reference", nargs="+", default=["empty-prompt"], choices=GUIDANCE_REFERENCES,
                    help="what the text guidance is measured from (edit --guidance-reference)")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 5, 20], help="first: the grid's steps; the rest tried at the best pair")
    ap.add_argument("--change-floor", type=float, nargs="+", default=[0.0],
                    help="first: the grid's change floor; the rest tried at the best setting")
    ap.add_argument("--feather", action="store_true", help="every run with the edit path's feather (edit --feather)")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    runs = []
    for ref in a.guidance_reference:
        for g in a.guidance:
            for ig in a.image_guidance:
                runs.append(score(a.model, a.pairs, a.out, a.split, a.limit, guidance_scale=g, image_guidance_scale=ig, steps=a.steps[0],
                                  scheduler="ddim", change_floor=a.change_floor[0], guidance_reference=ref, feather=a.feather))
                print(line(runs[-1]), flush=True)

    def best_of(runs: list[dict]) -> dict:
        """Highest ACC (then lowest MAE) within 1 dB of the identity row's PSNR; when no setting is,
        the smallest PSNR loss among the settings within 0.05 of the best ACC."""
        ok = [r for r in runs if r["model"]["psnr"] >= r["identity"]["psnr"] - 1.0]
        if ok:
            return max(ok, key=lambda r: (r["model"]["acc"], -r["model"]["mae"] if math.isfinite(r["model"]["mae"]) else -1e9))
        top = max(r["model"]["acc"] for r in runs)
        near = [r for r in runs if r["model"]["acc"] >= top - 0.05]
        return max(near, key=lambda r: r["model"]["psnr"] - r["identity"]["psnr"])

    best = best_of(runs)["settings"]
    for steps, sched in [(n, "ddim") for n in a.steps[1:]] + [(a.steps[0], "dpm++")]:
        runs.append(score(a.model, a.pairs, a.out, a.split, a.limit, guidance_scale=best["guidance_scale"],
                          image_guidance_scale=best["image_guidance_scale"], steps=steps, scheduler=sched, change_floor=a.change_floor[0],
                          guidance_reference=best["guidance_reference"], feather=a.feather))
        print(line(runs[-1]), flush=True)
    best = best_of(runs)["settings"]
    for floor in a.change_floor[1:]:
        runs.append(score(a.model, a.pairs, a.out, a.split, a.limit, **{**best, "change_floor": floor}))
        print(line(runs[-1]), flush=True)
    print("\n| guidance from | guidance | image guidance | steps | scheduler | change floor | pair ACC | MAE pp | leak pp | change error | PSNR (vs identity) | SSIM | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(line(r))
    best = best_of([r for r in runs if r["settings"]["change_floor"] == a.change_floor[0]])
    floors = [r for r in runs if r["settings"] == {**best["settings"], "change_floor": r["settings"]["change_floor"]}]
    print(f"\nbest: {best['settings']}; change floor: {best_floor(best, floors)}")


def best_floor(base: dict, runs: list[dict]) -> float:
    """The largest change floor that keeps the setting's ACC and structure change error and its MAE
    within 0.1 pp: it removes faint change without making the edits smaller where it matters."""
    m0 = base["model"]
    ok = [r for r in runs if r["model"]["acc"] >= m0["acc"] and r["model"]["mae"] <= m0["mae"] + 0.1
          and r["model"]["structure_error"] <= m0["structure_error"] + 0.005]
    return max((r["settings"]["change_floor"] for r in ok), default=base["settings"]["change_floor"])


if __name__ == "__main__":
    main()
