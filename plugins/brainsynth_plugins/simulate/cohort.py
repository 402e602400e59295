"""A simulated longitudinal cohort with exact ground truth, from the reference template.

Every subject starts from :func:`brainsynth_plugins.simulate.template.reference` at the output
resolution:

- **anatomy**: a small random affine (rotation, head size, translation) plus a smooth random
  displacement field (control points every ~24 mm, cubic interpolation);
- **sessions**: the first session is the subject's baseline; each later session adds two smooth
  deformations defined on the baseline labels: *ventricle enlargement* (a displacement along the
  gradient of the smoothed ventricle mask, so the ventricle walls move outward into the
  surrounding tissue and the effect fades within ~1 cm) and *cortical thinning* (a displacement
  along the brain's outward normal, weighted to 0 at the grey/white boundary and 1 at the pial
  surface, so the cortex retreats from the pial side). Their magnitudes are calibrated by
  bisection so that the change rates measured on the output label maps hit the requested ones;
- **image**: the template T1 and the labels are sampled through the same map (linear and nearest
  neighbour), so the labels stay the truth; then per-subject contrast (gamma), per-session
  smooth bias field and Rician noise; stored as integers (white matter ~ 1000).

Rates (percent per year) are drawn per subject and per structure; each subject gets a pattern
("both", "ventricle" only, "cortex" only) cycled through a seeded permutation, so any cohort of
three or more subjects shows all three. All randomness comes from ``numpy.random.Generator``
seeded with ``(seed, subject index)``: the same seed gives the same bytes, and a subject does not
depend on how many others are simulated.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.images import Volume
from brainsynth_plugins.simulate import template as tpl

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: 2: a subject's sessions share its gamma contrast (1 drew one per session); 3: sessions.tsv
#: also holds partial-volume truth rates (``*_rate_pv``), images and labels as in 2.
SIMULATOR_VERSION = "3"
RESOLUTIONS = (1.0, 2.0, 3.0, 4.0)
PATTERNS = ("both", "ventricle", "cortex")
GROUPS = ("ventricle", "cortex", "white-matter", "csf", "brain")
DEFAULT_VENTRICLE_RATE = (2.0, 8.0)  # percent per year
DEFAULT_CORTEX_RATE = (-2.5, -0.5)
DEFAULT_INTERVAL = (1.0, 2.0)  # years between sessions
DEFAULT_AGE = (60.0, 85.0)
#: Limits on the total change a session may request vs the first session (percent).
MAX_TOTAL = {"ventricle": (-40.0, 80.0), "cortex": (-30.0, 10.0)}
TOLERANCE_PP = 0.25  # calibration target (percentage points); acceptance is 1 pp

Progress = Callable[[float, float, str], None]


# --------------------------------------------------------------------------------------------
# the plan: everything random about a subject except the images


@dataclass(frozen=True)
class SubjectPlan:
    """The random draws of one subject (cheap; no images)."""

    index: int
    subject: str
    sex: str
    age: float  # at the first session
    pattern: str  # both | ventricle | cortex | none (explicit rates)
    rates_per_year: dict[str, float]
    session_ages: tuple[float, ...]
    requested: tuple[dict[str, float], ...]  # per session, vs the first (first is all 0)

    @property
    def sessions(self) -> list[str]:
        return [f"ses-{k + 1:02d}" for k in range(len(self.session_ages))]


def _check_range(name: str, rng: Sequence[float], low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(rng[0]), float(rng[1]))
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{name} needs two numbers LOW HIGH, got {rng!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise UserError(f"{name} {lo:g} {hi:g} is not a range (LOW must not exceed HIGH)")
    if lo < low or hi > high:
        raise UserError(f"{name} {lo:g} {hi:g} lies outside [{low:g}, {high:g}]; choose a range inside it")
    return lo, hi


@dataclass(frozen=True)
class Options:
    """Validated simulation options (what the dataset records and a resume compares)."""

    sessions: int = 3
    resolution: float = 2.0
    seed: int = 0
    ventricle_rate: tuple[float, float] = DEFAULT_VENTRICLE_RATE
    cortex_rate: tuple[float, float] = DEFAULT_CORTEX_RATE
    interval_years: tuple[float, float] = DEFAULT_INTERVAL
    noise: float = 1.0  # noise scale (1 = 1-3 % of white matter)
    skull: bool = True  # synthetic skull and scalp around the brain (template.head)
    simulator: str = SIMULATOR_VERSION
    template: str = tpl.VERSION

    def as_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def make_options(
    sessions: int = 3,
    resolution: float = 2.0,
    seed: int = 0,
    ventricle_rate: Sequence[float] = DEFAULT_VENTRICLE_RATE,
    cortex_rate: Sequence[float] = DEFAULT_CORTEX_RATE,
    interval_years: Sequence[float] = DEFAULT_INTERVAL,
    noise: float = 1.0,
    skull: bool = True,
) -> Options:
    """Check options; raise a one-line :class:`UserError` for anything out of range."""
    if not isinstance(sessions, int) or isinstance(sessions, bool) or sessions < 2:
        raise UserError(f"--sessions must be at least 2 (a longitudinal cohort needs a prior and a target), got {sessions}")
    if sessions > 20:
        raise UserError(f"--sessions must be at most 20, got {sessions}")
    try:
        res = float(resolution)
    except (TypeError, ValueError):
        raise UserError(f"unknown resolution {resolution!r}; choose one of 1, 2, 3, 4 (mm)") from None
    if res not in RESOLUTIONS:
        raise UserError(f"unknown resolution {resolution:g} mm; choose one of 1, 2, 3, 4 (mm)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    vr = _check_range("--ventricle-rate", ventricle_rate, -20.0, 60.0)
    cr = _check_range("--cortex-rate", cortex_rate, -10.0, 5.0)
    iv = _check_range("--interval-years", interval_years, 0.1, 10.0)
    span = iv[1] * (sessions - 1)
    for name, (lo, hi) in (("ventricle", vr), ("cortex", cr)):
        tlo, thi = MAX_TOTAL[name]
        if lo * span < tlo or hi * span > thi:
            raise UserError(
                f"--{name}-rate {lo:g} {hi:g} %/year over up to {span:g} years could ask for "
                f"{min(lo * span, 0):g}..{max(hi * span, 0):g} %, beyond the simulable {tlo:g}..{thi:g} %; "
                "use a smaller range, fewer sessions or shorter --interval-years"
            )
    if not (isinstance(noise, (int, float)) and 0.0 <= float(noise) <= 5.0):
        raise UserError(f"--noise must lie in [0, 5], got {noise!r}")
    return Options(sessions=sessions, resolution=res, seed=seed, ventricle_rate=vr, cortex_rate=cr,
                   interval_years=iv, noise=float(noise), skull=bool(skull))


def _rng(seed: int, index: int, stream: int) -> "np.random.Generator":
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def plan_subject(index: int, options: Options, *, rates: Mapping[str, Sequence[float]] | None = None) -> SubjectPlan:
    """The demographics, session ages and requested rates of subject ``index`` (0-based).

    ``rates`` gives explicit requested rates vs the first session, one per later session, per
    structure (``{"ventricle": [5, 12], "cortex": [0, -3]}``); missing structures get 0.
    """
    rng = _rng(options.seed, index, 0)
    perm = _rng(options.seed, 0, 99).permutation(len(PATTERNS))
    pattern = PATTERNS[int(perm[index % len(PATTERNS)])]
    sex = "F" if rng.random() < 0.5 else "M"
    age = round(float(rng.uniform(*DEFAULT_AGE)), 1)
    gaps = rng.uniform(*options.interval_years, size=options.sessions - 1)
    ages = [age]
    for g in gaps:
        ages.append(round(ages[-1] + float(g), 1))
    v = float(rng.uniform(*options.ventricle_rate))
    c = float(rng.uniform(*options.cortex_rate))
    if rates is not None:
        pattern = "explicit"
        per_year = {"ventricle": math.nan, "cortex": math.nan}
        requested = [{"ventricle": 0.0, "cortex": 0.0}]
        for name in rates:
            if name not in ("ventricle", "cortex"):
                raise UserError(f"explicit rates are for 'ventricle' and 'cortex', got {name!r}")
            if len(rates[name]) != options.sessions - 1:
                raise UserError(f"explicit {name} rates need {options.sessions - 1} values (one per later session), got {len(rates[name])}")
        for k in range(1, options.sessions):
            requested.append({n: float(rates.get(n, [0.0] * options.sessions)[k - 1]) for n in ("ventricle", "cortex")})
        for row in requested:
            for name, r in row.items():
                lo, hi = MAX_TOTAL[name]
                if not lo <= r <= hi:
                    raise UserError(f"explicit {name} rate {r:g} % lies outside the simulable {lo:g}..{hi:g} %")
    else:
        per_year = {"ventricle": round(v, 3) if pattern in ("both", "ventricle") else 0.0,
                    "cortex": round(c, 3) if pattern in ("both", "cortex") else 0.0}
        requested = [{n: round(per_year[n] * (a - ages[0]), 2) + 0.0 for n in ("ventricle", "cortex")} for a in ages]
    return SubjectPlan(index=index, subject=f"sub-{index + 1:03d}", sex=sex, age=age, pattern=pattern,
                       rates_per_year=per_year, session_ages=tuple(ages), requested=tuple(requested))


# --------------------------------------------------------------------------------------------
# deformation fields


def _bspline_weights(n_fine: int, n_coarse: int) -> "np.ndarray":
    """(n_fine, n_coarse) cubic B-spline weights spreading ``n_coarse`` control points evenly
    over ``n_fine`` samples."""
    import numpy as np

    t = (np.arange(n_fine) + 0.5) / n_fine * (n_coarse - 3) + 1.0  # control-point units
    d = np.abs(t[:, None] - np.arange(n_coarse)[None, :])
    w = np.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return w.astype(np.float64)


def _smooth_field(rng: "np.random.Generator", shape: tuple[int, ...], spacing_vox: float, sd: float, ncomp: int) -> "np.ndarray":
    """A smooth random field (``ncomp`` components, standard deviation ~``sd``) from cubic
    B-splines with control points every ``spacing_vox`` voxels."""
    import numpy as np

    coarse_shape = tuple(max(4, int(round(n / spacing_vox)) + 3) for n in shape)
    coarse = rng.standard_normal((ncomp,) + coarse_shape) * (sd / 0.33)  # 0.33: B-spline damping in 3D
    wx, wy, wz = (_bspline_weights(n, c) for n, c in zip(shape, coarse_shape))
    out = np.einsum("ia,cabd->cibd", wx, coarse)
    out = np.einsum("jb,cibd->cijd", wy, out)
    out = np.einsum("kd,cijd->cijk", wz, out)
    return out.astype(np.float32)


def _rotation(angles: "np.ndarray") -> "np.ndarray":
    import numpy as np

    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class _Anatomy:
    """A subject's map from its voxels to reference voxels: p(x) = M (x - c) + c + t + d(x)."""

    matrix: "np.ndarray"  # 3x3
    positions: "np.ndarray"  # (3, X, Y, Z) float32: p(x) for every voxel


def _anatomy(plan: SubjectPlan, options: Options, ref_lab: "np.ndarray") -> _Anatomy:
    import numpy as np

    rng = _rng(options.seed, plan.index, 1)
    vox = options.resolution
    shape = ref_lab.shape
    angles = np.clip(rng.normal(0.0, np.deg2rad(3.0), 3), -np.deg2rad(7), np.deg2rad(7))
    size = (0.97 if plan.sex == "F" else 1.03) + float(np.clip(rng.normal(0.0, 0.03), -0.06, 0.06))
    aniso = np.clip(rng.normal(0.0, 0.02, 3), -0.04, 0.04)
    # p maps subject voxels to reference voxels: a bigger head samples a smaller region
    matrix = _rotation(angles) @ np.diag(1.0 / (size * (1.0 + aniso)))
    shift = rng.uniform(-3.0, 3.0, 3) / vox
    centre = np.array(np.nonzero(ref_lab)).mean(axis=1)
    disp = _smooth_field(rng, shape, 24.0 / vox, 2.0 / vox, 3)
    grid = np.indices(shape, dtype=np.float32)
    rel = (grid - centre.reshape(3, 1, 1, 1).astype(np.float32)).reshape(3, -1)
    pos = (matrix.astype(np.float32) @ rel).reshape((3,) + shape)
    pos += (centre + shift).reshape(3, 1, 1, 1).astype(np.float32)
    pos += disp
    return _Anatomy(matrix=matrix, positions=pos.astype(np.float32))


def sample_labels(ref_lab: "np.ndarray", pos: "np.ndarray") -> "np.ndarray":
    """Nearest-neighbour sampling of ``ref_lab`` at voxel positions ``pos`` (3, ...); 0 outside."""
    import numpy as np

    idx = np.rint(pos).astype(np.int64)
    shape = ref_lab.shape
    inside = np.ones(idx.shape[1:], dtype=bool)
    for d in range(3):
        inside &= (idx[d] >= 0) & (idx[d] < shape[d])
        np.clip(idx[d], 0, shape[d] - 1, out=idx[d])
    out = ref_lab[idx[0], idx[1], idx[2]]
    return np.where(inside, out, 0).astype(ref_lab.dtype)


@dataclass
class _Fields:
    """Unit-magnitude backward displacement fields (voxel units) on the baseline grid."""

    ventricle: "np.ndarray"  # (3, X, Y, Z)
    cortex: "np.ndarray"


def _fields(labels: "np.ndarray", vox: float) -> _Fields:
    import numpy as np
    import scipy.ndimage as ndi

    vent = np.isin(labels, tpl.VENTRICLE_IDS)
    cortex = np.isin(labels, tpl.CORTEX_IDS)
    tissue = (labels != 0) & (labels != tpl.CSF)

    # ventricles: gradient of the smoothed mask points into the ventricle; sampling at x + a g
    # moves the walls outward
    s = ndi.gaussian_filter(vent.astype(np.float32), 3.0 / vox)
    g = np.stack(np.gradient(s))
    mag = np.sqrt((g * g).sum(axis=0))
    g /= max(float(mag.max()), 1e-12)
    near_cortex = ndi.gaussian_filter(ndi.binary_dilation(cortex, iterations=1).astype(np.float32), 1.0)
    g *= np.clip(1.0 - 2.0 * near_cortex, 0.0, 1.0)

    # cortex: outward normal of the smoothed brain, weighted 0 at the inner (white matter) side
    # of the cortex and 1 from 3 mm outward; sampling at x + b n (b > 0) thins from the pial side
    sp = ndi.gaussian_filter(tissue.astype(np.float32), 2.0 / vox)
    n = -np.stack(np.gradient(sp))
    nmag = np.sqrt((n * n).sum(axis=0))
    n /= np.maximum(nmag, 0.25 * max(float(nmag.max()), 1e-12))
    inner = tissue & ~cortex
    depth = ndi.distance_transform_edt(~inner) * vox
    w = np.clip(depth / 3.0, 0.0, 1.0)
    w = w * w * (3.0 - 2.0 * w)
    reach = max(1, int(math.ceil(4.0 / vox)))
    w *= np.clip(ndi.gaussian_filter(ndi.binary_dilation(cortex, iterations=reach).astype(np.float32), 1.0) * 1.5, 0.0, 1.0)
    away = ndi.gaussian_filter(ndi.binary_dilation(vent, iterations=reach).astype(np.float32), 1.0)
    w *= np.clip(1.0 - 2.0 * away, 0.0, 1.0)
    n *= w
    return _Fields(ventricle=g.astype(np.float32), cortex=n.astype(np.float32))


class _Calibrator:
    """Label volumes of a session as a function of the two deformation magnitudes.

    A session's map is q(x) = p(x + u(x)), where p is the subject's anatomy map and u the
    displacement of the diffeomorphism exp(a V + b C) (V, C: the unit ventricle and cortex
    fields, used as stationary velocity fields, integrated by scaling and squaring so the map
    stays invertible). Only voxels in the support of the fields move, so only they are
    resampled; ``which`` restricts the calibrator to one field's support (fast, for solving).
    """

    MAX_STEP = 0.25  # voxels per scaling-and-squaring sub-step: well below where the fields fold

    def __init__(self, ref_lab: "np.ndarray", anatomy: _Anatomy, fields: _Fields, baseline: "np.ndarray", which: str = "both") -> None:
        import numpy as np

        self.ref_lab = ref_lab
        self.anatomy = anatomy
        self.shape = baseline.shape
        masks = {"ventricle": np.abs(fields.ventricle).sum(axis=0) > 1e-4, "cortex": np.abs(fields.cortex).sum(axis=0) > 1e-4}
        support = masks["ventricle"] | masks["cortex"] if which == "both" else masks[which]
        self.index = np.flatnonzero(support)
        self.points = np.stack(np.unravel_index(self.index, self.shape)).astype(np.float32)
        self.v = fields.ventricle.reshape(3, -1)[:, self.index] if which != "cortex" else np.zeros_like(self.points)
        self.c = fields.cortex.reshape(3, -1)[:, self.index] if which != "ventricle" else np.zeros_like(self.points)
        flat = baseline.reshape(-1)
        inside = flat[self.index]
        self.outside = {name: int(np.isin(flat, ids).sum() - np.isin(inside, ids).sum()) for name, ids in _IDS.items()}
        self.base_count = {name: int(np.isin(flat, ids).sum()) for name, ids in _IDS.items()}

    def displacement(self, a: float, b: float) -> "np.ndarray":
        """u at the support voxels (3, N), voxel units."""
        import numpy as np

        from brainsynth_plugins.simulate._interp import trilinear

        top = abs(a) + abs(b)
        steps = max(0, int(math.ceil(math.log2(top / self.MAX_STEP)))) if top > self.MAX_STEP else 0
        scale = 1.0 / 2 ** steps
        u = (a * scale) * self.v + (b * scale) * self.c
        if steps:
            full = np.zeros((3,) + self.shape, dtype=np.float32)
            flat = full.reshape(3, -1)
            for _ in range(steps):
                flat[:, self.index] = u
                q = self.points + u
                u = u + trilinear(full, q)
        return u

    def positions(self, a: float, b: float) -> "np.ndarray":
        """q(x) = p(x + u(x)) at the support voxels (3, N), reference voxel units."""
        from brainsynth_plugins.simulate._interp import trilinear

        return trilinear(self.anatomy.positions, self.points + self.displacement(a, b), clamp=True)

    def counts(self, a: float, b: float) -> dict[str, int]:
        import numpy as np

        lab = sample_labels(self.ref_lab, self.positions(a, b))
        return {name: self.outside[name] + int(np.isin(lab, ids).sum()) for name, ids in _IDS.items()}

    def rate(self, name: str, a: float, b: float) -> float:
        base = self.base_count[name]
        return (self.counts(a, b)[name] - base) / base * 100.0 if base else math.nan


_IDS = {"ventricle": tpl.VENTRICLE_IDS, "cortex": tpl.CORTEX_IDS}


def _solve(f: Callable[[float], float], target: float, limit: float, tol: float) -> float:
    """Magnitude m in [0, limit] (or [-limit, 0] for a negative target) with f(m) ~ target.

    ``f`` is increasing in m (a step function of label counts, f(0) = 0). Regula falsi with the
    Illinois modification inside a bracket, falling back to bisection; keeps the best m seen.
    """
    if target == 0.0:
        return 0.0
    sign = 1.0 if target > 0 else -1.0
    lo, flo = 0.0, -abs(target)  # g(m) = sign * (f(m) - target): g(lo) < 0 < g(hi)
    hi = sign * limit
    ghi = sign * (f(hi) - target)
    if ghi <= 0:
        return hi  # unattainable within the limit: the largest magnitude allowed
    best, best_err = hi, abs(ghi)
    side = 0
    for it in range(40):
        if it % 3 == 2:
            mid = 0.5 * (lo + hi)  # a bisection step now and then guarantees progress
        else:
            mid = lo + (hi - lo) * (-flo) / (ghi - flo)
        g = sign * (f(mid) - target)
        if abs(g) < best_err:
            best, best_err = mid, abs(g)
        if abs(g) <= tol or abs(hi - lo) < 1e-4:
            break
        if g < 0:
            lo, flo = mid, g
            if side == -1:
                ghi *= 0.5
            side = -1
        else:
            hi, ghi = mid, g
            if side == 1:
                flo *= 0.5
            side = 1
    return best


# --------------------------------------------------------------------------------------------
# simulation


@dataclass
class SimulatedSession:
    """One simulated scan and its ground truth."""

    session: str
    age: float
    image: Volume  # float32 (integer-valued), T1-weighted
    labels: Volume  # int32 aseg ids, the truth
    requested: dict[str, float]  # change rate vs the first session, percent
    realised: dict[str, float]  # measured on ``labels``
    volumes: dict[str, float]  # structure group volumes, mm^3
    magnitudes: dict[str, float] = field(default_factory=dict)  # deformation magnitudes (mm)
    #: change rate vs the first session from partial-volume volumes (:func:`partial_volumes`)
    realised_pv: dict[str, float] = field(default_factory=dict)
    pv_volumes: dict[str, float] = field(default_factory=dict)  # ventricle, cortex: mm^3


@dataclass
class SimulatedSubject:
    plan: SubjectPlan
    sessions: list[SimulatedSession]

    @property
    def subject(self) -> str:
        return self.plan.subject


def group_volumes_of(labels: "np.ndarray", voxel_volume: float) -> dict[str, float]:
    from brainsynth_cli.structures import group_volumes, label_volumes

    vols = group_volumes(label_volumes(labels, voxel_volume))
    return {g: vols[g] for g in GROUPS if g in vols}


def partial_volumes(ref_lab: "np.ndarray", pos: "np.ndarray", voxel_volume: float) -> dict[str, float]:
    """Ventricle and cortex volumes (mm^3) of a scan whose voxels sample the reference at
    ``pos`` (3, X, Y, Z), counting each voxel by its partial volume: the structure's indicator in
    the reference, interpolated linearly at the voxel's position, i.e. the same interpolation
    that makes the image from the template T1.

    The truth label maps (nearest neighbour) count a voxel wholly or not at all; between two
    sessions that quantisation changes the count of a 2 mm ventricle by up to ~3 % of its volume
    at random (the lattice points that fall inside a moved wall), a change no image shows. The
    partial-volume count agrees with a 4 x 4 x 4 supersampling of the nearest-neighbour labels
    within 0.6 pp of rate (benchmarks/RESULTS.md, segment), so ``*_rate_pv`` is the truth to
    measure an image-based method against; ``*_rate_realised`` stays the labels' own rate."""
    import numpy as np
    import scipy.ndimage as ndi

    flat = pos.reshape(3, -1)
    out = {}
    for name, ids in _IDS.items():
        indicator = np.isin(ref_lab, ids).astype(np.float32)
        out[name] = float(ndi.map_coordinates(indicator, flat, order=1, mode="constant", cval=0.0).sum(dtype=np.float64)) * voxel_volume
    return out


def _intensity(t1: "np.ndarray", labels: "np.ndarray", subject_gamma: float, rng_session: "np.random.Generator",
               vox: float, noise: float) -> "np.ndarray":
    """Template intensities (0..1) to a T1w scan: gamma contrast (the subject's, varied by +-3 % per
    session), gain, bias field, Rician noise."""
    import numpy as np

    gamma = subject_gamma * float(rng_session.uniform(0.97, 1.03))
    gain = float(rng_session.uniform(0.9, 1.1))
    img = np.power(np.clip(t1, 0.0, None), gamma) * (1000.0 / 0.84 ** gamma) * gain
    bias = np.exp(_smooth_field(rng_session, t1.shape, 60.0 / vox, 0.08, 1)[0])
    img *= bias
    sigma = float(rng_session.uniform(10.0, 30.0)) * noise
    if sigma > 0:
        n1 = rng_session.standard_normal(t1.shape, dtype=np.float32) * sigma
        n2 = rng_session.standard_normal(t1.shape, dtype=np.float32) * sigma
        img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return np.clip(np.rint(img), 0, 32767).astype(np.float32)


def simulate_subject(
    index: int = 0,
    *,
    sessions: int = 3,
    resolution: float = 2.0,
    seed: int = 0,
    ventricle_rate: Sequence[float] = DEFAULT_VENTRICLE_RATE,
    cortex_rate: Sequence[float] = DEFAULT_CORTEX_RATE,
    interval_years: Sequence[float] = DEFAULT_INTERVAL,
    noise: float = 1.0,
    skull: bool = True,
    rates: Mapping[str, Sequence[float]] | None = None,
    options: Options | None = None,
) -> SimulatedSubject:
    """Simulate subject ``index`` (0-based) in memory: images, truth labels, rates.

    ``rates`` overrides the random draws with explicit requested rates vs the first session,
    one per later session: ``simulate_subject(0, sessions=3, resolution=4, rates={"ventricle":
    [10, 25]})`` gives a ventricles-only subject with +10 % and +25 %.
    """
    opts = options or make_options(sessions=sessions, resolution=resolution, seed=seed, ventricle_rate=ventricle_rate,
                                   cortex_rate=cortex_rate, interval_years=interval_years, noise=noise, skull=skull)
    return _simulate(plan_subject(index, opts, rates=rates), opts)


def _simulate(plan: SubjectPlan, opts: Options) -> SimulatedSubject:
    import numpy as np
    import scipy.ndimage as ndi

    ref_t1, ref_lab = tpl.head(opts.resolution) if opts.skull else tpl.reference(opts.resolution)
    vox = opts.resolution
    anatomy = _anatomy(plan, opts, ref_lab.data)
    baseline = sample_labels(ref_lab.data, anatomy.positions)
    fields = _fields(baseline, vox)
    calib = _Calibrator(ref_lab.data, anatomy, fields, baseline)
    only = {n: _Calibrator(ref_lab.data, anatomy, fields, baseline, which=n) for n in ("ventricle", "cortex")}
    subject_gamma = float(_rng(opts.seed, plan.index, 2).uniform(0.8, 1.25))  # drawn once: one scanner and protocol per subject
    limit = max(8.0 / vox, 3.0)  # magnitudes in voxels (8 mm, or 3 voxels on coarse grids)
    tol = TOLERANCE_PP / 2
    out: list[SimulatedSession] = []
    affine = ref_lab.affine
    for k, (session, age, req) in enumerate(zip(plan.sessions, plan.session_ages, plan.requested)):
        a = b = 0.0
        if k > 0:
            # each field on its own support (they barely overlap), then jointly if needed
            a = _solve(lambda m: only["ventricle"].rate("ventricle", m, 0.0), req["ventricle"], limit, tol)
            b = _solve(lambda m: -only["cortex"].rate("cortex", 0.0, m), -req["cortex"], limit, tol)
            for _ in range(2):
                rv, rc = calib.rate("ventricle", a, b), calib.rate("cortex", a, b)
                if abs(rv - req["ventricle"]) <= TOLERANCE_PP and abs(rc - req["cortex"]) <= TOLERANCE_PP:
                    break
                a = _solve(lambda m: calib.rate("ventricle", m, b), req["ventricle"], limit, tol)
                b = _solve(lambda m: -calib.rate("cortex", a, m), -req["cortex"], limit, tol)
        pos = anatomy.positions.reshape(3, -1).copy()
        if a or b:
            pos[:, calib.index] = calib.positions(a, b)
        pos = pos.reshape(anatomy.positions.shape)
        labels = sample_labels(ref_lab.data, pos).astype(np.int32)
        t1 = ndi.map_coordinates(ref_t1.data, pos, order=1, mode="constant", cval=0.0, output=np.float32)
        rng_session = _rng(opts.seed, plan.index, 10 + k)
        image = _intensity(t1, labels, subject_gamma, rng_session, vox, opts.noise)
        vols = group_volumes_of(labels, vox ** 3)
        out.append(SimulatedSession(
            session=session, age=age,
            image=Volume(image, affine.copy(), None, None), labels=Volume(labels, affine.copy(), None, None),
            requested=dict(req), realised={}, volumes=vols,
            magnitudes={"ventricle": round(a * vox, 4), "cortex": round(b * vox, 4)},
            pv_volumes=partial_volumes(ref_lab.data, pos, vox ** 3),
        ))
    from brainsynth_cli.structures import change_rate

    first = out[0].volumes
    for s in out:
        s.realised = {n: round(change_rate(first[n], s.volumes[n]), 4) for n in ("ventricle", "cortex")}
        s.realised_pv = {n: round(change_rate(out[0].pv_volumes[n], s.pv_volumes[n]), 4) for n in ("ventricle", "cortex")}
        for n in ("ventricle", "cortex"):
            if abs(s.realised[n] - s.requested[n]) > 1.0:
                import warnings

                warnings.warn(f"{plan.subject} {s.session}: {n} changes by {s.realised[n]:+.2f} % instead of the "
                              f"requested {s.requested[n]:+.2f} % (beyond what this anatomy allows)", RuntimeWarning, stacklevel=2)
    return SimulatedSubject(plan=plan, sessions=out)


def simulate_subjects(n: int = 3, **kwargs: Any) -> list[SimulatedSubject]:
    """``n`` subjects in memory (same keyword arguments as :func:`simulate_subject`)."""
    if n < 1:
        raise UserError(f"--subjects must be at least 1, got {n}")
    opts = kwargs.pop("options", None) or make_options(**kwargs)
    return [_simulate(plan_subject(i, opts), opts) for i in range(n)]


# --------------------------------------------------------------------------------------------
# writing a BIDS tree


TRUTH = "brainsynth-truth"

#: `.bidsignore` of the truth derivative: the montage folders (a folder name without the trailing
#: slash, so that the validator ignores the folder as well as its files).
TRUTH_BIDSIGNORE = "# not in the BIDS specification: each subject's montage of its sessions\nsub-*/figures\n"

TRUTH_README = """# brainsynth simulated cohort: ground-truth labels

The labels `brainsynth simulate` made each T1w image of the raw dataset (two folders up) from:

- `sub-X/ses-Y/anat/sub-X_ses-Y_desc-truth_dseg.nii.gz`: the labels (FreeSurfer aseg ids) on the
  image's grid;
- `..._dseg.tsv` beside it: the look-up table (index, name, color);
- `..._dseg.json` beside it: the image the labels belong to (`Sources`);
- `sub-X/figures/sub-X_desc-sessions_montage.png`: the sessions of a subject, labels outlined and
  the change since the first session coloured (listed in `.bidsignore`).

The structure volumes and the requested and realised change rates of every session are in the
raw dataset's `sub-X/sub-X_sessions.tsv`.
"""


@dataclass
class CohortResult:
    root: Path
    options: Options
    plans: list[SubjectPlan]
    simulated: list[str]  # subjects simulated in this run
    skipped: list[str]  # subjects already complete (resumed)
    seconds: float

    @property
    def truth_dir(self) -> Path:
        return self.root / "derivatives" / TRUTH


def _paths(root: Path, subject: str, session: str) -> tuple[Path, Path]:
    image = root / subject / session / "anat" / f"{subject}_{session}_T1w.nii.gz"
    labels = root / "derivatives" / TRUTH / subject / session / "anat" / f"{subject}_{session}_desc-truth_dseg.nii.gz"
    return image, labels


def montage_path(root: Path, subject: str) -> Path:
    return root / "derivatives" / TRUTH / subject / "figures" / f"{subject}_desc-sessions_montage.png"


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.10g}" if isinstance(x, float) else str(x)


def _tsv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join(_fmt(r.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


SESSION_COLUMNS = (["session_id", "age"] + [f"{g}_mm3" for g in GROUPS]
                   + ["ventricle_rate_requested", "ventricle_rate_realised", "cortex_rate_requested", "cortex_rate_realised",
                      "ventricle_magnitude_mm", "cortex_magnitude_mm", "ventricle_rate_pv", "cortex_rate_pv"])


def _session_rows(sim: SimulatedSubject) -> list[dict[str, Any]]:
    rows = []
    for s in sim.sessions:
        row: dict[str, Any] = {"session_id": s.session, "age": s.age}
        row.update({f"{g}_mm3": s.volumes.get(g, 0.0) for g in GROUPS})
        for n in ("ventricle", "cortex"):
            row[f"{n}_rate_requested"] = float(s.requested[n])
            row[f"{n}_rate_realised"] = float(s.realised[n])
            row[f"{n}_magnitude_mm"] = float(s.magnitudes.get(n, 0.0))
            row[f"{n}_rate_pv"] = float(s.realised_pv[n])
        rows.append(row)
    return rows


#: Colours of the montage's change row (matplotlib names) and their legend text.
CHANGE_COLOURS = (("became ventricle", "red"), ("no longer ventricle", "dodgerblue"),
                  ("no longer cortex", "gold"), ("became cortex", "limegreen"))


def montage_figure(sim: SimulatedSubject) -> Any:
    """The axial slice with the most ventricle of every session, labels outlined (top row), and
    where the truth changed since the first session (bottom row, coloured over the dimmed slice,
    with a legend); columns titled with session, age and realised changes."""
    import numpy as np

    from brainsynth_cli.figures.grid import Legend, Panel, Row, grid_figure
    from brainsynth_cli.figures.orientation import canonical_voxel_mm, display
    from brainsynth_cli.structures import default_rules

    base = sim.sessions[0]
    vent = np.isin(base.labels.data, tpl.VENTRICLE_IDS).sum(axis=(0, 1))
    z = int(np.argmax(vent)) if vent.any() else base.labels.shape[2] // 2
    hi = float(np.percentile(np.concatenate([s.image.data[:, :, z].ravel() for s in sim.sessions]), 99.5)) or 1.0
    vx, vy, _ = canonical_voxel_mm(base.image.affine)
    top, bottom, columns, shown = [], [], [], set()
    v0 = np.isin(base.labels.data[:, :, z], tpl.VENTRICLE_IDS)
    c0 = np.isin(base.labels.data[:, :, z], tpl.CORTEX_IDS)
    colour = dict(CHANGE_COLOURS)
    for s in sim.sessions:
        img, lab = display(s.image.data[:, :, z]), display(s.labels.data[:, :, z])
        shown |= {int(v) for v in np.unique(lab) if v}
        top.append(Panel(img, window=(0.0, hi), labels=lab, aspect=vy / vx))
        v, c = np.isin(s.labels.data[:, :, z], tpl.VENTRICLE_IDS), np.isin(s.labels.data[:, :, z], tpl.CORTEX_IDS)
        masks = [(display(m), colour[name], name) for m, name in
                 ((v & ~v0, "became ventricle"), (v0 & ~v, "no longer ventricle"), (c0 & ~c, "no longer cortex"), (c & ~c0, "became cortex"))]
        bottom.append(Panel(img, window=(0.0, hi), masks=masks, dim=0.45, aspect=vy / vx))
        columns.append(f"{s.session}, age {s.age:.1f} y\nventricle {s.realised['ventricle']:+.1f} %, cortex {s.realised['cortex']:+.1f} %")
    pattern = {"both": "ventricle and cortex change", "ventricle": "ventricle change only", "cortex": "cortex change only"}
    names = default_rules().labels
    legend = Legend(labels={i: names.get(i, f"label {i}") for i in sorted(shown)}, masks={n: c for n, c in CHANGE_COLOURS})
    return grid_figure([Row("truth labels outlined", top), Row(f"change of the truth labels since {base.session}", bottom)],
                       columns=columns, legend=legend,
                       title=f"{sim.subject} ({sim.plan.sex}, {pattern.get(sim.plan.pattern, sim.plan.pattern)}): axial slice {z}, "
                             "the most ventricle at the first session")


def write_montage(path: Path, sim: SimulatedSubject) -> Path:
    """Write :func:`montage_figure` (atomic)."""
    from brainsynth_cli.figures.save import save_figure

    return save_figure(montage_figure(sim), path)


def write_subject(root: Path, sim: SimulatedSubject) -> None:
    """Write one subject: truth labels (with their sidecar and look-up table) and montage first,
    images, and the sessions.tsv last (its presence marks the subject complete). NIfTI units are
    mm and seconds."""
    import numpy as np

    from brainsynth_cli.bids_files import lookup_table, source_uri, units_header
    from brainsynth_cli.images import atomic_write_text, write_labels, write_volume
    from brainsynth_cli.structures import default_rules

    rules = default_rules()
    for s in sim.sessions:
        img_path, lab_path = _paths(root, sim.subject, s.session)
        stem = lab_path.name.removesuffix(".nii.gz")
        source = source_uri(img_path, root)
        sidecar = {"Description": f"ground-truth labels (FreeSurfer aseg ids) of {sim.subject} {s.session}, from which "
                                  "brainsynth simulate made the T1w image; look-up table in the _dseg.tsv beside it",
                   "Sources": [source], "SpatialReference": source}
        atomic_write_text(lab_path.with_name(stem + ".json"), json.dumps(sidecar, indent=2) + "\n")
        atomic_write_text(lab_path.with_name(stem + ".tsv"), lookup_table(np.unique(s.labels.data), rules))
        write_labels(lab_path, s.labels.data, s.labels.affine, units_header())
        write_volume(img_path, s.image.data, s.image.affine, units_header(), dtype="int16")
    write_montage(montage_path(root, sim.subject), sim)
    atomic_write_text(root / sim.subject / f"{sim.subject}_sessions.tsv", _tsv(_session_rows(sim), SESSION_COLUMNS))


def _complete(root: Path, plan: SubjectPlan) -> bool:
    if not (root / plan.subject / f"{plan.subject}_sessions.tsv").is_file():
        return False
    for ses in plan.sessions:
        for p in _paths(root, plan.subject, ses):
            if not p.is_file():
                return False
    return montage_path(root, plan.subject).is_file()


def _description(options: Options, subjects: int) -> dict[str, Any]:
    from brainsynth_cli import __version__

    return {
        "Name": "brainsynth simulated longitudinal cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0 (derived from the ICBM 2009a template; see its license at nist.mni.mcgill.ca)",
        "GeneratedBy": [{
            "Name": "brainsynth simulate",
            "Version": __version__,
            "Description": "MNI152 2009a template (nilearn) deformed per subject and session with known change rates",
        }],
        "brainsynth": {"subjects": subjects, **options.as_json()},
    }


SIDE_CARS = {
    "participants.json": {
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "pattern": {"Description": "which structures change: both, ventricle (only), cortex (only), explicit"},
        "ventricle_rate_per_year": {"Description": "requested lateral ventricle volume change", "Units": "percent per year"},
        "cortex_rate_per_year": {"Description": "requested cerebral cortex volume change", "Units": "percent per year"},
    },
}


def _validate_out(out_dir: Path, options: Options, subjects: int) -> bool:
    """Check the output folder; return True when it holds a compatible cohort to resume."""
    from brainsynth_cli.outputs import is_empty_folder

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder", "choose a new output folder")
    if out_dir.is_dir() and not is_empty_folder(out_dir):
        desc = out_dir / "dataset_description.json"
        try:
            recorded = json.loads(desc.read_text(encoding="utf-8")).get("brainsynth")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if not isinstance(recorded, dict):
            raise InputError(out_dir, "is not empty and holds no brainsynth cohort", "choose a new or empty output folder")
        mine = {"subjects": subjects, **options.as_json()}
        if {k: v for k, v in recorded.items() if k != "subjects"} != {k: v for k, v in mine.items() if k != "subjects"}:
            raise InputError(out_dir, "holds a cohort simulated with other options", "choose a new output folder (or repeat the original options to resume)")
        had = recorded.get("subjects")
        if isinstance(had, int) and subjects < had:
            raise InputError(out_dir, f"holds a cohort of {had} subjects", f"ask for at least {had} subjects to resume or extend it, or choose a new folder")
        return True
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".brainsynth-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(out_dir, f"cannot write the output folder ({exc.strerror})", "choose a writable location") from None
    return False


def simulate_cohort(
    out_dir: str | os.PathLike[str],
    subjects: int = 4,
    sessions: int = 3,
    resolution: float = 2.0,
    seed: int = 0,
    ventricle_rate: Sequence[float] = DEFAULT_VENTRICLE_RATE,
    cortex_rate: Sequence[float] = DEFAULT_CORTEX_RATE,
    interval_years: Sequence[float] = DEFAULT_INTERVAL,
    noise: float = 1.0,
    skull: bool = True,
    progress: Progress | None = None,
) -> CohortResult:
    """Simulate a cohort and write it as a BIDS tree under ``out_dir`` (resumable).

    Layout::

        OUT/dataset_description.json, participants.tsv, participants.json
        OUT/sub-001/sub-001_sessions.tsv
        OUT/sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz
        OUT/derivatives/brainsynth-truth/dataset_description.json
        OUT/derivatives/brainsynth-truth/sub-001/ses-01/anat/sub-001_ses-01_desc-truth_dseg.nii.gz
        OUT/derivatives/brainsynth-truth/sub-001/figures/sub-001_desc-sessions_montage.png

    A folder holding a cohort made with the same options is resumed: complete subjects are kept
    (and asking for more subjects than it holds extends it; subject i never depends on N).
    """
    started = time.perf_counter()
    if not isinstance(subjects, int) or isinstance(subjects, bool) or subjects < 1:
        raise UserError(f"--subjects must be at least 1, got {subjects}")
    if subjects > 999:
        raise UserError(f"--subjects must be at most 999, got {subjects}")
    opts = make_options(sessions=sessions, resolution=resolution, seed=seed, ventricle_rate=ventricle_rate,
                        cortex_rate=cortex_rate, interval_years=interval_years, noise=noise, skull=skull)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a folder", "choose a new output folder")
    from brainsynth_cli.outputs import locked_output, on_interrupt

    def finished_any() -> bool:
        return any(root.glob("sub-*/sub-*_sessions.tsv"))

    with locked_output(root, command="simulate", keep=finished_any):
        on_interrupt(lambda: f"the finished subjects in {root} are kept; run the same command again to resume"
                     if finished_any() else "no subject was finished, nothing was kept; run the command again")
        return _simulate_into(root, opts, subjects, started, progress)


def _simulate_into(root: Path, opts: Options, subjects: int, started: float, progress: Progress | None) -> CohortResult:
    from brainsynth_cli.images import atomic_write_text

    _validate_out(root, opts, subjects)
    plans = [plan_subject(i, opts) for i in range(subjects)]
    tpl.reference(opts.resolution)  # build the template cache before writing anything else
    atomic_write_text(root / "dataset_description.json", json.dumps(_description(opts, subjects), indent=2) + "\n")
    truth = root / "derivatives" / TRUTH
    atomic_write_text(truth / "dataset_description.json", json.dumps({
        "Name": "brainsynth simulated cohort: ground-truth labels",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brainsynth simulate", "Version": _description(opts, subjects)["GeneratedBy"][0]["Version"]}],
        "SourceDatasets": [{"URL": "../.."}],
        "DatasetLinks": {"raw": "../.."},
    }, indent=2) + "\n")
    atomic_write_text(truth / "README.md", TRUTH_README)
    atomic_write_text(truth / ".bidsignore", TRUTH_BIDSIGNORE)
    done, skipped = [], []
    total = len(plans)
    for i, plan in enumerate(plans):
        if progress:
            progress(i, total, plan.subject)
        if _complete(root, plan):
            skipped.append(plan.subject)
            continue
        write_subject(root, _simulate(plan, opts))
        done.append(plan.subject)
    rows = [{"participant_id": p.subject, "age": p.age, "sex": p.sex, "pattern": p.pattern,
             "ventricle_rate_per_year": p.rates_per_year["ventricle"], "cortex_rate_per_year": p.rates_per_year["cortex"]} for p in plans]
    atomic_write_text(root / "participants.tsv", _tsv(rows, ["participant_id", "age", "sex", "pattern", "ventricle_rate_per_year", "cortex_rate_per_year"]))
    atomic_write_text(root / "participants.json", json.dumps(SIDE_CARS["participants.json"], indent=2) + "\n")
    if progress:
        progress(total, total, "done")
    return CohortResult(root=root, options=opts, plans=plans, simulated=done, skipped=skipped, seconds=time.perf_counter() - started)
