"""brainsynth simulate: reference labels, calibrated change rates, layout, determinism, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from brainsynth_cli.main import run

template = pytest.importorskip("brainsynth_plugins.simulate.template")
cohort = pytest.importorskip("brainsynth_plugins.simulate.cohort")


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# -- the reference anatomy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref2():
    return template.reference(2.0)


def test_reference_grid_and_types(ref2):
    t1, lab = ref2
    assert t1.data.dtype == np.float32 and lab.data.dtype == np.int32
    assert t1.shape == lab.shape == (99, 117, 95)
    assert t1.voxel_size == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_allclose(t1.affine, lab.affine)
    # voxel centres of the 2 mm grid sit at the centres of 2x2x2 blocks of the 1 mm template
    assert t1.affine[:3, 3] == pytest.approx([-97.5, -133.5, -71.5])
    assert set(np.unique(lab.data)) == {0, 2, 3, 4, 7, 8, 10, 11, 12, 16, 24, 41, 42, 43, 46, 47, 49, 50, 51}


def test_reference_labels_are_anatomical(ref2):
    import scipy.ndimage as ndi

    from brainsynth_cli.structures import label_volumes

    t1, lab = ref2
    d = lab.data
    vols = {k: v / 1000.0 for k, v in label_volumes(d, lab.voxel_volume).items()}  # ml
    for left, right, lo, hi in ((4, 43, 5, 15), (3, 42, 350, 500), (2, 41, 230, 360), (8, 47, 60, 100)):
        assert lo < vols[left] < hi and lo < vols[right] < hi, (left, vols[left], right, vols[right])
        assert abs(vols[left] - vols[right]) / vols[left] < 0.05  # the template is symmetric
    # hemispheres split at the mid-sagittal plane
    x = lab.affine[0, 0] * np.arange(d.shape[0]) + lab.affine[0, 3]
    for ids, side in (((2, 3, 4, 10, 11, 12), x < 0), ((41, 42, 43, 49, 50, 51), x > 0)):
        where = np.isin(d, ids).any(axis=(1, 2))
        assert np.all(side[where])
    # lateral ventricles: inside the brain (never touching the background), central, dark on T1
    vent = np.isin(d, (4, 43))
    assert not np.any(ndi.binary_dilation(vent, iterations=1) & (d == 0))
    centre = lab.affine[:3, :3] @ np.argwhere(vent).mean(axis=0) + lab.affine[:3, 3]
    assert abs(centre[0]) < 3 and -30 < centre[1] < 10 and 0 < centre[2] < 30
    wm, gm = t1.data[np.isin(d, (2, 41))].mean(), t1.data[np.isin(d, (3, 42))].mean()
    assert t1.data[vent].mean() < gm < wm
    # the cortex wraps the white matter: it lies nearer to the outside (CSF, background)
    depth = ndi.distance_transform_edt((d != 0) & (d != 24)) * 2.0
    assert np.median(depth[np.isin(d, (3, 42))]) + 4 < np.median(depth[np.isin(d, (2, 41))])
    # cerebellum below the cerebrum
    z = lab.affine[2, 2] * np.arange(d.shape[2]) + lab.affine[2, 3]
    assert z[np.isin(d, (8, 47)).any(axis=(0, 1))].max() < z[np.isin(d, (3, 42)).any(axis=(0, 1))].max() - 60


def test_reference_is_cached_and_copied(monkeypatch, tmp_path):
    t1, _ = template.reference(2.0)
    t1.data[:] = 0  # callers get copies
    again, _ = template.reference(2.0)
    assert again.data.max() > 0.9
    monkeypatch.setenv("BRAINSYNTH_CACHE", str(tmp_path / "c"))
    img, seg = template.cache_paths(2.0)
    assert img.parent == tmp_path / "c" / "template" / template.VERSION
    assert "res-2mm" in img.name and seg.name.endswith("_dseg.nii.gz")
    assert template.cache_paths(4.0)[0] != img


def test_head_adds_skull_outside_the_brain(ref2):
    t1, lab = ref2
    h, hl = template.head(2.0)
    brain = lab.data != 0
    np.testing.assert_array_equal(h.data[brain], t1.data[brain])
    assert np.all(np.isin(hl.data[~brain], (0, 24)))  # only a CSF rim is added to the labels
    shell = (~brain) & (hl.data == 0) & (h.data > 0.05)
    assert shell.sum() * 8 / 1000 > 300  # hundreds of ml of skull and scalp
    assert h.data[shell].max() > 0.8  # bright scalp fat on T1


# -- a cohort made through the command line ----------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "cohort"
    assert run(["simulate", "-o", str(root), "--subjects", "3", "--sessions", "3", "--seed", "0"]) == 0
    return root


def test_layout_is_a_bids_dataset(made):
    from brainsynth_cli.datasets import read_dataset
    from brainsynth_cli.images import check_same_grid, read_labels, read_volume

    truth = made / "derivatives" / "brainsynth-truth"
    ds = read_dataset(made, labels_dir=truth)
    subjects = ds.subjects()
    assert list(subjects) == ["sub-001", "sub-002", "sub-003"]
    for sessions in subjects.values():
        assert [s.session for s in sessions] == ["ses-01", "ses-02", "ses-03"]
        assert all(s.labels is not None and s.sex in ("F", "M") for s in sessions)
        ages = [s.age for s in sessions]
        assert ages == sorted(ages) and ages[0] >= 60
        image, labels = read_volume(sessions[-1].image), read_labels(sessions[-1].labels)
        check_same_grid(image, labels)
        assert image.voxel_size == pytest.approx((2.0, 2.0, 2.0))
    desc = json.loads((made / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["brainsynth"]["seed"] == 0
    assert json.loads((truth / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    participants = _tsv(made / "participants.tsv")
    assert [p["participant_id"] for p in participants] == list(subjects)
    assert {"age", "sex", "pattern"} <= set(participants[0])
    for sub in subjects:
        png = cohort.montage_path(made, sub)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(png) as im:
            assert im.size[0] >= 3 * 180 and im.size[1] >= 2 * 180  # three sessions, two rows, legible tiles


def test_montage_titles_each_session_in_full_and_keeps_the_right_on_the_left():
    """Column titles are whole phrases per session (no "ses-0166.7y"); a change on the patient's
    right (high canonical x) is painted on the left of the panel; a legend names the colours."""
    from types import SimpleNamespace

    import numpy as np

    from brainsynth_cli.images import Volume

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    lab0 = np.zeros((20, 24, 6), np.int32)
    lab0[4:16, 4:20, :] = 2
    lab0[6:9, 8:16, :], lab0[11:14, 8:16, :] = 4, 43  # RAS: x grows towards the patient's right
    lab1 = lab0.copy()
    lab1[14:15, 8:16, :] = 43  # the right ventricle grows
    img = np.where(lab0 > 0, 100.0, 0.0).astype(np.float32)

    def session(name, age, lab, v):
        return SimpleNamespace(session=name, age=age, image=Volume(img, affine), labels=Volume(lab, affine),
                               realised={"ventricle": v, "cortex": 0.0})

    sim = SimpleNamespace(subject="sub-001", plan=SimpleNamespace(sex="F", pattern="ventricle"),
                          sessions=[session("ses-01", 66.7, lab0, 0.0), session("ses-02", 67.7, lab1, 12.5)])
    fig = cohort.montage_figure(sim)
    texts = [t.get_text() for t in fig.texts]
    assert "ses-01, age 66.7 y\nventricle +0.0 %, cortex +0.0 %" in texts
    assert "ses-02, age 67.7 y\nventricle +12.5 %, cortex +0.0 %" in texts
    assert any(t.startswith("sub-001 (F, ventricle change only)") for t in texts)
    assert "became ventricle" in [t.get_text() for t in fig.legends[0].get_texts()]
    change = fig.axes[3]  # bottom row, ses-02: the painted mask is the only red in the panel
    red = [im for im in change.get_images() if im.get_array().ndim == 3][0].get_array()
    cols = np.flatnonzero(red[..., 3].any(axis=0))
    assert cols.size and cols.max() < red.shape[1] // 2  # the patient's right: left half of the panel


def test_realised_rates_hit_requested_and_are_measured_on_the_labels(made):
    from brainsynth_cli.images import read_labels
    from brainsynth_cli.structures import change_rate, group_volumes, label_volumes

    truth = made / "derivatives" / "brainsynth-truth"
    checked = 0
    for sub in ("sub-001", "sub-002", "sub-003"):
        rows = _tsv(made / sub / f"{sub}_sessions.tsv")
        vols = []
        for row in rows:
            lab = read_labels(truth / sub / row["session_id"] / "anat" / f"{sub}_{row['session_id']}_desc-truth_dseg.nii.gz")
            vols.append(group_volumes(label_volumes(lab.data, lab.voxel_volume)))
            for g in ("ventricle", "cortex"):
                assert float(row[f"{g}_mm3"]) == pytest.approx(vols[-1][g])
        for row, v in zip(rows[1:], vols[1:]):
            for g in ("ventricle", "cortex"):
                measured = change_rate(vols[0][g], v[g])
                assert float(row[f"{g}_rate_realised"]) == pytest.approx(measured, abs=1e-3)
                assert abs(measured - float(row[f"{g}_rate_requested"])) <= 1.0
                checked += 1
    assert checked == 12


def test_patterns_change_one_structure_only(made):
    participants = {p["participant_id"]: p for p in _tsv(made / "participants.tsv")}
    assert {p["pattern"] for p in participants.values()} == {"both", "ventricle", "cortex"}
    for sub, p in participants.items():
        rows = _tsv(made / sub / f"{sub}_sessions.tsv")[1:]
        if p["pattern"] == "ventricle":
            assert all(float(r["ventricle_rate_realised"]) > 1 and abs(float(r["cortex_rate_realised"])) < 0.5 for r in rows)
        elif p["pattern"] == "cortex":
            assert all(float(r["cortex_rate_realised"]) < -0.5 and abs(float(r["ventricle_rate_realised"])) < 0.5 for r in rows)
        else:
            assert all(float(r["ventricle_rate_realised"]) > 1 and float(r["cortex_rate_realised"]) < -0.3 for r in rows)


def test_images_look_like_t1_with_skull(made):
    from brainsynth_cli.images import read_labels, read_volume

    sub = "sub-001"
    img = read_volume(made / sub / "ses-01" / "anat" / f"{sub}_ses-01_T1w.nii.gz").data
    lab = read_labels(made / "derivatives" / "brainsynth-truth" / sub / "ses-01" / "anat" / f"{sub}_ses-01_desc-truth_dseg.nii.gz").data
    wm, gm, vent = (np.median(img[np.isin(lab, ids)]) for ids in ((2, 41), (3, 42), (4, 43)))
    assert vent < 0.6 * gm and gm < 0.9 * wm  # T1 contrast
    outside = lab == 0
    assert np.percentile(img[outside], 99) > 0.7 * wm  # bright scalp around the brain
    assert 0 < np.median(img[outside]) < 0.1 * wm  # noisy, dark background


def test_resume_keeps_subjects_and_refuses_other_options(made, capsys):
    before = (made / "sub-002" / "ses-02" / "anat" / "sub-002_ses-02_T1w.nii.gz").stat().st_mtime_ns
    assert run(["simulate", "-o", str(made), "--subjects", "3", "--sessions", "3", "--seed", "0"]) == 0
    assert "3 already there" in capsys.readouterr().out
    assert (made / "sub-002" / "ses-02" / "anat" / "sub-002_ses-02_T1w.nii.gz").stat().st_mtime_ns == before
    assert run(["simulate", "-o", str(made), "--subjects", "3", "--sessions", "3", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other options" in err


# -- determinism and the in-memory API ---------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_cohort(tmp_path):
    kw = dict(subjects=1, sessions=2, resolution=4.0)
    cohort.simulate_cohort(tmp_path / "a", seed=7, **kw)
    cohort.simulate_cohort(tmp_path / "b", seed=7, **kw)
    cohort.simulate_cohort(tmp_path / "c", seed=8, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    img = "sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz"
    assert (tmp_path / "a" / img).read_bytes() != (tmp_path / "c" / img).read_bytes()
    # an interrupted subject (no sessions.tsv yet) is redone on resume, byte for byte
    (tmp_path / "a" / "sub-001" / "sub-001_sessions.tsv").unlink()
    (tmp_path / "a" / img).unlink()
    result = cohort.simulate_cohort(tmp_path / "a", seed=7, **kw)
    assert result.simulated == ["sub-001"] and result.skipped == []
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()
    # extending the cohort keeps the first subject; shrinking it is refused
    result = cohort.simulate_cohort(tmp_path / "b", seed=7, **{**kw, "subjects": 2})
    assert result.skipped == ["sub-001"] and result.simulated == ["sub-002"]
    assert len(_tsv(tmp_path / "b" / "participants.tsv")) == 2
    from brainsynth_cli.errors import InputError

    with pytest.raises(InputError, match="holds a cohort of 2 subjects"):
        cohort.simulate_cohort(tmp_path / "b", seed=7, **kw)


def test_explicit_rates_in_memory():
    sim = cohort.simulate_subject(0, sessions=4, resolution=4.0, seed=3, noise=0.0,
                                  rates={"ventricle": [10.0, 30.0, 0.0], "cortex": [0.0, -6.0, -12.0]})
    assert [s.session for s in sim.sessions] == ["ses-01", "ses-02", "ses-03", "ses-04"]
    for s in sim.sessions[1:]:
        for g in ("ventricle", "cortex"):
            assert abs(s.realised[g] - s.requested[g]) <= 1.0, (s.session, g, s.realised, s.requested)
    # ventricles only / cortex only: the other structure stays put
    assert abs(sim.sessions[1].realised["cortex"]) < 0.5
    assert abs(sim.sessions[3].realised["ventricle"]) < 0.5
    assert sim.sessions[0].image.data.dtype == np.float32 and sim.sessions[0].labels.data.dtype == np.int32


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_extreme_rates_are_reached():
    """The limits of the options (ventricles -40..+80 %, cortex -30..+10 %) are reachable even on
    the coarsest grid."""
    sim = cohort.simulate_subject(1, sessions=4, resolution=4.0, seed=11, noise=0.0,
                                  rates={"ventricle": [80.0, -40.0, 0.0], "cortex": [0.0, 10.0, -30.0]})
    for s in sim.sessions[1:]:
        for g in ("ventricle", "cortex"):
            assert abs(s.realised[g] - s.requested[g]) <= 1.0, (s.session, g, s.realised)


def test_ventricles_grow_outward_and_cortex_thins_from_the_pial_side():
    import scipy.ndimage as ndi

    sim = cohort.simulate_subject(1, sessions=3, resolution=2.0, seed=0, noise=0.0,
                                  rates={"ventricle": [25.0, 0.0], "cortex": [0.0, -8.0]})
    base, grown, thin = (s.labels.data for s in sim.sessions)
    v0, v1 = np.isin(base, (4, 43)), np.isin(grown, (4, 43))
    gained = v1 & ~v0
    assert gained.sum() > 0.2 * v0.sum() * 0.8
    assert (v0 & ~v1).sum() < 0.01 * v0.sum()  # the old ventricle stays (walls move outward)
    assert np.all(ndi.binary_dilation(v0, iterations=3)[gained])  # new ventricle borders the old
    # what the ventricles took was white matter or deep grey matter, (almost) never cortex
    assert np.isin(base[gained], (3, 42)).sum() < 0.02 * gained.sum()
    c0, c2 = np.isin(base, (3, 42)), np.isin(thin, (3, 42))
    lost = c0 & ~c2
    assert lost.sum() > 0
    # lost cortex became CSF or background (the pial side), hardly ever white matter
    assert np.isin(thin[lost], (0, 24)).sum() > 0.97 * lost.sum()
    wm0, wm2 = np.isin(base, (2, 41)).sum(), np.isin(thin, (2, 41)).sum()
    assert abs(wm2 - wm0) / wm0 < 0.005


def test_session_maps_are_invertible():
    """The session deformation (scaling and squaring) has a positive Jacobian everywhere,
    even for large changes."""
    opts = cohort.make_options(sessions=2, resolution=2.0, seed=0)
    plan = cohort.plan_subject(0, opts)
    _, lab = template.head(2.0)
    anatomy = cohort._anatomy(plan, opts, lab.data)
    base = cohort.sample_labels(lab.data, anatomy.positions)
    fields = cohort._fields(base, 2.0)
    calib = cohort._Calibrator(lab.data, anatomy, fields, base)
    u = np.zeros((3,) + base.shape, dtype=np.float32)
    u.reshape(3, -1)[:, calib.index] = calib.displacement(2.5, 1.5)  # ~ +40 % ventricle, -25 % cortex
    jac = np.empty((3, 3) + base.shape, dtype=np.float32)
    for i in range(3):
        for j, g in enumerate(np.gradient(u[i])):
            jac[i, j] = g + (i == j)
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0


# -- option errors: one line, exit status 2, nothing written -----------------------------------


@pytest.mark.parametrize("args, words", [
    (["--subjects", "0"], "--subjects must be at least 1"),
    (["--sessions", "1"], "--sessions must be at least 2"),
    (["--resolution", "5"], "unknown resolution 5"),
    (["--cortex-rate", "-1", "-3"], "is not a range"),
    (["--ventricle-rate", "10", "50", "--sessions", "6"], "beyond the simulable"),
    (["--noise", "-1"], "--noise must lie in"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    assert run(["simulate", "-o", str(out)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("brainsynth: error:") and words in err
    assert not out.exists()


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "cohort"):
        assert run(["simulate", "-o", str(out), "--subjects", "1", "--sessions", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert run(["simulate", "-o", str(full), "--subjects", "1", "--sessions", "2"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]


def test_partial_volumes_follow_a_continuous_change():
    """The partial-volume truth counts what the image shows: a ball of ventricle scaled by s
    grows by s^3 within 1 % at every s, smoothly, whereas the nearest-neighbour count (what a
    label map holds) jumps by whole lattice shells."""
    n, r = 40, 7.0
    grid = np.indices((n, n, n), dtype=np.float32)
    c = 19.3  # off the lattice's symmetry
    ref = np.where(((grid - c) ** 2).sum(axis=0) <= r * r, 4, 0).astype(np.int32)
    pv, nn = [], []
    scales = np.linspace(1.0, 1.12, 13)
    for s in scales:
        pos = c + (grid - c) / s  # a bigger ball: each voxel samples nearer the centre
        pv.append(cohort.partial_volumes(ref, pos, 1.0)["ventricle"])
        nn.append(float(np.isin(cohort.sample_labels(ref, pos), (4,)).sum()))
    pv, nn = np.array(pv), np.array(nn)
    np.testing.assert_allclose(pv / pv[0], scales ** 3, rtol=1e-2)
    assert np.all(np.diff(pv) > 0)
    nn_err = np.abs(nn / nn[0] - scales ** 3).max()
    pv_err = np.abs(pv / pv[0] - scales ** 3).max()
    assert nn_err > 3 * pv_err, (nn_err, pv_err)


def test_cohort_and_truth_derivative_pass_the_bids_validator(tmp_path):
    """`bids-validator-deno` (the schema-based BIDS validator; in the dev extra) finds no error in
    the raw cohort nor in its truth derivative: label maps with a look-up table and a sidecar
    naming their image, NIfTI units stated, the montage folders listed in .bidsignore."""
    import shutil
    import subprocess

    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    root = tmp_path / "cohort"
    cohort.simulate_cohort(root, subjects=2, sessions=2, resolution=4.0, seed=1)
    truth = root / "derivatives" / "brainsynth-truth"
    anat = truth / "sub-001" / "ses-02" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [f"sub-001_ses-02_desc-truth_dseg.{x}" for x in ("json", "nii.gz", "tsv")]
    side = json.loads((anat / "sub-001_ses-02_desc-truth_dseg.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-001/ses-02/anat/sub-001_ses-02_T1w.nii.gz"] == [side["SpatialReference"]]
    assert json.loads((truth / "dataset_description.json").read_text())["DatasetLinks"] == {"raw": "../.."}
    lut = _tsv(anat / "sub-001_ses-02_desc-truth_dseg.tsv")
    names = {int(r["index"]): r["name"] for r in lut}
    assert names[4] == "Left-Lateral-Ventricle" and names[42] == "Right-Cerebral-Cortex"
    import nibabel as nib

    for f in (anat / "sub-001_ses-02_desc-truth_dseg.nii.gz", root / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_T1w.nii.gz"):
        assert nib.load(str(f)).header.get_xyzt_units() == ("mm", "sec"), f
    for folder in (root, truth):
        res = subprocess.run([exe, str(folder), "--format", "json"], check=False, capture_output=True, text=True, timeout=300)
        issues = json.loads(res.stdout)["issues"]["issues"]
        errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
        assert errors == [], (folder.name, errors)
        warnings = {i["code"] for i in issues if i["severity"] == "warning"}
        assert "NIFTI_UNIT" not in warnings, folder.name
        if folder == truth:
            assert not warnings & {"README_FILE_MISSING", "SIDECAR_KEY_RECOMMENDED"}, warnings
