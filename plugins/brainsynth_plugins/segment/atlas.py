"""The ``atlas`` segmenter: register the reference template to the subject, propagate its
labels, refine them by the subject's intensities.

1. Linear: centre-of-mass start, then a 12-parameter affine (Mattes mutual information,
   4 and 2 times shrunk), with the metric restricted to the template's brain (a moving mask):
   the subject's skull, scalp and neck have no counterpart in the skull-stripped template and
   are left out instead of pulling the brain outward.
2. Deformable: symmetric-forces demons, coarse to fine, on the subject masked by the
   affinely placed template brain (dilated) and histogram-matched to the template.
3. Labels: the template's aseg labels through the composed transform, nearest neighbour, onto
   the subject's own grid (registration runs at ``work_mm`` at most; labels come from the
   template at 1 mm for subjects finer than 1.5 mm).
4. Refinement (:mod:`.refine`): a CSF/GM/WM mixture with the propagated labels as priors.

:meth:`AtlasSegmenter.segment_followup` segments a later scan of the same subject consistently
with an earlier one: a rigid registration of the earlier scan to the later one carries the
earlier labels over, the later scan is put on the earlier one's intensity scale, and the same
refinement, with the earlier scan's class means and (near the ventricles) its bias field, moves
the boundaries to where this scan's intensities put them. Change rates then come from
boundaries that moved between the scans, not from two independent registrations to the
template.

SimpleITK runs with ``threads`` threads (default 1) and fixed sampling seeds: the same input
gives the same labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from brainsynth_cli.errors import UserError
from brainsynth_cli.images import Volume
from brainsynth_cli.interfaces import Progress

from brainsynth_plugins.segment import itk
from brainsynth_plugins.segment import register as reg
from brainsynth_plugins.segment.refine import RefineOptions, class_model, refine


def _noop(done: float, total: float, message: str = "") -> None:
    return None


def work_image(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` on a grid no finer than ``spacing`` mm (smoothed before subsampling)."""
    old = np.array(image.GetSpacing())
    if np.all(old >= spacing - 1e-6):
        return image
    new = np.maximum(old, spacing)
    size = [max(1, int(round(n * o / s))) for n, o, s in zip(image.GetSize(), old, new)]
    sigma = [0.5 * max(s - o, 0.0) for o, s in zip(old, new)]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if any(x > 0 for x in sigma) else image
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # Keep the field of view: first voxel centre moves by half the change in voxel size.
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2.0)
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(new.tolist())
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(image.GetDirection())
    return sitk.Resample(smoothed, ref, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


class AtlasSegmenter:
    """Template registration (SimpleITK affine + demons), label propagation, intensity refinement.

    Options (``--option KEY=VALUE``): ``refine`` (true), ``deformable`` (true; false = affine
    only, DALL-E Brain's scheme), ``refine_rounds`` (1; more lets boundaries travel further),
    ``prior_mm`` (2.0: blur of the propagated labels used as refinement priors),
    ``threads`` (1), ``seed`` (0), ``work_mm`` (2.0, the finest grid registration runs on),
    ``demons_iterations`` ("60,30": at twice ``work_mm``, then at ``work_mm``), ``demons_sigma``
    (1.5 mm, smoothing of the displacement field), ``atlas`` ("T1.nii.gz:LABELS.nii.gz", a
    skull-stripped T1 and its aseg labels on one grid, instead of the bundled template).
    """

    name = "atlas"

    def __init__(self, refine: Any = True, deformable: Any = True, refine_rounds: int = 1, prior_mm: float = 2.0,
                 threads: int = 1,
                 seed: int = 0, work_mm: float = 2.0, demons_iterations: Any = (60, 30), demons_sigma: float = 1.5,
                 atlas: str | None = None, followup_intensity: str = "power") -> None:
        self.refine = _bool(refine)
        self._model_cache: tuple[Any, Any, Any] | None = None  # see _earlier_model
        self.followup_intensity = str(followup_intensity)
        if self.followup_intensity not in ("power", "piecewise", "none"):
            raise UserError("atlas segmenter: followup_intensity must be power, piecewise or none")
        self.deformable = _bool(deformable)
        self.refine_rounds = int(refine_rounds)
        self.refine_options = RefineOptions(prior_sigma_mm=float(prior_mm))
        self.threads = int(threads)
        self.seed = int(seed)
        self.work_mm = float(work_mm)
        its = demons_iterations.split(",") if isinstance(demons_iterations, str) else demons_iterations
        self.demons_iterations = tuple(int(x) for x in its)
        self.demons_sigma = float(demons_sigma)
        self._template: tuple[Volume, Volume] | None = None
        if atlas:
            from brainsynth_cli.images import check_same_grid, read_labels, read_volume

            from brainsynth_plugins.segment.ants import _parse_atlases

            pairs = _parse_atlases(atlas) or []
            if len(pairs) != 1:
                raise UserError("atlas segmenter takes one atlas: -O atlas=T1.nii.gz:LABELS.nii.gz")
            t1, lab = read_volume(pairs[0][0]), read_labels(pairs[0][1])
            check_same_grid(t1, lab)
            self._template = (t1, lab)
        if self.threads < 1 or self.work_mm <= 0 or not self.demons_iterations:
            raise UserError("atlas segmenter: threads must be >= 1, work_mm > 0 and demons_iterations non-empty")

    @property
    def labels(self) -> frozenset[int]:
        """The aseg ids this segmenter writes: those of its atlas. The bundled template labels
        cerebral white matter and cortex, lateral ventricles, thalamus, caudate, putamen,
        cerebellum, brain stem and CSF; no hippocampus, amygdala, pallidum, accumbens, ventral
        DC, inferior lateral ventricles or 3rd/4th ventricle."""
        if self._template is not None:
            return frozenset(int(i) for i in np.unique(self._template[1].data) if i > 0)
        from brainsynth_plugins.simulate.template import BRAINSTEM, CSF, LEFT, RIGHT

        return frozenset([*LEFT.values(), *RIGHT.values(), BRAINSTEM, CSF])

    # -- template --------------------------------------------------------------------------
    def template(self, voxel_mm: float) -> tuple[Volume, Volume]:
        """(T1, labels) of the atlas: labels at 1 mm for fine subjects, 2 mm otherwise."""
        if self._template is not None:
            return self._template
        from brainsynth_plugins.simulate.template import reference

        return reference(resolution=1.0 if voxel_mm < 1.5 else 2.0)

    # -- segmenting ------------------------------------------------------------------------
    def segment(self, image: Volume, progress: Progress | None = None) -> Volume:
        progress = progress or _noop
        with reg.itk_threads(self.threads):
            subject = itk.volume_to_sitk(image)
            t1, labels = self.template(min(image.voxel_size))
            progress(0, 4, "affine")
            transform = self.register_template(subject, t1, labels, progress)
            progress(3, 4, "labels")
            out = itk.to_array(itk.resample(itk.volume_to_sitk(labels, np.int32), subject, transform, labels=True))
        if self.refine:
            out = refine(image.data, out, image.voxel_size, self.refine_options, rounds=self.refine_rounds)
        progress(4, 4, "done")
        return image.with_data(out.astype(np.int32))

    def register_template(self, subject: sitk.Image, t1: Volume, labels: Volume,
                          progress: Progress = _noop) -> sitk.Transform:
        """Transform subject point -> template point (affine, then demons)."""
        fixed = work_image(subject, self.work_mm)
        moving = reg.robust_scale(work_image(itk.volume_to_sitk(t1), self.work_mm))
        lab_w = work_labels(labels, moving)
        brain = sitk.Cast(lab_w > 0, sitk.sitkUInt8)
        moving_mask = sitk.BinaryDilate(brain, [2] * 3)
        fixed = reg.robust_scale(fixed)
        init = reg.centre_initialise(fixed, moving, moving_mask=brain)
        affine = reg.linear(fixed, moving, init, kind="affine", moving_mask=moving_mask, shrink=(4, 2), seed=self.seed)
        if not self.deformable:
            return affine
        progress(1, 4, "demons")
        warped = itk.resample(moving, fixed, affine)
        mask = sitk.BinaryDilate(itk.resample(brain, fixed, affine, labels=True), [2] * 3)
        fixed_masked = sitk.Mask(fixed, mask)
        fixed_masked = sitk.HistogramMatching(fixed_masked, sitk.Mask(warped, mask), 128, 15, True)
        field = reg.demons(fixed_masked, sitk.Mask(warped, mask), shrink=(2, 1)[-len(self.demons_iterations):],
                           iterations=self.demons_iterations, sigma=self.demons_sigma)
        progress(2, 4, "demons")
        return reg.compose(affine, field)

    def segment_followup(self, image: Volume, prior_image: Volume, prior_labels: Volume,
                         progress: Progress | None = None) -> Volume:
        """Labels of ``image``, a later scan of the subject whose earlier scan ``prior_image``
        has labels ``prior_labels``: the earlier labels carried by a rigid registration (same
        brain: no scaling that would hide atrophy), then refined by this scan's intensities.

        ``brainsynth segment --bids`` labels every session of a subject this way from the first
        session's ``segment`` labels, the first session included (its registration is the
        identity): all sessions then get the same refinement from the same labels, so a
        structure's volume changes only where a scan's tissue boundaries moved."""
        progress = progress or _noop
        shared = self.refine and self.followup_intensity != "none"
        model = self._earlier_model(prior_image, prior_labels) if shared else None
        if _same_scan(image, prior_image):
            out = np.asarray(prior_labels.data, dtype=np.int32)
            if self.refine:
                out = refine(image.data, out, image.voxel_size, self.refine_options, rounds=self.refine_rounds,
                             bias_field=None if model is None else model[1])
            progress(2, 2, "done")
            return image.with_data(out.astype(np.int32))
        with reg.itk_threads(self.threads):
            subject = itk.volume_to_sitk(image)
            fixed = reg.robust_scale(work_image(subject, self.work_mm))
            moving = reg.robust_scale(work_image(itk.volume_to_sitk(prior_image), self.work_mm))
            brain = sitk.Cast(work_labels(prior_labels, moving) > 0, sitk.sitkUInt8)
            progress(0, 2, "rigid")
            init = reg.centre_initialise(fixed, moving, moving_mask=brain)
            rigid = reg.linear(fixed, moving, init, kind="rigid", moving_mask=sitk.BinaryDilate(brain, [2] * 3),
                               shrink=(4, 2, 1), seed=self.seed)
            progress(1, 2, "labels")
            out = itk.to_array(itk.resample(itk.volume_to_sitk(prior_labels, np.int32), subject, rigid, labels=True))
            earlier = itk.to_array(itk.resample(itk.volume_to_sitk(prior_image), subject, rigid))
            field = None
            if model is not None:
                field = itk.to_array(itk.resample(itk.volume_to_sitk(prior_image.with_data(model[1])), subject, rigid,
                                                  default=1.0))  # outside the earlier scan's grid: no bias
        if self.refine:
            data = match_to_earlier(image.data, earlier, out, image.voxel_size, self.followup_intensity)
            # On the matched scale the later scan is decided as the earlier one was:
            # - with the earlier scan's CSF and grey matter means: means fitted per scan drift with
            #   the ventricles' size (more pure CSF voxels pull the CSF mean down and the CSF
            #   threshold with it); the white matter mean stays free (fixing it too made cortex
            #   rates worse, benchmarks/RESULTS.md);
            # - near the ventricles, with the earlier scan's bias field (the first session is
            #   refined with it too): a field fitted per scan (10 mm smoothing) absorbs part of a
            #   ventricle wall that moved (-3.8 pp on a +28 % enlargement); see
            #   near_ventricles_field for why the cortex keeps this scan's own field.
            means = None if model is None else model[0]
            if field is not None:
                field = near_ventricles_field(data, out, image.voxel_size, field, self.refine_options)
            out = refine(data, out, image.voxel_size, self.refine_options, rounds=self.refine_rounds, means=means,
                         bias_field=field)
        progress(2, 2, "done")
        return image.with_data(out.astype(np.int32))

    def _earlier_model(self, prior_image: Volume, prior_labels: Volume) -> tuple[np.ndarray, np.ndarray] | None:
        """The earlier scan's CSF and GM means (WM left free, NaN) and its bias field (its grid),
        fitted once per earlier scan: every session of a subject is labelled from the same first
        session."""
        cached = self._model_cache
        if cached is not None and cached[0] is prior_image and cached[1] is prior_labels:
            return cached[2]
        model = class_model(prior_image.data, prior_labels.data, prior_image.voxel_size, self.refine_options)
        if model is not None:
            model = (np.array([model[0][0], model[0][1], np.nan]), model[1])
        self._model_cache = (prior_image, prior_labels, model)
        return model


#: aseg ids of the ventricles (lateral and inferior lateral), whose walls move between sessions.
VENTRICLE_IDS = (4, 5, 43, 44)


def stable_regions(labels: np.ndarray, voxel_size: tuple[float, ...], margin_mm: float = 4.0) -> tuple[np.ndarray, ...]:
    """Boolean (CSF, grey matter, white matter) regions of ``labels`` whose intensity should not
    change between two scans of one head: the lateral ventricles' core (voxels at least 3 mm
    inside the wall: free of partial volume in either scan while the wall moves outward), and grey
    and white matter eroded by one voxel and at least ``margin_mm`` from the ventricles (whose
    walls move and blur the tissue next to them)."""
    from scipy import ndimage as ndi

    from brainsynth_plugins.segment.refine import tissue_classes

    labels = np.asarray(labels)
    ventricles = np.isin(labels, (4, 43))
    core = ndi.distance_transform_edt(ventricles, sampling=voxel_size) >= 3.0
    if core.sum() < 20:
        core = ndi.binary_erosion(ventricles)
    far = ndi.distance_transform_edt(~np.isin(labels, VENTRICLE_IDS), sampling=voxel_size) >= margin_mm
    cls = tissue_classes(labels)
    return core, ndi.binary_erosion(cls == 1) & far, ndi.binary_erosion(cls == 2) & far


def near_ventricles_field(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...], earlier: np.ndarray,
                          options: RefineOptions, inner_mm: float = 8.0, outer_mm: float = 20.0) -> np.ndarray:
    """The bias field to decide a later scan with: ``earlier`` (the first scan's field on this
    grid) within ``inner_mm`` of the ventricles, this scan's own fitted field beyond
    ``outer_mm``, blended linearly between. Near the ventricles a field fitted per scan absorbs
    part of a wall that moved; at the cortex the earlier field would carry the residual of the
    differential bias correction (fitted in deep white matter) that this scan's own field
    removes."""
    from scipy import ndimage as ndi

    model = class_model(image, labels, voxel_size, options)
    if model is None:
        return earlier
    own = model[1]
    brain = labels > 0
    dist = ndi.distance_transform_edt(~np.isin(labels, VENTRICLE_IDS), sampling=voxel_size)
    w = np.clip((outer_mm - dist) / (outer_mm - inner_mm), 0.0, 1.0)
    a = earlier / np.median(earlier[brain])
    b = own / np.median(own[brain])
    return (w * a + (1.0 - w) * b).astype(np.float32)


def match_to_earlier(image: np.ndarray, earlier: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...],
                     intensity: str = "power") -> np.ndarray:
    """``image`` (a later scan) put on the intensity scale of ``earlier`` (the first scan on the
    same grid, same brain), with ``labels`` the first scan's labels carried onto this grid.

    1. Differential bias: divided by the smooth field of log(image / earlier) fitted in white
       matter eroded by one voxel and at least 4 mm from the ventricles
       (:func:`brainsynth_plugins.bias_field.correct`, a degree-3 polynomial that interpolates
       across the periventricular region instead of averaging into it).
    2. Contrast (``intensity``): "power" maps ``x -> a x^p`` fitted (least squares in log-log)
       through the 20 %-trimmed means of the ventricle core, grey and white matter in both scans
       (:func:`stable_regions`; trimmed means: the ventricle core holds only ~50-150 voxels at
       2 mm, and noise in its level moves the ventricle threshold); "piecewise" maps
       piecewise-linearly through (0, 0) and those levels; "none" keeps the bias-corrected scan. Scans differ in contrast (T1 weighting,
       gamma), and a ventricle boundary voxel is decided by where its intensity falls between
       CSF and white matter: equal partial volume must read as equal intensity in both scans.

    With too few stable voxels a step is skipped (the scan is returned less corrected)."""
    from brainsynth_plugins import bias_field

    if intensity not in ("power", "piecewise", "none"):
        raise UserError(f"atlas segmenter: followup_intensity must be power, piecewise or none, got {intensity!r}")
    csf, grey, white = stable_regions(labels, voxel_size)
    earlier = np.asarray(earlier, dtype=np.float32)
    out = bias_field.correct(np.asarray(image, dtype=np.float32), earlier, white)
    if intensity == "none" or min(int(csf.sum()), int(grey.sum()), int(white.sum())) < 20:
        return out
    from scipy.stats import trim_mean

    x = np.array([trim_mean(out[m], 0.2) for m in (csf, grey, white)], dtype=np.float64)
    y = np.array([trim_mean(earlier[m], 0.2) for m in (csf, grey, white)], dtype=np.float64)
    if np.any(x <= 0) or np.any(y <= 0) or np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        return out  # no CSF < grey < white order to match
    v = np.maximum(out.astype(np.float64), 0.0)
    if intensity == "power":
        p, log_a = np.polyfit(np.log(x), np.log(y), 1)
        return (np.exp(log_a) * v ** p).astype(np.float32)
    xs, ys = np.concatenate([[0.0], x]), np.concatenate([[0.0], y])
    mapped = np.interp(v, xs, ys)
    above = v > xs[-1]
    mapped[above] = ys[-1] + (v[above] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return mapped.astype(np.float32)


def _same_scan(a: Volume, b: Volume) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a.affine, b.affine) and np.array_equal(a.data, b.data))


def work_labels(labels: Volume, reference: sitk.Image) -> sitk.Image:
    """``labels`` on ``reference``'s grid (nearest neighbour)."""
    return itk.resample(itk.volume_to_sitk(labels, np.int32), reference, labels=True)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise UserError(f"expected true or false, got {value!r}")
    return bool(value)
