import pytest

from brainsynth_cli.datasets import read_dataset
from brainsynth_cli.errors import InputError


def touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def test_bids_tree_sessions_ordered_by_age_with_labels(tmp_path):
    for ses in ("ses-1", "ses-2", "ses-10"):
        touch(tmp_path / "sub-01" / ses / "anat" / f"sub-01_{ses}_T1w.nii.gz")
        touch(tmp_path / "derivatives/seg/sub-01" / ses / "anat" / f"sub-01_{ses}_dseg.nii.gz")
    (tmp_path / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t70\nses-2\t75\nses-10\t72\n")
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t70\tF\n")
    ds = read_dataset(tmp_path, tmp_path / "derivatives/seg")
    sessions = ds.subjects()["sub-01"]
    assert [s.session for s in sessions] == ["ses-1", "ses-10", "ses-2"]
    assert sessions[0].labels.name == "sub-01_ses-1_dseg.nii.gz" and sessions[0].sex == "F"


def test_bids_natural_order_without_ages(tmp_path):
    for ses in ("ses-2", "ses-10", "ses-1"):
        touch(tmp_path / "sub-a" / ses / "anat" / f"sub-a_{ses}_T1w.nii")
    assert [s.session for s in read_dataset(tmp_path).subjects()["sub-a"]] == ["ses-1", "ses-2", "ses-10"]


def test_csv_manifest_relative_paths_and_dates(tmp_path):
    (tmp_path / "m.csv").write_text("subject,session,image,labels,date\n7,b,img/b.nii.gz,lab/b.nii.gz,2020-05-01\n7,a,img/a.nii.gz,,2019-01-01\n")
    ds = read_dataset(tmp_path / "m.csv")
    s = ds.subjects()["sub-7"]
    assert [x.session for x in s] == ["ses-a", "ses-b"]
    assert s[0].image == tmp_path / "img/a.nii.gz" and s[0].labels is None and s[1].labels == tmp_path / "lab/b.nii.gz"


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: p, "holds no sub-"),
        (lambda p: p / "missing", "not found"),
        (lambda p: (p / "m.csv").write_text("subject,image\n") and p / "m.csv", "lacks column(s) session"),
        (lambda p: (p / "m.csv").write_text("subject,session,image\n1,1,a.nii\n1,1,b.nii\n") and p / "m.csv", "appears twice"),
    ],
)
def test_bad_datasets(tmp_path, setup, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_dataset(setup(tmp_path))


def test_labels_found_in_segment_layout_beside_their_sidecar_and_table(tmp_path):
    """`segment --bids` writes *_desc-aseg_dseg.nii.gz with a .json and .tsv of the same name; the
    older layout (*_dseg.nii.gz) is read too (test above)."""
    touch(tmp_path / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    anat = tmp_path / "derivatives/brainsynth-segment/sub-01/ses-1/anat"
    for name in ("desc-aseg_dseg.nii.gz", "desc-aseg_dseg.json", "desc-aseg_dseg.tsv", "desc-aseg_qc.png"):
        touch(anat / f"sub-01_ses-1_{name}")
    ds = read_dataset(tmp_path, tmp_path / "derivatives/brainsynth-segment")
    assert ds.sessions[0].labels == anat / "sub-01_ses-1_desc-aseg_dseg.nii.gz"


def test_bids_without_sessions_runs_and_bidsignore(tmp_path):
    """No ses- level: one session named "" per subject; several runs: the last (noted) or --run;
    .bidsignore'd folders and files are not read."""
    touch(tmp_path / "sub-01/anat/sub-01_run-1_T1w.nii.gz")
    touch(tmp_path / "sub-01/anat/sub-01_run-2_T1w.nii.gz")
    touch(tmp_path / "sub-01/anat/sub-01_run-10_T1w.nii.gz")
    touch(tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_acq-a_T1w.nii.gz")
    touch(tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_acq-b_T1w.nii.gz")  # not runs: refused unless ignored
    touch(tmp_path / "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz")
    touch(tmp_path / "sub-03/ses-1/anat/sub-03_ses-1_acq-old_T1w.nii.gz")
    touch(tmp_path / "derivatives/seg/sub-01/anat/sub-01_desc-aseg_dseg.nii.gz")
    with pytest.raises(InputError, match="not runs of one acquisition"):
        read_dataset(tmp_path)
    (tmp_path / ".bidsignore").write_text("# comment\nsub-02/\n*_acq-old_T1w.nii.gz\n")
    ds = read_dataset(tmp_path, tmp_path / "derivatives/seg")
    subjects = ds.subjects()
    assert list(subjects) == ["sub-01", "sub-03"]
    one = subjects["sub-01"][0]
    assert one.session == "" and one.key == "sub-01" and one.image.name == "sub-01_run-10_T1w.nii.gz"
    assert one.labels.name == "sub-01_desc-aseg_dseg.nii.gz"
    assert ds.notes == [f"{tmp_path / 'sub-01/anat'}: 3 T1w runs, took run-10"]
    assert subjects["sub-03"][0].image.name == "sub-03_ses-1_T1w.nii.gz"
    ds = read_dataset(tmp_path, run="run-1")
    assert ds.subjects()["sub-01"][0].image.name == "sub-01_run-1_T1w.nii.gz" and ds.notes == []
    with pytest.raises(InputError, match="no run-7 T1w"):
        read_dataset(tmp_path, run="7")


def test_bidsignore_patterns():
    from brainsynth_cli.datasets import ignored

    assert ignored("sub-02/ses-1/anat/x_T1w.nii.gz", ["sub-02/"])
    assert ignored("sub-01/anat/sub-01_qc.png", ["*_qc.png"])
    assert ignored("volumes.tsv", ["/volumes.tsv"]) and not ignored("sub-01/volumes.tsv", ["/volumes.tsv"])
    assert ignored("sub-01/ses-1/anat/a.nii", ["sub-01/**/a.nii"])
    assert not ignored("sub-01/anat/sub-01_T1w.nii.gz", ["*_qc.png", "sub-02/"])


def test_bidsignore_negation():
    from brainsynth_cli.datasets import ignored

    assert not ignored("sub-01/anat/keep_qc.png", ["*_qc.png", "!keep_qc.png"])
    assert ignored("sub-01/anat/other_qc.png", ["*_qc.png", "!keep_qc.png"])
