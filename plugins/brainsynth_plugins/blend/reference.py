"""The Poisson-editing linear system assembled as a scipy sparse matrix.

Not used by the blenders (they are matrix-free): tests and ``benchmarks/poisson.py`` use it
to get scipy's direct and iterative solutions of exactly the discrete problem that
:mod:`brainsynth_plugins.blend.poisson` solves.
"""

from __future__ import annotations

import numpy as np


def assemble(prior, target, mask):
    """Return ``(A, b, idx)``: CSR matrix, right-hand side (float64) and the flat indices of Omega.

    Row k is the equation of voxel ``idx[k]``: D f_i - sum_{j in N(i) in Omega} f_j =
    D g_i - sum_{j in N(i)} g_j + sum_{j in N(i) outside Omega} prior_j, where N(i) are the
    face neighbours inside the array and D = |N(i)|.
    """
    import scipy.sparse as sp

    prior = np.asarray(prior, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask) != 0
    shape = mask.shape
    idx = np.flatnonzero(mask)
    n = idx.size
    number = np.full(mask.size, -1, dtype=np.int64)
    number[idx] = np.arange(n)
    coords = np.unravel_index(idx, shape)
    diag = np.zeros(n)
    b = np.zeros(n)
    rows, cols = [], []
    g = target.ravel()
    f = prior.ravel()
    for axis in range(len(shape)):
        for step in (-1, 1):
            c = list(coords)
            c[axis] = c[axis] + step
            inside = (c[axis] >= 0) & (c[axis] < shape[axis])
            k = np.flatnonzero(inside)
            j = np.ravel_multi_index(tuple(ci[k] for ci in c), shape)
            diag[k] += 1
            b[k] += g[idx[k]] - g[j]
            nj = number[j]
            interior = nj >= 0
            rows.append(k[interior])
            cols.append(nj[interior])
            ext = ~interior
            b[k[ext]] += f[j[ext]]
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    A = sp.csr_matrix(
        (np.concatenate([diag, -np.ones(rows.size)]), (np.concatenate([np.arange(n), rows]), np.concatenate([np.arange(n), cols]))),
        shape=(n, n),
    )
    return A, b, idx


def direct_solution(prior, target, mask) -> np.ndarray:
    """The exact discrete solution (float64) by scipy's sparse direct solver."""
    from scipy.sparse.linalg import spsolve

    A, b, idx = assemble(prior, target, mask)
    out = np.asarray(prior, dtype=np.float64).copy()
    if idx.size:
        out.ravel()[idx] = spsolve(A.tocsc(), b)
    return out
