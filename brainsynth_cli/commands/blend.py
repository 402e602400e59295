"""``brainsynth blend PRIOR TARGET MASK -o OUT [--blender NAME]``: put the masked region of
TARGET into PRIOR with a blender plugin (poisson, copy-paste, warp, none, or a third party's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

NIFTI = (".nii", ".nii.gz")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    return "other"


def register(app: typer.Typer) -> None:
    @app.command("blend")
    def blend(
        prior: Path = typer.Argument(..., help="Image to blend into (NIfTI 2D/3D, or 8/16-bit greyscale PNG)."),
        target: Path = typer.Argument(..., help="Image whose masked region is put into PRIOR (same grid)."),
        mask: Path = typer.Argument(..., help="Region: a label map or binary mask on the same grid; nonzero = region."),
        output: Path = typer.Option(..., "-o", "--output", help="Output file: .nii/.nii.gz for NIfTI inputs, .png for PNG inputs."),
        blender: str = typer.Option("poisson", "--blender", "-b", help="Blender plugin (see `brainsynth plugins`)."),
        rtol: float | None = typer.Option(None, "--rtol", help="poisson: relative residual to reach (default 1e-6)."),
        maxiter: int | None = typer.Option(None, "--maxiter", help="poisson: iteration cap (default 500)."),
    ) -> None:
        """Blend the MASK region of TARGET into PRIOR and write OUT (float32 NIfTI, or PNG of PRIOR's bit depth).

        Outside the mask OUT equals PRIOR. With the default `poisson` blender the region solves Poisson's equation with TARGET's Laplacian as guidance and PRIOR on its boundary: the structure comes from TARGET, the intensities meet PRIOR's without a seam.
        """
        from brainsynth_cli.errors import InputError, UserError
        from brainsynth_cli.plugin_manager import get_manager

        kinds = {p: _kind(p) for p in (prior, target, mask)}
        for p, k in kinds.items():
            if k == "other":
                raise InputError(p, "is neither NIfTI (.nii, .nii.gz) nor PNG", "convert it to NIfTI or a greyscale PNG")
        for p in (target, mask):
            if kinds[p] != kinds[prior]:
                raise InputError(p, f"is {kinds[p].upper()} but PRIOR {prior} is {kinds[prior].upper()}",
                                 "give PRIOR, TARGET and MASK in the same format")
        kind = kinds[prior]
        out_kind = _kind(output)
        if out_kind != kind:
            want = ".nii or .nii.gz" if kind == "nifti" else ".png"
            raise InputError(output, f"output must end in {want} for {kind.upper()} inputs", "rename the output")
        from brainsynth_cli.outputs import check_writable, on_interrupt, refuse_overwriting_inputs

        refuse_overwriting_inputs([output], [prior, target, mask])
        check_writable([output])
        on_interrupt("nothing was written; run the command again")
        options: dict[str, Any] = {}
        if rtol is not None or maxiter is not None:
            if blender != "poisson":
                raise UserError(f"--rtol and --maxiter apply to the poisson blender, not {blender!r}; drop them")
            if rtol is not None:
                if not 0 < rtol < 1:
                    raise UserError(f"--rtol must lie in (0, 1), got {rtol}; e.g. --rtol 1e-6")
                options["rtol"] = rtol
            if maxiter is not None:
                if not 1 <= maxiter <= 1_000_000:
                    raise UserError(f"--maxiter must lie in [1, 1000000], got {maxiter}")
                options["maxiter"] = maxiter
        component = get_manager().registry("blender").create(blender, **options)

        if kind == "nifti":
            p_arr, t_arr, m_arr, write = _read_nifti(prior, target, mask)
        else:
            p_arr, t_arr, m_arr, write = _read_png(prior, target, mask)
        if not m_arr.any():
            raise InputError(mask, "has no nonzero voxels, so there is nothing to blend", "give a mask of the structure to take from TARGET")
        try:
            result = component.blend(p_arr, t_arr, m_arr)
        except UserError:
            raise
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()
            raise UserError(f"blender {blender!r} failed: {first[0] if first else type(exc).__name__}") from None
        write(output, result)
        extra = ""
        info = getattr(component, "last_info", None)
        if info is not None and hasattr(info, "iterations"):
            extra = f", {info.iterations} iterations, relative residual {info.relative_residual:.2g}"
        typer.echo(f"wrote {output} (blender {blender}, {int(m_arr.sum())} voxels in the region{extra})")


def _read_nifti(prior: Path, target: Path, mask: Path):
    import numpy as np

    from brainsynth_cli.errors import InputError
    from brainsynth_cli.images import check_same_grid, read_labels, read_volume, write_volume

    pv = read_volume(prior, ndims=(2, 3))
    tv = read_volume(target, ndims=(2, 3))
    if tv.shape != pv.shape:
        raise InputError(target, f"has shape {tv.shape} but PRIOR {prior} has shape {pv.shape}",
                         "resample TARGET onto PRIOR's grid (e.g. rigid registration) first")
    if not np.allclose(tv.affine, pv.affine, atol=1e-3):
        delta = float(np.abs(tv.affine - pv.affine).max())
        raise InputError(target, f"affine differs from PRIOR {prior} by up to {delta:.3g} mm",
                         "resample TARGET onto PRIOR's grid (e.g. rigid registration) first")
    mv = read_labels(mask, ndims=(2, 3))
    check_same_grid(pv, mv)

    def write(path: Path, data) -> None:
        write_volume(path, data, pv.affine, pv.header, dtype="float32")

    return pv.data, tv.data, mv.data != 0, write


def _read_png(prior: Path, target: Path, mask: Path):
    import numpy as np

    from brainsynth_cli.errors import InputError
    from brainsynth_cli.images import read_png, write_png

    p_arr, bits = read_png(prior)
    t_arr, _ = read_png(target)
    m_arr, _ = read_png(mask)
    for path, arr in ((target, t_arr), (mask, m_arr)):
        if arr.shape != p_arr.shape:
            raise InputError(path, f"has shape {arr.shape} but PRIOR {prior} has shape {p_arr.shape}",
                             "give images of the same size")

    def write(path: Path, data) -> None:
        top = 255 if bits == 8 else 65535
        write_png(path, np.clip(np.rint(data), 0, top), bits=bits)

    return p_arr.astype(np.float32), t_arr.astype(np.float32), m_arr != 0, write
