"""Which training examples batch ``k`` holds: a pure function of (seed, k), so a resumed run sees
the batches an uninterrupted one would have."""

from __future__ import annotations


class Batches:
    """Batch ``k`` of an endless stream of per-epoch permutations: a pure function of (seed, k).

    Epoch ``e`` is a permutation of ``range(n)`` drawn from ``seed`` and ``e``; the stream of
    indices runs through the epochs back to back, and process ``rank`` of ``world`` takes every
    ``world``-th batch of it (batch ``k * world + rank``), so the processes never share a batch."""

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def __call__(self, k: int) -> list[int]:
        start = (k * self.world + self.rank) * self.batch
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch)]
