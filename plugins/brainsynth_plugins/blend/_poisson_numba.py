"""Numba kernels of the matrix-free Poisson solver: multigrid-preconditioned conjugate gradients.

The discrete problem. For every voxel i of the region Omega,

    D_i f_i - sum_{j in N(i), j in Omega} f_j = D_i g_i - sum_{j in N(i)} g_j + sum_{j in N(i), j not in Omega} f*_j

where N(i) are the 4 (2D) or 6 (3D) face neighbours that lie inside the array and D_i = |N(i)|
(a neighbour outside the array does not exist: no guidance flux through the array border).
f* is the prior, g the target. With f = g + u this becomes A u = r0, where
r0_i = sum_{j in N(i), j not in Omega} (f*_j - g_j) is nonzero only next to the boundary, and u
is the smooth correction that the solver finds.

Layout. Everything lives on the bounding box of Omega padded by one voxel on each side (a 2D
image is a (1, ny, nx) array; z is then neither padded nor coarsened). Grids are flat float32
arrays in C order that are zero outside the unknowns, so stencils need no branches (the
Dirichlet values are in r0). The unknowns of a level are row segments (z, y, x0, length),
sorted, and grouped by plane (3D) or row (2D) so that red-black Gauss-Seidel can run as a
wavefront: the red update of group k, then the black update of group k-1, and in the same
pass the residual restriction of group k-2 (or, on the way up, the prolongation of group k
before the red-black updates trail it). One pass over the data per smoothing sweep.

Multigrid. Level 0 is the 7-point (5-point) operator: an int8 diagonal grid and unit couplings.
Coarse levels aggregate 2x2x2 (2x2) cells, coarse cell X holding fine cells 2X-1 and 2X
along each axis; their operator is the Galerkin product P^T A P of piecewise-constant
interpolation, again a 7-point stencil: a diagonal D and one coupling per axis (Wx[c] couples
c and c+1 along x). The preconditioner is a symmetric V-cycle (red then black before the
coarse correction, black then red after; the coarse correction scaled by a constant factor
as aggregation multigrid needs), hence symmetric positive definite, so CG may use it.
Reductions are float64 and stay inside numba: no BLAS call sits between kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INV = np.array([0.0, 1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6], dtype=np.float32)


@njit(cache=True)
def bounding_box(mask):
    """(zlo, zhi, ylo, yhi, xlo, xhi), inclusive, of the nonzero voxels of a 3D uint8 array; zhi < 0 if none.

    One vectorisable pass: OR-projections of the mask onto each axis.
    """
    nz, ny, nx = mask.shape
    col = np.zeros(nx, np.uint8)
    zany = np.zeros(nz, np.uint8)
    yany = np.zeros(ny, np.uint8)
    for z in range(nz):
        for y in range(ny):
            row = mask[z, y]
            acc = np.uint8(0)
            for x in range(nx):
                v = row[x]
                col[x] |= v
                acc |= v
            if acc:
                zany[z] = 1
                yany[y] = 1
    zlo, zhi, ylo, yhi, xlo, xhi = nz, -1, ny, -1, nx, -1
    for z in range(nz):
        if zany[z]:
            zlo = min(zlo, z)
            zhi = z
    for y in range(ny):
        if yany[y]:
            ylo = min(ylo, y)
            yhi = y
    for x in range(nx):
        if col[x]:
            xlo = min(xlo, x)
            xhi = x
    return zlo, zhi, ylo, yhi, xlo, xhi


@njit(cache=True)
def build_level0(prior, target, mask, oz, oy, ox, bz, by, bx, is3d):
    """Level 0 on the padded box whose voxel (0, 0, 0) is array voxel (oz, oy, ox).

    Returns (D0, r0, segs, groups, bnorm2, finite): the int8 diagonal grid (0 off Omega), the
    float32 right-hand side grid of A u = r0, the row segments (n, 4) int32 of Omega in box
    coordinates, the group offsets into segs (planes in 3D, rows in 2D), ||b||^2 of the full
    system A f = b, and whether every value the system reads was finite.
    """
    nz, ny, nx = mask.shape
    tflat = target.ravel()
    pflat = prior.ravel()
    mflat = mask.ravel()
    offs = np.array([-ny * nx, ny * nx, -nx, nx, -1, 1], np.int64)
    D0 = np.zeros(bz * by * bx, np.int8)
    r0 = np.zeros(bz * by * bx, np.float32)
    bnorm2 = 0.0
    finite = True
    nseg = 0
    zstart = 1 if is3d else 0
    zstop = bz - 1 if is3d else bz
    for z in range(zstart, zstop):
        az = z + oz
        zin = (not is3d) or (az > 0 and az < nz - 1)
        for y in range(1, by - 1):
            ay = y + oy
            yin = zin and ay > 0 and ay < ny - 1
            mrow = mask[az, ay]
            inrun = False
            for x in range(1, bx - 1):
                ax = x + ox
                if not mrow[ax]:
                    inrun = False
                    continue
                if not inrun:
                    nseg += 1
                    inrun = True
                gi = np.float64(target[az, ay, ax])
                d = 0
                rhs = 0.0  # sum over neighbours outside Omega of (prior - target)
                bfull = 0.0  # D g_i - sum_j g_j + sum_{j outside Omega} prior_j
                if yin and ax > 0 and ax < nx - 1:
                    # inside the array: every neighbour exists (flat offsets, no bounds checks)
                    a = (az * ny + ay) * nx + ax
                    d = 6 if is3d else 4
                    for k in range(6 - d, 6):
                        j = a + offs[k]
                        gj = np.float64(tflat[j])
                        bfull += gi - gj
                        if mflat[j] == 0:
                            pj = np.float64(pflat[j])
                            rhs += pj - gj
                            bfull += pj
                else:
                    for k in range(6):
                        if k < 2 and not is3d:
                            continue
                        jz, jy, jx = az, ay, ax
                        if k == 0:
                            jz -= 1
                        elif k == 1:
                            jz += 1
                        elif k == 2:
                            jy -= 1
                        elif k == 3:
                            jy += 1
                        elif k == 4:
                            jx -= 1
                        else:
                            jx += 1
                        if jz < 0 or jz >= nz or jy < 0 or jy >= ny or jx < 0 or jx >= nx:
                            continue
                        d += 1
                        gj = np.float64(target[jz, jy, jx])
                        bfull += gi - gj
                        if not mask[jz, jy, jx]:
                            pj = np.float64(prior[jz, jy, jx])
                            rhs += pj - gj
                            bfull += pj
                i = (z * by + y) * bx + x
                D0[i] = d
                r0[i] = rhs
                bnorm2 += bfull * bfull
    if not np.isfinite(bnorm2):
        finite = False
    segs = np.empty((nseg, 4), np.int32)
    ngroups = bz if is3d else by
    groups = np.zeros(ngroups + 1, np.int64)
    s = 0
    for z in range(zstart, zstop):
        for y in range(1, by - 1):
            base = (z * by + y) * bx
            x = 1
            while x < bx - 1:
                if D0[base + x] > 0:
                    x0 = x
                    while x < bx - 1 and D0[base + x] > 0:
                        x += 1
                    segs[s, 0] = z
                    segs[s, 1] = y
                    segs[s, 2] = x0
                    segs[s, 3] = x - x0
                    s += 1
                    grp = z if is3d else y
                    groups[grp + 1] = s
                else:
                    x += 1
    for k in range(1, ngroups + 1):
        if groups[k] < groups[k - 1]:
            groups[k] = groups[k - 1]
    return D0, r0, segs[:s], groups, bnorm2, finite


@njit(cache=True)
def coarse_dims(fz, fy, fx, is3d):
    cz = (fz - 1) // 2 + 2 if is3d else fz
    return cz, (fy - 1) // 2 + 2, (fx - 1) // 2 + 2


@njit(cache=True)
def galerkin(unit, D0, D, Wx, Wy, Wz, segs, fz, fy, fx, is3d):
    """The coarse operator P^T A P (D, Wx, Wy, Wz grids) of one level given by its segments.

    ``unit``: the fine operator is level 0 (diagonal D0, unit couplings between unknowns);
    otherwise it is (D, Wx, Wy, Wz).
    """
    cz, cy, cx = coarse_dims(fz, fy, fx, is3d)
    nc = cz * cy * cx
    Dc = np.zeros(nc, np.float32)
    Wxc = np.zeros(nc, np.float32)
    Wyc = np.zeros(nc, np.float32)
    Wzc = np.zeros(nc, np.float32)
    sy = fx
    sz = fy * fx
    for si in range(segs.shape[0]):
        z = segs[si, 0]
        y = segs[si, 1]
        x0 = segs[si, 2]
        n = segs[si, 3]
        Z = (z + 1) // 2 if is3d else z
        base = (Z * cy + (y + 1) // 2) * cx
        zsame = is3d and (z % 2 == 1)
        ysame = y % 2 == 1
        i0 = (z * fy + y) * fx + x0
        for t in range(n):
            x = x0 + t
            i = i0 + t
            c = base + (x + 1) // 2
            if unit:
                Dc[c] += D0[i]
                wx = 1.0 if D0[i + 1] > 0 else 0.0
                wy = 1.0 if D0[i + sy] > 0 else 0.0
                wz = 1.0 if (is3d and D0[i + sz] > 0) else 0.0
            else:
                Dc[c] += D[i]
                wx = Wx[i]
                wy = Wy[i]
                wz = Wz[i] if is3d else 0.0
            if x % 2 == 1:
                Dc[c] -= 2.0 * wx
            else:
                Wxc[c] += wx
            if ysame:
                Dc[c] -= 2.0 * wy
            else:
                Wyc[c] += wy
            if is3d:
                if zsame:
                    Dc[c] -= 2.0 * wz
                else:
                    Wzc[c] += wz
    return Dc, Wxc, Wyc, Wzc


@njit(cache=True)
def coarse_segments(Dc, cz, cy, cx, is3d):
    """Row segments and group offsets of the cells with a positive diagonal."""
    nseg = 0
    for z in range(cz):
        for y in range(cy):
            base = (z * cy + y) * cx
            prev = False
            for x in range(cx):
                cur = Dc[base + x] > 0.5
                if cur and not prev:
                    nseg += 1
                prev = cur
    segs = np.empty((nseg, 4), np.int32)
    ngroups = cz if is3d else cy
    groups = np.zeros(ngroups + 1, np.int64)
    s = 0
    for z in range(cz):
        for y in range(cy):
            base = (z * cy + y) * cx
            x = 0
            while x < cx:
                if Dc[base + x] > 0.5:
                    x0 = x
                    while x < cx and Dc[base + x] > 0.5:
                        x += 1
                    segs[s, 0] = z
                    segs[s, 1] = y
                    segs[s, 2] = x0
                    segs[s, 3] = x - x0
                    s += 1
                    groups[(z if is3d else y) + 1] = s
                else:
                    x += 1
    for k in range(1, ngroups + 1):
        if groups[k] < groups[k - 1]:
            groups[k] = groups[k - 1]
    return segs, groups


# ---------------------------------------------------------------------------------------------
# Smoothing wavefront. A level is given by: unit (level 0?), its grids E (solution), B (rhs)
# at offset g (coarse arrays hold all coarse levels back to back), its segments
# segs[s0 + groups[gr0 + k] : s0 + groups[gr0 + k + 1]] for group k in [0, G), and fy, fx.


@njit(cache=True)
def _colour(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, k, fy, fx, is3d, colour, zero):
    sy = fx
    sz = fy * fx
    for si in range(s0 + groups[gr0 + k], s0 + groups[gr0 + k + 1]):
        z = segs[si, 0]
        y = segs[si, 1]
        x0 = segs[si, 2]
        i0 = (z * fy + y) * fx + x0
        start = i0 + ((z + y + x0 + colour) & 1)
        stop = i0 + segs[si, 3]
        if unit:
            if zero:
                for i in range(start, stop, 2):
                    E[i] = B[i] * INV[D0[i]]
            elif is3d:
                for i in range(start, stop, 2):
                    E[i] = (B[i] + E[i - 1] + E[i + 1] + E[i - sy] + E[i + sy] + E[i - sz] + E[i + sz]) * INV[D0[i]]
            else:
                for i in range(start, stop, 2):
                    E[i] = (B[i] + E[i - 1] + E[i + 1] + E[i - sy] + E[i + sy]) * INV[D0[i]]
        else:
            for li in range(start, stop, 2):
                i = g + li
                if zero:
                    E[i] = B[i] / D[i]
                    continue
                s = Wx[i] * E[i + 1] + Wx[i - 1] * E[i - 1] + Wy[i] * E[i + sy] + Wy[i - sy] * E[i - sy]
                if is3d:
                    s += Wz[i] * E[i + sz] + Wz[i - sz] * E[i - sz]
                E[i] = (B[i] + s) / D[i]


@njit(cache=True)
def _restrict_group(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, k, fy, fx, is3d, gn, Bn):
    """Bn[parent] += (B - A E) over group k."""
    sy = fx
    sz = fy * fx
    cy = (fy - 1) // 2 + 2
    cx = (fx - 1) // 2 + 2
    for si in range(s0 + groups[gr0 + k], s0 + groups[gr0 + k + 1]):
        z = segs[si, 0]
        y = segs[si, 1]
        x0 = segs[si, 2]
        n = segs[si, 3]
        Z = (z + 1) // 2 if is3d else z
        pbase = gn + (Z * cy + (y + 1) // 2) * cx
        i0 = (z * fy + y) * fx + x0
        for t in range(n):
            i = i0 + t
            if unit:
                s = E[i - 1] + E[i + 1] + E[i - sy] + E[i + sy]
                if is3d:
                    s += E[i - sz] + E[i + sz]
                res = B[i] - (D0[i] * E[i] - s)
            else:
                j = g + i
                s = Wx[j] * E[j + 1] + Wx[j - 1] * E[j - 1] + Wy[j] * E[j + sy] + Wy[j - sy] * E[j - sy]
                if is3d:
                    s += Wz[j] * E[j + sz] + Wz[j - sz] * E[j - sz]
                res = B[j] - (D[j] * E[j] - s)
            Bn[pbase + (x0 + t + 1) // 2] += res


@njit(cache=True)
def _prolong_group(unit, g, E, segs, s0, groups, gr0, k, fy, fx, is3d, gn, En, omega_c):
    """E += omega_c * En[parent] over group k."""
    cy = (fy - 1) // 2 + 2
    cx = (fx - 1) // 2 + 2
    for si in range(s0 + groups[gr0 + k], s0 + groups[gr0 + k + 1]):
        z = segs[si, 0]
        y = segs[si, 1]
        x0 = segs[si, 2]
        n = segs[si, 3]
        Z = (z + 1) // 2 if is3d else z
        pbase = gn + (Z * cy + (y + 1) // 2) * cx
        i0 = g + (z * fy + y) * fx + x0
        for t in range(n):
            E[i0 + t] += omega_c * En[pbase + (x0 + t + 1) // 2]


@njit(cache=True)
def _update_group(u, r, p, q, alpha, segs, groups, k, fy, fx):
    """u += alpha p; r -= alpha q over group k (level 0); returns the group's ||r||^2."""
    acc = 0.0
    a32 = np.float32(alpha)
    for si in range(groups[k], groups[k + 1]):
        i0 = (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
        a0 = 0.0
        a1 = 0.0
        for i in range(i0, i0 + segs[si, 3]):
            u[i] += a32 * p[i]
            ri = r[i] - a32 * q[i]
            r[i] = ri
            if (i - i0) & 1:
                a1 += np.float64(ri) * ri
            else:
                a0 += np.float64(ri) * ri
        acc += a0 + a1
    return acc


@njit(cache=True)
def _dot_group(a, b, segs, groups, k, fy, fx):
    acc = 0.0
    for si in range(groups[k], groups[k + 1]):
        i0 = (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
        a0 = 0.0
        a1 = 0.0
        for i in range(i0, i0 + segs[si, 3]):
            if (i - i0) & 1:
                a1 += np.float64(a[i]) * b[i]
            else:
                a0 += np.float64(a[i]) * b[i]
        acc += a0 + a1
    return acc


@njit(cache=True)
def sweep(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, G, fy, fx, is3d,
          first, zero, prolong, restrict, gn, En, Bn, omega_c, update, u, p, q, alpha, dot):
    """One red-black Gauss-Seidel sweep (colour ``first`` then the other) as a wavefront.

    ``zero``: E starts at zero (the first colour is B/D). ``prolong``: first add the coarse
    correction omega_c * En[parent]. ``restrict``: then add the residual to Bn[parent].
    Level 0 only: ``update`` first does the CG step u += alpha p, B -= alpha q (B is the CG
    residual) and ``dot`` accumulates B.E once a group is final. Returns (||B||^2 after the
    update, B.E).
    """
    second = 1 - first
    lag = 1 if prolong else 0
    rr = 0.0
    rz = 0.0
    for k in range(G + 3):
        if k < G:
            if prolong:
                _prolong_group(unit, g, E, segs, s0, groups, gr0, k, fy, fx, is3d, gn, En, omega_c)
            elif update:
                rr += _update_group(u, B, p, q, alpha, segs, groups, k, fy, fx)
        k1 = k - lag
        if 0 <= k1 < G:
            _colour(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, k1, fy, fx, is3d, first, zero)
        k2 = k1 - 1
        if 0 <= k2 < G:
            _colour(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, k2, fy, fx, is3d, second, False)
            if dot:
                rz += _dot_group(B, E, segs, groups, k2, fy, fx)
        k3 = k2 - 1
        if restrict and 0 <= k3 < G:
            _restrict_group(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, k3, fy, fx, is3d, gn, Bn)
    return rr, rz


@njit(cache=True)
def _zero_level(g, E, B, segs, s0, s1, fy, fx):
    for si in range(s0, s1):
        i0 = g + (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
        for t in range(segs[si, 3]):
            E[i0 + t] = 0.0
            B[i0 + t] = 0.0


@njit(cache=True)
def vcycle(r, zv, D0, D, Wx, Wy, Wz, Ec, Bc, segs, soff, groups, groff, dims, goff, is3d, nlev, nu0, nu,
           ncoarse, omega_c, update, u, p, q, alpha):
    """zv = M^{-1} r by one symmetric V-cycle from zero (r and zv are level-0 grids); ``nu0``
    sweeps before and after the coarse correction on level 0, ``nu`` on coarser levels.

    With ``update`` the CG step u += alpha p, r -= alpha q is done first, in the same pass.
    Returns (||r||^2, r.zv).
    """
    rr = 0.0
    rz = 0.0
    # down
    for l in range(nlev):
        unit = l == 0
        E = zv if unit else Ec
        B = r if unit else Bc
        g = 0 if unit else goff[l]
        fy = dims[l, 1]
        fx = dims[l, 2]
        G = dims[l, 0] if is3d else fy
        s0 = soff[l]
        gr0 = groff[l]
        if l == nlev - 1:  # coarsest: symmetric Gauss-Seidel sweeps
            for it in range(ncoarse):
                zero = it == 0
                upd = unit and update and it == 0
                a, b = sweep(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, G, fy, fx, is3d,
                             0, zero, False, False, 0, Ec, Bc, omega_c, upd, u, p, q, alpha, False)
                rr += a
            for it in range(ncoarse):
                dot = unit and it == ncoarse - 1
                a, b = sweep(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, G, fy, fx, is3d,
                             1, False, False, False, 0, Ec, Bc, omega_c, False, u, p, q, alpha, dot)
                rz += b
            break
        gn = goff[l + 1]
        _zero_level(gn, Ec, Bc, segs, soff[l + 1], soff[l + 2], dims[l + 1, 1], dims[l + 1, 2])
        nl = nu0 if unit else nu
        for it in range(nl):
            zero = it == 0
            rest = it == nl - 1
            upd = unit and update and it == 0
            a, b = sweep(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, G, fy, fx, is3d,
                         0, zero, False, rest, gn, Ec, Bc, omega_c, upd, u, p, q, alpha, False)
            rr += a
    # up
    for l in range(nlev - 2, -1, -1):
        unit = l == 0
        E = zv if unit else Ec
        B = r if unit else Bc
        g = 0 if unit else goff[l]
        fy = dims[l, 1]
        fx = dims[l, 2]
        G = dims[l, 0] if is3d else fy
        s0 = soff[l]
        gr0 = groff[l]
        gn = goff[l + 1]
        nl = nu0 if unit else nu
        for it in range(nl):
            pro = it == 0
            dot = unit and it == nl - 1
            a, b = sweep(unit, g, D0, D, Wx, Wy, Wz, E, B, segs, s0, groups, gr0, G, fy, fx, is3d,
                         1, False, pro, False, gn, Ec, Bc, omega_c, False, u, p, q, alpha, dot)
            rz += b
    return rr, rz


@njit(cache=True)
def _matvec_p(D0, zv, p, q, beta, segs, s1, groups, G, fy, fx, is3d):
    """p = zv + beta p, then q = A p, as a wavefront; returns p.q."""
    sy = fx
    sz = fy * fx
    acc = 0.0
    for k in range(G + 1):
        if k < G:
            for si in range(groups[k], groups[k + 1]):
                i0 = (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
                for i in range(i0, i0 + segs[si, 3]):
                    p[i] = zv[i] + beta * p[i]
        if k >= 1:
            for si in range(groups[k - 1], groups[k]):
                i0 = (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
                a0 = 0.0
                a1 = 0.0
                for i in range(i0, i0 + segs[si, 3]):
                    s = p[i - 1] + p[i + 1] + p[i - sy] + p[i + sy]
                    if is3d:
                        s += p[i - sz] + p[i + sz]
                    v = D0[i] * p[i] - s
                    q[i] = v
                    if (i - i0) & 1:
                        a1 += np.float64(p[i]) * v
                    else:
                        a0 += np.float64(p[i]) * v
                acc += a0 + a1
    return acc


@njit(cache=True)
def residual(u, r0, r, D0, segs, s1, fy, fx, is3d):
    """r = r0 - A u; returns ||r||^2 (float64)."""
    sy = fx
    sz = fy * fx
    acc = 0.0
    for si in range(s1):
        i0 = (segs[si, 0] * fy + segs[si, 1]) * fx + segs[si, 2]
        for i in range(i0, i0 + segs[si, 3]):
            s = np.float64(u[i - 1]) + u[i + 1] + u[i - sy] + u[i + sy]
            if is3d:
                s += np.float64(u[i - sz]) + u[i + sz]
            res = np.float64(r0[i]) - (D0[i] * np.float64(u[i]) - s)
            r[i] = res
            acc += res * res
    return acc


@njit(cache=True)
def pcg(r0, bnorm, tol, maxiter, D0, D, Wx, Wy, Wz, segs, soff, groups, groff, dims, goff, is3d, nlev,
        nu0, nu, ncoarse, omega_c):
    """Solve A u = r0 by V-cycle-preconditioned CG until ||r0 - A u|| <= tol * bnorm (true residual).

    Returns (u, iterations, true relative residual, converged).
    """
    n = r0.size
    fy = dims[0, 1]
    fx = dims[0, 2]
    G = dims[0, 0] if is3d else fy
    s1 = soff[1]
    ncoarse_cells = goff[nlev] if nlev > 1 else 1
    Ec = np.zeros(ncoarse_cells, np.float32)
    Bc = np.zeros(ncoarse_cells, np.float32)
    u = np.zeros(n, np.float32)
    r = r0.copy()
    zv = np.zeros(n, np.float32)
    p = np.zeros(n, np.float32)
    q = np.zeros(n, np.float32)
    target = tol * bnorm
    rr = residual(u, r0, r, D0, segs, s1, fy, fx, is3d)
    if np.sqrt(rr) <= target:
        return u, 0, np.sqrt(rr) / bnorm if bnorm > 0 else 0.0, True
    rr, rz = vcycle(r, zv, D0, D, Wx, Wy, Wz, Ec, Bc, segs, soff, groups, groff, dims, goff, is3d, nlev, nu0, nu,
                    ncoarse, omega_c, False, u, p, q, 0.0)
    beta = 0.0
    it = 0
    rel = 1.0
    while it < maxiter:
        it += 1
        pq = _matvec_p(D0, zv, p, q, beta, segs, s1, groups, G, fy, fx, is3d)
        if not pq > 0.0:
            break
        alpha = rz / pq
        # the CG update of u and r is fused into the V-cycle's first pass
        rr, rzn = vcycle(r, zv, D0, D, Wx, Wy, Wz, Ec, Bc, segs, soff, groups, groff, dims, goff, is3d, nlev,
                         nu0, nu, ncoarse, omega_c, True, u, p, q, alpha)
        if np.sqrt(rr) <= target:
            # the recursive float32 residual drifts: stop only on the true one
            rr = residual(u, r0, r, D0, segs, s1, fy, fx, is3d)
            rel = np.sqrt(rr) / bnorm
            if rel <= tol:
                return u, it, rel, True
            # restart CG from the true residual
            rr, rz = vcycle(r, zv, D0, D, Wx, Wy, Wz, Ec, Bc, segs, soff, groups, groff, dims, goff, is3d,
                            nlev, nu0, nu, ncoarse, omega_c, False, u, p, q, 0.0)
            beta = 0.0
            continue
        beta = rzn / rz
        rz = rzn
    rr = residual(u, r0, r, D0, segs, s1, fy, fx, is3d)
    rel = np.sqrt(rr) / bnorm
    return u, it, rel, rel <= tol


@njit(cache=True)
def scatter(out, u, target, segs, s1, oz, oy, ox, by, bx):
    """out[Omega] = target + u, added in float64 and rounded once to float32."""
    for si in range(s1):
        az = segs[si, 0] + oz
        ay = segs[si, 1] + oy
        x0 = segs[si, 2]
        i0 = (segs[si, 0] * by + segs[si, 1]) * bx + x0
        for t in range(segs[si, 3]):
            ax = x0 + t + ox
            out[az, ay, ax] = np.float32(np.float64(target[az, ay, ax]) + np.float64(u[i0 + t]))
