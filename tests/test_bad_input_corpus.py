"""The bad-input corpus (tests/badinputs.py) against every command: each case must end with an
error (exit status 2), no traceback, no "internal error", no partial output and every
pre-existing file byte-identical (the whole tree is hashed before and after).

Every case runs in-process, in a folder of its own under one module-wide root (so a write that
escapes its folder, e.g. through a traversal id, shows in the tree too).

``edit`` runs the training-free ``deform`` generator (no model folder needed) and bad model
folders; ``evaluate`` runs ``--baselines-only`` and a missing model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from badinputs import NIFTI_CASES, PNG_CASES, bids, make_corpus, pairs_folder, traversal_manifest, tree_state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


class Ctx:
    """What a case builds its command from: the corpus and a fresh folder."""

    def __init__(self, corpus, folder: Path) -> None:
        self.c = corpus
        self.d = folder

    def copy(self, src: Path, name: str) -> Path:
        dst = self.d / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def held(self, folder: Path) -> Path:
        """``folder`` locked as if another run were writing into it (released after the case)."""
        from brainsynth_cli.outputs import FolderLock

        folder.mkdir(parents=True, exist_ok=True)
        self.lock = FolderLock(folder, command="another run").acquire()
        self.lock_file = str((folder / ".brainsynth.lock").relative_to(self.c.root))
        return folder

    def fake_ldm(self) -> Path:
        import json

        m = self.d / "ldm-model"
        for part in ("vae", "unet"):
            (m / part).mkdir(parents=True)
            (m / part / "config.json").write_text("{}")
            (m / part / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        (m / "brainsynth.json").write_text(json.dumps({"format": "brainsynth-model", "generator": "ldm", "dim": "2d"}))
        return m


Case = Callable[[Ctx], list]


def _segment_one(kind: str) -> Case:
    return lambda x: ["segment", x.c.nifti[kind], "-o", x.d / "out" / "labels.nii.gz", "--volumes", x.d / "out" / "v.csv",
                      "--qc", x.d / "out" / "qc.png"]


def _segment_bids(kind: str) -> Case:
    def build(x: Ctx) -> list:
        ds, _ = bids(x.d, {("sub-01", "ses-01"): x.c.nifti[kind]})
        return ["segment", ds, "--bids", "-o", x.d / "derivatives"]
    return build


def _blend_prior(kind: str) -> Case:
    return lambda x: ["blend", x.c.nifti[kind], x.c.image, x.c.labels, "-o", x.d / "out.nii.gz"]


def _blend_mask(kind: str) -> Case:
    return lambda x: ["blend", x.c.image, x.c.image, x.c.label_maps[kind], "-o", x.d / "out.nii.gz"]


def _simulate_opts(*opts: str) -> Case:
    return lambda x: ["simulate", "-o", x.d / "cohort", *opts]


def _generate_opts(*opts: str) -> Case:
    return lambda x: ["generate", x.fake_ldm(), "-o", x.d / "samples", *opts]


def _blend_png(kind: str) -> Case:
    return lambda x: ["blend", x.c.png[kind], x.c.good_png, x.c.good_png, "-o", x.d / "out.png"]


def _pairs_dataset(x: Ctx, image: Path | None = None, labels: Path | None = None) -> tuple[Path, Path]:
    return bids(x.d, {("sub-01", "ses-01"): x.c.image, ("sub-01", "ses-02"): image or x.c.image},
                {("sub-01", "ses-01"): x.c.labels, ("sub-01", "ses-02"): labels or x.c.labels})


def _make_pairs_image(kind: str) -> Case:
    def build(x: Ctx) -> list:
        ds, der = _pairs_dataset(x, image=x.c.nifti[kind])
        return ["make-pairs", ds, "-o", x.d / "pairs", "--labels", der, "--slices", "2", "--size", "32"]
    return build


def _make_pairs_labels(kind: str) -> Case:
    def build(x: Ctx) -> list:
        ds, der = _pairs_dataset(x, labels=x.c.label_maps[kind])
        return ["make-pairs", ds, "-o", x.d / "pairs", "--labels", der, "--slices", "2", "--size", "32"]
    return build


def _make_pairs_opts(*opts: str) -> Case:
    def build(x: Ctx) -> list:
        ds, der = _pairs_dataset(x)
        return ["make-pairs", ds, "-o", x.d / "pairs", "--labels", der, *opts]
    return build


def _train_rows(rows) -> Case:
    def build(x: Ctx) -> list:
        p = pairs_folder(x.d / "pairs", x.c.good_png, rows(x))
        return ["train", p, "-o", x.d / "model", "--device", "cpu"]
    return build


def _train_png(kind: str) -> Case:
    def build(x: Ctx) -> list:
        p = pairs_folder(x.d / "pairs", x.c.good_png)
        shutil.copyfile(x.c.png[kind], p / "images" / "a.png")
        return ["train", p, "-o", x.d / "model", "--device", "cpu", "--resolution", "32"]
    return build


def _train_opts(*opts: str) -> Case:
    def build(x: Ctx) -> list:
        return ["train", pairs_folder(x.d / "pairs", x.c.good_png), "-o", x.d / "model", "--device", "cpu", *opts]
    return build


def _symlink(x: Ctx, target: Path, name: str) -> Path:
    link = x.d / name
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _existing_outputs_then_bad_qc(x: Ctx) -> list:
    out = x.d / "out"
    out.mkdir()
    (out / "labels.nii.gz").write_bytes(b"the user's earlier labels")
    (out / "v.csv").write_text("earlier volumes\n")
    (x.d / "afile").write_text("a file, not a folder\n")
    return ["segment", x.copy(x.c.image, "t1.nii.gz"), "-o", out / "labels.nii.gz", "--volumes", out / "v.csv",
            "--qc", x.d / "afile" / "qc.png"]


def _raw_root_overwrite(x: Ctx) -> list:
    ds, _ = bids(x.d, {("sub-01", "ses-01"): x.c.image})
    (ds / "dataset_description.json").write_text('{"Name": "my raw study", "BIDSVersion": "1.9.0", "DatasetType": "raw"}\n')
    return ["segment", ds, "--bids", "-o", ds, "--overwrite"]


def _other_dataset_overwrite(x: Ctx) -> list:
    ds, _ = bids(x.d, {("sub-01", "ses-01"): x.c.image})
    other = x.d / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text('{"Name": "another study", "DatasetType": "raw"}\n')
    return ["segment", ds, "--bids", "-o", other, "--overwrite"]


def _bad_bids_name(x: Ctx) -> list:
    ds, _ = bids(x.d, {("sub-a_b", "ses-01"): x.c.image})
    return ["segment", ds, "--bids", "-o", x.d / "derivatives"]


def _segment_relative_self(x: Ctx) -> list:
    img = x.copy(x.c.image, "sub/t1.nii.gz")
    os.chdir(x.d)
    return ["segment", img.relative_to(x.d), "-o", Path("sub") / ".." / "sub" / "t1.nii.gz"]


def _held_segment(x: Ctx) -> list:
    ds, _ = bids(x.d, {("sub-01", "ses-01"): x.c.image})
    return ["segment", ds, "--bids", "-o", x.held(x.d / "derivatives")]


def _held_pairs(x: Ctx) -> list:
    ds, der = _pairs_dataset(x)
    return ["make-pairs", ds, "-o", x.held(x.d / "pairs"), "--labels", der]


def _held_train(x: Ctx) -> list:
    return ["train", pairs_folder(x.d / "pairs", x.c.good_png), "-o", x.held(x.d / "model"), "--device", "cpu"]


def _held_simulate(x: Ctx) -> list:
    return ["simulate", "-o", x.held(x.d / "cohort"), "--subjects", "1", "--resolution", "4"]


def _held_generate(x: Ctx) -> list:
    return ["generate", x.fake_ldm(), "-o", x.held(x.d / "samples")]


def _garbage_model(x: Ctx) -> list:
    m = x.fake_ldm()
    (m / "brainsynth.json").write_text("{garbage")
    return ["generate", m, "-o", x.d / "samples"]


CASES: dict[str, Case] = {}
# segment, one image
for _k in NIFTI_CASES:
    CASES[f"segment/{_k}"] = _segment_one(_k)
CASES["segment/output=input"] = lambda x: ["segment", (i := x.copy(x.c.image, "t1.nii.gz")), "-o", i]
CASES["segment/output=input-symlink"] = lambda x: ["segment", (i := x.copy(x.c.image, "t1.nii.gz")), "-o",
                                                    _symlink(x, i, "link.nii.gz")]
CASES["segment/output=input-relative"] = _segment_relative_self
CASES["segment/existing-outputs-bad-qc"] = _existing_outputs_then_bad_qc
CASES["segment/jobs-absurd"] = lambda x: ["segment", x.c.image, "-o", x.d / "o.nii.gz", "--jobs", "100000"]
# segment, a dataset
for _k in NIFTI_CASES:
    CASES[f"segment-bids/{_k}"] = _segment_bids(_k)
CASES["segment-bids/traversal-id"] = lambda x: ["segment", traversal_manifest(x.d / "m.csv", x.c.image), "--bids",
                                                 "-o", x.d / "out" / "deriv"]
CASES["segment-bids/not-a-bids-label"] = _bad_bids_name
CASES["segment-bids/output=raw-root"] = _raw_root_overwrite
CASES["segment-bids/output=inside-raw"] = lambda x: ["segment", (ds := bids(x.d, {("sub-01", "ses-01"): x.c.image})[0]),
                                                      "--bids", "-o", ds / "sub-01"]
CASES["segment-bids/output=another-dataset"] = _other_dataset_overwrite
CASES["segment-bids/concurrent"] = _held_segment
# blend
for _k in NIFTI_CASES:
    CASES[f"blend/{_k}"] = _blend_prior(_k)
for _k in ("float_labels", "offgrid_labels"):
    CASES[f"blend/{_k}"] = _blend_mask(_k)
for _k in PNG_CASES:
    CASES[f"blend/png-{_k}"] = _blend_png(_k)
CASES["blend/output=prior"] = lambda x: ["blend", (p := x.copy(x.c.image, "p.nii.gz")), x.c.image, x.c.labels, "-o", p]
CASES["blend/output=mask-symlink"] = lambda x: ["blend", x.c.image, x.c.image, (m := x.copy(x.c.labels, "m.nii.gz")),
                                                 "-o", _symlink(x, m, "o.nii.gz")]
CASES["blend/rtol-nan"] = lambda x: ["blend", x.c.image, x.c.image, x.c.labels, "-o", x.d / "o.nii.gz", "--rtol", "nan"]
CASES["blend/maxiter-absurd"] = lambda x: ["blend", x.c.image, x.c.image, x.c.labels, "-o", x.d / "o.nii.gz", "--maxiter", "0"]
# make-pairs
for _k in NIFTI_CASES:
    CASES[f"make-pairs/{_k}"] = _make_pairs_image(_k)
for _k in ("float_labels", "offgrid_labels"):
    CASES[f"make-pairs/{_k}"] = _make_pairs_labels(_k)
CASES["make-pairs/traversal-id"] = lambda x: ["make-pairs", traversal_manifest(x.d / "m.csv", x.c.image, x.c.labels),
                                               "-o", x.d / "out" / "pairs"]
CASES["make-pairs/output=dataset"] = lambda x: ["make-pairs", (ds := _pairs_dataset(x))[0], "-o", ds[0], "--labels", ds[1]]
CASES["make-pairs/output=labels"] = lambda x: ["make-pairs", (ds := _pairs_dataset(x))[0], "-o", ds[1], "--labels", ds[1]]
CASES["make-pairs/concurrent"] = _held_pairs
for _name, _opts in {"size-absurd": ("--size", "100000"), "slices-0": ("--slices", "0"), "margin-nan": ("--margin", "nan"),
                     "seed-negative": ("--seed", "-1"), "jobs-absurd": ("--jobs", "100000"),
                     "min-psnr-inf": ("--min-psnr", "inf")}.items():
    CASES[f"make-pairs/{_name}"] = _make_pairs_opts(*_opts)
# train
CASES["train/absolute-path-row"] = _train_rows(lambda x: [(str(x.c.good_png), "images/b.png")])
CASES["train/dotdot-path-row"] = _train_rows(lambda x: [("images/../../../../good/slice.png", "images/b.png")])  # corpus/good
CASES["train/symlink-escape-row"] = _train_rows(lambda x: [(_symlink(x, x.c.good_png, "pairs/images/link.png").relative_to(x.d / "pairs").as_posix(),
                                                            "images/b.png")])
for _k in PNG_CASES:
    CASES[f"train/png-{_k}"] = _train_png(_k)
for _name, _opts in {"lr-nan": ("--lr", "nan"), "set-vae_lr-abc": ("--set", "vae_lr=abc"),
                     "set-vae_steps-negative": ("--set", "vae_steps=-1"), "epochs-inf": ("--epochs", "inf"),
                     "seed-negative": ("--seed", "-1"), "set-image_guidance_scale-nan": ("--set", "image_guidance_scale=nan"),
                     "set-unet-channels-0": ("--set", "unet.block_out_channels=0,0"), "steps-0": ("--steps", "0"),
                     "resume-nothing": ("--resume",)}.items():
    CASES[f"train/{_name}"] = _train_opts(*_opts)
CASES["train/output=pairs"] = lambda x: ["train", (p := pairs_folder(x.d / "pairs", x.c.good_png)), "-o", p, "--stage", "unet"]
CASES["train/concurrent"] = _held_train
# simulate
for _name, _opts in {"subjects-0": ("--subjects", "0"), "subjects-absurd": ("--subjects", "100000"),
                     "resolution-nan": ("--resolution", "nan"), "noise-inf": ("--noise", "inf"), "seed-negative": ("--seed", "-1"),
                     "interval-nan": ("--interval-years", "nan", "2"), "sessions-1": ("--sessions", "1")}.items():
    CASES[f"simulate/{_name}"] = _simulate_opts(*_opts)
CASES["simulate/output=file"] = lambda x: ["simulate", "-o", x.copy(x.c.image, "cohort")]
CASES["simulate/concurrent"] = _held_simulate
# generate
CASES["generate/pickled-weights"] = lambda x: ["generate", x.c.pickled_model, "-o", x.d / "samples"]
CASES["generate/model-missing"] = lambda x: ["generate", x.d / "nothing", "-o", x.d / "samples"]
CASES["generate/model-is-a-file"] = lambda x: ["generate", x.c.image, "-o", x.d / "samples"]
CASES["generate/model-garbage-json"] = _garbage_model
for _name, _opts in {"n-absurd": ("-n", "100000000"), "guidance-nan": ("--guidance-scale", "nan"), "age-nan": ("--age", "nan"),
                     "ventricle-negative": ("--ventricle-volume", "-1"), "seed-negative": ("--seed", "-1"),
                     "steps-absurd": ("--steps", "100000")}.items():
    CASES[f"generate/{_name}"] = _generate_opts(*_opts)
CASES["generate/output=model"] = lambda x: ["generate", (m := x.fake_ldm()), "-o", m]
CASES["generate/concurrent"] = _held_generate
# demo
CASES["demo/output=file"] = lambda x: ["demo", "-o", x.copy(x.c.image, "demo")]
# edit (the training-free `deform` generator needs no model folder; bad model folders are cases of their own)
P = "mild ventricle enlargement"
for _k in NIFTI_CASES:
    CASES[f"edit/{_k}"] = (lambda k: lambda x: ["edit", "deform", x.c.nifti[k], "-p", P, "-o", x.d / "o.nii.gz", "--labels", x.c.labels])(_k)
for _k in ("float_labels", "offgrid_labels"):
    CASES[f"edit/{_k}"] = (lambda k: lambda x: ["edit", "deform", x.c.image, "-p", P, "-o", x.d / "o.nii.gz",
                                                "--labels", x.c.label_maps[k]])(_k)
for _k in PNG_CASES:
    CASES[f"edit/png-{_k}"] = (lambda k: lambda x: ["edit", "deform", x.c.png[k], "-p", P, "-o", x.d / "o.png"])(_k)
CASES["edit/output=input"] = lambda x: ["edit", "deform", (i := x.copy(x.c.image, "t1.nii.gz")), "-p", P, "-o", i,
                                        "--labels", x.c.labels]
CASES["edit/output=labels-symlink"] = lambda x: ["edit", "deform", x.c.image, "-p", P, "-o",
                                                 _symlink(x, x.copy(x.c.labels, "l.nii.gz"), "o.nii.gz"), "--labels", x.d / "l.nii.gz"]
CASES["edit/figure-in-a-file"] = lambda x: ["edit", "deform", x.c.image, "-p", P, "-o", x.d / "o.nii.gz", "--labels", x.c.labels,
                                            "--figure", x.copy(x.c.image, "afile") / "f.png"]
CASES["edit/margin-nan"] = lambda x: ["edit", "deform", x.c.image, "-p", P, "-o", x.d / "o.nii.gz", "--labels", x.c.labels,
                                      "--margin", "nan"]
CASES["edit/image-guidance-nan"] = lambda x: ["edit", "deform", x.c.image, "-p", P, "-o", x.d / "o.nii.gz", "--labels", x.c.labels,
                                              "--image-guidance-scale", "nan"]
CASES["edit/seed-negative"] = lambda x: ["edit", "deform", x.c.image, "-p", P, "-o", x.d / "o.nii.gz", "--seed", "-1"]
CASES["edit/untrained-structure"] = lambda x: ["edit", "deform", x.c.image, "-p", "hippocampus growth", "-o", x.d / "o.nii.gz",
                                               "--labels", x.c.labels, "--free-prompt"]
CASES["edit/model-garbage-json"] = lambda x: ["edit", _garbage_model(x)[1], x.c.image, "-p", P, "-o", x.d / "o.nii.gz"]
CASES["edit/model-missing"] = lambda x: ["edit", x.d / "nothing", x.c.image, "-p", P, "-o", x.d / "o.nii.gz"]
# evaluate
CASES["evaluate/concurrent"] = lambda x: ["evaluate", "--baselines-only", pairs_folder(x.d / "pairs", x.c.good_png),
                                          "-o", x.held(x.d / "report")]
CASES["evaluate/output=pairs"] = lambda x: ["evaluate", "--baselines-only", (p := pairs_folder(x.d / "pairs", x.c.good_png)), "-o", p]
CASES["evaluate/dotdot-path-row"] = lambda x: ["evaluate", "--baselines-only",
                                               _train_rows(lambda y: [("images/../../../../good/slice.png", "images/b.png")])(x)[1],
                                               "-o", x.d / "report"]
CASES["evaluate/guidance-nan"] = lambda x: ["evaluate", "--baselines-only", pairs_folder(x.d / "pairs", x.c.good_png), "-o",
                                            x.d / "report", "--guidance-scale", "nan"]
CASES["evaluate/model-missing"] = lambda x: ["evaluate", x.d / "nothing", pairs_folder(x.d / "pairs", x.c.good_png), "-o", x.d / "r"]

#: Cases whose refusal is a click usage error (several lines, exit status 2) rather than our one line.
USAGE: set[str] = set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case(name, corpus, capsys, monkeypatch):
    from brainsynth_cli.main import run

    folder = corpus.root / "cases" / name.replace("/", "__")
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    ctx = Ctx(corpus, folder)
    args = [str(a) for a in CASES[name](ctx)]
    before = tree_state(corpus.root)
    capsys.readouterr()
    try:
        code = run(args)
    finally:
        if getattr(ctx, "lock", None) is not None:  # the other run ends: its lock file goes
            ctx.lock.release()
            before.pop(ctx.lock_file)
    err = capsys.readouterr().err
    after = tree_state(corpus.root)
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == 2, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if name not in USAGE:
        assert len(lines) == 1 and lines[0].startswith("brainsynth: error:"), err
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not corpus.marker.exists(), "a pickle was loaded"
