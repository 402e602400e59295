"""Figures: full titles, colour bars, legends, one stated orientation (radiological), legible size.

Read the written PNGs back: an asymmetric image (a bright block on the patient's right) must land
on the left of every slice panel."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from brainsynth_cli.figures.grid import Legend, Panel, Row, grid_figure
from brainsynth_cli.figures.orientation import NOTE, axial_view, display, stored_view
from brainsynth_cli.figures.save import save_figure
from brainsynth_cli.slices import CONVENTION, CONVENTIONS, to_view

PROMPT = "moderate ventricle enlargement over 2.5 years with mild cortical thinning in a 71 year old woman"


def _texts(fig) -> list[str]:
    """Every text of a figure (figure texts and axes titles), wrapped lines joined back with spaces."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(loc) for loc in ("left", "center", "right")]
    return [t.replace("\n", " ") for t in out if t]


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int32)


def _panel_pixels(fig, ax, rgb: np.ndarray) -> np.ndarray:
    """The PNG pixels under an axes (matplotlib's bottom-up display box -> top-down rows)."""
    box = ax.get_window_extent()
    h = rgb.shape[0]
    return rgb[round(h - box.y1) + 1 : round(h - box.y0) - 1, round(box.x0) + 1 : round(box.x1) - 1]


def _canonical_with_block_on_the_right(shape=(40, 48, 36)) -> np.ndarray:
    """A grey head-shaped box with a bright block at high canonical x (RAS: the patient's right)."""
    img = np.zeros(shape, np.float32)
    img[4:-4, 4:-4, 4:-4] = 100.0
    img[shape[0] - 12 : shape[0] - 5, 20:28, 14:22] = 400.0
    return img


def test_grid_keeps_full_titles_has_colour_bar_and_states_orientation(tmp_path):
    a = np.zeros((32, 32), np.float32)
    b = a.copy()
    b[8:12, 8:12] = 0.5
    fig = grid_figure([Row(f"sub-001 ses-01 → ses-02: “{PROMPT}”", [Panel(a), Panel(b), Panel(b - a, kind="difference")]),
                       Row("sub-002 ses-01 → ses-03", [Panel(a), Panel(b), Panel(a - b, kind="difference")])],
                      columns=["prior", "target", "target − prior"], title="real training pairs")
    texts = _texts(fig)
    assert f"sub-001 ses-01 → ses-02: “{PROMPT}”" in texts  # wrapped, not cut
    assert "sub-002 ses-01 → ses-03" in texts and "target − prior" in texts and NOTE in texts
    bars = [ax for ax in fig.axes if ax.get_label() == "colour bar"]
    assert len(bars) == 1
    lo, hi = bars[0].get_ylim()
    assert lo == pytest.approx(-hi) and hi >= 0.5 * 0.9  # symmetric, covers the change
    # no difference panel, no colour bar
    fig2 = grid_figure([Row("x", [Panel(a)])])
    assert not [ax for ax in fig2.axes if ax.get_label() == "colour bar"]
    path = save_figure(fig, tmp_path / "grid.png")
    rgb = _png(path)
    tiles = [ax for ax in fig.axes if ax.get_label() != "colour bar"]
    assert len(tiles) == 6
    for ax in tiles:  # legible: every tile at least 180 pixels wide and high
        box = ax.get_window_extent()
        assert box.width >= 180 and box.height >= 180
    assert rgb.shape[1] >= 3 * 180


def test_display_is_the_stored_radiological_view():
    a = np.arange(12).reshape(3, 4)
    assert np.array_equal(display(a), to_view(a))
    assert np.array_equal(stored_view(to_view(a), CONVENTION), to_view(a))  # v2 slices are stored in the view
    assert np.array_equal(stored_view(a, CONVENTIONS[0]), to_view(a))  # v1 slices are canonical
    vol = _canonical_with_block_on_the_right()
    view = axial_view(vol, np.diag([-2.0, 2.0, 2.0, 1.0]))  # LAS on disk: to_canonical flips x
    assert view[:, : view.shape[1] // 2].max() < 400 <= view[:, view.shape[1] // 2 :].max()  # LAS x-flip: block at low RAS x
    view = axial_view(vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert view[:, : view.shape[1] // 2].max() == 400  # patient's right on the left


def test_label_qc_puts_the_right_on_the_left_in_the_png(tmp_path):
    from brainsynth_cli.figures.label_qc import label_qc_figure

    img = _canonical_with_block_on_the_right()
    lab = np.zeros(img.shape, np.int32)
    lab[14:18, 18:30, 14:22] = 4
    lab[22:26, 18:30, 14:22] = 43
    names = {4: "Left-Lateral-Ventricle", 43: "Right-Lateral-Ventricle"}
    fig = label_qc_figure(img, lab, np.diag([2.0, 2.0, 2.0, 1.0]), names=names, title="sub-001_ses-01_T1w.nii.gz: labels outlined")
    texts = _texts(fig)
    assert "sub-001_ses-01_T1w.nii.gz: labels outlined" in texts
    assert any("Radiological orientation" in t for t in texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Left-Lateral-Ventricle (4)", "Right-Lateral-Ventricle (43)"]
    rgb = _png(save_figure(fig, tmp_path / "qc.png"))
    panels = {ax.get_title().split(",")[0]: ax for ax in fig.axes}
    assert set(panels) == {"axial", "coronal", "sagittal"}
    for plane in ("axial", "coronal"):
        ax = panels[plane]
        assert [t.get_text() for t in ax.texts][:2] == ["R", "L"]
        px = _panel_pixels(fig, ax, rgb)
        assert px.shape[1] >= 200  # legible
        bright = px.min(axis=2) > 235  # the 400 block (and the white side letters, a few pixels each)
        half = px.shape[1] // 2
        assert bright[:, :half].sum() > 10 * max(1, bright[:, half:].sum()), plane
    ventricle = np.abs(rgb - np.array([120, 18, 134])).sum(axis=2) < 60  # outline colour of aseg 4/43
    assert ventricle.sum() > 20


def test_legend_lists_masks_and_outlines():
    m = np.zeros((16, 16), bool)
    m[4:8, 4:8] = True
    fig = grid_figure([Row("", [Panel(np.zeros((16, 16)), masks=[(m, "red", "became ventricle")], outline=m)])],
                      legend=Legend(masks={"became ventricle": "red"}, named_outline="ventricle"))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["became ventricle", "ventricle"]


def test_figures_import_matplotlib_only_when_drawing():
    import subprocess

    from conftest import subprocess_env

    code = "import sys, brainsynth_cli.figures, brainsynth_cli.figures.label_qc; print('matplotlib' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60, check=False)
    assert res.stdout.strip() == "False", res.stderr


def test_edit_montage_is_a_grid_figure_without_pyplot(tmp_path):
    """The montage of edits (edit, evaluate, training validation): columns, full row titles with
    their note, one symmetric colour bar over edits and targets, named structures outlined on
    every panel, sides marked, the orientation stated; a missing target is a black panel."""
    import subprocess

    from conftest import subprocess_env

    from brainsynth_cli.edit_montage import EditRow, edit_figure

    prior = np.zeros((40, 40), np.float32)
    prior[10:20, 10:20] = 0.4
    outline = np.zeros((40, 40), bool)
    outline[10:20, 10:20] = True
    rows = [EditRow(PROMPT, prior, prior + 0.1 * outline, target=prior + 0.3 * outline, outline=outline, note="real · sub-001"),
            EditRow("mild ventricle enlargement", prior, prior - 0.05 * outline)]
    fig = edit_figure(rows, title="model edits: one slice per prompt")
    texts = _texts(fig)
    assert f"{PROMPT}   (real · sub-001)" in texts and "mild ventricle enlargement" in texts
    assert {"prior", "edit", "target", "edit − prior", "target − prior", "model edits: one slice per prompt", NOTE} <= set(texts)
    bars = [ax for ax in fig.axes if ax.get_label() == "colour bar"]
    assert len(bars) == 1 and "fraction of the slice's window" in bars[0].get_ylabel()
    lo, hi = bars[0].get_ylim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(0.3, rel=0.02)  # covers the target's change
    tiles = [ax for ax in fig.axes if ax.get_label() != "colour bar"]
    assert len(tiles) == 10
    first, second = tiles[:5], tiles[5:]
    assert all(ax.collections for ax in first)  # the outline on every panel of the outlined row
    assert [t.get_text() for t in first[0].texts] == ["R", "L"] and not first[1].texts
    assert not second[2].images and second[2].get_facecolor()[:3] == (0.0, 0.0, 0.0)  # no target: black
    without = edit_figure([EditRow("x", prior, prior)], radiological=False)
    assert [c for c in _texts(without) if c in ("before", "after", "after − before")] == ["before", "after", "after − before"]
    assert NOTE not in _texts(without) and not any(ax.texts for ax in without.axes)
    # drawn on an Agg canvas: writing it never imports pyplot
    code = ("import sys, numpy as np; from brainsynth_cli.edit_montage import EditRow, edit_montage; "
            f"a = np.zeros((24, 24), np.float32); edit_montage(r'{tmp_path / 'm.png'}', [EditRow('p', a, a + 0.1)]); "
            "print('matplotlib.pyplot' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120, check=False)
    assert res.stdout.strip() == "False", res.stderr
    assert _png(tmp_path / "m.png").shape[1] >= 3 * 180


def test_rates_plot_has_a_legend_and_never_imports_pyplot(tmp_path):
    """evaluate's rates.png: achieved against target rate per structure, edits and real targets in
    the legend, written on an Agg canvas (pyplot never imported)."""
    import subprocess

    from conftest import subprocess_env

    results = [{"truth": {"ventricle": t}, "methods": {
        "model": {"structures": {"ventricle": {"hit": True, "achieved": t * 0.8}}},
        "target": {"structures": {"ventricle": {"hit": True, "achieved": t * 0.9}}}}} for t in (5.0, 15.0, 30.0)]
    code = ("import sys, json; from pathlib import Path; from brainsynth_plugins.evaluate.report import rates_plot; "
            f"rates_plot(Path(r'{tmp_path / 'r.png'}'), json.loads(sys.argv[1])); print('matplotlib.pyplot' in sys.modules)")
    import json

    res = subprocess.run([sys.executable, "-c", code, json.dumps(results)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120, check=False)
    assert res.stdout.strip() == "False", res.stderr
    png = _png(tmp_path / "r.png")
    assert png.shape[:2] == (550, 605)  # 5.5 x 5 in at 110 dpi
    assert png[..., :3].std() > 10  # something drawn
