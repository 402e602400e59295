"""Cluster jobs by participant (``--participant-label``, the BIDS-App convention) for segment
--bids and make-pairs: two jobs for different subjects run at the same time, as two processes,
into one folder and write only their subjects' files; the group step (``--merge``) then leaves
the folder byte for byte as one run leaves it, and running it again changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

cohort = pytest.importorskip("brainsynth_plugins.simulate.cohort")

#: Files of a segment derivatives folder that span subjects: only the group step writes them.
SEGMENT_GROUP_FILES = ("README.md", ".bidsignore", "volumes.tsv", "sessions.json")
PAIRS = ("--slices", "2", "--size", "32", "--blender", "copy-paste", "--seed", "2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three subjects x two sessions at 4 mm, with truth labels."""
    root = tmp_path_factory.mktemp("participants") / "bids"
    cohort.simulate_cohort(root, subjects=3, sessions=2, resolution=4.0, seed=5)
    return root


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two subjects x two sessions at 4 mm (segmenting them takes seconds)."""
    root = tmp_path_factory.mktemp("participants2") / "bids"
    cohort.simulate_cohort(root, subjects=2, sessions=2, resolution=4.0, seed=5)
    return root


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def in_parallel(*argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """Run ``brainsynth ARGV`` for each argv in its own process, all started before any is waited for."""
    env = subprocess_env(OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "brainsynth_cli.main", *map(str, argv)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for argv in argvs]
    out = []
    for argv, proc in zip(argvs, procs):
        stdout, stderr = proc.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


def test_segment_participant_jobs_in_parallel_then_merge_equal_one_run(two, tmp_path, cli):
    data = two
    one = tmp_path / "one"
    r = cli("segment", data, "--bids", "-o", one)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "jobs"
    a, b = in_parallel(["segment", data, "--bids", "-o", out, "--participant-label", "001"],
                       ["segment", data, "--bids", "-o", out, "--participant-label", "sub-002"])
    assert (a.returncode, b.returncode) == (0, 0), a.stderr + b.stderr
    assert "segmented 1 subject(s)" in a.stdout and "segmented 1 subject(s)" in b.stdout and "--merge" in a.stdout
    jobs = tree(out)
    assert not [f for f in SEGMENT_GROUP_FILES if f in jobs]  # no file that spans subjects
    assert {f for f in jobs if f.startswith("sub-")} == {f for f in tree(one) if f.startswith("sub-")}
    # a job run again finds its subjects done and changes nothing
    r = cli("segment", data, "--bids", "-o", out, "--participant-label", "sub-001")
    assert r.exit_code == 0 and "segmented 0 subject(s)" in r.stdout and tree(out) == jobs
    r = cli("segment", data, "--bids", "-o", out, "--merge")
    assert r.exit_code == 0, r.stderr
    assert "merged 4 session(s) of 2 subject(s)" in r.stdout
    assert tree(out) == tree(one)
    r = cli("segment", data, "--bids", "-o", out, "--merge")  # the group step again: the same bytes
    assert r.exit_code == 0 and tree(out) == tree(one)


def test_make_pairs_participant_jobs_in_parallel_then_merge_equal_one_run(data, tmp_path, cli):
    labels = data / "derivatives" / "brainsynth-truth"
    one = tmp_path / "one"
    r = cli("make-pairs", data, "--labels", labels, "-o", one, *PAIRS)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "jobs"
    common = ["make-pairs", data, "--labels", labels, "-o", out, *PAIRS]
    a, b = in_parallel([*common, "--participant-label", "sub-003"],
                       [*common, "--participant-label", "001", "--participant-label", "002"])
    assert (a.returncode, b.returncode) == (0, 0), a.stderr + b.stderr
    assert "sub-003: 1 pairs ready" in a.stdout and "sub-001 sub-002: 2 pairs ready" in b.stdout
    jobs = tree(out)
    assert not {"metadata.jsonl", "summary.json"} & set(jobs) and not [f for f in jobs if f.startswith("montage")]
    r = cli(*common, "--merge")
    assert r.exit_code == 0, r.stderr
    assert tree(out) == tree(one)
    r = cli(*common, "--merge")
    assert r.exit_code == 0 and tree(out) == tree(one)


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_unknown_or_bad_labels_are_one_line_errors_writing_nothing(data, tmp_path, cli):
    labels = data / "derivatives" / "brainsynth-truth"
    out = tmp_path / "out"
    r = cli("segment", data, "--bids", "-o", out, "--participant-label", "001", "--participant-label", "sub-9")
    _one_line_error(r, f"{data}: has no participant sub-9 (it has sub-001, sub-002, sub-003)", "with or without the sub- prefix")
    r = cli("make-pairs", data, "--labels", labels, "-o", out, *PAIRS, "--participant-label", "7,8")
    _one_line_error(r, f"{data}: has no participants sub-7, sub-8 (it has sub-001, sub-002, sub-003)")
    r = cli("segment", data, "--bids", "-o", out, "--participant-label", "x/../y")
    _one_line_error(r, "--participant-label 'x/../y' is not a participant label")
    r = cli("make-pairs", data, "--labels", labels, "-o", out, *PAIRS, "--participant-label", "1", "--shard", "1/2")
    _one_line_error(r, "--shard and --participant-label")
    r = cli("make-pairs", data, "--labels", labels, "-o", out, *PAIRS, "--participant-label", "1", "--merge")
    _one_line_error(r, "leave out --participant-label")
    r = cli("segment", data, "--bids", "-o", out, "--participant-label", "001", "--merge")
    _one_line_error(r, "leave out --participant-label")
    r = cli("segment", data.parent / "x.nii.gz", "-o", out / "l.nii.gz", "--participant-label", "001")
    _one_line_error(r, "are for a dataset (with --bids)")
    r = cli("segment", data, "--bids", "-o", out, "--merge")
    _one_line_error(r, f"{out}: does not exist")
    assert not out.exists()


def test_merge_waits_for_every_participant_and_jobs_keep_the_folder_settings(data, tmp_path, cli):
    """A merge while a participant is missing is refused, naming it, and writes nothing; a job
    with other settings than the folder's is refused (make-pairs, whose jobs take seconds)."""
    labels = data / "derivatives" / "brainsynth-truth"
    out = tmp_path / "pairs"
    common = ["make-pairs", data, "--labels", labels, "-o", out, *PAIRS]
    r = cli(*common, "--participant-label", "002")
    assert r.exit_code == 0, r.stderr
    before = tree(out)
    r = cli(*common, "--merge")
    _one_line_error(r, "2 of 3 pairs are not made yet (sub-001 ses-01->ses-02, sub-003 ses-01->ses-02)")
    assert tree(out) == before
    r = cli("make-pairs", data, "--labels", labels, "-o", out, *PAIRS[:-1], "3", "--participant-label", "001")
    _one_line_error(r, "holds pairs made with other options (seed: 3 now, 2 there)")
    assert tree(out) == before


def test_segment_merge_refuses_missing_sessions_and_other_settings(data, tmp_path, cli):
    """Only dataset_description.json (written by the first job) and one subject's files."""
    import json

    from brainsynth_cli.commands.segment import _description

    out = tmp_path / "deriv"
    out.mkdir()
    desc = _description("atlas", {}, True, data.resolve().as_uri(), None)
    (out / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    before = tree(out)
    r = cli("segment", data, "--bids", "-o", out, "--merge")
    _one_line_error(r, "6 of 6 sessions are not segmented yet (sub-001 ses-01, sub-001 ses-02, sub-002 ses-01, ...)",
                    "--participant-label")
    assert tree(out) == before
    r = cli("segment", data, "--bids", "-o", out, "--participant-label", "002", "--independent")
    _one_line_error(r, "was made with longitudinal True, not False", "participant jobs take the folder's settings")
    r = cli("segment", data, "--bids", "-o", out, "--merge", "--independent")
    _one_line_error(r, "was made with longitudinal True, not False")
    assert tree(out) == before


def test_a_participant_in_work_is_locked_others_are_not(data, tmp_path, cli):
    from brainsynth_cli.outputs import FolderLock

    labels = data / "derivatives" / "brainsynth-truth"
    out = tmp_path / "pairs"
    out.mkdir()
    common = ["make-pairs", data, "--labels", labels, "-o", out, *PAIRS]
    lock = FolderLock(out, command="make-pairs --participant-label sub-001", shared=True,
                      slot=["participant-sub-001"]).acquire()
    try:
        r = cli(*common, "--participant-label", "002,001")
        _one_line_error(r, "is in use by another brainsynth run (make-pairs --participant-label sub-001, process")
        r = cli(*common, "--merge")
        _one_line_error(r, "is in use by another brainsynth run")
        r = cli(*common, "--participant-label", "002")
        assert r.exit_code == 0, r.stderr
    finally:
        lock.release()
    assert not [p for p in out.iterdir() if p.name.endswith(".lock")]


def test_labels_with_or_without_prefix_each_once():
    from brainsynth_cli.errors import UserError
    from brainsynth_cli.participants import participant_labels, select_participants

    assert participant_labels(["01", "sub-02,03", " 04  05 ", "01"]) == ("sub-01", "sub-02", "sub-03", "sub-04", "sub-05")
    assert participant_labels([]) == ()
    with pytest.raises(UserError, match="names no participant"):
        participant_labels([" , "])
    assert select_participants(Path("d"), ["sub-01", "sub-02", "sub-03"], ("sub-03", "sub-01")) == ["sub-01", "sub-03"]
    many = [f"sub-{i:02d}" for i in range(20)]
    with pytest.raises(UserError, match=r"it has sub-00, .*sub-11, \.\.\. \(20 in all\)"):
        select_participants(Path("d"), many, ("sub-99",))


def test_write_text_once_never_writes_over(tmp_path):
    from brainsynth_cli.images import write_text_once

    path = tmp_path / "dataset_description.json"
    assert write_text_once(path, "first\n") is True
    assert write_text_once(path, "second\n") is False
    assert path.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == [path.name]
