"""Magnitudes that make the deformation reach requested change rates.

One structure: the partial-volume rate is a continuous, increasing function of the magnitude
(0 at 0), so a bracketed regula falsi (Illinois variant, with a bisection step now and then)
finds it in a few evaluations. Several structures: their fields barely overlap, so 1-D solves
alternate (each with the others' magnitudes fixed) until every rate is within tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

Rate = Callable[[float], float]


def solve_magnitude(f: Rate, target: float, limit: float, tol: float, f_limit: float | None = None) -> tuple[float, float]:
    """The magnitude m in [0, limit] (or [-limit, 0] for a negative target) with f(m) closest
    to ``target`` (stopping when within ``tol``), and f(m). ``f(0)`` is taken as 0 and
    ``f_limit`` (f at the limit on the target's side) is evaluated when not given. When the
    target lies beyond f at the limit, the limit is returned."""
    if target == 0.0:
        return 0.0, f(0.0)
    sign = 1.0 if target > 0 else -1.0
    lo, glo = 0.0, -abs(target)  # g(m) = sign * (f(m) - target): g(lo) < 0 < g(hi)
    hi = sign * limit
    fhi = f(hi) if f_limit is None else f_limit
    ghi = sign * (fhi - target)
    if ghi <= 0:
        return hi, fhi
    best, best_f, best_err = hi, fhi, abs(ghi)
    side = 0
    for it in range(60):
        mid = 0.5 * (lo + hi) if it % 3 == 2 else lo + (hi - lo) * (-glo) / (ghi - glo)
        fm = f(mid)
        g = sign * (fm - target)
        if abs(g) < best_err:
            best, best_f, best_err = mid, fm, abs(g)
        if abs(g) <= tol or abs(hi - lo) < 1e-6:
            break
        if g < 0:
            lo, glo = mid, g
            if side == -1:
                ghi *= 0.5
            side = -1
        else:
            hi, ghi = mid, g
            if side == 1:
                glo *= 0.5
            side = 1
    return best, best_f


def solve_joint(rates: Callable[[Mapping[str, float]], Mapping[str, float]], targets: Mapping[str, float],
                start: Mapping[str, float], limit: float, tol: float, rounds: int = 6) -> tuple[dict[str, float], dict[str, float]]:
    """Magnitudes (per structure) at which ``rates(magnitudes)`` reaches every target within
    ``tol``, starting from ``start`` (each structure solved on its own), by alternating 1-D
    solves. Returns the magnitudes and the rates there (the best seen)."""
    mags = dict(start)
    got = dict(rates(mags))

    def error(r: Mapping[str, float]) -> float:
        return max(abs(r[n] - t) for n, t in targets.items())

    best, best_rates = dict(mags), dict(got)
    for _ in range(rounds):
        if error(got) <= tol:
            break
        for name, target in targets.items():
            others = {k: v for k, v in mags.items() if k != name}

            def one(x: float, others: dict[str, float] = others, name: str = name) -> float:
                return rates({**others, name: x})[name]

            mags[name], _ = solve_magnitude(one, target, limit, tol / 2)
        got = dict(rates(mags))
        if error(got) < error(best_rates):
            best, best_rates = dict(mags), dict(got)
    return best, best_rates
