"""The first screen's verdict: Yes / Partly / Not yet from the pooled table and the per-interval rows."""

from __future__ import annotations

from brainsynth_plugins.evaluate.verdict import interval_rows, interval_table, verdict


def _row(acc: float, mae: float, psnr: float, ssim: float = 0.98, structure_error: float = 0.9, n: int = 20) -> dict:
    hits = round(acc * n)
    lo = max(0.0, acc - 0.2)
    return {"pairs": n, "n": n, "hits": hits, "acc": acc, "acc_ci": [lo, min(1.0, acc + 0.2)], "mae": mae, "leak": 0.3,
            "change_error": 1.05, "structure_error": structure_error, "psnr": psnr, "ssim": ssim}


def _table(model: dict) -> dict:
    return {"model": model, "deform": _row(0.6, 6.5, 38.0, structure_error=0.85), "identity": _row(0.0, 10.7, 38.4, structure_error=1.0),
            "chance": _row(0.19, 10.8, 37.3, structure_error=0.99), "target": _row(0.78, 3.1, float("nan"), 1.0, 0.0)}


def _pair(kind: str, interval: str, truth: float, model: float, hit: bool) -> dict:
    return {"kind": kind, "truth": {"ventricle": truth},
            "methods": {"model": {"structures": {"ventricle": {"interval": interval, "achieved": model, "hit": hit}}},
                        "target": {"structures": {"ventricle": {"interval": interval, "achieved": truth - 1, "hit": True}}}}}


def test_interval_rows_pool_per_interval_and_skip_other_kinds() -> None:
    pairs = [_pair("real", "mild", 8.0, 4.0, True), _pair("real", "mild", 6.0, 5.0, True),
             _pair("real", "moderate", 15.0, 4.0, False), _pair("deformed", "moderate", 15.0, 14.0, True)]
    rows = {r["name"]: r for r in interval_rows(pairs, ("real",))}
    assert rows["ventricle mild"]["n"] == 2 and rows["ventricle mild"]["truth"] == 7.0 and rows["ventricle mild"]["model"] == 4.5
    assert rows["ventricle moderate"]["n"] == 1 and rows["ventricle moderate"]["acc"] == 0.0
    lines = interval_table(list(rows.values()))
    assert lines[2] == "| ventricle mild | 2 | +7.0 | +4.5 | 1.00 | n/a |"


def test_verdict_partly_when_an_interval_is_missed() -> None:
    intervals = [{"name": "ventricle mild", "n": 4, "truth": 8.9, "model": 4.3, "acc": 1.0, "deform": 1.3},
                 {"name": "ventricle moderate", "n": 10, "truth": 15.5, "model": 4.0, "acc": 0.0, "deform": 7.8}]
    head, reasons = verdict(_table(_row(0.56, 8.2, 38.2)), None, intervals)
    assert head.startswith("**Partly") and "ventricle moderate" in head and "ventricle mild" not in head
    assert reasons[0].startswith("Missed: ventricle moderate (real targets +15.5 %, model +4.0 %, ACC 0.00, n=10)")
    assert any("the baseline is more accurate" in r for r in reasons)


def test_verdict_yes_and_not_yet() -> None:
    good = [{"name": "ventricle mild", "n": 4, "truth": 8.9, "model": 7.0, "acc": 0.75, "deform": 1.3}]
    head, reasons = verdict(_table(_row(0.9, 3.0, 38.1)), None, good)
    assert head.startswith("**Yes") and any("the model is more accurate" in r for r in reasons)
    head, _ = verdict(_table(_row(0.9, 3.0, 36.0)), None, good)  # 2.4 dB below the identity row
    assert head.startswith("**Not yet")
    head, _ = verdict(_table(_row(0.9, 11.0, 38.1)), None, good)  # no closer to the real change than no edit
    assert head.startswith("**Not yet")


def test_verdict_is_not_yes_when_acc_is_clearly_below_the_ceiling() -> None:
    """Every criterion met and no interval under half, but ACC 0.50 (95 % interval up to 0.70) where the
    real targets measure 0.95: the first screen says Partly, and why."""
    good = [{"name": "cortex atrophy", "n": 6, "truth": -2.0, "model": -0.5, "acc": 0.5, "deform": -3.0}]
    table = _table(_row(0.5, 2.3, 38.2))
    table["target"] = _row(0.95, 1.9, float("nan"), 1.0, 0.0)
    head, reasons = verdict(table, None, good)
    assert head.startswith("**Partly") and "clearly less often than the real targets" in head
    assert any("clearly below it (95 % interval up to 0.70)" in r for r in reasons)
    table["target"] = _row(0.65, 1.9, float("nan"), 1.0, 0.0)  # within the model's interval: Yes
    assert verdict(table, None, good)[0].startswith("**Yes")
