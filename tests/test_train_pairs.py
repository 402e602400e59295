"""A tiny pairs folder in the make-pairs format (the contract of docs/commands/make-pairs.md),
built from synthetic brain-like phantoms whose ventricles grow between prior and target.
Imported by the train and edit tests; the tests here check the phantom and the folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROMPTS = {"mild": "mild ventricle enlargement", "moderate": "moderate ventricle enlargement",
           "severe": "severe ventricle enlargement"}


def phantom(size: int, ventricle: float, *, shift: float = 0.0, squash: float = 1.0, seed: int = 0) -> np.ndarray:
    """A brain-like axial slice in [0, 1]: skull-free head ellipse, cortex ring, white matter and
    two ventricle ellipses whose half-width is ``ventricle`` (fraction of the image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    x = x - shift
    head = (x / 0.8) ** 2 + (y / (0.9 * squash)) ** 2
    img = np.zeros((size, size), np.float32)
    img[head <= 1] = 0.45  # cortex
    img[head <= 0.75] = 0.8  # white matter
    for cx in (-0.18, 0.18):
        v = ((x - cx) / ventricle) ** 2 + (y / (2.2 * ventricle)) ** 2
        img[v <= 1] = 0.12
    img[head <= 1] += rng.normal(0, 0.02, size=(head <= 1).sum()).astype(np.float32)
    return np.clip(img, 0, 1)


def phantom_labels(size: int, ventricle: float, *, shift: float = 0.0, squash: float = 1.0) -> np.ndarray:
    """FreeSurfer aseg labels of :func:`phantom`: cortex 3/42, white matter 2/41, lateral ventricles
    4/43 (left/right by the image's first half/second half of columns)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    x = x - shift
    head = (x / 0.8) ** 2 + (y / (0.9 * squash)) ** 2
    right = x > 0
    lab = np.zeros((size, size), np.int32)
    lab[head <= 1] = np.where(right, 42, 3)[head <= 1]
    lab[head <= 0.75] = np.where(right, 41, 2)[head <= 0.75]
    for cx, vid in ((-0.18, 4), (0.18, 43)):
        v = ((x - cx) / ventricle) ** 2 + (y / (2.2 * ventricle)) ** 2
        lab[v <= 1] = vid
    return lab


def make_pairs(out: Path, *, size: int = 32, subjects: int = 4, slices: int = 2, seed: int = 0, labels: bool = True) -> Path:
    """Write OUT/pairs.json, OUT/metadata.jsonl and 16-bit PNG slices (the make-pairs layout)."""
    from brainsynth_cli.images import write_png
    from brainsynth_cli.slices import to_png16
    from brainsynth_cli.structures import default_rules

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    grow = {"mild": 0.05, "moderate": 0.15, "severe": 0.3}
    for s in range(subjects):
        split = "validation" if s == subjects - 1 and subjects > 2 else "train"
        shift, squash = float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0.9, 1.05))
        for k in range(slices):
            base = 0.08 + 0.02 * k
            for j, (name, g) in enumerate(grow.items()):
                prior = phantom(size, base, shift=shift, squash=squash, seed=seed * 1000 + s * 10 + k)
                target = phantom(size, base * np.sqrt(1 + g), shift=shift, squash=squash, seed=seed * 1000 + s * 10 + k)
                a = f"images/sub-{s:02d}_slice-{k:03d}_{name}_prior.png"
                b = f"images/sub-{s:02d}_slice-{k:03d}_{name}_target.png"
                write_png(out / a, to_png16(prior))
                write_png(out / b, to_png16(target))
                la, lb = a.replace("_prior.png", "_prior_dseg.png"), b.replace("_target.png", "_target_dseg.png")
                write_png(out / la, phantom_labels(size, base, shift=shift, squash=squash).astype(np.uint16))
                write_png(out / lb, phantom_labels(size, base * np.sqrt(1 + g), shift=shift, squash=squash).astype(np.uint16))
                norm = {"low": 0.0, "high": 1.0, "method": "percentile-0.5-99.5-nonzero"}
                rows.append({
                    "input_image_file_name": a, "edited_image_file_name": b, "edit_prompt": PROMPTS[name],
                    "subject": f"sub-{s:02d}", "sessions": ["ses-01", f"ses-0{j + 2}"], "kind": "real", "structure": None,
                    "rates": {"ventricle": g * 100}, "intervals": {"ventricle": name}, "interval_years": 1.0 + j,
                    "blender": None, "slice": 10 + k, "split": split, "prior_normalisation": norm, "target_normalisation": norm,
                    **({"input_labels_file_name": la, "edited_labels_file_name": lb} if labels else {}),
                })
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = {"format": "brainsynth-pairs", "version": 1, "dim": "2d", "size": size, "slices": slices,
            "prompt_builder": "quantized", "blender": "poisson", "rules": default_rules().to_toml(), "seed": seed,
            "split": "8:1:1", "slice_convention": "brainsynth_cli.slices v2", "brainsynth": "test"}
    (out / "pairs.json").write_text(json.dumps(info), encoding="utf-8")
    return out


def test_phantom_ventricles_grow():
    a, b = phantom(64, 0.1), phantom(64, 0.1 * np.sqrt(1.2))
    # the ventricle (dark, inside the head) grows by about the requested 20 % in area
    va, vb = ((a > 0.05) & (a < 0.3)).sum(), ((b > 0.05) & (b < 0.3)).sum()
    assert 1.1 < vb / va < 1.35


def test_pairs_folder_layout(tmp_path):
    from brainsynth_cli.images import read_png

    out = make_pairs(tmp_path / "pairs", size=32, subjects=3, slices=1)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["split"] for r in rows} == {"train", "validation"}
    arr, bits = read_png(out / rows[0]["input_image_file_name"])
    assert bits == 16 and arr.shape == (32, 32) and arr.max() > 40000


# ---------------------------------------------------------------------------------------------
# shared by the train and edit tests: small settings and one trained model per session
# ---------------------------------------------------------------------------------------------
#: Even smaller than the tiny preset: 32x32 slices, 8x8 latents, one validation edit of 2 steps.
FAST = ["--resolution", "32", "--batch-size", "4", "--device", "cpu",
        "--set", "vae.block_out_channels=16", "--set", "vae.norm_num_groups=8",
        "--set", "unet.block_out_channels=16,16,32", "--set", "unet.norm_num_groups=8",
        "--set", "validation_count=1", "--set", "validation_steps=2", "--set", "warmup_steps=2"]

_CACHE: dict[str, Path] = {}


def interrupting_bar(stage: str, at: int):
    """A stand-in for ``brainsynth_cli.progress.progress_bar`` whose tick raises KeyboardInterrupt
    (a user's Ctrl-C) when the progress message starts with ``stage`` and reaches step ``at``."""
    import contextlib

    @contextlib.contextmanager
    def bar(*args, **kwargs):
        def tick(done, total, message=""):
            if message.startswith(stage) and done == at:
                raise KeyboardInterrupt

        yield tick

    return bar


def one_thread():
    """Context: torch on one thread (2 shared cores: OpenMP threads fight and run 5-10x slower)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def _ctx():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    return _ctx()


def cached(key: str, tmp_path_factory, build) -> Path:
    """Build an artefact once per test session (shared by test files)."""
    if key not in _CACHE:
        _CACHE[key] = build(tmp_path_factory.mktemp(key))
    return _CACHE[key]


def train_cli(args: list[str]):
    """Run `brainsynth train ARGS` in-process; returns (exit code, stderr)."""
    import contextlib
    import io

    from brainsynth_cli.main import run

    err, out = io.StringIO(), io.StringIO()
    with one_thread(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(["train", *map(str, args)])
    return code, err.getvalue()


def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """(pairs folder, model folder) of one small training run of both stages (1 channel)."""

    def build(d: Path) -> tuple[Path, Path]:
        pairs = make_pairs(d / "pairs", size=32, subjects=4, slices=2)
        code, err = train_cli([pairs, "-o", d / "model", *FAST, "--set", "vae_steps=6", "--set", "unet_steps=24",
                               "--set", "unet_batch_size=8", "--set", "unet_lr=2e-3", "--checkpoint-every", "12"])
        assert code == 0, err
        return pairs, d / "model"

    return cached("tiny", tmp_path_factory, build)
