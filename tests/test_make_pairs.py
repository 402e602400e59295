"""make-pairs on small synthetic phantoms: pairs, prompts, disentangled rows, export, resume,
jobs, shards, datasets compatibility and bad input."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

BRAIN = (60.0, 72.0, 57.0)  # brain ellipsoid semi-axes, mm
CORTEX_MM = 7.5  # cortex thickness in the prior


def _rot(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def grid(shape=(46, 54, 44), voxel=3.0, rotate=0.0, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _rot(rotate) * voxel
    centre = (np.asarray(shape) - 1) / 2.0
    aff[:3, 3] = -aff[:3, :3] @ centre + np.asarray(shift)
    return aff


def phantom(affine, shape, vent_scale=1.0, cortex_loss_mm=0.0, gain=1.0, noise_seed=0):
    """A brain-like phantom in world space (RAS mm): CSF shell, cortex ribbon (3/42), white
    matter (2/41), lateral ventricles (4/43). Returns (image float32, labels int32)."""
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    xyz = (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape((3,) + tuple(shape))
    x, y, z = xyz
    r_brain = np.sqrt((x / BRAIN[0]) ** 2 + (y / BRAIN[1]) ** 2 + (z / BRAIN[2]) ** 2)
    inner = [a - CORTEX_MM for a in BRAIN]
    r_inner = np.sqrt((x / inner[0]) ** 2 + (y / inner[1]) ** 2 + (z / inner[2]) ** 2)
    outer = [a - cortex_loss_mm for a in BRAIN]
    r_outer = np.sqrt((x / outer[0]) ** 2 + (y / outer[1]) ** 2 + (z / outer[2]) ** 2)
    lab = np.zeros(shape, np.int32)
    left = x < 0
    lab[r_brain <= 1.08] = 24
    lab[r_outer <= 1.0] = np.where(left, 3, 42)[r_outer <= 1.0]
    lab[r_inner <= 1.0] = np.where(left, 2, 41)[r_inner <= 1.0]
    s = vent_scale
    for cx, value in ((-11.0, 4), (11.0, 43)):
        rv = np.sqrt(((x - cx) / (6.0 * s)) ** 2 + ((y + 3.0) / (21.0 * s)) ** 2 + ((z - 9.0) / (9.0 * s)) ** 2)
        lab[rv <= 1.0] = value
    means = {0: 0.0, 24: 30.0, 3: 75.0, 42: 75.0, 2: 115.0, 41: 115.0, 4: 25.0, 43: 25.0}
    img = np.zeros(shape, np.float32)
    for k, v in means.items():
        img[lab == k] = v
    from scipy import ndimage

    img = ndimage.gaussian_filter(img, 0.7)
    rng = np.random.default_rng(noise_seed)
    img = img + (lab > 0) * rng.normal(0, 2.0, shape).astype(np.float32)
    return (np.clip(img, 0, None) * gain).astype(np.float32), lab


def write_bids(root: Path, subjects: dict, shape=(46, 54, 44)):
    """subjects: {"sub-01": [(ses, age, dict(vent_scale=.., cortex_loss_mm=.., rotate=.., shift=..)), ...]}"""
    import nibabel as nib

    labels_dir = root / "derivatives" / "labels"
    for sub, sessions in subjects.items():
        rows = ["session_id\tage"]
        for ses, age, kw in sessions:
            kw = dict(kw)
            aff = grid(shape, rotate=kw.pop("rotate", 0.0), shift=kw.pop("shift", (0.0, 0.0, 0.0)))
            img, lab = phantom(aff, shape, noise_seed=zlib.crc32(f"{sub}{ses}".encode()) % 1000, **kw)
            anat = root / sub / ses / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(img, aff), anat / f"{sub}_{ses}_T1w.nii.gz")
            ldir = labels_dir / sub / ses / "anat"
            ldir.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(lab.astype(np.int16), aff), ldir / f"{sub}_{ses}_dseg.nii.gz")
            rows.append(f"{ses}\t{age}")
        (root / sub / f"{sub}_sessions.tsv").write_text("\n".join(rows) + "\n")
    return labels_dir


COHORT = {
    "sub-01": [("ses-01", 70.0, {}), ("ses-02", 71.5, dict(vent_scale=1.04, cortex_loss_mm=1.0)),
               ("ses-03", 73.0, dict(vent_scale=1.09, cortex_loss_mm=1.5))],
    "sub-02": [("ses-01", 65.0, {}), ("ses-02", 67.0, dict(vent_scale=1.02))],
    "sub-03": [("ses-01", 80.0, {}), ("ses-02", 82.0, dict(vent_scale=1.10, cortex_loss_mm=1.0, gain=1.4))],
    "sub-test04": [("ses-01", 75.0, {}), ("ses-02", 76.0, dict(cortex_loss_mm=0.5))],
    "sub-05": [("ses-01", 60.0, {})],
}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    labels = write_bids(root, COHORT)
    return root, labels


@pytest.fixture(scope="session")
def pairs2d(cohort, tmp_path_factory):
    from brainsynth_cli.main import run

    root, labels = cohort
    out = tmp_path_factory.mktemp("pairs") / "out2d"
    code = run(["make-pairs", str(root), "-o", str(out), "--labels", str(labels), "--slices", "5", "--size", "64",
                "--blender", "poisson", "--seed", "3"])
    assert code == 0
    return out


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def truth_rates(before: dict, after: dict, after_grid: dict | None = None) -> dict:
    """Change rates of the phantom's groups computed on the label maps as written."""
    _, a = phantom(grid(), (46, 54, 44), **before)
    _, b = phantom(grid(**(after_grid or {})), (46, 54, 44), **after)
    out = {}
    for name, ids in (("ventricle", (4, 43)), ("cortex", (3, 42))):
        va, vb = np.isin(a, ids).sum(), np.isin(b, ids).sum()
        out[name] = (vb - va) / va * 100.0
    return out


def test_rows_prompts_and_rates(pairs2d):
    rows = read_rows(pairs2d)
    cfg = json.loads((pairs2d / "pairs.json").read_text())
    assert cfg["format"] == "brainsynth-pairs" and cfg["dim"] == "2d" and cfg["slices"] == 5 and cfg["size"] == 64
    assert cfg["blender"] == "poisson" and cfg["prompt_builder"] == "quantized" and "[structures.ventricle]" in cfg["rules"]
    # sub-05 has one session; sub-01 has two consecutive pairs
    pairs = sorted({(r["subject"], tuple(r["sessions"])) for r in rows})
    assert pairs == [("sub-01", ("ses-01", "ses-02")), ("sub-01", ("ses-02", "ses-03")), ("sub-02", ("ses-01", "ses-02")),
                     ("sub-03", ("ses-01", "ses-02")), ("sub-test04", ("ses-01", "ses-02"))]
    real = {(r["subject"], tuple(r["sessions"])): r for r in rows if r["kind"] == "real"}
    r3 = real[("sub-03", ("ses-01", "ses-02"))]
    truth = truth_rates({}, dict(vent_scale=1.10, cortex_loss_mm=1.0))
    assert r3["rates"]["ventricle"] == pytest.approx(truth["ventricle"], abs=1e-6)
    assert r3["rates"]["cortex"] == pytest.approx(truth["cortex"], abs=1e-6)
    assert truth["ventricle"] > 20 and truth["cortex"] < 0
    assert r3["edit_prompt"] == "cortex atrophy and severe ventricle enlargement"
    assert r3["intervals"] == {"cortex": "atrophy", "ventricle": "severe"}
    assert r3["interval_years"] == 2.0 and r3["blender"] is None and r3["structure"] is None
    r2 = real[("sub-02", ("ses-01", "ses-02"))]
    assert r2["edit_prompt"] == "mild ventricle enlargement" and r2["intervals"] == {"cortex": None, "ventricle": "mild"}
    assert real[("sub-test04", ("ses-01", "ses-02"))]["edit_prompt"] == "cortex atrophy"
    # disentangled rows: one per described structure, prompt about it alone
    dis = [r for r in rows if r["kind"] == "disentangled" and r["subject"] == "sub-03"]
    assert sorted({r["structure"] for r in dis}) == ["cortex", "ventricle"]
    for r in dis:
        assert r["blender"] == "poisson"
        assert r["edit_prompt"] == {"cortex": "cortex atrophy", "ventricle": "severe ventricle enlargement"}[r["structure"]]
        other = "cortex" if r["structure"] == "ventricle" else "ventricle"
        assert r["rates"][r["structure"]] == pytest.approx(r3["rates"][r["structure"]], abs=1.0)
        assert abs(r["rates"][other]) <= 0.5
        assert r["intervals"][other] is None
    assert sum(1 for r in rows if r["subject"] == "sub-03" and r["kind"] == "real") == 5


def test_split_by_subject_and_files(pairs2d):
    from brainsynth_cli.images import read_png

    rows = read_rows(pairs2d)
    by_subject = {}
    for r in rows:
        by_subject.setdefault(r["subject"], set()).add(r["split"])
        assert r["split"] in ("train", "validation", "test")
        for key in ("input_image_file_name", "edited_image_file_name"):
            a, bits = read_png(pairs2d / r[key])
            assert bits == 16 and a.shape == (64, 64)
        assert set(r["prior_normalisation"]) == {"low", "high", "method"}
        assert "test" not in r["input_image_file_name"]  # datasets would read it as a split name
    assert all(len(s) == 1 for s in by_subject.values())
    # slices: 5 consecutive canonical indices around the ventricles' centroid (z = 9 mm above centre)
    s = sorted({r["slice"] for r in rows if r["subject"] == "sub-03"})
    assert len(s) == 5 and s == list(range(s[0], s[0] + 5))
    centre = (44 - 1) / 2 + 9.0 / 3.0
    assert abs((s[0] + s[-1]) / 2 - centre) <= 1.0
    assert (pairs2d / "montage-real.png").is_file() and (pairs2d / "montage-disentangled.png").is_file()


def test_montage_rows_carry_full_titles_and_a_colour_bar(pairs2d):
    """Each montage row is titled with its subject, sessions, kind, slice and full prompt (rows of
    different pairs are told apart); the difference column has a colour bar; legible tiles."""
    from brainsynth_cli.structures import load_rules
    from brainsynth_plugins.pairs.engine import Options, montage_figure, pick_montage_rows

    rows = read_rows(pairs2d)
    for kind in ("real", "disentangled"):
        picked = pick_montage_rows([r for r in rows if r["kind"] == kind], 3)
        fig = montage_figure(picked, Options(dataset=pairs2d, out=pairs2d, dim="2d"), load_rules(None))
        texts = [t.get_text().replace("\n", " ") for t in fig.texts]
        titles = [t for t in texts if t.startswith("sub-")]
        assert len(titles) == len(picked) == len(set(titles))
        for r, t in zip(picked, titles):
            assert t.startswith(f"{r['subject']} {r['sessions'][0]} → {r['sessions'][1]}") and t.endswith(f"“{r['edit_prompt']}”")
            assert f"axial slice {r['slice']}" in t
        assert [ax for ax in fig.axes if ax.get_label() == "colour bar"]
        assert all(ax.get_window_extent().width >= 180 for ax in fig.axes if ax.get_label() != "colour bar")
        if kind == "disentangled":  # the named structure is outlined and in the legend
            assert any("named structure" in t.get_text() for t in fig.legends[0].get_texts())


def test_png_matches_slice_convention(pairs2d, cohort):
    """The prior PNG is the canonical slice of the prior volume, windowed, turned to the radiological
    view (anterior up, the patient's right on the left) and squared; the row records its pixel size."""
    from brainsynth_cli.images import read_png, read_volume
    from brainsynth_cli.slices import normalisation, normalise, to_canonical, to_png16, to_square, to_view

    root, _ = cohort
    row = next(r for r in read_rows(pairs2d) if r["subject"] == "sub-02")
    vol = read_volume(root / "sub-02" / "ses-01" / "anat" / "sub-02_ses-01_T1w.nii.gz")
    norm = normalisation(vol.data)
    assert row["prior_normalisation"]["low"] == pytest.approx(norm.low)
    canon, _ = to_canonical(normalise(vol.data, norm), vol.affine)
    a = canon[:, :, row["slice"]]
    expected = to_png16(to_square(to_view(a), 64))
    got, _ = read_png(pairs2d / row["input_image_file_name"])
    assert np.array_equal(got, expected)
    # the view: row 0 is the most anterior line, column 0 the patient's rightmost one
    assert np.array_equal(to_view(a)[0], a[::-1, -1]) and np.array_equal(to_view(a)[:, 0], a[-1, ::-1])
    assert row["pixel_mm"] == pytest.approx(max(canon.shape[0], canon.shape[1]) * vol.voxel_size[0] / 64, rel=1e-4)


def test_datasets_imagefolder_reads_the_folder(pairs2d):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("imagefolder", data_dir=str(pairs2d))
    assert list(ds) == ["train"]
    train = ds["train"]
    assert {"input_image", "edited_image", "edit_prompt", "subject", "kind", "rates", "split"} <= set(train.column_names)
    assert len(train) == len(read_rows(pairs2d))
    first = train[0]
    assert first["input_image"].size == (64, 64) and first["input_image"].mode.startswith("I")
    assert isinstance(first["edit_prompt"], str) and first["edit_prompt"]


def test_resume_skips_finished_pairs_and_gives_same_bytes(pairs2d, cohort, tmp_path, cli):
    import shutil

    root, labels = cohort
    out = tmp_path / "copy"
    shutil.copytree(pairs2d, out)
    before = (out / "metadata.jsonl").read_bytes()
    victim = next(p for p in (out / ".parts").glob("sub-02*.json"))
    victim.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "pairs" / "sub-01").rglob("*.png")}
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "5", "--size", "64", "--seed", "3")
    assert res.exit_code == 0, res.stderr
    assert "resuming: 4 of 5 pairs already made" in res.stdout
    assert "warning: sub-05 has one session (ses-01); skipped" in res.stderr
    assert (out / "metadata.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "pairs" / "sub-01").rglob("*.png")} == stamp
    # other options into the same folder are refused
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "7", "--size", "64", "--seed", "3")
    assert res.exit_code == 2 and "other options" in res.stderr and "slices" in res.stderr


def test_shards_and_jobs_merge_to_the_same_rows(pairs2d, cohort, tmp_path, cli):
    root, labels = cohort
    out = tmp_path / "sharded"
    common = [root, "-o", out, "--labels", labels, "--slices", "5", "--size", "64", "--seed", "3"]
    res = cli("make-pairs", *common, "--shard", "1/2")
    assert res.exit_code == 0, res.stderr
    assert not (out / "metadata.jsonl").exists()
    res = cli("make-pairs", *common, "--merge")
    assert res.exit_code == 2 and "not made yet" in res.stderr
    res = cli("make-pairs", *common, "--shard", "2/2", "--jobs", "2")
    assert res.exit_code == 0, res.stderr
    res = cli("make-pairs", *common, "--merge")
    assert res.exit_code == 0, res.stderr
    assert (out / "metadata.jsonl").read_bytes() == (pairs2d / "metadata.jsonl").read_bytes()
    for r in read_rows(out):
        assert (out / r["edited_image_file_name"]).read_bytes() == (pairs2d / r["edited_image_file_name"]).read_bytes()


def test_3d_with_registration_numeric_prompts(tmp_path, cli):
    """A target on another grid (rotated 6 degrees, shifted) is registered to the prior."""
    from brainsynth_cli.images import read_volume

    root = tmp_path / "bids"
    labels = write_bids(root, {"sub-01": [("ses-01", 70.0, {}), ("ses-02", 72.0, dict(vent_scale=1.08, rotate=6.0, shift=(4.0, -3.0, 2.0)))]})
    out = tmp_path / "out3d"
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--dim", "3d", "--prompt-builder", "numeric", "--blender", "copy-paste")
    assert res.exit_code == 0, res.stderr
    rows = read_rows(out)
    real = next(r for r in rows if r["kind"] == "real")
    # rates come from each session's own label map (no loss from resampling the labels)
    truth = truth_rates({}, dict(vent_scale=1.08), dict(rotate=6.0, shift=(4.0, -3.0, 2.0)))
    assert real["rates"]["ventricle"] == pytest.approx(truth["ventricle"], abs=1e-5)
    assert real["rates"]["cortex"] == pytest.approx(truth["cortex"], abs=1e-5)
    assert real["edit_prompt"] == (f"cortex shrinks by {-truth['cortex']:.1f}% and ventricle enlarges by {truth['ventricle']:.1f}%")
    assert real["slice"] is None
    prior = read_volume(out / real["input_image_file_name"])
    target = read_volume(out / real["edited_image_file_name"])
    assert prior.shape == target.shape == (46, 54, 44)
    assert np.allclose(prior.affine, target.affine)
    assert float(np.corrcoef(prior.data.ravel(), target.data.ravel())[0, 1]) > 0.95
    part = json.loads(next((out / ".parts").glob("*.json")).read_text())
    assert part["registered"] is True


def test_bad_input_one_line_errors(cohort, tmp_path, cli):
    import shutil

    import nibabel as nib

    root, labels = cohort
    # missing labels for a session
    bad = tmp_path / "lab1"
    shutil.copytree(labels, bad)
    next((bad / "sub-02" / "ses-02" / "anat").glob("*_dseg.nii.gz")).unlink()
    res = cli("make-pairs", root, "-o", tmp_path / "o1", "--labels", bad)
    assert res.exit_code == 2 and "sub-02 ses-02: no label map" in res.stderr and len(res.stderr.strip().splitlines()) == 2
    assert not (tmp_path / "o1").exists()
    # mismatched label grid
    bad = tmp_path / "lab2"
    shutil.copytree(labels, bad)
    f = next((bad / "sub-03" / "ses-01" / "anat").glob("*_dseg.nii.gz"))
    img = nib.load(str(f))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), str(f))
    res = cli("make-pairs", root, "-o", tmp_path / "o2", "--labels", bad)
    assert res.exit_code == 2 and "sub-03 ses-01: label map has shape (44, 54, 44)" in res.stderr
    assert not (tmp_path / "o2").exists()
    # empty structure in the prior
    bad = tmp_path / "lab3"
    shutil.copytree(labels, bad)
    f = next((bad / "sub-02" / "ses-01" / "anat").glob("*_dseg.nii.gz"))
    img = nib.load(str(f))
    data = np.asarray(img.dataobj).copy()
    data[np.isin(data, (4, 43))] = 2
    nib.save(nib.Nifti1Image(data, img.affine), str(f))
    out = tmp_path / "o3"
    res = cli("make-pairs", root, "-o", out, "--labels", bad, "--slices", "3", "--size", "32", "--blender", "copy-paste")
    assert res.exit_code == 2
    assert "sub-02 ses-01: structure group 'ventricle' (labels 4, 5, 43, 44) is empty in the prior's label map" in res.stderr
    assert not (out / "metadata.jsonl").exists()
    assert not (out / "pairs" / "sub-02").exists() and not list((out / ".parts").glob("sub-02*"))
    assert not list((out / ".parts").glob(".tmp*"))
    # unreadable rules file
    rules = tmp_path / "rules.toml"
    rules.write_bytes(b"[structures.ventricle\nlabels = [4\n")
    res = cli("make-pairs", root, "-o", tmp_path / "o4", "--labels", labels, "--rules", rules)
    assert res.exit_code == 2 and f"{rules}: is not valid TOML" in res.stderr
    assert not (tmp_path / "o4").exists()


def test_psnr_filter_and_template_builder(cohort, tmp_path, cli):
    root, labels = cohort
    out = tmp_path / "psnr"
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "2", "--size", "32", "--blender", "copy-paste",
              "--prompt-builder", "template", "--min-psnr", "100")
    assert res.exit_code == 0, res.stderr
    assert read_rows(out) == [] and "skipped 5 (psnr)" in res.stdout
    out = tmp_path / "tmpl"
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "2", "--size", "32", "--blender", "copy-paste",
              "--prompt-builder", "template", "--pairing", "all")
    assert res.exit_code == 0, res.stderr
    rows = read_rows(out)
    assert len({tuple(r["sessions"]) for r in rows if r["subject"] == "sub-01"}) == 3  # all: 1-2, 1-3, 2-3
    assert all("mm3" in r["edit_prompt"] for r in rows)


def test_label_slices_follow_each_row(pairs2d, cohort):
    """Label slices (for evaluation) sit on the image slices' square grid; a disentangled row's
    labels hold S as in the real target and the other described structures as in the prior."""
    from brainsynth_plugins.pairs.engine import square_labels

    from brainsynth_cli.images import read_labels, read_png
    from brainsynth_cli.slices import to_canonical, to_view

    root, labels = cohort
    rows = [r for r in read_rows(pairs2d) if r["subject"] == "sub-03"]
    prior_lab = read_labels(labels / "sub-03" / "ses-01" / "anat" / "sub-03_ses-01_dseg.nii.gz")
    canon, _ = to_canonical(prior_lab.data, prior_lab.affine)
    r0 = rows[0]
    got, bits = read_png(pairs2d / r0["input_labels_file_name"])
    assert bits == 16 and np.array_equal(got, square_labels(to_view(canon[:, :, r0["slice"]]), 64))
    image, _ = read_png(pairs2d / r0["input_image_file_name"])
    assert image[got == 0].mean() < image[np.isin(got, (2, 41))].mean() / 3  # labels and image line up
    for r in rows:
        if r["kind"] != "disentangled":
            continue
        real = next(x for x in rows if x["kind"] == "real" and x["slice"] == r["slice"])
        dis, _ = read_png(pairs2d / r["edited_labels_file_name"])
        tgt, _ = read_png(pairs2d / real["edited_labels_file_name"])
        pri, _ = read_png(pairs2d / r["input_labels_file_name"])
        ids = {"ventricle": (4, 43), "cortex": (3, 42)}
        s, other = r["structure"], "cortex" if r["structure"] == "ventricle" else "ventricle"
        assert np.array_equal(np.isin(dis, ids[s]), np.isin(tgt, ids[s]))
        assert np.array_equal(np.isin(dis, ids[other]), np.isin(pri, ids[other]))


def test_csv_manifest_dates_and_sex(cohort, tmp_path, cli):
    """A CSV manifest with labels and dates (no ages): interval_years from the dates; the
    template builder gets the sex; --split 1:0:0 puts everyone in train."""
    root, labels = cohort
    lines = ["subject,session,image,labels,date,sex"]
    for ses, date in (("ses-01", "2020-01-01"), ("ses-02", "2021-07-02")):
        img = root / "sub-02" / ses / "anat" / f"sub-02_{ses}_T1w.nii.gz"
        lab = labels / "sub-02" / ses / "anat" / f"sub-02_{ses}_dseg.nii.gz"
        lines.append(f"02,{ses},{img},{lab},{date},F")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "csv"
    res = cli("make-pairs", manifest, "-o", out, "--slices", "1", "--size", "32", "--blender", "copy-paste",
              "--prompt-builder", "template", "--split", "1:0:0")
    assert res.exit_code == 0, res.stderr
    rows = read_rows(out)
    assert rows and all(r["interval_years"] == pytest.approx(1.5, abs=0.01) for r in rows)
    assert all(r["split"] == "train" and "female" in r["edit_prompt"] for r in rows)


@pytest.mark.parametrize("args,needle", [
    (["--split", "8:1"], "--split '8:1'"),
    (["--shard", "3/2"], "--shard '3/2'"),
    (["--dim", "4d"], "'4d' is not one of '2d', '3d'"),
    (["--blender", "poison"], "did you mean 'poisson'"),
    (["--prompt-builder", "quantised"], "did you mean 'quantized'"),
])
def test_bad_options(cohort, tmp_path, cli, monkeypatch, args, needle):
    monkeypatch.setenv("COLUMNS", "240")  # a usage error's message on one row of its box
    root, labels = cohort
    res = cli("make-pairs", root, "-o", tmp_path / "o", "--labels", labels, *args)
    assert res.exit_code == 2 and needle in res.stderr
    assert not (tmp_path / "o").exists()


def test_omega_margin_and_protection():
    from brainsynth_plugins.pairs.engine import omega

    from brainsynth_cli.structures import default_rules

    rules = default_rules()
    prior = np.zeros((21, 21, 21), np.int32)
    prior[10, 10, 10] = 4  # one ventricle voxel
    target = prior.copy()
    target[10, 11, 10] = 43  # the ventricle grows by one voxel
    target[10, 13, 10] = 3  # the cortex appears nearby (a change of another described group)
    vent = rules["ventricle"]
    core = omega(prior, target, vent, 0.0, (1.0, 1.0, 1.0))
    assert core.sum() == 2
    two_mm = omega(prior, target, vent, 2.0, (1.0, 1.0, 1.0), protect=rules.described())
    # a 2 mm ball around each core voxel, minus the cortex change at (10, 13, 10)
    assert two_mm[10, 10, 8] and two_mm[10, 11, 12] and not two_mm[10, 10, 7] and not two_mm[12, 12, 10]
    assert not two_mm[10, 13, 10]  # protected
    assert omega(prior, target, vent, 2.0, (1.0, 1.0, 1.0), protect=())[10, 13, 10]
    # margins below a voxel still dilate by one voxel; anisotropic voxels get per-axis radii
    thick = omega(prior, target, vent, 2.0, (1.0, 1.0, 3.0))
    assert thick[10, 10, 9] and not thick[10, 10, 8] and thick[8, 10, 10]


def test_split_names_and_assignment():
    from brainsynth_plugins.pairs.engine import assign_splits, parse_split, safe_component, split_counts

    assert safe_component("sub-001") == "sub-001"
    for bad in ("sub-test01", "ses-val", "train", "sub-01_eval", "dev-3"):
        assert safe_component(bad) != bad and safe_component(bad) == safe_component(bad)
    assert safe_component("ses-retest") == "ses-retest"  # "retest" is no split word
    subjects = [f"sub-{i:03d}" for i in range(20)]
    a = assign_splits(subjects, parse_split("8:1:1"), 5)
    assert a == assign_splits(subjects, (8, 1, 1), 5) and a != assign_splits(subjects, (8, 1, 1), 6)
    assert sorted(a.values()).count("train") == 16 and list(a.values()).count("test") == 2
    assert [split_counts(n, (8, 1, 1)) for n in (1, 2, 3, 4, 5, 10, 13)] == [
        [1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 1, 1], [3, 1, 1], [8, 1, 1], [11, 1, 1]]
    assert split_counts(7, (1, 0, 0)) == [7, 0, 0] and split_counts(6, (1, 1, 1)) == [2, 2, 2]


def test_blender_none_realises_no_change(cohort, tmp_path, cli):
    """With the `none` control the blended target is the prior: its realised rates are zero,
    so the quantized builder describes nothing and no disentangled row is made."""
    root, labels = cohort
    out = tmp_path / "none"
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "1", "--size", "32", "--blender", "none")
    assert res.exit_code == 0, res.stderr
    rows = read_rows(out)
    assert rows and {r["kind"] for r in rows} == {"real"}


def test_deformed_rows_cover_every_interval_with_exact_rates(tmp_path, cli):
    """--deformed: per pair, the prior deformed in 3D to a rate drawn in each interval of the
    rules; the recorded rates are those of the written label map."""
    from brainsynth_cli.images import read_labels, read_png

    root = tmp_path / "bids"
    labels = write_bids(root, {"sub-01": [("ses-01", 70.0, {}), ("ses-02", 71.0, {"vent_scale": 1.03})]})
    out = tmp_path / "def3d"
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--dim", "3d", "--deformed", "--blender", "copy-paste")
    assert res.exit_code == 0, res.stderr
    rows = read_rows(out)
    deformed = [r for r in rows if r["kind"] == "deformed"]
    assert sorted(tuple(f"{n} {r['intervals'][n]}" for n in r["deform_target"]) for r in deformed) == [
        ("cortex atrophy",), ("cortex atrophy", "ventricle mild"), ("cortex atrophy", "ventricle moderate"),
        ("cortex atrophy", "ventricle severe"), ("ventricle mild",), ("ventricle moderate",), ("ventricle severe",)]
    drawn = {"atrophy": (-5.4, -0.6), "mild": (2.0, 8.0), "moderate": (12.0, 18.0), "severe": (21.0, 29.0)}
    real = next(r for r in rows if r["kind"] == "real")
    prior = read_labels(out / real["input_labels_file_name"]).data
    for r in deformed:
        lab = read_labels(out / r["edited_labels_file_name"]).data
        for group, ids in (("ventricle", (4, 5, 43, 44)), ("cortex", (3, 42)), ("white-matter", (2, 41)), ("csf", (24,))):
            before, after = np.isin(prior, ids).sum(), np.isin(lab, ids).sum()
            assert r["rates"][group] == pytest.approx((after - before) / before * 100.0, abs=1e-5)
        for s, target in r["deform_target"].items():
            lo, hi = drawn[r["intervals"][s]]
            assert lo <= target <= hi
            assert abs(r["rates_pv"][s] - target) <= 0.25 and abs(r["rates"][s] - target) <= 1.0
        phrases = [("cortex atrophy" if s == "cortex" else f"{r['intervals'][s]} ventricle enlargement") for s in r["deform_target"]]
        assert r["edit_prompt"] == " and ".join(phrases)
        assert r["structure"] == (next(iter(r["deform_target"])) if len(r["deform_target"]) == 1 else None)
        assert r["blender"] is None and r["split"] == real["split"] and r["input_image_file_name"] == real["input_image_file_name"]
        assert {k for k, v in r["intervals"].items() if v} == set(r["deform_target"])
    # a combination's draws are its own: its cortex rate is not the single cortex row's
    single = next(r for r in deformed if r["deform_target"].keys() == {"cortex"})
    combos = [r for r in deformed if len(r["deform_target"]) == 2]
    assert len({r["deform_target"]["cortex"] for r in combos} | {single["deform_target"]["cortex"]}) == 4
    assert real["rates_pv"] is None and real["deform_target"] is None  # every row has the same columns
    assert json.loads((out / "pairs.json").read_text())["deformed"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deformed"] is True and summary["rows"]["deformed"] == 7 and summary["deformed_failed"] == 0
    assert (out / "montage-deformed.png").is_file()

    # 2D: label slices with every row; the severe row's slices hold more ventricle than the prior's
    out2 = tmp_path / "def2d"
    common = ["make-pairs", root, "-o", out2, "--labels", labels, "--slices", "3", "--size", "64", "--blender", "none"]
    assert cli(*common, "--deformed").exit_code == 0
    rows2 = [r for r in read_rows(out2) if r["kind"] == "deformed"]
    assert len(rows2) == 7 * 3 and all(r["slice"] is not None for r in rows2)
    severe = [r for r in rows2 if r["intervals"]["ventricle"] == "severe"]
    def count(key: str) -> int:
        return sum(int(np.isin(read_png(out2 / r[key])[0], (4, 43)).sum()) for r in severe)

    assert count("edited_labels_file_name") > count("input_labels_file_name")
    datasets = pytest.importorskip("datasets")  # single-group and combined rows in one column
    train = datasets.load_dataset("imagefolder", data_dir=str(out2))["train"]
    targets = [t for t in train["deform_target"] if t is not None]
    assert len(targets) == 7 * 3 and sum(all(v is not None for v in t.values()) for t in targets) == 3 * 3
    # resuming: the same options are resumed; without --deformed the folder is refused
    again = cli(*common, "--deformed")
    assert again.exit_code == 0 and "resuming: 1 of 1 pairs already made" in again.stdout
    res = cli(*common)
    assert res.exit_code == 2 and "other options" in res.stderr and "deformed" in res.stderr


def test_pairs_folder_from_rules_without_targets_still_resumes(pairs2d, cohort, tmp_path, cli):
    """A folder whose pairs.json rules were written before interval targets existed resumes
    when the rules mean the same."""
    import re
    import shutil

    root, labels = cohort
    out = tmp_path / "old"
    shutil.copytree(pairs2d, out)
    cfg = json.loads((out / "pairs.json").read_text())
    cfg["rules"] = re.sub(r"(?m)^target = .*\n", "", cfg["rules"])
    (out / "pairs.json").write_text(json.dumps(cfg, indent=2) + "\n")
    res = cli("make-pairs", root, "-o", out, "--labels", labels, "--slices", "5", "--size", "64", "--seed", "3")
    assert res.exit_code == 0, res.stderr
    assert "resuming: 5 of 5 pairs already made" in res.stdout


def test_rules_that_differ_only_in_targets_matter_only_for_deformed_folders():
    """Interval targets decide the deformed rows' rates only: a folder without deformed rows resumes
    under rules whose targets moved (e.g. the built-in cortex target), a deformed folder does not."""
    from brainsynth_plugins.pairs.engine import _same_rules

    from brainsynth_cli.structures import DEFAULT_RULES_PATH

    text = DEFAULT_RULES_PATH.read_text()
    moved = text.replace("target = -2\n", "target = -3\n")
    assert moved != text
    assert _same_rules(text, moved, targets=False)
    assert not _same_rules(text, moved, targets=True)
    assert not _same_rules(text, text.replace('phrase = "cortex atrophy"', 'phrase = "cortical atrophy"'), targets=False)
