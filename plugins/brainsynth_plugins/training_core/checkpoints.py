"""Checkpoints without pickle: weights, optimizer state and RNG state as safetensors, the rest as JSON.

A checkpoint is a folder ``MODEL/checkpoints/<stage>-<step>`` written to a temporary name and
renamed when complete, so a run killed while saving leaves the previous checkpoint intact. Before
a resume, :func:`set_aside_unreadable` moves damaged latest checkpoints aside so the run goes on
from the one before.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("vae", "unet")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    stage: str
    step: int


def list_checkpoints(model_dir: Path) -> list[Checkpoint]:
    root = Path(model_dir) / "checkpoints"
    out = []
    if root.is_dir():
        for d in root.iterdir():
            stage, _, step = d.name.partition("-")
            if d.is_dir() and stage in STAGES and step.isdigit() and (d / "state.json").is_file():
                out.append(Checkpoint(d, stage, int(step)))
    return sorted(out, key=lambda c: (STAGES.index(c.stage), c.step))


def latest_checkpoint(model_dir: Path, stage: str | None = None) -> Checkpoint | None:
    """The last checkpoint (of ``stage``, or of any stage in training order), or None."""
    found = [c for c in list_checkpoints(model_dir) if stage is None or c.stage == stage]
    return found[-1] if found else None


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def optimizer_split(opt: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An optimizer's state dict as (tensors by "param.key", JSON-able param groups)."""
    import torch

    sd = opt.state_dict()
    tensors: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return _tensors(tensors), groups


def optimizer_join(tensors: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, _, k = key.partition(".")
        state.setdefault(int(pid), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(model_dir: Path, stage: str, step: int, *, modules: dict[str, Any], optimizers: dict[str, Any],
                    scheduler: Any, rng: dict[str, Any], extra: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``<stage>-<step>`` (optimizers and scheduler may be accelerate's wrappers)
    and delete all but the last ``keep`` of that stage."""
    from safetensors.torch import save_file

    root = Path(model_dir) / "checkpoints"
    final = root / f"{stage}-{step:07d}"
    tmp = root / f".tmp-{stage}-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    groups = {}
    for name, sd in modules.items():
        save_file(_tensors(sd), str(tmp / f"{name}.safetensors"))
    for name, opt in optimizers.items():
        tensors, groups[name] = optimizer_split(getattr(opt, "optimizer", opt))
        save_file(tensors, str(tmp / f"optimizer-{name}.safetensors"))
    save_file(_tensors(rng), str(tmp / "rng.safetensors"))
    scheduler = getattr(scheduler, "scheduler", scheduler)
    state = {"stage": stage, "step": step, "scheduler": scheduler.state_dict(), "param_groups": groups, **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in [c for c in list_checkpoints(model_dir) if c.stage == stage][:-max(1, keep)]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """Everything of a checkpoint: ``state`` (JSON), ``modules`` and ``optimizers`` (state dicts), ``rng``."""
    from safetensors.torch import load_file

    state = json.loads((ckpt.path / "state.json").read_text(encoding="utf-8"))
    modules, optimizers = {}, {}
    for f in sorted(ckpt.path.glob("*.safetensors")):
        if f.name.startswith("optimizer-"):
            name = f.stem.removeprefix("optimizer-")
            optimizers[name] = optimizer_join(load_file(str(f)), state["param_groups"][name])
        elif f.name != "rng.safetensors":
            modules[f.stem] = load_file(str(f))
    return {"state": state, "modules": modules, "optimizers": optimizers, "rng": load_file(str(ckpt.path / "rng.safetensors"))}


def rng_state(gen: Any) -> dict[str, Any]:
    """torch's global RNG, the training generator's and (when present) CUDA's."""
    import torch

    rng = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def set_rng_state(gen: Any, rng: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["generator"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (missing, truncated, bad header), or None. Reads the
    header only: the data must end exactly where the header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "truncated"
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > 100_000_000:
                return "truncated or corrupt header"
            meta = json.loads(fh.read(n))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return "corrupt header"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "corrupt header"
    if 8 + n + end != size:
        return f"truncated ({size} of {8 + n + end} bytes)" if size < 8 + n + end else "corrupt (trailing bytes)"
    return None


def checkpoint_problem(ckpt: Checkpoint) -> str | None:
    """Why a checkpoint cannot be resumed from, or None."""
    try:
        json.loads((ckpt.path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "state.json is unreadable"
    files = sorted(ckpt.path.glob("*.safetensors"))
    if not (ckpt.path / "rng.safetensors").is_file() or len(files) < 2:
        return "files are missing"
    for f in files:
        problem = safetensors_problem(f)
        if problem is not None:
            return f"{f.name} is {problem}"
    return None


def set_aside_unreadable(model_dir: Path, warn: Any) -> None:
    """Before a resume: move unreadable latest checkpoints aside (``checkpoints/.unreadable-NAME``)
    with a one-line warning each, so the run resumes from the previous one; a one-line error when
    no checkpoint is readable."""
    from brainsynth_cli.errors import InputError

    found = list_checkpoints(model_dir)
    bad: list[tuple[Checkpoint, str]] = []
    for ck in reversed(found):
        problem = checkpoint_problem(ck)
        if problem is None:
            break
        bad.append((ck, problem))
    if not bad:
        return
    if len(bad) == len(found):
        ck, problem = bad[0]
        raise InputError(ck.path, f"cannot be resumed from ({problem}) and no earlier checkpoint is readable",
                         f"delete {ck.path.parent} to train again from step 0, or train into a new folder")
    previous = found[len(found) - len(bad) - 1]
    for ck, problem in bad:
        aside = ck.path.with_name(f".unreadable-{ck.path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(ck.path, aside)
        then = f"resuming from {previous.path.name}" if previous.stage == ck.stage else f"stage {ck.stage} starts again from step 0"
        warn(f"brainsynth: warning: checkpoint {ck.path.name} is unreadable ({problem}); moved to {aside.name}, {then}")


