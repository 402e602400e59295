"""Which training examples batch ``k`` holds: a pure function of (seed, k), so a resumed run sees
the batches an uninterrupted one would have. :class:`Batches` draws from all rows; :class:`PriorGroups`
from the rows of one prior at a time."""

from __future__ import annotations

from typing import Any

from brainsynth_cli.errors import UserError


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


class PriorGroups:
    """Batches of ``unet_batching=prompt-groups``: batch ``k`` is up to ``batch`` training rows that
    share one prior (its real, disentangled and deformed targets under their prompts), a pure
    function of (seed, k) like :class:`Batches`. Priors are visited in per-epoch permutations;
    from a prior with more rows than ``batch`` a seeded draw picks which. Only priors with rows
    under two or more prompts form groups: within a batch the prompt is what tells the targets
    apart, so the loss cannot be lowered without reading it."""

    def __init__(self, rows: list[Any], batch: int, seed: int) -> None:
        by_prior: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_prior.setdefault(str(r.prior), []).append(i)
        self.groups = [g for _, g in sorted(by_prior.items()) if len({rows[i].prompt for i in g}) > 1]
        if not self.groups:
            raise UserError("unet_batching=prompt-groups needs priors with pairs under two or more prompts and "
                            "these pairs have none; make them with make-pairs --deformed (or --set unet_batching=random)")
        self.batch, self.seed = int(batch), int(seed)
        self.order = Batches(len(self.groups), 1, seed)

    def __call__(self, k: int) -> list[int]:
        import torch

        group = self.groups[self.order(k)[0]]
        if len(group) <= self.batch:
            return list(group)
        pick = torch.randperm(len(group), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k))[: self.batch]
        return [group[int(i)] for i in sorted(pick.tolist())]
