"""The ``poisson`` blender: Poisson image editing (Perez et al. 2003) in 2D and 3D.

Inside the region Omega the result f solves the discrete Poisson equation with the target's
Laplacian as guidance, Delta f = Delta target (5-point stencil in 2D, 7-point in 3D), with
f = prior on the boundary of Omega; outside Omega f is the prior, bit for bit. Where Omega
touches the array border the missing neighbours do not exist (no flux through the border); a
connected piece of Omega that touches no prior voxel at all keeps the target's values.

The solver is matrix-free: conjugate gradients preconditioned by an aggregation multigrid
V-cycle, all in numba on the mask's bounding box (see :mod:`._poisson_numba`). It stops when
the true relative residual ||b - A f|| / ||b|| of the full system is at most ``rtol`` and raises
:class:`PoissonNotConverged` when ``maxiter`` iterations do not get there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainsynth_cli.errors import BrainsynthError

__all__ = ["PoissonBlender", "PoissonNotConverged", "SolveInfo", "poisson_blend"]


class PoissonNotConverged(BrainsynthError, RuntimeError):
    """The solver hit its iteration cap before reaching the requested residual."""


@dataclass(frozen=True)
class SolveInfo:
    """What the last solve did: unknowns, multigrid levels, CG iterations, true relative residual."""

    unknowns: int
    levels: int
    iterations: int
    relative_residual: float


def _as_3d(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a


def check_inputs(prior, target, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes; return C-ordered float32 prior and target and a bool mask (no copy if possible).

    Values are checked where a blender reads them (the poisson solver refuses non-finite values
    in and next to the region); the prior's voxels elsewhere are passed through unchanged.
    """
    prior = np.asarray(prior)
    target = np.asarray(target)
    mask = np.asarray(mask)
    if prior.ndim not in (2, 3):
        raise ValueError(f"blend needs 2D or 3D images, got a {prior.ndim}D prior")
    if target.shape != prior.shape or mask.shape != prior.shape:
        raise ValueError(
            f"prior {prior.shape}, target {target.shape} and mask {mask.shape} must have the same shape"
        )
    prior = np.ascontiguousarray(prior, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.float32)
    if mask.dtype != np.bool_:
        mask = mask != 0
    return prior, target, np.ascontiguousarray(mask)


def poisson_blend(prior, target, mask, *, rtol: float = 1e-6, maxiter: int = 500, nu0: int = 2, nu: int = 2,
                  coarse_sweeps: int = 8, omega_c: float = 1.5, min_coarse: int = 64,
                  return_info: bool = False):
    """Blend the region ``mask`` of ``target`` into ``prior`` by Poisson editing; float32 result.

    ``rtol``: relative residual of the full linear system at which to stop; ``maxiter``: cap on
    CG iterations (exceeding it raises :class:`PoissonNotConverged`). ``nu0``/``nu``, ``coarse_sweeps``,
    ``omega_c`` and ``min_coarse`` tune the multigrid preconditioner (smoothing sweeps on level 0 / on coarser levels,
    symmetric sweeps on the coarsest level, over-correction of the coarse-grid correction, and
    the size at which coarsening stops).
    """
    from brainsynth_plugins.blend import _poisson_numba as nb

    prior = np.asarray(prior)
    if prior.ndim > 1 and prior.flags.f_contiguous and not prior.flags.c_contiguous:
        # Fortran order (as nibabel returns volumes): the problem is the same on the transposed
        # arrays, which are C-ordered views, so solve there instead of copying
        res = poisson_blend(prior.T, np.asarray(target).T, np.asarray(mask).T, rtol=rtol, maxiter=maxiter,
                            nu0=nu0, nu=nu, coarse_sweeps=coarse_sweeps, omega_c=omega_c, min_coarse=min_coarse,
                            return_info=return_info)
        return (res[0].T, res[1]) if return_info else res.T
    prior, target, mask = check_inputs(prior, target, mask)
    is3d = prior.ndim == 3
    out = prior.copy()
    p3, t3, m3 = _as_3d(prior), _as_3d(target), _as_3d(mask)
    zlo, zhi, ylo, yhi, xlo, xhi = nb.bounding_box(m3.view(np.uint8))
    if zhi < 0:
        info = SolveInfo(0, 0, 0, 0.0)
        return (out, info) if return_info else out
    if is3d:
        oz, bz = zlo - 1, zhi - zlo + 3
    else:
        oz, bz = 0, 1
    oy, by = ylo - 1, yhi - ylo + 3
    ox, bx = xlo - 1, xhi - xlo + 3
    D0, r0, segs0, groups0, bnorm2, finite = nb.build_level0(p3, t3, m3.view(np.uint8), oz, oy, ox, bz, by, bx, is3d)
    if not finite:
        raise ValueError("prior and target must be finite (no NaN or Inf) in and around the mask")
    unknowns = int(segs0[:, 3].sum())

    # multigrid hierarchy: level 0 is (D0, unit couplings); coarse levels are Galerkin products
    dims = [(bz, by, bx)]
    segs_list, groups_list = [segs0], [groups0]
    coarse = []  # (D, Wx, Wy, Wz) per coarse level
    dummy = np.zeros(1, np.float32)
    count = unknowns
    while count > min_coarse and len(dims) < 16:
        fz, fy, fx = dims[-1]
        if not coarse:
            Dc, Wx, Wy, Wz = nb.galerkin(True, D0, dummy, dummy, dummy, dummy, segs_list[-1], fz, fy, fx, is3d)
        else:
            Dc, Wx, Wy, Wz = nb.galerkin(False, D0, *coarse[-1], segs_list[-1], fz, fy, fx, is3d)
        cz, cy, cx = nb.coarse_dims(fz, fy, fx, is3d)
        segs_c, groups_c = nb.coarse_segments(Dc, cz, cy, cx, is3d)
        ncount = int(segs_c[:, 3].sum())
        if ncount == 0:
            break
        coarse.append((Dc, Wx, Wy, Wz))
        segs_list.append(segs_c)
        groups_list.append(groups_c)
        dims.append((cz, cy, cx))
        if ncount >= 0.9 * count:
            break  # coarsening stalls (e.g. a one-voxel-thin region): stop here
        count = ncount
    nlev = len(dims)
    goff = np.zeros(nlev + 1, np.int64)
    for lvl in range(1, nlev):
        goff[lvl + 1] = goff[lvl] + dims[lvl][0] * dims[lvl][1] * dims[lvl][2]
    soff = np.zeros(nlev + 1, np.int64)
    groff = np.zeros(nlev + 1, np.int64)
    for lvl in range(nlev):
        soff[lvl + 1] = soff[lvl] + segs_list[lvl].shape[0]
        groff[lvl + 1] = groff[lvl] + groups_list[lvl].size
    segs = np.concatenate(segs_list) if nlev > 1 else segs0
    groups = np.concatenate(groups_list) if nlev > 1 else groups0
    if coarse:
        D, Wx, Wy, Wz = (np.concatenate([c[k] for c in coarse]) for k in range(4))
    else:
        D = Wx = Wy = Wz = dummy
    dims_arr = np.asarray(dims, dtype=np.int64)
    bnorm = float(np.sqrt(bnorm2))
    if bnorm == 0.0:
        # b = 0 (e.g. a zero prior around a constant target): the solution is f = 0 in the region;
        # measure the residual against the initial one instead
        bnorm = float(np.sqrt(np.sum(np.square(r0, dtype=np.float64))))
        if bnorm == 0.0:
            bnorm = 1.0
    u, iters, rel, ok = nb.pcg(r0, bnorm, float(rtol), int(maxiter), D0, D, Wx, Wy, Wz, segs, soff, groups,
                               groff, dims_arr, goff, is3d, nlev, int(nu0), int(nu), int(coarse_sweeps), float(omega_c))
    if not ok:
        raise PoissonNotConverged(
            f"Poisson solver stopped after {iters} iterations at relative residual {rel:.3g} > {rtol:g} "
            f"({unknowns} unknowns); raise maxiter or rtol"
        )
    nb.scatter(_as_3d(out), u, t3, segs0, segs0.shape[0], oz, oy, ox, by, bx)
    info = SolveInfo(unknowns, nlev, int(iters), float(rel))
    return (out, info) if return_info else out


class PoissonBlender:
    """Blender ``poisson``: Poisson image editing with a matrix-free multigrid-CG numba solver.

    Options: ``rtol`` (default 1e-6) and ``maxiter`` (default 500). ``last_info`` holds the
    :class:`SolveInfo` of the last call.
    """

    name = "poisson"

    def __init__(self, rtol: float = 1e-6, maxiter: int = 500) -> None:
        if not (0 < float(rtol) < 1):
            raise ValueError("rtol must lie in (0, 1)")
        if int(maxiter) < 1:
            raise ValueError("maxiter must be at least 1")
        self.rtol = float(rtol)
        self.maxiter = int(maxiter)
        self.last_info: SolveInfo | None = None

    def blend(self, prior, target, mask) -> np.ndarray:
        out, info = poisson_blend(prior, target, mask, rtol=self.rtol, maxiter=self.maxiter, return_info=True)
        self.last_info = info
        return out
