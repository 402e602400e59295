"""A trained ``ldm`` model folder: conditions in, samples out.

Folder layout (written by :mod:`brainsynth_plugins.ldm.training`)::

    MODEL/brainsynth.json     what the model is: dim, condition, covariate ranges, grid/affine, text encoder
    MODEL/vae/                AutoencoderKL (2D: diffusers save_pretrained; 3D: MONAI config.json + model.safetensors)
    MODEL/unet/               the conditional UNet (same formats)
    MODEL/scheduler/          the training noise schedule (diffusers DDPMScheduler config)

Covariates are min-max scaled with the training ranges saved in ``brainsynth.json``; values
outside a range are used as given (the model extrapolates) and reported as warnings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.weights import refuse_pickled_weights

from brainsynth_plugins.ldm import nets
from brainsynth_plugins.ldm.data import COVARIATES

SCHEDULERS = ("ddim", "ddpm", "dpm++", "euler-a")
INFO = "brainsynth.json"


@dataclass
class Condition:
    """What one sample is asked to be: the prompt given to the text encoder and the raw covariates."""

    prompt: str | None
    covariates: dict[str, float]  # raw values (sex: 0 = F, 1 = M); NaN = not used
    sources: dict[str, str] = field(default_factory=dict)  # per covariate: option | prompt | median
    warnings: list[str] = field(default_factory=list)

    @property
    def sex(self) -> str:
        v = self.covariates.get("sex", math.nan)
        return "" if not math.isfinite(v) else ("M" if v >= 0.5 else "F")


def torch_no_grad() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``torch.no_grad`` as a decorator, imported when the function is first called."""
    import functools

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import torch

            with torch.no_grad():
                return fn(*args, **kwargs)

        return wrapper

    return deco


def read_info(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / INFO
    if not Path(model_dir).is_dir():
        raise InputError(model_dir, "model folder not found", "give the folder written by `brainsynth train --task generate`")
    if not path.is_file():
        raise InputError(model_dir, f"has no {INFO}", "give a model folder written by `brainsynth train --task generate`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", "re-train the model") from None
    if not isinstance(info, dict):
        raise InputError(path, "is not a JSON object", "re-train the model")
    if info.get("generator") != "ldm":
        raise InputError(path, f"is a {info.get('generator')!r} model, not a generative ldm model",
                         "give a model trained with `brainsynth train --task generate`")
    refuse_pickled_weights(model_dir, strict=True)  # brainsynth never writes pickles: one here was put there
    for part in ("vae", "unet"):
        if not (Path(model_dir) / part / "config.json").is_file():
            raise InputError(Path(model_dir) / part, "is missing", "the model folder is incomplete; re-train it")
        if not any((Path(model_dir) / part).glob("*.safetensors")):
            raise InputError(Path(model_dir) / part, "has no .safetensors weights", "the model folder is incomplete; re-train it")
    return info


def embed_text(tokenizer: Any, model: Any, prompts: Sequence[str], device: Any) -> Any:
    """Token embeddings ``(B, T, H)`` of prompts, padded to the tokenizer's length."""
    import torch

    enc = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    kwargs = {"attention_mask": enc["attention_mask"].to(device)} if "attention_mask" in enc else {}
    with torch.no_grad():
        out = model.to(device)(enc["input_ids"].to(device), **kwargs)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()


def load_text_encoder(spec: dict[str, Any] | None) -> tuple[Any, Any] | None:
    if not spec:
        return None
    from brainsynth_cli.plugin_manager import get_manager

    enc = get_manager().registry("text-encoder").create(spec["name"], **({"path": spec["path"]} if spec.get("path") else {}))
    tok, model = enc.load()
    tok.model_max_length = int(spec.get("max_length") or tok.model_max_length)
    return tok, model


def make_scheduler(name: str, noise_config: dict[str, Any]) -> Any:
    import diffusers

    key = name.lower()
    cls = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm++": "DPMSolverMultistepScheduler",
           "euler-a": "EulerAncestralDiscreteScheduler"}.get(key)
    if cls is None:
        raise UserError(f"unknown --scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cfg = {k: v for k, v in noise_config.items() if not k.startswith("_")}
    return getattr(diffusers, cls).from_config(cfg)


def scale_covariates(info: dict[str, Any], raw: Sequence[float]) -> list[float]:
    """Min-max scaling with the training ranges (sex is 0/1 already)."""
    out = []
    for name, v in zip(COVARIATES, raw):
        lo, hi = info["covariates"]["ranges"][name]
        out.append(0.5 if hi <= lo else (float(v) - lo) / (hi - lo))
    return out


class LDMModel:
    """A loaded ``ldm`` model: :meth:`condition` resolves what a sample is asked to be, :meth:`sample` draws it."""

    def __init__(self, model_dir: Path, device: str = "auto", *, text: tuple[Any, Any] | None = None) -> None:
        import torch

        from brainsynth_plugins.training_core.runtime import quiet, resolve_device

        quiet()
        self.dir = Path(model_dir)
        self.info = read_info(self.dir)
        self.dim = self.info["dim"]
        self.condition_kind = self.info["condition"]
        self.device = torch.device(resolve_device(device))
        self.vae = nets.load(self.dim, "vae", self.dir / "vae").to(self.device).eval()
        self.unet = nets.load(self.dim, "unet", self.dir / "unet").to(self.device).eval()
        for net in (self.vae, self.unet):  # MONAI's fused attention on GPUs
            nets.use_flash_attention(net, str(self.device).startswith("cuda"))
        self.noise_config = self.info["noise_scheduler"]
        self.text = text if text is not None else (load_text_encoder(self.info.get("text_encoder")) if nets.uses_text(self.condition_kind) else None)
        self._null_text: Any = None

    # -- conditions ------------------------------------------------------------------------
    @property
    def ranges(self) -> dict[str, list[float]]:
        return self.info["covariates"]["ranges"]

    def condition(self, prompt: str | None = None, *, age: float | None = None, sex: str | None = None,
                  ventricle_volume: float | None = None, brain_volume: float | None = None) -> Condition:
        """Resolve one sample's conditions: options first, then values the prompt states (a
        ``template`` caption), then the training medians. Text models without ``prompt`` get a
        caption built from those values."""
        from brainsynth_plugins.ldm.data import caption_builder, captions_for

        given: dict[str, float | None] = {"age": age, "sex": None, "ventricle_volume": ventricle_volume, "brain_volume": brain_volume}
        if sex is not None:
            s = str(sex).strip().upper()
            if s not in ("F", "M"):
                raise UserError(f"--sex must be F or M, got {sex!r}")
            given["sex"] = 0.0 if s == "F" else 1.0
        stated: dict[str, float] = {}
        if prompt:
            parser = caption_builder(0)
            try:
                vols = parser.volumes(prompt)
            except UserError:
                vols = {}
            ctx = parser.context(prompt)
            if "ventricle" in vols:
                stated["ventricle_volume"] = vols["ventricle"]
            if "brain" in vols:
                stated["brain_volume"] = vols["brain"]
            if ctx.get("age") is not None:
                stated["age"] = float(ctx["age"])
            if ctx.get("sex"):
                stated["sex"] = 0.0 if ctx["sex"] == "F" else 1.0
        medians = self.info["covariates"]["medians"]
        values, sources, warnings = {}, {}, []
        for name in COVARIATES:
            if given[name] is not None:
                values[name], sources[name] = float(given[name]), "option"
            elif name in stated:
                values[name], sources[name] = float(stated[name]), "prompt"
            elif prompt and not nets.uses_covariates(self.condition_kind):
                values[name], sources[name] = math.nan, ""
                continue
            else:
                values[name], sources[name] = float(medians[name]), "median"
            if not math.isfinite(values[name]):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number")
            lo, hi = self.ranges[name]
            if name != "sex" and not lo <= values[name] <= hi and sources[name] != "median":
                warnings.append(f"{name.replace('_', ' ')} {values[name]:g} lies outside the trained range [{lo:g}, {hi:g}]; "
                                "the model extrapolates")
        text = prompt
        if nets.uses_text(self.condition_kind) and not prompt:
            vols = dict(self.info.get("volume_medians") or {})
            vols["ventricle"], vols["brain"] = values["ventricle_volume"], values["brain_volume"]
            sex_txt = "M" if values["sex"] >= 0.5 else "F"
            caps = captions_for(vols, values["age"], sex_txt, 1)
            text = caps[0] if caps else ""
        return Condition(text if nets.uses_text(self.condition_kind) else prompt, values, sources, warnings)

    # -- sampling --------------------------------------------------------------------------
    def _text_embeddings(self, prompts: Sequence[str]) -> Any:
        tok, model = self.text
        return embed_text(tok, model, prompts, self.device)

    def sample(self, conditions: Sequence[Condition], seeds: Sequence[int], *, steps: int = 50, scheduler: str = "ddim",
               guidance_scale: float = 1.0, batch_size: int = 4,
               progress: Callable[[float, float, str], None] | None = None) -> list[Any]:
        """One float32 image in [0, 1] per condition (2D: resolution^2; 3D: the model grid),
        sample ``i`` starting from the noise of ``seeds[i]``."""
        import numpy as np

        if len(conditions) != len(seeds):
            raise ValueError("one seed per condition")
        if steps < 1:
            raise UserError("--steps must be at least 1")
        make_scheduler(scheduler, self.noise_config)  # validates the name before any work
        out: list[Any] = []
        total = len(conditions) * steps
        for start in range(0, len(conditions), max(1, batch_size)):
            conds = list(conditions[start : start + batch_size])
            batch_seeds = list(seeds[start : start + batch_size])
            imgs = self._sample_batch(conds, batch_seeds, steps, scheduler, guidance_scale,
                                      lambda k, s0=start, m=len(conds): progress and progress(s0 * steps + k * m, total, "sampling"))
            out.extend(imgs)
        if progress:
            progress(total, total, "done")
        return [np.asarray(x, dtype=np.float32) for x in out]

    @torch_no_grad()
    def _sample_batch(self, conds: list[Condition], seeds: list[int], steps: int, scheduler: str, guidance: float,
                      tick: Callable[[int], Any]) -> list[Any]:
        import torch

        lat = self.info["latent"]
        shape = (int(lat["channels"]), *[int(s) for s in lat["shape"]])
        sched = make_scheduler(scheduler, self.noise_config)
        sched.set_timesteps(steps, device=self.device)
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(self.device)
        z = z * float(getattr(sched, "init_noise_sigma", 1.0))
        gen = torch.Generator(device=self.device).manual_seed(int(seeds[0]) + 1)
        n = len(conds)
        cov = text = None
        if nets.uses_covariates(self.condition_kind):
            cov = torch.tensor([scale_covariates(self.info, [c.covariates[k] for k in COVARIATES]) for c in conds],
                               dtype=torch.float32, device=self.device)
        if nets.uses_text(self.condition_kind):
            text = self._text_embeddings([c.prompt or "" for c in conds])
        ctx = nets.build_context(self.condition_kind, text, cov)
        cfg = guidance != 1.0
        if cfg:
            null_text = self._text_embeddings([""] * n) if text is not None else None
            null_cov = torch.full_like(cov, nets.NULL_COVARIATE) if cov is not None else None
            ctx = torch.cat([nets.build_context(self.condition_kind, null_text, null_cov), ctx])
            cov_all = torch.cat([null_cov, cov]) if cov is not None else None
        else:
            cov_all = cov
        for k, t in enumerate(sched.timesteps):
            zin = sched.scale_model_input(z, t)
            if cfg:
                zin = torch.cat([zin, zin])
            x = nets.with_covariate_maps(self.condition_kind, zin, cov_all)
            eps = nets.denoise(self.unet, self.dim, x, t, ctx)
            if cfg:
                e0, e1 = eps.chunk(2)
                eps = e0 + guidance * (e1 - e0)
            z = sched.step(eps, t, z, generator=gen).prev_sample if _takes_generator(sched) else sched.step(eps, t, z).prev_sample
            tick(k + 1)
        x = nets.decode(self.vae, self.dim, z / float(lat["scaling_factor"]))
        x = ((x.float().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
        return [self.crop(a) for a in x]

    def crop(self, a: Any) -> Any:
        """Remove the network padding (3D) so the sample lies on the model grid."""
        if self.dim == "2d":
            return a
        box = self.info["image"]["padding"]
        return a[tuple(slice(b, a.shape[i] - e) for i, (b, e) in enumerate(box))]


def _takes_generator(sched: Any) -> bool:
    import inspect

    return "generator" in inspect.signature(sched.step).parameters
