"""brainsynth segment: the atlas segmenter on a simulated cohort (Dice, change rates against
ground truth), the single-image and dataset forms, resume, determinism, volumes, QC, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from brainsynth_cli.images import read_labels, read_volume, write_volume
from brainsynth_cli.structures import change_rate

cohort = pytest.importorskip("brainsynth_plugins.simulate.cohort")

V_IDS, C_IDS = (4, 43), (3, 42)


def dice(a: np.ndarray, b: np.ndarray, ids: tuple[int, ...]) -> float:
    x, y = np.isin(a, ids), np.isin(b, ids)
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


@pytest.fixture(scope="session")
def sim_cohort(tmp_path_factory):
    """Two subjects x two sessions at 2 mm (with skull), segmented once by the dataset form."""
    from brainsynth_cli.main import run

    root = tmp_path_factory.mktemp("segment-cohort")
    data = root / "bids"
    cohort.simulate_cohort(data, subjects=2, sessions=2, resolution=2.0, seed=3, ventricle_rate=(2.0, 12.0))
    deriv = root / "deriv"
    code = run(["segment", str(data), "--bids", "-o", str(deriv)])
    assert code == 0
    return data, deriv


def _truth(data: Path, sub: str, ses: str) -> np.ndarray:
    folder = data / "derivatives" / "brainsynth-truth" / sub / ses / "anat"
    return read_labels(next(folder.glob("*_dseg.nii.gz"))).data


def _realised(data: Path, sub: str) -> dict[str, dict[str, float]]:
    with open(data / sub / f"{sub}_sessions.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {r["session_id"]: r for r in rows}


def test_atlas_dice_on_simulated_cohort(sim_cohort):
    data, deriv = sim_cohort
    for sub in ("sub-001", "sub-002"):
        for ses in ("ses-01", "ses-02"):
            labels = read_labels(deriv / sub / ses / "anat" / f"{sub}_{ses}_desc-aseg_dseg.nii.gz")
            image = read_volume(next((data / sub / ses / "anat").glob("*_T1w.nii.gz")))
            assert labels.shape == image.shape
            np.testing.assert_allclose(labels.affine, image.affine)
            truth = _truth(data, sub, ses)
            assert dice(labels.data, truth, V_IDS) >= 0.85, (sub, ses)
            assert dice(labels.data, truth, C_IDS) >= 0.75, (sub, ses)


def test_dataset_layout_volumes_and_resume(sim_cohort, cli):
    from brainsynth_cli.datasets import read_dataset

    data, deriv = sim_cohort
    ds = read_dataset(data, deriv)
    assert all(s.labels is not None for s in ds.sessions)  # the layout find_labels reads
    rows = (deriv / "volumes.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["participant_id", "session_id", "cortex_mm3"]
    assert len(rows) == 1 + 4
    vol = json.loads((deriv / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-aseg_dseg.json").read_text())
    labels = read_labels(deriv / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-aseg_dseg.nii.gz").data
    assert vol["structures_mm3"]["ventricle"] == pytest.approx(np.isin(labels, (4, 5, 43, 44)).sum() * 8.0)
    assert (deriv / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-aseg_qc.png").is_file()
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Segmenter"] == "atlas"
    # a re-run skips every finished session and leaves the files as they were
    target = deriv / "sub-002" / "ses-02" / "anat" / "sub-002_ses-02_desc-aseg_dseg.nii.gz"
    before = (target.stat().st_mtime_ns, target.read_bytes())
    r = cli("segment", data, "--bids", "-o", deriv)
    assert r.exit_code == 0, r.stderr
    assert "segmented 0 subject(s)" in r.stdout
    assert (target.stat().st_mtime_ns, target.read_bytes()) == before
    # other settings into the same folder are refused
    r = cli("segment", data, "--bids", "-o", deriv, "--independent")
    assert r.exit_code == 2 and "longitudinal" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_derivatives_are_bids(sim_cohort):
    """The layout BIDS derivatives ask for: a look-up table and a sidecar beside every label map,
    units in the NIfTI header, volumes per session in sub-X_sessions.tsv."""
    import nibabel as nib

    data, deriv = sim_cohort
    anat = deriv / "sub-001" / "ses-02" / "anat"
    img = nib.load(anat / "sub-001_ses-02_desc-aseg_dseg.nii.gz")
    assert img.header.get_xyzt_units() == ("mm", "sec")
    lut = list(csv.DictReader((anat / "sub-001_ses-02_desc-aseg_dseg.tsv").read_text().splitlines(), delimiter="\t"))
    assert list(lut[0]) == ["index", "name", "color"]
    names = {int(r["index"]): r["name"] for r in lut}
    assert names[0] == "Unknown" and names[4] == "Left-Lateral-Ventricle" and names[42] == "Right-Cerebral-Cortex"
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= set(names)
    assert all(len(r["color"]) == 7 and r["color"].startswith("#") for r in lut)
    side = json.loads((anat / "sub-001_ses-02_desc-aseg_dseg.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-001/ses-02/anat/sub-001_ses-02_T1w.nii.gz"] and side["from_session"] == "ses-01"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["raw"] == data.resolve().as_uri() == desc["SourceDatasets"][0]["URL"]
    rows = list(csv.DictReader((deriv / "sub-001" / "sub-001_sessions.tsv").read_text().splitlines(), delimiter="\t"))
    assert [r["session_id"] for r in rows] == ["ses-01", "ses-02"]
    assert float(rows[1]["ventricle_mm3"]) == pytest.approx(side["structures_mm3"]["ventricle"], abs=1e-3)
    assert set(json.loads((deriv / "sessions.json").read_text())) >= {f"{k}_mm3" for k in side["structures_mm3"]}
    assert "*_qc.png" in (deriv / ".bidsignore").read_text().splitlines()


def test_derivatives_pass_the_bids_validator(sim_cohort):
    """`bids-validator-deno` (the schema-based BIDS validator; in the dev extra) finds no error."""
    import shutil
    import subprocess

    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    _, deriv = sim_cohort
    run = subprocess.run([exe, str(deriv), "--format", "json"], check=False, capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout)
    issues = report["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == [], errors
    warnings = {i["code"] for i in issues if i["severity"] == "warning"}
    assert not warnings & {"NIFTI_UNIT", "SIDECAR_KEY_RECOMMENDED", "README_FILE_MISSING",
                           "TSV_ADDITIONAL_COLUMNS_UNDEFINED"}, warnings
    assert report["summary"]["dataTypes"] == ["anat"] and len(report["summary"]["subjects"]) == 2


def test_dataset_without_sessions_and_with_runs(sim_cohort, cli, tmp_path):
    """No ses- level: outputs without a ses- entity, volumes in participants.tsv; two runs: the
    last is taken and said; --run with another run into the same folder is refused."""
    import shutil
    import subprocess

    data, _ = sim_cohort
    raw = tmp_path / "raw"
    (raw / "sub-001" / "anat").mkdir(parents=True)
    shutil.copy(data / "dataset_description.json", raw)
    for run, ses in ((1, "ses-01"), (2, "ses-02")):
        shutil.copy(data / "sub-001" / ses / "anat" / f"sub-001_{ses}_T1w.nii.gz", raw / "sub-001" / "anat" / f"sub-001_run-{run}_T1w.nii.gz")
    deriv = raw / "derivatives" / "brainsynth-segment"
    r = cli("segment", raw, "--bids", "-o", deriv)
    assert r.exit_code == 0, r.stderr
    assert "2 T1w runs, took run-2" in r.stdout
    anat = deriv / "sub-001" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [f"sub-001_desc-aseg_{x}" for x in ("dseg.json", "dseg.nii.gz", "dseg.tsv", "qc.png")]
    side = json.loads((anat / "sub-001_desc-aseg_dseg.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-001/anat/sub-001_run-2_T1w.nii.gz"]
    assert json.loads((deriv / "dataset_description.json").read_text())["DatasetLinks"] == {"raw": "../.."}
    rows = (deriv / "participants.tsv").read_text().splitlines()
    assert rows[0].startswith("participant_id\tcortex_mm3") and rows[1].startswith("sub-001\t") and len(rows) == 2
    assert not (deriv / "sessions.json").exists()
    from brainsynth_cli.datasets import read_dataset

    assert read_dataset(raw, deriv).sessions[0].labels == anat / "sub-001_desc-aseg_dseg.nii.gz"
    r = cli("segment", raw, "--bids", "-o", deriv, "--run", "1")
    assert r.exit_code == 2 and "run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    exe = shutil.which("bids-validator-deno")
    if exe is not None:
        run = subprocess.run([exe, str(deriv), "--format", "json"], check=False, capture_output=True, text=True, timeout=300)
        errors = [(i["code"], i.get("location")) for i in json.loads(run.stdout)["issues"]["issues"] if i["severity"] == "error"]
        assert errors == [], errors


def test_old_layout_folder_is_refused(sim_cohort, cli, tmp_path):
    data, _ = sim_cohort
    old = tmp_path / "old" / "sub-001" / "ses-01" / "anat"
    old.mkdir(parents=True)
    (old / "sub-001_ses-01_volumes.json").write_text("{}")
    r = cli("segment", data, "--bids", "-o", tmp_path / "old")
    assert r.exit_code == 2 and "older brainsynth layout" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sources_are_bids_uris_or_file_uris(tmp_path):
    from brainsynth_cli.commands.segment import _raw_link, source_uri

    raw = tmp_path / "raw"
    img = raw / "sub-1" / "ses-1" / "anat" / "sub-1_ses-1_T1w.nii.gz"
    assert source_uri(img, str(raw.resolve())) == "bids:raw:sub-1/ses-1/anat/sub-1_ses-1_T1w.nii.gz"
    assert source_uri(tmp_path / "elsewhere.nii.gz", str(raw.resolve())) == (tmp_path / "elsewhere.nii.gz").resolve().as_uri()
    assert source_uri(img, None) == img.resolve().as_uri()  # a CSV manifest's image
    assert _raw_link(raw / "derivatives" / "brainsynth-segment", raw, "bids") == "../.."
    assert _raw_link(tmp_path / "out", raw, "bids") == raw.resolve().as_uri()


def test_resumed_subject_is_redone_byte_for_byte(sim_cohort, cli):
    """Longitudinal mode redoes a subject with a missing session as a whole; deterministic."""
    data, deriv = sim_cohort
    anat = {ses: deriv / "sub-001" / ses / "anat" for ses in ("ses-01", "ses-02")}
    before = {ses: (a / f"sub-001_{ses}_desc-aseg_dseg.nii.gz").read_bytes() for ses, a in anat.items()}
    (anat["ses-02"] / "sub-001_ses-02_desc-aseg_dseg.nii.gz").unlink()
    r = cli("segment", data, "--bids", "-o", deriv)
    assert r.exit_code == 0, r.stderr
    assert "segmented 1 subject(s)" in r.stdout and "(2 session(s) already done)" in r.stdout
    after = {ses: (a / f"sub-001_{ses}_desc-aseg_dseg.nii.gz").read_bytes() for ses, a in anat.items()}
    assert after == before


def test_single_image_writes_labels_volumes_and_qc(sim_cohort, cli, tmp_path):
    data, deriv = sim_cohort
    image_path = next((data / "sub-002" / "ses-01" / "anat").glob("*_T1w.nii.gz"))
    out, js, qc = tmp_path / "l.nii.gz", tmp_path / "v.json", tmp_path / "qc.png"
    r = cli("segment", image_path, "-o", out, "--volumes", js, "--qc", qc)
    assert r.exit_code == 0, r.stderr
    mine, image = read_labels(out), read_volume(image_path)
    assert mine.shape == image.shape and mine.data.dtype == np.int32
    np.testing.assert_allclose(mine.affine, image.affine)
    truth = _truth(data, "sub-002", "ses-01")
    assert dice(mine.data, truth, V_IDS) >= 0.85 and dice(mine.data, truth, C_IDS) >= 0.75
    doc = json.loads(js.read_text())
    assert doc["segmenter"] == "atlas" and doc["image"] == str(image_path)
    assert doc["structures_mm3"]["ventricle"] == pytest.approx(np.isin(mine.data, (4, 5, 43, 44)).sum() * 8.0)
    assert doc["labels_mm3"]["4"] + doc["labels_mm3"]["43"] == pytest.approx(doc["structures_mm3"]["ventricle"])
    assert doc["label_names"]["43"] == "Right-Lateral-Ventricle"
    from PIL import Image

    with Image.open(qc) as im:
        assert im.size[0] >= 3 * 260 and im.size[1] >= 260  # three legible panels
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert (np.abs(rgb - [120, 18, 134]).sum(axis=2) < 60).sum() > 20  # ventricle outlines (and legend) in their colour


def test_volumes_csv_rows():
    from brainsynth_cli.commands.segment import volume_table, volumes_text
    from brainsynth_cli.images import Volume
    from brainsynth_cli.structures import default_rules

    lab = np.zeros((4, 4, 4), np.int32)
    lab[0] = 4
    lab[1, :2] = 43
    lab[2] = 3
    table = volume_table(Volume(lab, np.diag([2.0, 1.0, 1.5, 1.0])), default_rules())
    rows = list(csv.DictReader(volumes_text(table, Path("v.csv")).splitlines()))
    by = {(r["kind"], r["name"]): float(r["volume_mm3"]) for r in rows}
    assert by[("structure", "ventricle")] == pytest.approx(24 * 3.0)
    assert by[("label", "Left-Lateral-Ventricle")] == pytest.approx(16 * 3.0)
    assert by[("structure", "cortex")] == pytest.approx(16 * 3.0)
    assert [r["label"] for r in rows if r["kind"] == "label"] == ["3", "4", "43"]


def test_change_rates_follow_the_truth(sim_cohort):
    """Longitudinal ventricle change rates (as `segment --bids` writes them) against the
    partial-volume truth (``ventricle_rate_pv``: the rate the images hold; the truth labels' own
    rate adds up to ~3 pp of lattice noise at 2 mm, see cohort.partial_volumes).

    The issue's acceptance is 2 pp; benchmarks/RESULTS.md, "segment", has the distribution over
    18 subjects. Independent segmentation errs by up to ~12 pp."""
    data, deriv = sim_cohort
    errors = []
    for sub in ("sub-001", "sub-002"):
        vols = {}
        for ses in ("ses-01", "ses-02"):
            doc = json.loads((deriv / sub / ses / "anat" / f"{sub}_{ses}_desc-aseg_dseg.json").read_text())
            vols[ses] = doc["structures_mm3"]["ventricle"]
        est = change_rate(vols["ses-01"], vols["ses-02"])
        truth = float(_realised(data, sub)["ses-02"]["ventricle_rate_pv"])
        errors.append(est - truth)
    assert max(abs(e) for e in errors) <= 2.0, errors


# -- the pieces --------------------------------------------------------------------------------


def test_itk_geometry_round_trip():
    import SimpleITK as sitk

    from brainsynth_plugins.segment import itk

    affine = np.array([[-1.5, 0.1, 0, 90], [0.1, 1.5, 0, -120], [0, 0, 2.0, -60], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
    img = itk.to_sitk(data, affine)
    np.testing.assert_array_equal(itk.to_array(img), data)
    ras = affine @ np.array([3, 4, 5, 1.0])
    lps = img.TransformContinuousIndexToPhysicalPoint((3.0, 4.0, 5.0))
    assert lps == pytest.approx([-ras[0], -ras[1], ras[2]], abs=2e-3)  # shear-free part of the affine
    assert isinstance(img, sitk.Image)


def test_refine_moves_a_shifted_boundary_back():
    from brainsynth_plugins.segment.refine import refine

    shape = (40, 40, 40)
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    truth = np.where(x < 15, 4, np.where(x < 25, 3, 2)).astype(np.int32)  # ventricle | cortex | WM slabs
    rng = np.random.default_rng(1)
    image = np.choose((truth == 3) + 2 * (truth == 2), [300.0, 700.0, 1000.0]) + rng.normal(0, 20, shape)
    wrong = np.where(x < 17, 4, np.where(x < 23, 3, 2)).astype(np.int32)  # boundaries 2 voxels off
    fixed = refine(image, wrong, (2.0, 2.0, 2.0))
    assert dice(fixed, truth, (4,)) > 0.99 > dice(wrong, truth, (4,)) + 0.05
    assert dice(fixed, truth, (3,)) > 0.97


def test_followup_matching_undoes_a_bias_field_and_a_contrast_change():
    """A later scan = the earlier one with another gamma, gain and smooth bias field: put back on
    the earlier scan's scale (differential bias + power law through stable tissue levels)."""
    from brainsynth_plugins.segment.atlas import match_to_earlier, stable_regions

    shape = (48, 48, 48)
    r = np.sqrt(((np.indices(shape) - 23.5) ** 2).sum(axis=0))
    labels = np.where(r < 6, 4, np.where(r < 16, 2, np.where(r < 20, 3, 0))).astype(np.int32)
    earlier = np.select([labels == 4, labels == 2, labels == 3], [300.0, 1000.0, 700.0], 0.0)
    earlier = earlier + np.random.default_rng(0).normal(0, 10, shape) * (labels > 0)
    z = np.indices(shape)[2] / 47.0
    field = np.exp(0.1 * (z - 0.5) + 0.05 * (z - 0.5) ** 2)
    later = 0.9 * 1000.0 * (np.clip(earlier, 1, None) / 1000.0) ** 1.2 * field
    vox = (2.0, 2.0, 2.0)
    csf, grey, white = stable_regions(labels, vox)
    assert csf.sum() >= 20 and grey.sum() > 100 and white.sum() > 100
    out = match_to_earlier(later, earlier, labels, vox, "power")
    for region in (labels == 4, labels == 2, labels == 3):
        ratio = np.median(out[region] / earlier[region])
        assert abs(ratio - 1.0) < 0.02, ratio
    before = np.median(later[labels == 4] / earlier[labels == 4])
    assert abs(before - 1.0) > 0.15  # the test has something to undo
    with pytest.raises(Exception, match="followup_intensity"):
        match_to_earlier(later, earlier, labels, vox, "cubic")


def test_ants_majority_vote_ties_go_to_the_first_atlas():
    from brainsynth_plugins.segment.ants import majority_vote

    stack = np.array([[[1, 2, 3, 7]], [[2, 2, 4, 8]], [[1, 3, 5, 8]]])
    np.testing.assert_array_equal(majority_vote(stack), [[1, 2, 3, 8]])


# -- bad input ---------------------------------------------------------------------------------


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainsynth: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["tiny", "empty", "2d", "4d"])
def test_bad_images_are_refused_without_output(kind, cli, tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "tiny":
        write_volume(path, np.random.default_rng(0).random((10, 10, 10)), affine)
        needle = "not a brain-sized volume"
    elif kind == "empty":
        write_volume(path, np.zeros((90, 100, 90)), affine)
        needle = "is empty"
    elif kind == "2d":
        write_volume(path, np.ones((90, 100)), affine)
        needle = "2D"
    else:
        write_volume(path, np.ones((90, 100, 90, 2)), affine)
        needle = "4D"
    out = tmp_path / "out.nii.gz"
    r = cli("segment", path, "-o", out, "--volumes", tmp_path / "v.csv", "--qc", tmp_path / "q.png")
    _one_line_error(r, str(path), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unknown_segmenter_option_and_names(cli, tmp_path):
    img = tmp_path / "x.nii.gz"
    write_volume(img, np.ones((60, 60, 60)), np.diag([2.0, 2.0, 2.0, 1.0]))
    _one_line_error(cli("segment", img, "-o", tmp_path / "o.nii.gz", "--segmenter", "atlass"), "unknown segmenter 'atlass'", "did you mean 'atlas'")
    _one_line_error(cli("segment", img, "-o", tmp_path / "o.nii.gz", "-O", "colour=red"), "no option 'colour'")
    _one_line_error(cli("segment", img, "-o", tmp_path / "o.nii.gz", "-O", "threads"), "KEY=VALUE")
    _one_line_error(cli("segment", img, "-o", tmp_path / "o.txt"), ".nii")
    _one_line_error(cli("segment", tmp_path, "-o", tmp_path / "o.nii.gz"), "--bids")
    assert not (tmp_path / "o.nii.gz").exists()


def test_ants_missing_gives_install_hint(cli, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ants") is not None:
        pytest.skip("antspyx is installed")
    img = tmp_path / "x.nii.gz"
    write_volume(img, np.ones((60, 60, 60)), np.diag([2.0, 2.0, 2.0, 1.0]))
    _one_line_error(cli("segment", img, "-o", tmp_path / "o.nii.gz", "--segmenter", "ants"), 'brainsynth[ants]')
    assert not (tmp_path / "o.nii.gz").exists()


def test_atlas_declares_its_labels_and_unlabelled_groups_are_missing(sim_cohort, cli, tmp_path):
    """`atlas` labels no hippocampus: its volumes say n/a / null (not 0), the log says so in one
    line, and a rules file describing the hippocampus fails in make-pairs with a one-line error
    naming the segmenter."""
    from brainsynth_cli.commands.segment import volume_table
    from brainsynth_cli.images import Volume
    from brainsynth_cli.interfaces import segmenter_labels
    from brainsynth_cli.structures import default_rules
    from brainsynth_plugins.segment.atlas import AtlasSegmenter

    data, deriv = sim_cohort
    produced = segmenter_labels(AtlasSegmenter())
    assert produced is not None and not produced & {17, 53, 18, 54, 13, 52, 14, 15} and {2, 3, 4, 41, 42, 43} <= produced
    labels = read_labels(deriv / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_desc-aseg_dseg.nii.gz").data
    assert set(np.unique(labels).tolist()) - {0} <= produced  # it declares what it writes
    side = json.loads((deriv / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-aseg_dseg.json").read_text())
    assert side["structures_mm3"]["hippocampus"] is None and side["structures_not_labelled"] == ["hippocampus"]
    assert side["structures_mm3"]["ventricle"] > 0
    with open(deriv / "sub-001" / "sub-001_sessions.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["hippocampus_mm3"] for r in rows] == ["n/a", "n/a"] and all(float(r["cortex_mm3"]) > 0 for r in rows)
    # a third party's segmenter that declares nothing: every group is measured (0 when empty)
    table = volume_table(Volume(labels, np.eye(4)), default_rules(), None)
    assert table["structures_mm3"]["hippocampus"] == 0.0 and "structures_not_labelled" not in table
    # the one-line note of the single-image form
    image_path = next((data / "sub-001" / "ses-01" / "anat").glob("*_T1w.nii.gz"))
    r = cli("segment", image_path, "-o", tmp_path / "l.nii.gz", "--volumes", tmp_path / "v.csv", "-O", "deformable=false")
    assert r.exit_code == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if "labels no" in line]
    assert len(notes) == 1 and "hippocampus (17, 53)" in notes[0] and "n/a" in notes[0]
    assert "structure,hippocampus,,n/a" in (tmp_path / "v.csv").read_text()
    # make-pairs on these derivatives with the hippocampus described: one clear line
    rules = tmp_path / "hippo.toml"
    rules.write_text('[structures.hippocampus]\nlabels = [17, 53]\n[[structures.hippocampus.intervals]]\n'
                     'name = "loss"\nmax = -2\nmax_closed = true\nphrase = "hippocampal atrophy"\n')
    r = cli("make-pairs", data, "--labels", deriv, "--rules", rules, "-o", tmp_path / "pairs", "--slices", "1", "--size", "32")
    assert r.exit_code == 2 and not (tmp_path / "pairs").exists()
    assert len(r.stderr.strip().splitlines()) == 1
    assert "'hippocampus' (labels 17, 53) is not labelled by segmenter 'atlas'" in r.stderr and "freesurfer" in r.stderr
