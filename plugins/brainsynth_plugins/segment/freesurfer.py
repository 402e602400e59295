"""The ``freesurfer`` segmenter: FreeSurfer's labels on the input grid.

Two sources, in this order:

- an existing segmentation: ``aseg=FILE`` (``aseg.mgz``, ``aparc+aseg.mgz`` or any aseg-id
  label image) or ``subject_dir=DIR`` (a FreeSurfer subject; ``DIR/mri/aseg.mgz``, else
  ``DIR/mri/aparc+aseg.mgz``), resampled to the input grid by world position, nearest neighbour;
- ``mri_synthseg`` (FreeSurfer 7.3+): when ``FREESURFER_HOME`` is set and ``mri_synthseg`` is on
  PATH, it runs on the image (``--robust`` with ``robust=true``, ``--threads``) and its output is
  resampled the same way.

Cortical parcels (aparc 1000-1035 / 2000-2035, a2009s 11100-12175) fold into cerebral cortex
3/42, white-matter parcels (wmparc 3000s/4000s, 5001/5002) into cerebral white matter 2/41, so
volumes and change rates see the same structure groups whatever the source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.images import Volume
from brainsynth_cli.interfaces import Progress

INSTALL_HINT = ("install FreeSurfer 7.3+ and set FREESURFER_HOME (https://surfer.nmr.mgh.harvard.edu), "
                "or import an existing segmentation with -O aseg=FILE or -O subject_dir=DIR")


def fold_aseg(labels: np.ndarray) -> np.ndarray:
    """aparc/a2009s/wmparc parcels folded into aseg cortex and white matter ids."""
    out = np.asarray(labels).astype(np.int32, copy=True)
    left_ctx = ((out >= 1000) & (out < 1100)) | ((out >= 11100) & (out < 11200))
    right_ctx = ((out >= 2000) & (out < 2100)) | ((out >= 12100) & (out < 12200))
    left_wm = ((out >= 3000) & (out < 3100)) | (out == 5001)
    right_wm = ((out >= 4000) & (out < 4100)) | (out == 5002)
    out[left_ctx] = 3
    out[right_ctx] = 42
    out[left_wm] = 2
    out[right_wm] = 41
    return out


class FreeSurferSegmenter:
    """FreeSurfer's segmentation (mri_synthseg, or an imported aseg) on the input grid.

    Options: ``aseg`` (a label file), ``subject_dir`` (a FreeSurfer subject folder),
    ``robust`` (false; mri_synthseg --robust), ``threads`` (1).
    """

    name = "freesurfer"

    def __init__(self, aseg: str | None = None, subject_dir: str | None = None, robust: Any = False,
                 threads: int = 1) -> None:
        self.threads = int(threads)
        self.robust = str(robust).strip().lower() in ("1", "true", "yes", "on")
        self.source: Path | None = None
        if aseg and subject_dir:
            raise UserError("freesurfer: give either -O aseg=FILE or -O subject_dir=DIR, not both")
        if aseg:
            self.source = Path(aseg).expanduser()
            if not self.source.is_file():
                raise InputError(self.source, "aseg file not found", "give an aseg.mgz / aparc+aseg.mgz / label NIfTI")
        elif subject_dir:
            mri = Path(subject_dir).expanduser() / "mri"
            hits = [p for p in (mri / "aseg.mgz", mri / "aparc+aseg.mgz") if p.is_file()]
            if not hits:
                raise InputError(Path(subject_dir), "holds no mri/aseg.mgz or mri/aparc+aseg.mgz",
                                 "run recon-all on it first, or point -O aseg= at a label file")
            self.source = hits[0]
        else:
            self.program = self._find_synthseg()

    @staticmethod
    def _find_synthseg() -> str:
        home = os.environ.get("FREESURFER_HOME", "").strip()
        if not home:
            raise UserError(f"freesurfer segmenter needs FreeSurfer (FREESURFER_HOME is not set); {INSTALL_HINT}")
        program = shutil.which("mri_synthseg") or shutil.which("mri_synthseg", path=str(Path(home) / "bin"))
        if not program:
            raise UserError(f"freesurfer segmenter: mri_synthseg not found on PATH or in $FREESURFER_HOME/bin; {INSTALL_HINT}")
        return program

    def segment(self, image: Volume, progress: Progress | None = None) -> Volume:
        from brainsynth_cli.images import read_labels

        if self.source is not None:
            labels = read_labels(self.source)
        else:
            labels = self._run_synthseg(image, progress)
        return image.with_data(self._to_grid(labels, image))

    def _run_synthseg(self, image: Volume, progress: Progress | None) -> Volume:
        from brainsynth_cli.images import read_labels, write_volume

        with tempfile.TemporaryDirectory(prefix="brainsynth-synthseg-") as tmp:
            src = Path(tmp) / "input.nii.gz"
            out = Path(tmp) / "synthseg.nii.gz"
            header = image.header if type(image.header).__name__ == "Nifti1Header" else None
            write_volume(src, image.data, image.affine, header)
            cmd = [self.program, "--i", str(src), "--o", str(out), "--threads", str(self.threads)]
            if self.robust:
                cmd.append("--robust")
            if progress:
                progress(0, 1, "mri_synthseg")
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as exc:
                raise UserError(f"freesurfer: cannot run {self.program} ({exc.strerror}); {INSTALL_HINT}") from None
            if run.returncode != 0 or not out.is_file():
                last = (run.stderr or run.stdout or "").strip().splitlines()
                raise UserError(f"mri_synthseg failed on {image.label()} (exit {run.returncode}: "
                                f"{last[-1] if last else 'no output'}); check the FreeSurfer installation")
            return read_labels(out)

    @staticmethod
    def _to_grid(labels: Volume, image: Volume) -> np.ndarray:
        """``labels`` resampled onto ``image``'s grid by world position (nearest neighbour)."""
        data = fold_aseg(labels.data)
        if labels.shape == image.shape and np.allclose(labels.affine, image.affine, atol=1e-3):
            return data
        from brainsynth_plugins.segment.itk import resample_to_grid

        out = resample_to_grid(data, labels.affine, image, labels=True)
        if not np.any(out):
            raise InputError(labels.path, f"does not overlap {image.label()} in world coordinates",
                             "give the segmentation of this scan (same scanner space)")
        return out.astype(np.int32)
