"""Which process of a multi-process launch this is (``accelerate launch``, ``torchrun``, SLURM's
``srun`` with torch's variables): read from the environment those launchers set, without torch."""

from __future__ import annotations

import os


def process_rank() -> tuple[int, int]:
    """``(rank, world)`` of this process in its launch; ``(0, 1)`` when not launched."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    if world < 1 or not 0 <= rank < world:
        return 0, 1
    return rank, world
