"""FID through torchmetrics' FrechetInceptionDistance with a local TorchScript feature extractor:
~0 for a set against itself, > 0 against a shifted set, equal to a direct numpy/scipy Fréchet
distance on the same features; the report's row says why when there is no value."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

from brainsynth_plugins.evaluate import fid

from brainsynth_cli.errors import InputError
from brainsynth_cli.images import write_png
from brainsynth_cli.pairs_folder import PairRow
from brainsynth_cli.slices import read_slice, to_png16


class _Features(torch.nn.Module):
    """A tiny extractor: 4x4 average pooling of the grey channel, then a fixed linear map to 6 features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 4).flatten(1)
        return torch.tanh(self.proj(pooled * 4.0))


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(_Features().eval()), str(path))
    return path


def _slices(seed: int, n: int = 12, shift: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        img = 0.5 * a + 0.3 * b * xx + 0.2 * c * yy + rng.normal(0, 0.05, (32, 32))
        out.append(np.clip(img + shift, 0, 1).astype(np.float32))
    return out


def _numpy_fid(net, real, fake) -> float:
    from scipy import linalg

    def feats(images):
        with torch.no_grad():
            return np.concatenate([net(torch.from_numpy(a)[None, None].repeat(1, 3, 1, 1)).double().numpy() for a in images])

    f1, f2 = feats(real), feats(fake)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_is_zero_for_a_set_against_itself_and_positive_against_a_shifted_one(weights):
    net = fid.load_extractor(weights)
    real = _slices(1)
    same = fid.frechet_distance(real, real, net, weights)
    shifted = fid.frechet_distance(real, _slices(1, shift=0.15), net, weights)
    other = fid.frechet_distance(real, _slices(2), net, weights)
    assert abs(same) < 1e-9
    assert shifted > 0.05 and shifted > 5 * other > 0  # a brightness shift moves the features more than a redraw


def test_fid_equals_a_direct_frechet_distance_on_the_same_features(weights):
    net = fid.load_extractor(weights)
    for real, fake in ((_slices(1), _slices(2)), (_slices(3), _slices(4, shift=0.1)), (_slices(5, n=20), _slices(6, n=9))):
        assert fid.frechet_distance(real, fake, net, weights) == pytest.approx(_numpy_fid(net, real, fake), rel=1e-7, abs=1e-10)


def test_the_reports_fid_entry_reads_targets_and_edits(tmp_path, weights):
    real, fake = _slices(7, n=5), _slices(8, n=5, shift=0.1)
    (tmp_path / "edits").mkdir()
    rows = []
    for i, (r, f) in enumerate(zip(real, fake)):
        write_png(tmp_path / f"target-{i}.png", to_png16(r))
        write_png(tmp_path / "edits" / f"row-{i:05d}.png", to_png16(f))
        rows.append(PairRow(number=i, root=tmp_path, prior=tmp_path / f"target-{i}.png", target=tmp_path / f"target-{i}.png",
                            prompt="mild ventricle enlargement", split="test"))
    entry = fid.fid(tmp_path, rows, weights)
    stored = ([read_slice(tmp_path / f"target-{i}.png") for i in range(5)],
              [read_slice(tmp_path / "edits" / f"row-{i:05d}.png") for i in range(5)])
    assert entry["rows"] == 5 and str(weights) in entry["reason"]
    assert entry["value"] == pytest.approx(_numpy_fid(fid.load_extractor(weights), *stored), rel=1e-7)
    # no value, and why: no weights (the report's "not computed" row), too few rows
    missing = fid.fid(tmp_path, rows, None)
    assert missing["value"] is None and "--fid-weights" in missing["reason"]
    assert fid.fid(tmp_path, rows[:1], weights) == {"value": None, "reason": "FID needs at least 2 rows"}


def test_a_file_that_is_not_a_feature_extractor_is_one_line_naming_it(tmp_path, weights):
    bad = tmp_path / "not-torchscript.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not-torchscript.pt: is not a TorchScript module"):
        fid.load_extractor(bad)
    with pytest.raises(InputError, match="FID feature extractor not found"):
        fid.load_extractor(tmp_path / "absent.pt")
    flat = tmp_path / "flat.pt"  # takes 1x3xHxW but needs a 3x3 input: fails on 32x32 slices
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(flat))
    with pytest.raises(InputError, match="flat.pt: fails on a 1x3x32x32 image"):
        fid.frechet_distance(_slices(1), _slices(2), fid.load_extractor(flat), flat)
