"""Training: stage 1 (AutoencoderKL), stage 2 (8-channel UNet2DConditionModel), under accelerate.

Everything random is drawn from generators whose state is checkpointed, batches are a pure
function of (seed, step), and latents are computed once in a fixed order, so a run resumed from
a checkpoint ends with the same weights as an uninterrupted one (same seed, CPU).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.interfaces import Progress, TrainOptions
from brainsynth_cli.launch import process_rank
from brainsynth_cli.limits import check_settings
from brainsynth_cli.weights import refuse_pickled_weights
from brainsynth_plugins.ip2p.data import PairsFolder, load_slice, read_pairs, trained_intervals, trained_prompts
from brainsynth_plugins.ip2p.model import image_conditioning, residual_edit
from brainsynth_plugins.ip2p.presets import COMMON, OPTIONAL_UNET, PRESETS, SETTINGS
from brainsynth_plugins.training_core import checkpoints as ckpts
from brainsynth_plugins.training_core import run_folder
from brainsynth_plugins.training_core.attention import train_attention
from brainsynth_plugins.training_core.batches import Batches
from brainsynth_plugins.training_core.conditioning import drop_conditioning
from brainsynth_plugins.training_core.config import apply_overrides, check_blender, sizes_must_fit
from brainsynth_plugins.training_core.ema import ema_settings, ema_tensors, load_ema, new_ema
from brainsynth_plugins.training_core.memory import out_of_memory_advice
from brainsynth_plugins.training_core.runtime import deterministic_on_cpu, process_group, quiet, resolve_mixed_precision
from brainsynth_plugins.training_core.step_module import step_module
from brainsynth_plugins.training_core.trainer import StagedTrainer


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def build_config(options: TrainOptions) -> dict[str, Any]:
    """Preset + command-line options + ``--set`` overrides -> the run's full configuration."""
    ex = dict(options.extra)
    preset = ex.get("preset") or "tiny"
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    cfg: dict[str, Any] = copy.deepcopy({**COMMON, **PRESETS[preset]})
    cfg["preset"] = preset
    if ex.get("pretrained"):
        cfg["pretrained"] = str(ex["pretrained"])
    elif cfg["pretrained"] == "required":
        raise UserError(f"preset {preset} starts from pretrained weights; give --pretrained PATH_OR_ID (a Stable Diffusion 1.5 diffusers folder)")
    if ex.get("steps") is not None:
        cfg["vae_steps"] = cfg["unet_steps"] = int(ex["steps"])
    cfg["epochs"] = ex.get("epochs")
    if ex.get("batch_size") is not None:
        cfg["vae_batch_size"] = cfg["unet_batch_size"] = int(ex["batch_size"])
    if ex.get("lr") is not None:
        cfg["unet_lr"] = float(ex["lr"])
    for key in ("resolution", "channels", "mixed_precision", "conditioning_dropout", "checkpoint_every"):
        if ex.get(key) is not None:
            cfg[key] = ex[key]
    for key in ("gradient_checkpointing", "ema"):
        if ex.get(key):
            cfg[key] = True
    if ex.get("run") is not None:
        raise UserError("--run picks T1w runs of a dataset (--task generate); for edit pairs give it to make-pairs")
    cfg["stage"] = ex.get("stage") or "all"
    cfg["seed"] = int(options.seed)
    cfg["data"] = str(Path(options.data).resolve())
    name = ex.get("text_encoder") or ("clip" if cfg["pretrained"] else "minilm")
    path = ex.get("text_encoder_path") or (cfg["pretrained"] if cfg["pretrained"] and name == "clip" else None)
    cfg["text_encoder"] = {"name": name, "path": str(path) if path else None}
    apply_overrides(cfg, ex.get("set") or {}, unlisted=("data", "text_encoder", "stage", "seed"))
    check_settings(cfg, SETTINGS, nested=("vae", "unet"))  # finite, in range, of the right type
    check_blender(cfg)
    if cfg["vae"] is None and not cfg["pretrained"]:
        raise UserError("a model without pretrained weights needs vae/unet sizes; use preset tiny or base")
    for part in ("vae", "unet"):  # "--set vae.block_out_channels=16" means a one-level list
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if isinstance(cfg.get(part), dict) and key in cfg[part] and not isinstance(cfg[part][key], list):
                cfg[part][key] = [cfg[part][key]]
    if cfg["prediction_type"] not in ("epsilon", "sample", "v_prediction"):
        raise UserError(f"--set prediction_type={cfg['prediction_type']}: use epsilon, sample or v_prediction")
    u = cfg.get("unet") or {}
    if u and not (len(u["block_out_channels"]) == len(u["down_block_types"]) == len(u["up_block_types"])):
        raise UserError(f"unet.block_out_channels has {len(u['block_out_channels'])} entries but the preset's UNet has "
                        f"{len(u['down_block_types'])} levels; give as many (or set unet.down_block_types / unet.up_block_types too)")
    if int(cfg["resolution"]) < 8 or int(cfg["channels"]) not in (1, 3):
        raise UserError("--resolution must be >= 8 and --channels 1 or 3")
    if not 0 <= float(cfg["conditioning_dropout"]) < 1 / 3:
        raise UserError("--conditioning-dropout must lie in [0, 1/3) (text, image and both are each dropped with this probability)")
    return cfg


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def train(options: TrainOptions, progress: Progress | None = None) -> Path:
    """Validate everything (options, sizes, every image), then write ``checkpoints/run.json`` and
    run the requested stages; returns the model folder.

    A folder holding a run file is resumable with ``--resume``: from its latest readable
    checkpoint (an unreadable one is moved aside with a warning), or from step 0 when the run
    was stopped before its first checkpoint.
    """
    out = Path(options.output)
    progress = progress or (lambda done, total, message="": None)
    rank, world = process_rank()
    group = process_group(options.device) if world > 1 else None  # one launch, several processes
    if rank > 0:  # the main process checks the folder and writes (or reads back) run.json; the others wait
        group.wait_for_everyone()
        cfg = {**copy.deepcopy(COMMON), **run_folder.load_run(out)}
        trainer = Trainer(cfg, out, read_pairs(cfg["data"]), device=options.device, progress=lambda *a, **k: None)
        trainer.check()
        return trainer.run(resume=options.resume)
    if options.resume:
        # a run started by an older version lacks the settings added since: they take the common defaults
        cfg = {**copy.deepcopy(COMMON), **run_folder.resume_run(out)}
        pairs = read_pairs(cfg["data"])
    else:
        cfg = build_config(options)
        pairs = read_pairs(options.data)
        run_folder.refuse_file(out)
        if cfg["stage"] == "unet" and not cfg["pretrained"] and not (out / "vae" / "config.json").is_file():
            raise InputError(out, "has no trained VAE (vae/) for --stage unet", "run --stage vae (or all) first, or start from --pretrained")
        if cfg["stage"] != "unet":
            run_folder.refuse_not_empty(out)
        if cfg["stage"] == "unet" and (out / run_folder.MODEL_INFO).exists():
            raise InputError(out, "already holds a trained model", "give a new folder")
    refuse_pickled_weights(cfg["pretrained"], strict=False)  # safetensors only, whatever the library's default
    trainer = Trainer(cfg, out, pairs, device=options.device, progress=progress)
    for row in pairs.rows:  # every image read now (and kept for training): a bad one fails before anything is written
        for path in (row.prior, row.target):
            trainer._image(path)
    trainer.check()
    if not options.resume:
        _check_sizes(trainer, out)
        run_folder.write_run(out, cfg)
    if group is not None:
        group.wait_for_everyone()
    return trainer.run(resume=options.resume)


def _reconstruct(vae: Any, x: Any, generator: Any) -> tuple[Any, Any]:
    """Stage 1's forward: the reconstruction of ``x`` from a posterior sample, and the KL per item."""
    posterior = vae.encode(x).latent_dist
    return vae.decode(posterior.sample(generator=generator)).sample, posterior.kl()


def _check_sizes(trainer: Trainer, out: Path) -> None:
    """Build the networks the run will train without memory or weights: sizes that do not fit
    together (``--set vae.*``/``unet.*``) fail here in one line."""
    cfg = trainer.cfg
    if cfg["pretrained"] or cfg["vae"] is None:
        return
    quiet()
    vae = cfg["vae"]
    if cfg["stage"] == "unet":  # the VAE of an earlier --stage vae run
        try:
            vae = json.loads((out / "vae" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(out / "vae" / "config.json", "is not readable", "run --stage vae again") from None
    with sizes_must_fit():
        if cfg["stage"] in ("vae", "all"):
            trainer._new_vae()
        if cfg["stage"] in ("unet", "all"):
            factor = 2 ** (len(vae["block_out_channels"]) - 1)
            trainer._new_unet(int(trainer.text_model.config.hidden_size), int(vae["latent_channels"]),
                              max(1, trainer.res // factor))


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def ssim(a: Any, b: Any, window: int = 7, sigma: float = 1.5) -> Any:
    """Mean structural similarity of two image batches in [0, 1] (Gaussian window)."""
    import torch
    import torch.nn.functional as F

    c = a.shape[1]
    x = torch.arange(window, dtype=a.dtype, device=a.device) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def f(t: Any) -> Any:
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = f(a), f(b)
    saa, sbb, sab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


def diffusion_target(noise_sched: Any, latents: Any, noise: Any, t: Any) -> Any:
    """What the UNet learns to predict under the scheduler's ``prediction_type``: the noise
    (``epsilon``), the clean latent (``sample``: at high noise levels its optimum is the
    conditional mean of the target, noise-free) or the velocity (``v_prediction``)."""
    kind = noise_sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if kind == "v_prediction":
        return noise_sched.get_velocity(latents, noise, t)
    raise UserError(f"prediction_type {kind!r}: use epsilon, sample or v_prediction")


def training_timesteps(kind: str, T: int, n: int, gen: Any, device: Any) -> Any:
    """``n`` diffusion timesteps in [0, T): ``uniform`` (DDPM, InstructPix2Pix), or ``high``, drawn with
    density growing linearly with t (t = floor(T * sqrt(u))): more of the batch at high noise, where
    the prior and the prompt, not the noisy target, decide the prediction."""
    import torch

    if kind == "uniform":
        return torch.randint(0, T, (n,), generator=gen, device=device)
    u = torch.rand(n, generator=gen, device=device)
    return (T * u.sqrt()).long().clamp_(0, T - 1)


def patch_discriminator(channels: int) -> Any:
    """A small PatchGAN discriminator (3 strided convolutions) for the optional adversarial VAE loss."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1), nn.GroupNorm(8, 128), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 1, 3, 1, 1),
    )


# ---------------------------------------------------------------------------------------------
# the trainer
def one_per_prompt(rows: list[Any], count: int) -> list[Any]:
    """Up to ``count`` rows for the validation images: the first row of each prompt in turn (so
    the pictures show different requests, not one prompt four times), then the next of each."""
    by_prompt: dict[str, list[Any]] = {}
    for r in rows:
        by_prompt.setdefault(r.prompt, []).append(r)
    chosen: list[Any] = []
    depth = 0
    while len(chosen) < min(count, len(rows)):
        chosen += [group[depth] for group in by_prompt.values() if depth < len(group)][: count - len(chosen)]
        depth += 1
    return chosen


# ---------------------------------------------------------------------------------------------
class Trainer(StagedTrainer):
    LOSS_FIELDS = ("stage", "step", "loss", "l1", "ssim", "kl", "gan", "lr")

    def __init__(self, cfg: dict[str, Any], out: Path, pairs: PairsFolder, *, device: str, progress: Progress) -> None:
        super().__init__(cfg, out, device=device, progress=progress)
        self.pairs = pairs
        self.res = int(cfg["resolution"])
        self.channels = int(cfg["channels"])
        self.train_pairs = pairs.split("train")
        self.val_pairs = one_per_prompt(pairs.split("validation") or self.train_pairs, int(cfg["validation_count"]))
        self._images: dict[Path, Any] = {}

    # -- validation of what we need before writing anything ----------------------------------
    def check(self) -> None:
        from brainsynth_cli.plugin_manager import get_manager

        te = self.cfg["text_encoder"]
        self.encoder = get_manager().registry("text-encoder").create(te["name"], **({"path": te["path"]} if te["path"] else {}))
        pre = self.cfg["pretrained"]
        if pre and Path(pre).exists() and not (Path(pre) / "unet" / "config.json").is_file():
            raise InputError(pre, "is not a diffusers Stable Diffusion folder (no unet/config.json)", "give a folder saved with save_pretrained or a hub id")
        if pre:
            quiet()
            from diffusers import AutoencoderKL, UNet2DConditionModel

            try:
                UNet2DConditionModel.load_config(pre, subfolder="unet")
                AutoencoderKL.load_config(pre, subfolder="vae")
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()
                raise InputError(pre, f"cannot be read as a Stable Diffusion pipeline ({first[0][:160] if first else type(exc).__name__})",
                                 "give a local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a reachable hub id") from None
        asked = self.cfg["mixed_precision"]
        self.cfg["mixed_precision"] = resolve_mixed_precision(asked, self.device_name)
        if asked == "auto":
            logging.getLogger(__name__).debug("mixed precision auto: %s on %s", self.cfg["mixed_precision"], self.device_name)
        if self.res % 8:
            raise UserError(f"--resolution {self.res} must be a multiple of 8")
        epochs = self.cfg.get("epochs")
        if epochs:
            n_img = len({p.prior for p in self.train_pairs} | {p.target for p in self.train_pairs})
            self.cfg["vae_steps"] = math.ceil(float(epochs) * n_img / int(self.cfg["vae_batch_size"]))
            self.cfg["unet_steps"] = math.ceil(float(epochs) * len(self.train_pairs) / int(self.cfg["unet_batch_size"]))
            self.cfg["epochs"] = None
        quiet()
        self.tokenizer, self.text_model = self.encoder.load()  # a bad path fails here, before anything is written
        self._text_heads(int(self.text_model.config.hidden_size))  # and a width the UNet's settings cannot take

    def _text_heads(self, hidden: int) -> None:
        """With ``unet.addition_embed_type=text``: the pooled prompt's attention heads, which must
        divide the text encoder's width (default: gcd(width, 64), diffusers' 64 where it divides),
        recorded in the UNet settings."""
        u = self.cfg.get("unet") or {}
        if u.get("addition_embed_type") != "text":
            return
        heads = int(u.get("addition_embed_type_num_heads") or math.gcd(hidden, 64))
        if hidden % heads:
            raise UserError(f"unet.addition_embed_type_num_heads={heads} does not divide the text encoder's width {hidden}; "
                            f"use a divisor of {hidden} (e.g. {math.gcd(hidden, 64)})")
        u["addition_embed_type_num_heads"] = heads

    # -- common machinery ----------------------------------------------------------------
    def _image(self, path: Path) -> Any:
        """A slice as float32 [0, 1]; kept in memory as its 16-bit values when that is exact (half the bytes)."""
        import numpy as np

        if path not in self._images:
            x = load_slice(path, self.res)
            q = np.round(x.astype(np.float64) * 65535).astype(np.uint16)
            self._images[path] = q if np.array_equal(q.astype(np.float32) / np.float32(65535), x) else x
        a = self._images[path]
        return a.astype(np.float32) / np.float32(65535) if a.dtype == np.uint16 else a

    def _tensor(self, paths: list[Path]) -> Any:
        import numpy as np
        import torch

        x = torch.from_numpy(np.stack([self._image(p) for p in paths]))[:, None]
        if self.channels == 3:
            x = x.repeat(1, 3, 1, 1)
        return x * 2 - 1

    # -- run -----------------------------------------------------------------------------
    def run(self, resume: bool) -> Path:
        import torch

        quiet()
        with deterministic_on_cpu(self.device_name):
            torch.manual_seed(int(self.cfg["seed"]))
            stages = list(ckpts.STAGES) if self.cfg["stage"] == "all" else [self.cfg["stage"]]
            latest = ckpts.latest_checkpoint(self.out) if resume else None
            for stage in stages:
                if stage == "vae" and (self.out / "vae" / "config.json").is_file() and resume:
                    continue  # finished before the interruption
                start = latest if latest is not None and latest.stage == stage else None
                if process_rank()[0] > 0:
                    pass  # the main process keeps the log
                elif start is not None:
                    self._trim_log(stage, start.step)
                elif resume:
                    self._trim_log(stage, 0)
                batch = int(self.cfg[f"{stage}_batch_size"])
                with out_of_memory_advice(self.cfg, stage, batch, self.device_name):
                    if stage == "vae":
                        self.train_vae(start)
                    else:
                        self.train_unet(start)
            return self.out

    # -- stage 1 -------------------------------------------------------------------------
    def _new_vae(self) -> Any:
        from diffusers import AutoencoderKL

        if self.cfg["pretrained"]:
            return AutoencoderKL.from_pretrained(self.cfg["pretrained"], subfolder="vae", use_safetensors=True)
        v = self.cfg["vae"]
        n = len(v["block_out_channels"])
        return AutoencoderKL(in_channels=self.channels, out_channels=self.channels,
                             down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=tuple(v["block_out_channels"]), layers_per_block=int(v["layers_per_block"]),
                             latent_channels=int(v["latent_channels"]), norm_num_groups=int(v["norm_num_groups"]),
                             sample_size=self.res, mid_block_add_attention=bool(v.get("mid_block_attention", True)))

    def train_vae(self, start: ckpts.Checkpoint | None) -> None:
        import torch

        cfg = self.cfg
        total = int(cfg["vae_steps"])
        images = sorted({p.prior for p in self.train_pairs} | {p.target for p in self.train_pairs})
        torch.manual_seed(int(cfg["seed"]))
        vae = self._new_vae()
        if cfg["gradient_checkpointing"]:
            vae.enable_gradient_checkpointing()
        gan = float(cfg["gan_weight"]) > 0
        disc = patch_discriminator(self.channels) if gan else None
        opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg["vae_lr"]))
        opt_d = torch.optim.AdamW(disc.parameters(), lr=float(cfg["vae_lr"]), betas=(0.5, 0.9)) if gan else None
        acc = self._accelerator()
        sched = self._lr_scheduler(opt, total, acc.num_processes, cfg.get("vae_lr_scheduler"))
        gen = torch.Generator(device=acc.device).manual_seed(int(cfg["seed"]) * 7 + 1 + acc.process_index)
        step = 0
        if start is not None:
            step, _ = self._restore(start, {"model": vae, **({"disc": disc} if gan else {})},
                                    {"model": opt, **({"disc": opt_d} if gan else {})}, sched, gen,
                                    world=acc.num_processes, rank=acc.process_index, seed=int(cfg["seed"]) * 7 + 1)
        vae.train()
        # the autoencoder's step as one forward (what several processes synchronise), in float32:
        # bf16 autocast gained nothing for it on CPU (benchmarks/RESULTS.md)
        model = step_module(vae, _reconstruct, autocast=False)
        if gan:
            model, disc, opt, opt_d, sched = acc.prepare(model, disc, opt, opt_d, sched)
        else:
            model, opt, sched = acc.prepare(model, opt, sched)
        batches = Batches(len(images), int(cfg["vae_batch_size"]), int(cfg["seed"]), acc.process_index, acc.num_processes)
        accum = int(cfg["gradient_accumulation"])
        every = int(cfg["checkpoint_every"])
        while step < total:
            for micro in range(accum):
                x = self._tensor([images[i] for i in batches(step * accum + micro)]).to(acc.device)
                with acc.accumulate(model):
                    rec, kl = model(x, gen)
                    l1 = (rec.float() - x).abs().mean()
                    s = 1 - ssim((rec.float() + 1) / 2, (x + 1) / 2)
                    kl = kl.mean()
                    loss = l1 + float(cfg["ssim_weight"]) * s + float(cfg["kl_weight"]) * kl
                    g_loss = torch.zeros(())
                    if gan and step >= int(cfg["gan_start"]):
                        g_loss = -disc(rec).mean()
                        loss = loss + float(cfg["gan_weight"]) * g_loss
                    self._optimizer_step(acc, loss, vae.parameters(), opt, sched)
                    if gan and step >= int(cfg["gan_start"]):
                        d_loss = torch.relu(1 - disc(x)).mean() + torch.relu(1 + disc(rec.detach())).mean()
                        acc.backward(d_loss)
                        opt_d.step()
                        opt_d.zero_grad(set_to_none=True)
            step += 1
            means = self._mean_over_processes(acc, {"loss": loss, "l1": l1, "ssim": s, "kl": kl, "gan": g_loss})
            if acc.is_main_process:
                self._log({"stage": "vae", "step": step, **means, "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 1 (vae) loss {means['loss']:.4f}")
            if every > 0 and step % every == 0 and step < total:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    modules = {"model": vae.state_dict()}
                    optims = {"model": opt}
                    if gan:
                        modules["disc"] = acc.unwrap_model(disc).state_dict()
                        optims["disc"] = opt_d
                    self._save_checkpoint("vae", step, modules, optims, sched, gen)
                    self.validate_vae(vae, step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            vae.eval()
            if not self.cfg["pretrained"]:
                vae.register_to_config(scaling_factor=self._scaling_factor(vae, images))
            self.validate_vae(vae, step)
            tmp = self.out / ".tmp-vae"
            shutil.rmtree(tmp, ignore_errors=True)
            vae.save_pretrained(tmp)
            shutil.rmtree(self.out / "vae", ignore_errors=True)
            os.replace(tmp, self.out / "vae")
        acc.wait_for_everyone()  # stage 2 of every process reads vae/
        acc.free_memory()

    def _scaling_factor(self, vae: Any, images: list[Path]) -> float:
        """1 / std of the latents of (up to 64) training images, as Stable Diffusion's 0.18215."""
        import torch

        with torch.no_grad():
            lat = torch.cat([vae.encode(self._tensor(images[i : i + 16]).to(vae.device)).latent_dist.mode()
                             for i in range(0, min(64, len(images)), 16)])
        std = float(lat.float().std())
        return 1.0 / std if std > 1e-8 else 1.0

    def validate_vae(self, vae: Any, step: int) -> None:
        import torch

        from brainsynth_cli.figures.comparison import comparison_figure
        from brainsynth_cli.figures.orientation import stored_view
        from brainsynth_cli.figures.save import save_figure

        paths = [p.prior for p in self.val_pairs]
        if not paths:
            return
        was = vae.training
        vae.eval()
        with torch.no_grad():
            x = self._tensor(paths).to(vae.device)
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        vae.train(was)
        a = ((x + 1) / 2).clamp(0, 1).mean(1).cpu().numpy()
        b = ((rec.float() + 1) / 2).clamp(0, 1).mean(1).cpu().numpy()
        view = lambda s: stored_view(s, self.pairs.info.get("slice_convention"))
        items = [(f"{p.subject}: {p.prior.name}", view(a[i]), view(b[i])) for i, p in enumerate(self.val_pairs)]
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        save_figure(comparison_figure(items, columns=("input", "reconstruction"),
                                      title=f"autoencoder reconstructions of validation priors after {step} steps"),
                    self.out / "validation" / f"vae-{step:07d}.png")

    # -- stage 2 -------------------------------------------------------------------------
    def _new_unet(self, hidden: int, latent_channels: int, sample: int) -> tuple[Any, Any]:
        import torch
        from diffusers import DDPMScheduler, UNet2DConditionModel

        if self.cfg["pretrained"]:
            unet = UNet2DConditionModel.from_pretrained(self.cfg["pretrained"], subfolder="unet", use_safetensors=True)
            if int(unet.config.cross_attention_dim) != hidden:
                raise UserError(f"text encoder {self.cfg['text_encoder']['name']} is {hidden} wide but the pretrained UNet's "
                                f"cross-attention is {unet.config.cross_attention_dim}; use --text-encoder clip with the pretrained text encoder")
            if unet.config.in_channels == latent_channels:  # copy the weights, zero the new prior-latent channels
                old = unet.conv_in
                new = torch.nn.Conv2d(2 * latent_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
                with torch.no_grad():
                    new.weight.zero_()
                    new.weight[:, :latent_channels].copy_(old.weight)
                    new.bias.copy_(old.bias)
                unet.conv_in = new
                unet.register_to_config(in_channels=2 * latent_channels)
            noise = DDPMScheduler.from_pretrained(self.cfg["pretrained"], subfolder="scheduler", prediction_type=str(self.cfg["prediction_type"]))
            return unet, noise
        u = self.cfg["unet"]
        self._text_heads(hidden)
        extra = {k: u[k] for k in OPTIONAL_UNET if u.get(k) is not None}
        unet = UNet2DConditionModel(
            sample_size=sample, in_channels=2 * latent_channels, out_channels=latent_channels,
            down_block_types=tuple(u["down_block_types"]), up_block_types=tuple(u["up_block_types"]),
            block_out_channels=tuple(u["block_out_channels"]), layers_per_block=int(u["layers_per_block"]),
            attention_head_dim=int(u["attention_head_dim"]), norm_num_groups=int(u["norm_num_groups"]),
            cross_attention_dim=hidden, **extra,
        )
        noise = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type=str(self.cfg["prediction_type"]), clip_sample=False, timestep_spacing="trailing")
        return unet, noise

    def _loss_weights(self, latent_shape: Any, device: Any) -> Any:
        """Per training row, a loss weight map on the latent grid: 1 + region_weight inside the
        structures the row's prompt names (its prior label slice), dilated by region_margin_mm,
        1 elsewhere; None when region_weight is 0 or the rows have no label slices.

        The edit keeps the change inside that region (the edit path), and there a structure's
        change is a few dozen pixels of a 64-pixel slice: with a uniform loss the UNet can ignore
        it and still fit the rest of the image. Weighting puts the training signal where the edit
        acts, BrainEditor's disentanglement carried into the loss."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        from brainsynth_cli.edit_path import region
        from brainsynth_cli.images import read_png
        from brainsynth_cli.structures import default_rules, rules_from_text

        lam = float(self.cfg.get("region_weight") or 0.0)
        if lam <= 0 or any(r.path("input_labels_file_name") is None for r in self.train_pairs):
            return None
        rules = rules_from_text(self.pairs.info["rules"], "pairs.json rules") if self.pairs.info.get("rules") else default_rules()
        margin = float(self.cfg.get("region_margin_mm", 3.0))
        maps = []
        for r in self.train_pairs:
            names = [k for k, v in (r.data.get("intervals") or {}).items() if v and k in rules.names()]
            lab = read_png(r.path("input_labels_file_name"))[0]
            mm = r.data.get("pixel_mm")
            spacing = (float(mm), float(mm)) if isinstance(mm, (int, float)) and mm > 0 else (margin, margin)
            m = region(lab, [rules[n] for n in names], spacing, margin).astype(np.float32) if names else np.zeros(lab.shape, np.float32)
            t = torch.from_numpy(m)[None, None]
            if tuple(t.shape[-2:]) != (self.res, self.res):
                from brainsynth_cli.slices import labels_to_square

                t = torch.from_numpy(labels_to_square(m, self.res).astype(np.float32))[None, None]
            t = F.adaptive_max_pool2d(t, tuple(int(v) for v in latent_shape))
            maps.append(1.0 + lam * t[0])
        return torch.stack(maps).to(device)

    def _embed(self, prompts: list[str], device: Any) -> dict[str, Any]:
        import torch

        out = {}
        with torch.no_grad():
            for p in prompts:
                ids = self.tokenizer([p], padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt").input_ids
                out[p] = self.text_model.to(device)(ids.to(device))[0][0].float()
        return out

    def train_unet(self, start: ckpts.Checkpoint | None) -> None:
        import torch
        from diffusers import AutoencoderKL

        cfg = self.cfg
        total = int(cfg["unet_steps"])
        vae_dir = self.out / "vae"
        if not (vae_dir / "config.json").is_file():  # --stage unet from a pretrained VAE
            AutoencoderKL.from_pretrained(cfg["pretrained"], subfolder="vae", use_safetensors=True).save_pretrained(vae_dir)
        vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True)
        if int(vae.config.in_channels) != self.channels:
            raise InputError(vae_dir, f"is a {vae.config.in_channels}-channel VAE but --channels is {self.channels}", "use the same channels in both stages")
        vae.requires_grad_(False).eval()
        acc = self._accelerator()
        vae.to(acc.device)
        hidden = int(self.text_model.config.hidden_size)
        lat_ch = int(vae.config.latent_channels)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        torch.manual_seed(int(cfg["seed"]) + 1)
        unet, noise_sched = self._new_unet(hidden, lat_ch, self.res // factor)
        train_attention(unet, acc.device.type)
        if cfg["gradient_checkpointing"]:
            unet.enable_gradient_checkpointing()
        # latents once, in a fixed order (so a resumed run sees the same numbers): the posterior
        # mode, unscaled (the prior's conditioning, exactly as the diffusers pipeline computes it at
        # inference); targets are diffused on mode x scaling_factor, as in diffusers' training script
        paths = sorted({p.prior for p in self.train_pairs + self.val_pairs} | {p.target for p in self.train_pairs})
        scale = float(vae.config.scaling_factor)
        latents: dict[Path, Any] = {}
        with torch.no_grad():
            for i in range(0, len(paths), 16):
                chunk = paths[i : i + 16]
                latents.update(zip(chunk, image_conditioning(vae, self._tensor(chunk).to(acc.device))))
        emb = self._embed(sorted({p.prompt for p in self.pairs.rows}) + [""], acc.device)
        weights = self._loss_weights(latents[self.train_pairs[0].prior].shape[-2:], acc.device)
        null = emb[""]
        ema = new_ema(unet, float(cfg["ema_decay"])) if cfg["ema"] else None
        opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg["unet_lr"]))
        sched = self._lr_scheduler(opt, total, acc.num_processes)
        gen = torch.Generator(device=acc.device).manual_seed(int(cfg["seed"]) * 7 + 2 + acc.process_index)
        step = 0
        if start is not None:
            step, ck = self._restore(start, {"model": unet}, {"model": opt}, sched, gen, world=acc.num_processes,
                                     rank=acc.process_index, seed=int(cfg["seed"]) * 7 + 2)
            if ema is not None:
                load_ema(ema, unet, ck["modules"]["ema"], ck["state"])
        unet.train()
        unet, opt, sched = acc.prepare(unet, opt, sched)
        if ema is not None:  # beside the weights it averages (prepare moved them to the device)
            ema.to(device=acc.device)
        batches = Batches(len(self.train_pairs), int(cfg["unet_batch_size"]), int(cfg["seed"]), acc.process_index, acc.num_processes)
        accum = int(cfg["gradient_accumulation"])
        every = int(cfg["checkpoint_every"])
        drop = float(cfg["conditioning_dropout"])
        T = int(noise_sched.config.num_train_timesteps)
        change_target = cfg["latent_target"] == "change"
        while step < total:
            for micro in range(accum):
                picked = batches(step * accum + micro)
                rows = [self.train_pairs[i] for i in picked]
                target = torch.stack([latents[r.target] for r in rows]) * scale
                prior = torch.stack([latents[r.prior] for r in rows])
                if change_target:  # the UNet models the change of the latent, not the whole target
                    target = target - prior * scale
                text = torch.stack([emb[r.prompt] for r in rows])
                noise = torch.randn(target.shape, generator=gen, device=acc.device)
                t = training_timesteps(str(cfg["timestep_sampling"]), T, len(rows), gen, acc.device)
                noisy = noise_sched.add_noise(target, noise, t)
                if drop > 0:  # InstructPix2Pix: drop text, both, image (each with probability `drop`)
                    text, prior = drop_conditioning(text, prior, null, drop, gen)
                with acc.accumulate(unet):
                    pred = unet(torch.cat([noisy, prior], 1), t, text).sample
                    err = (pred.float() - diffusion_target(noise_sched, target, noise, t).float()) ** 2
                    if weights is None:
                        loss = err.mean()
                    else:  # the named structures' region counts region_weight times more (see _loss_weights)
                        w = weights[picked]
                        loss = (err * w).mean() / w.mean()
                    self._optimizer_step(acc, loss, unet.parameters(), opt, sched)
            step += 1
            if ema is not None:
                ema.step(acc.unwrap_model(unet).parameters())
            mean_loss = self._mean_over_processes(acc, {"loss": loss})["loss"]
            if acc.is_main_process:
                self._log({"stage": "unet", "step": step, "loss": mean_loss, "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 2 (unet) loss {mean_loss:.4f}")
            if every > 0 and step % every == 0 and step < total:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    modules = {"model": acc.unwrap_model(unet).state_dict()}
                    if ema is not None:
                        modules["ema"] = ema_tensors(ema, acc.unwrap_model(unet))
                    self._save_checkpoint("unet", step, modules, {"model": opt}, sched, gen,
                                          extra={"ema": ema_settings(ema)} if ema is not None else None)
                    self.validate_unet(acc.unwrap_model(unet), vae, noise_sched, ema, step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            unet = acc.unwrap_model(unet)
            if ema is not None:
                ema.copy_to(unet.parameters())  # the model keeps the averaged weights
            self.validate_unet(unet, vae, noise_sched, None, step)
            self.save_pipeline(unet, vae, noise_sched)
        acc.free_memory()

    def _pipeline(self, unet: Any, vae: Any, noise_sched: Any) -> Any:
        from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=self.text_model, tokenizer=self.tokenizer, unet=unet,
            scheduler=DDIMScheduler.from_config(noise_sched.config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate_unet(self, unet: Any, vae: Any, noise_sched: Any, ema: Any, step: int) -> None:
        import torch

        from brainsynth_cli.edit_montage import EditRow, edit_montage
        from brainsynth_cli.figures.orientation import stored_view

        if not self.val_pairs:
            return
        if ema is not None:  # validate the averaged weights, then put the training weights back
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        was = unet.training
        unet.eval()
        try:
            pipe = self._pipeline(unet, vae, noise_sched)
            rows = []
            for i, p in enumerate(self.val_pairs):
                x = (self._tensor([p.prior]) + 1) / 2
                g = torch.Generator(device="cpu").manual_seed(int(self.cfg["seed"]) + i)
                with torch.no_grad():
                    y = residual_edit(pipe, x.to(unet.device), [p.prompt], steps=int(self.cfg["validation_steps"]),
                                      guidance_scale=float(self.cfg["guidance_scale"]),
                                      image_guidance_scale=float(self.cfg["image_guidance_scale"]), generator=g,
                                      latent_target=str(self.cfg["latent_target"]),
                                      guidance_reference=str(self.cfg["guidance_reference"]))
                view = lambda s: stored_view(s, self.pairs.info.get("slice_convention"))
                rows.append(EditRow(title=p.prompt, prior=view(self._image(p.prior)), edited=view(y[0].cpu().numpy()),
                                    target=view(self._image(p.target))))
        finally:
            unet.train(was)
            if ema is not None:
                ema.restore(unet.parameters())
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        edit_montage(self.out / "validation" / f"unet-{step:07d}.png", rows,
                     title=f"validation edits after {step} UNet steps (residual decoding, no restriction)")

    def pixel_mm(self) -> float | None:
        """The training slices' median pixel size in mm (rows of make-pairs record it), or None."""
        import statistics

        values = [float(r.data["pixel_mm"]) for r in self.train_pairs if isinstance(r.data.get("pixel_mm"), (int, float))]
        return round(statistics.median(values), 6) if values else None

    def vae_reconstruction(self, vae: Any) -> dict[str, Any]:
        """PSNR and SSIM of D(E(x)) against x on the validation split's slices (train split if it has none):
        the ceiling of any edit that decodes whole images."""
        import numpy as np
        import torch

        from brainsynth_plugins.evaluate import metrics

        rows = self.pairs.split("validation")
        split = "validation" if rows else "train"
        paths = sorted({p.prior for p in (rows or self.train_pairs)} | {p.target for p in (rows or self.train_pairs)})[:256]
        psnr, ssim_ = [], []
        with torch.no_grad():
            for i in range(0, len(paths), 16):
                chunk = paths[i : i + 16]
                x = self._tensor(chunk).to(vae.device)
                rec = vae.decode(image_conditioning(vae, x.to(vae.dtype))).sample.float()
                a = ((x + 1) / 2).clamp(0, 1).mean(1).cpu().numpy()
                b = ((rec + 1) / 2).clamp(0, 1).mean(1).cpu().numpy()
                for u, v in zip(a, b):
                    psnr.append(metrics.psnr(u, v, 1.0))
                    ssim_.append(metrics.ssim(u, v, 1.0))
        return {"split": split, "slices": len(paths), "psnr": round(float(np.mean(psnr)), 3), "ssim": round(float(np.mean(ssim_)), 4)}

    def save_pipeline(self, unet: Any, vae: Any, noise_sched: Any) -> None:
        from brainsynth_cli import __version__
        from brainsynth_cli.slices import Normalisation
        from brainsynth_cli.structures import default_rules, rules_from_text

        recon = self.vae_reconstruction(vae)
        pipe = self._pipeline(unet, vae, noise_sched)
        pipe.save_pretrained(self.out, safe_serialization=True)
        rules_text = self.pairs.info.get("rules") or default_rules().to_toml()
        rules = rules_from_text(rules_text, "pairs.json rules")
        te = self.cfg["text_encoder"]
        info = {
            "format": "brainsynth-model", "version": 1, "generator": "instruct-pix2pix", "brainsynth": __version__,
            "preset": self.cfg["preset"], "pretrained": self.cfg["pretrained"],
            "channels": self.channels, "channel_mode": "grey" if self.channels == 1 else "grey replicated to RGB",
            "resolution": self.res, "latent_channels": int(vae.config.latent_channels),
            "vae_scale_factor": 2 ** (len(vae.config.block_out_channels) - 1),
            "scaling_factor": float(vae.config.scaling_factor),
            "intensity_normalisation": {"slice_convention": self.pairs.info.get("slice_convention", "brainsynth_cli.slices v1"),
                                        "method": Normalisation(0, 1).method, "model_range": [-1, 1], "png": "round(x * 65535)"},
            "structures": [s.name for s in rules.described()], "rules": rules_text,
            "prompts": trained_prompts(self.pairs), "intervals": trained_intervals(self.pairs),
            "vae_reconstruction": recon, "pixel_mm": self.pixel_mm(), "latent_target": str(self.cfg["latent_target"]),
            "prediction_type": str(noise_sched.config.prediction_type),
            "text_encoder": {"name": te["name"], "path": te["path"], "hidden_size": int(self.text_model.config.hidden_size),
                             "max_length": int(self.tokenizer.model_max_length)},
            "training": {k: self.cfg[k] for k in ("seed", "vae_steps", "unet_steps", "vae_lr", "unet_lr", "vae_batch_size",
                                                  "unet_batch_size", "ema", "conditioning_dropout", "mixed_precision", "stage")},
            "data": self.cfg["data"], "pairs": {k: v for k, v in self.pairs.info.items() if k != "rules"},
            # what `edit` and `evaluate` use when their options are not given (the preset's, chosen by a sweep)
            "sampling": {"steps": int(self.cfg["sampling_steps"]), "scheduler": str(self.cfg["sampling_scheduler"]),
                         "guidance_scale": float(self.cfg["guidance_scale"]),
                         "image_guidance_scale": float(self.cfg["image_guidance_scale"]),
                         "change_floor": float(self.cfg["change_floor"]),
                         "guidance_reference": str(self.cfg["guidance_reference"]), "feather": bool(self.cfg["feather"]),
                         "blender": str(self.cfg["blender"])},
        }
        tmp = self.out / ".brainsynth.json.tmp"
        tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.replace(tmp, self.out / "brainsynth.json")
