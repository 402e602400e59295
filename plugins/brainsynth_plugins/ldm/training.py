"""Training the ``ldm`` generator: stage 1 an AutoencoderKL, stage 2 a conditional UNet on its latents.

Both stages run under Hugging Face accelerate (devices, mixed precision). Batches are a pure
function of (seed, step), every random draw comes from a generator whose state is checkpointed
(:mod:`brainsynth_plugins.training_core`, shared with ip2p: safetensors + JSON, no pickle), and
latents are computed once in a fixed order, so a run resumed with ``--resume`` ends with the
weights of an uninterrupted one (same seed, CPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.interfaces import Progress, TrainOptions
from brainsynth_cli.launch import process_rank
from brainsynth_cli.limits import check_settings
from brainsynth_plugins.ldm import nets
from brainsynth_plugins.ldm.data import COVARIATES, TrainingSet, check_covariates, covariate_matrix, read_training_set
from brainsynth_plugins.ldm.model import INFO, embed_text, load_text_encoder
from brainsynth_plugins.ldm.presets import COMMON, PRESETS, SETTINGS
from brainsynth_plugins.training_core import checkpoints as ckpts
from brainsynth_plugins.training_core import run_folder
from brainsynth_plugins.training_core.attention import train_attention
from brainsynth_plugins.training_core.batches import Batches
from brainsynth_plugins.training_core.config import apply_overrides, sizes_must_fit
from brainsynth_plugins.training_core.memory import out_of_memory_advice
from brainsynth_plugins.training_core.runtime import MIXED_PRECISION, process_group, quiet, resolve_mixed_precision
from brainsynth_plugins.training_core.step_module import step_module
from brainsynth_plugins.training_core.trainer import StagedTrainer


def build_config(options: TrainOptions) -> dict[str, Any]:
    """Preset + options + ``--set`` overrides -> the run's configuration (sizes for one dim)."""
    ex = dict(options.extra)
    preset = ex.get("preset") or "tiny"
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} for the ldm generator; available: {', '.join(PRESETS)}")
    dim = str(ex.get("dim") or "2d").lower()
    if dim not in ("2d", "3d"):
        raise UserError(f"--dim must be 2d or 3d, got {dim!r}")
    condition = str(ex.get("condition") or "both").lower()
    if condition not in nets.CONDITIONS:
        raise UserError(f"--condition must be one of {', '.join(nets.CONDITIONS)}, got {condition!r}")
    if ex.get("pretrained"):
        raise UserError("the ldm generator trains from scratch; --pretrained is for --task edit")
    if ex.get("channels") not in (None, 1):
        raise UserError("the ldm generator models grey images; leave out --channels (or give 1)")
    if (ex.get("stage") or "all") != "all":
        raise UserError("the ldm generator trains both stages in one run (resume with --resume); leave out --stage")
    if ex.get("ema"):
        raise UserError("--ema is not supported by the ldm generator")
    if ex.get("steps") is not None and ex.get("epochs") is not None:
        raise UserError("give --steps or --epochs, not both")
    base = copy.deepcopy({**COMMON, **PRESETS[preset]})
    cfg: dict[str, Any] = {**base, "vae": base["vae"][dim], "unet": base["unet"][dim]}
    cfg.update({"preset": preset, "dim": dim, "condition": condition, "seed": int(options.seed),
                "data": str(Path(options.data).resolve()), "labels": str(Path(ex["labels"]).resolve()) if ex.get("labels") else None})
    if ex.get("run") is not None:  # recorded only when given, so runs made without it resume as before
        cfg["run"] = str(ex["run"]).removeprefix("run-")
    if ex.get("steps") is not None:
        cfg["vae_steps"] = cfg["unet_steps"] = int(ex["steps"])
    for key in ("vae_steps", "unet_steps", "checkpoint_every", "captions_per_image"):
        if ex.get(key) is not None:
            cfg[key] = int(ex[key])
    cfg["epochs"] = float(ex["epochs"]) if ex.get("epochs") is not None else None
    if ex.get("batch_size") is not None:
        cfg["vae_batch_size"] = cfg["unet_batch_size"] = int(ex["batch_size"])
    if ex.get("lr") is not None:
        cfg["unet_lr"] = float(ex["lr"])
    for key in ("resolution", "voxel_mm", "mixed_precision", "conditioning_dropout"):
        if ex.get(key) is not None:
            cfg[key] = ex[key]
    te = ex.get("text_encoder") or "minilm"
    cfg["text_encoder"] = {"name": te, "path": str(ex["text_encoder_path"]) if ex.get("text_encoder_path") else None}
    apply_overrides(cfg, ex.get("set") or {}, fixed=("data", "dim", "condition", "seed", "text_encoder", "epochs", "run"),
                    unlisted=("labels", "preset"))
    check_settings(cfg, SETTINGS, nested=("vae", "unet", "noise"))  # finite, in range, of the right type
    cfg["resolution"] = int(cfg["resolution"])
    cfg["voxel_mm"] = float(cfg["voxel_mm"])
    if dim == "2d" and (cfg["resolution"] < 16 or cfg["resolution"] % (nets.vae_factor(dim, cfg["vae"]) * nets.unet_factor(dim, cfg["unet"]))):
        raise UserError(f"--resolution {cfg['resolution']} must be >= 16 and a multiple of "
                        f"{nets.vae_factor(dim, cfg['vae']) * nets.unet_factor(dim, cfg['unet'])} (the networks' downsampling)")
    if not 0 <= float(cfg["conditioning_dropout"]) < 1:
        raise UserError("--conditioning-dropout must lie in [0, 1)")
    if cfg["mixed_precision"] not in MIXED_PRECISION:
        raise UserError(f"--mixed-precision must be {', '.join(MIXED_PRECISION[:-1])} or auto")
    return cfg


def train(options: TrainOptions, progress: Progress | None = None) -> Path:
    """Validate everything, then train both stages (or resume); returns the model folder.

    ``--resume`` continues from the latest readable checkpoint (an unreadable one is moved aside
    with a warning), or from step 0 when the run stopped before its first checkpoint.
    """
    out = Path(options.output)
    progress = progress or (lambda done, total, message="": None)
    rank, world = process_rank()
    group = process_group(options.device) if world > 1 else None  # one launch, several processes
    if rank > 0:  # the main process checks the folder and writes (or reads back) run.json; the others wait
        group.wait_for_everyone()
        cfg = run_folder.load_run(out)
        ts = read_training_set(cfg["data"], dim=cfg["dim"], resolution=cfg["resolution"], voxel_mm=cfg["voxel_mm"],
                               labels_dir=cfg.get("labels"), captions_per_image=int(cfg["captions_per_image"]), run=cfg.get("run"))
        trainer = Trainer(cfg, out, ts, device=options.device, progress=lambda *a, **k: None)
        trainer.check()
        return trainer.run()
    cfg = run_folder.new_or_resumed(out, options.resume, lambda: build_config(options))
    ts = read_training_set(cfg["data"], dim=cfg["dim"], resolution=cfg["resolution"], voxel_mm=cfg["voxel_mm"],
                           labels_dir=cfg.get("labels"), captions_per_image=int(cfg["captions_per_image"]), run=cfg.get("run"))
    trainer = Trainer(cfg, out, ts, device=options.device, progress=progress)
    trainer.check()
    if not options.resume:
        _check_sizes(trainer)
        run_folder.write_run(out, cfg)
    else:  # a stage that restarts from step 0 drops the log rows of the stopped run
        for stage in ckpts.STAGES:
            if stage == "vae" and (out / "vae" / "config.json").is_file():
                continue
            if ckpts.latest_checkpoint(out, stage) is None:
                trainer._trim_log(stage, 0)
            break
    if group is not None:
        group.wait_for_everyone()
    return trainer.run()


def _check_sizes(trainer: Trainer) -> None:
    """Build both networks without memory: sizes that do not fit together (``--set vae.*``/``unet.*``)
    fail here, in one line, before anything is written."""
    cfg = trainer.cfg
    with sizes_must_fit():
        nets.build_vae(trainer.dim, {**cfg["vae"], "sample_size": cfg["resolution"]})
        lat_ch = int(cfg["vae"]["latent_channels"])
        hidden = cfg["text_encoder"].get("hidden_size") if trainer.text else None
        nets.build_unet(trainer.dim, cfg["unet"], in_channels=lat_ch + nets.extra_channels(trainer.condition),
                        out_channels=lat_ch, cross_attention_dim=nets.context_dim(trainer.condition, hidden),
                        sample_size=max(1, cfg["resolution"] // nets.vae_factor(trainer.dim, cfg["vae"])))


class Trainer(StagedTrainer):
    LOSS_FIELDS = ("stage", "step", "loss", "l1", "kl", "lr")

    def __init__(self, cfg: dict[str, Any], out: Path, ts: TrainingSet, *, device: str, progress: Progress) -> None:
        quiet()
        super().__init__(cfg, out, device=device, progress=progress)
        self.ts = ts
        self.dim, self.condition = cfg["dim"], cfg["condition"]
        self.text: tuple[Any, Any] | None = None

    # -- validation before anything is written ---------------------------------------------
    def check(self) -> None:
        import numpy as np

        if len(self.ts.items) < 2:
            raise InputError(self.ts.root, f"gives {len(self.ts.items)} training image(s)", "a generator needs at least 2 images")
        if nets.uses_covariates(self.condition) or self.ts.kind == "dataset":
            check_covariates(self.ts)
        if nets.uses_text(self.condition):
            if not any(it.captions for it in self.ts.items):
                raise InputError(self.ts.root, "has no captions", "train from a dataset with labels, or make-pairs --prompt-builder template")
            self.text = load_text_encoder({**self.cfg["text_encoder"], "max_length": None})
            self.cfg["text_encoder"]["hidden_size"] = int(self.text[1].config.hidden_size)
            self.cfg["text_encoder"]["max_length"] = int(self.text[0].model_max_length)
        if self.cfg.get("epochs"):  # passes over the training images -> steps of each stage
            n = len(self.ts.items)
            self.cfg["vae_steps"] = math.ceil(self.cfg["epochs"] * n / int(self.cfg["vae_batch_size"]))
            self.cfg["unet_steps"] = math.ceil(self.cfg["epochs"] * n / int(self.cfg["unet_batch_size"]))
            self.cfg["epochs"] = None
        self.cfg["mixed_precision"] = resolve_mixed_precision(self.cfg["mixed_precision"], self.device_name)
        cov = covariate_matrix(self.ts)
        self.ranges = {}
        self.medians = {}
        for j, name in enumerate(COVARIATES):
            col = cov[:, j][np.isfinite(cov[:, j])]
            lo, hi = (float(col.min()), float(col.max())) if col.size else (0.0, 1.0)
            if name == "sex":
                lo, hi = 0.0, 1.0
            self.ranges[name] = [lo, hi]
            self.medians[name] = float(np.median(col)) if col.size else 0.5 * (lo + hi)
        if self.dim == "3d":
            multiple = nets.vae_factor("3d", self.cfg["vae"]) * nets.unet_factor("3d", self.cfg["unet"])
            self.padding = nets.pad_box(self.ts.grid_shape, multiple)
        else:
            self.padding = [(0, 0), (0, 0)]

    # -- data ----------------------------------------------------------------------------
    def images(self) -> Any:
        """All training images as one tensor (N, 1, *padded) in [-1, 1]."""
        import numpy as np
        import torch

        arr = np.stack([np.pad(it.image, self.padding) for it in self.ts.items])[:, None]
        return torch.from_numpy(arr.astype(np.float32)) * 2 - 1

    def scaled_covariates(self) -> Any:
        import numpy as np
        import torch

        from brainsynth_plugins.ldm.model import scale_covariates

        info = {"covariates": {"ranges": self.ranges}}
        cov = covariate_matrix(self.ts)
        med = np.asarray([self.medians[n] for n in COVARIATES])
        cov = np.where(np.isfinite(cov), cov, med[None])
        return torch.tensor([scale_covariates(info, row) for row in cov], dtype=torch.float32)

    # -- run -----------------------------------------------------------------------------
    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / "vae" / "config.json").is_file():
            with out_of_memory_advice(self.cfg, "vae", int(self.cfg["vae_batch_size"]), self.device_name):
                self.train_vae(ckpts.latest_checkpoint(self.out, "vae"))
        with out_of_memory_advice(self.cfg, "unet", int(self.cfg["unet_batch_size"]), self.device_name):
            self.train_unet(ckpts.latest_checkpoint(self.out, "unet"))
        if process_rank()[0] == 0:
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        return self.out

    # -- stage 1 -------------------------------------------------------------------------
    def vae_kwargs(self) -> dict[str, Any] | None:
        return nets.monai_kwargs("vae", self.cfg["vae"]) if self.dim == "3d" else None

    def train_vae(self, start: ckpts.Checkpoint | None) -> None:
        import torch
        import torch.nn.functional as F

        cfg = self.cfg
        total = int(cfg["vae_steps"])
        torch.manual_seed(int(cfg["seed"]))
        vae = nets.build_vae(self.dim, {**cfg["vae"], "sample_size": cfg["resolution"]})
        nets.use_flash_attention(vae, self.device_name == "cuda")  # MONAI's fused attention on GPUs
        acc = self._accelerator()
        images = self.images()
        opt = torch.optim.Adam(vae.parameters(), lr=float(cfg["vae_lr"]))
        sched = self._lr_scheduler(opt, total, acc.num_processes)
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 7 + 1 + acc.process_index)
        step = 0
        if start is not None:
            step, _ = self._restore(start, {"model": vae}, {"model": opt}, sched, gen, world=acc.num_processes,
                                    rank=acc.process_index, seed=int(cfg["seed"]) * 7 + 1)
            if acc.is_main_process:
                self._trim_log("vae", step)
        vae.train()
        dim = self.dim

        def reconstruct(vae: Any, x: Any) -> tuple[Any, Any, Any]:  # the step as one forward (several processes)
            mean, std = nets.encode(vae, dim, x)
            eps = torch.randn(mean.shape, generator=gen).to(x.device)
            return nets.decode(vae, dim, mean + std * eps), mean, std

        model, opt, sched = acc.prepare(step_module(vae, reconstruct, autocast=False), opt, sched)
        batches = Batches(len(images), int(cfg["vae_batch_size"]), int(cfg["seed"]), acc.process_index, acc.num_processes)
        every = int(cfg["checkpoint_every"])
        kl_w = float(cfg["kl_weight"])
        while step < total:
            x = images[batches(step)].to(acc.device)
            rec, mean, std = model(x)
            l1 = F.l1_loss(rec.float(), x.float())
            var = std.float() ** 2
            kl = 0.5 * (mean.float() ** 2 + var - torch.log(var.clamp_min(1e-12)) - 1).flatten(1).sum(1).mean()
            loss = l1 + kl_w * kl
            self._optimizer_step(acc, loss, vae.parameters(), opt, sched, clip=None)
            step += 1
            means = self._mean_over_processes(acc, {"loss": loss, "l1": l1, "kl": kl})
            if acc.is_main_process:
                self._log({"stage": "vae", "step": step, **means, "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 1 (autoencoder) L1 {means['l1']:.4f}")
            if every > 0 and step % every == 0 and step < total:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._save_checkpoint("vae", step, {"model": vae.state_dict()}, {"model": opt}, sched, gen)
        acc.wait_for_everyone()
        if not acc.is_main_process:  # the main process writes vae/; the others wait for it
            acc.wait_for_everyone()
            acc.free_memory()
            return
        vae = vae.eval()
        with torch.no_grad():
            lat = torch.cat([nets.encode(vae, self.dim, images[i : i + 8].to(acc.device))[0] for i in range(0, min(64, len(images)), 8)])
            rec = nets.decode(vae, self.dim, nets.encode(vae, self.dim, images[:4].to(acc.device))[0])
        std = float(lat.float().std())
        self.scaling_factor = 1.0 / std if std > 1e-8 else 1.0
        self._save_validation("vae", images[:4], rec)
        tmp = self.out / ".tmp-vae"
        shutil.rmtree(tmp, ignore_errors=True)
        nets.save(vae, self.dim, "vae", tmp, self.vae_kwargs())
        meta = {"scaling_factor": self.scaling_factor, "latent_shape": [int(s) for s in lat.shape[1:]]}
        (tmp / "brainsynth-latent.json").write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(self.out / "vae", ignore_errors=True)
        os.replace(tmp, self.out / "vae")
        acc.wait_for_everyone()
        acc.free_memory()

    def slice_convention(self) -> str:
        """How the 2D training slices are stored: canonical ("v1") from a dataset, the pairs folder's otherwise."""
        from brainsynth_cli.slices import CONVENTIONS

        return str(self.ts.info.get("slice_convention") or CONVENTIONS[0]) if self.ts.kind == "pairs" else CONVENTIONS[0]

    def _view(self, t: Any) -> Any:
        """A [-1, 1] image tensor as a [0, 1] slice in the display orientation (3D: the middle axial slice)."""
        from brainsynth_cli.figures.orientation import axial_view, stored_view

        a = ((t.detach().float().clamp(-1, 1) + 1) / 2)[0].cpu().numpy()
        return axial_view(a, self.ts.affine) if a.ndim == 3 else stored_view(a, self.slice_convention())

    def _save_validation(self, name: str, real: Any, fake: Any) -> None:
        from brainsynth_cli.figures.comparison import comparison_figure
        from brainsynth_cli.figures.save import save_figure

        where = "middle axial slice" if self.dim == "3d" else "axial slice"
        if name == "vae":
            items = [(f"training image {i + 1} ({where})", self._view(r), self._view(f)) for i, (r, f) in enumerate(zip(real, fake))]
            fig = comparison_figure(items, columns=("real", "reconstruction"), title="autoencoder reconstructions of training images")
        else:
            shown = ("smallest", "median", "largest")
            items = [(f"{shown[i] if i < 3 else i + 1} ventricle volume of the training set ({where})", self._view(r), self._view(f))
                     for i, (r, f) in enumerate(zip(real, fake))]
            fig = comparison_figure(items, columns=("real image", "sample asked for its ventricle volume"), difference=False,
                                    title="samples next to the real images whose ventricle volume they were asked for")
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        save_figure(fig, self.out / "validation" / f"{name}.png")

    # -- stage 2 -------------------------------------------------------------------------
    def unet_kwargs(self, in_ch: int, out_ch: int, ctx_dim: int) -> dict[str, Any] | None:
        if self.dim == "2d":
            return None
        return nets.monai_kwargs("unet", self.cfg["unet"], in_channels=in_ch, out_channels=out_ch, cross_attention_dim=ctx_dim)

    def train_unet(self, start: ckpts.Checkpoint | None) -> None:
        import torch
        import torch.nn.functional as F
        from diffusers import DDPMScheduler

        cfg = self.cfg
        total = int(cfg["unet_steps"])
        vae = nets.load(self.dim, "vae", self.out / "vae").eval()
        nets.use_flash_attention(vae, self.device_name == "cuda")
        vae.requires_grad_(False)
        meta = json.loads((self.out / "vae" / "brainsynth-latent.json").read_text(encoding="utf-8"))
        self.scaling_factor = float(meta["scaling_factor"])
        acc = self._accelerator()
        vae.to(acc.device)
        images = self.images()
        with torch.no_grad():
            latents = torch.cat([nets.encode(vae, self.dim, images[i : i + 8].to(acc.device))[0]
                                 for i in range(0, len(images), 8)]) * self.scaling_factor
        lat_ch = int(latents.shape[1])
        hidden = self.cfg["text_encoder"].get("hidden_size") if self.text else None
        ctx_dim = nets.context_dim(self.condition, hidden)
        in_ch = lat_ch + nets.extra_channels(self.condition)
        torch.manual_seed(int(cfg["seed"]) + 1)
        unet = nets.build_unet(self.dim, cfg["unet"], in_channels=in_ch, out_channels=lat_ch, cross_attention_dim=ctx_dim,
                               sample_size=int(latents.shape[-1]))
        nets.use_flash_attention(unet, self.device_name == "cuda")
        train_attention(unet, acc.device.type)
        noise = DDPMScheduler(**cfg["noise"])
        cov = self.scaled_covariates().to(acc.device)
        # captions: every image's list, embedded once (and the empty prompt, the null condition)
        caps = [it.captions for it in self.ts.items]
        emb = None
        if self.text is not None:
            unique = sorted({c for cs in caps for c in cs} | {""})
            vecs = torch.cat([embed_text(*self.text, unique[i : i + 32], acc.device) for i in range(0, len(unique), 32)])
            emb = {c: vecs[i] for i, c in enumerate(unique)}
        opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg["unet_lr"]))
        sched = self._lr_scheduler(opt, total, acc.num_processes)
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 7 + 2 + acc.process_index)
        step = 0
        if start is not None:
            step, _ = self._restore(start, {"model": unet}, {"model": opt}, sched, gen, world=acc.num_processes,
                                    rank=acc.process_index, seed=int(cfg["seed"]) * 7 + 2)
            if acc.is_main_process:
                self._trim_log("unet", step)
        if cfg["gradient_checkpointing"] and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        unet.train()
        unet, opt, sched = acc.prepare(unet, opt, sched)
        batches = Batches(len(images), int(cfg["unet_batch_size"]), int(cfg["seed"]) + 1, acc.process_index, acc.num_processes)
        every = int(cfg["checkpoint_every"])
        drop = float(cfg["conditioning_dropout"])
        T = int(noise.config.num_train_timesteps)
        while step < total:
            idx = batches(step)
            z0 = latents[idx]
            eps = torch.randn(z0.shape, generator=gen).to(acc.device)
            t = torch.randint(0, T, (len(idx),), generator=gen).to(acc.device)
            u = torch.rand(len(idx), generator=gen)
            pick = torch.randint(0, 1 << 30, (len(idx),), generator=gen).tolist()
            dropped = (u < drop).to(acc.device)
            c = cov[idx].clone()
            c[dropped] = nets.NULL_COVARIATE
            text = None
            if emb is not None:
                text = torch.stack([emb[""] if bool(dropped[j]) else emb[caps[i][pick[j] % len(caps[i])]]
                                    for j, i in enumerate(idx)])
            ctx = nets.build_context(self.condition, text, c)
            x = nets.with_covariate_maps(self.condition, noise.add_noise(z0, eps, t), c)
            with acc.autocast():
                pred = nets.denoise(unet, self.dim, x, t, ctx)
            loss = F.mse_loss(pred.float(), eps.float())
            self._optimizer_step(acc, loss, unet.parameters(), opt, sched)
            step += 1
            mean_loss = self._mean_over_processes(acc, {"loss": loss})["loss"]
            if acc.is_main_process:
                self._log({"stage": "unet", "step": step, "loss": mean_loss, "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 2 (unet) loss {mean_loss:.4f}")
            if every > 0 and step % every == 0 and step < total:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._save_checkpoint("unet", step, {"model": acc.unwrap_model(unet).state_dict()}, {"model": opt}, sched, gen)
        acc.wait_for_everyone()
        if acc.is_main_process:
            unet = acc.unwrap_model(unet).eval()
            self.save_model(unet, noise, lat_ch, [int(s) for s in latents.shape[2:]], in_ch, ctx_dim)
        acc.free_memory()
        if acc.is_main_process:
            self.validate_samples(int(cfg["validation_steps"]))
        acc.wait_for_everyone()

    def validate_samples(self, steps: int = 20) -> None:
        """``validation/samples.png``: one sample per requested ventricle volume (min, median, max), next to real images."""
        import numpy as np
        import torch

        from brainsynth_plugins.ldm.model import LDMModel

        model = LDMModel(self.out, self.device_name, text=self.text)
        lo, hi = self.ranges["ventricle_volume"]
        values = [lo, self.medians["ventricle_volume"], hi]
        imgs = model.sample([model.condition(None, ventricle_volume=v) for v in values], [int(self.cfg["seed"])] * 3,
                            steps=steps, batch_size=3)
        real = [np.pad(self.ts.items[int(i)].image, self.padding)
                for i in np.argsort([it.volumes.get("ventricle", 0.0) for it in self.ts.items])[[0, len(self.ts.items) // 2, -1]]]
        fake = [np.pad(x, self.padding) for x in imgs]
        self._save_validation("samples", [torch.from_numpy(r)[None] * 2 - 1 for r in real],
                              [torch.from_numpy(f)[None] * 2 - 1 for f in fake])

    def save_model(self, unet: Any, noise: Any, lat_ch: int, lat_shape: list[int], in_ch: int, ctx_dim: int) -> None:
        import numpy as np

        from brainsynth_cli import __version__

        tmp = self.out / ".tmp-unet"
        shutil.rmtree(tmp, ignore_errors=True)
        nets.save(unet, self.dim, "unet", tmp, self.unet_kwargs(in_ch, lat_ch, ctx_dim))
        shutil.rmtree(self.out / "unet", ignore_errors=True)
        os.replace(tmp, self.out / "unet")
        noise.save_pretrained(self.out / "scheduler")
        vols: dict[str, list[float]] = {}
        for it in self.ts.items:
            for g, v in it.volumes.items():
                vols.setdefault(g, []).append(float(v))
        if self.dim == "3d":
            image = {"shape": list(self.ts.grid_shape), "affine": np.asarray(self.ts.affine).tolist(), "voxel_mm": self.cfg["voxel_mm"],
                     "padding": [list(p) for p in self.padding], "grid": "template" if self.ts.kind == "dataset" else "pairs images"}
        else:
            pixels = [it.pixel_mm for it in self.ts.items if it.pixel_mm]
            image = {"resolution": self.cfg["resolution"], "pixel_mm": float(np.median(pixels)) if pixels else None,
                     "slice": ("canonical axial slice through the largest lateral-ventricle extent" if self.ts.kind == "dataset"
                               else "the pairs folder's axial slices") + f" ({self.slice_convention()})",
                     "slice_convention": self.slice_convention(),
                     "padding": [[0, 0], [0, 0]]}
        te = self.cfg["text_encoder"] if self.text is not None else None
        info = {
            "format": "brainsynth-model", "version": 1, "generator": "ldm", "task": "generate", "brainsynth": __version__,
            "dim": self.dim, "condition": self.condition, "preset": self.cfg["preset"],
            "image": image,
            "intensity": {"method": "percentile-0.5-99.5-nonzero window", "model_range": [-1, 1], "output_range": [0, 1]},
            "latent": {"channels": lat_ch, "shape": lat_shape, "scaling_factor": self.scaling_factor},
            "covariates": {"names": list(COVARIATES), "ranges": self.ranges, "medians": self.medians,
                           "sex_coding": {"F": 0, "M": 1}, "scaling": "min-max to [0, 1] with the training ranges",
                           "null": nets.NULL_COVARIATE, "units": {"age": "years", "sex": "F=0 M=1",
                                                                  "ventricle_volume": "mm3", "brain_volume": "mm3"}},
            "volume_medians": {g: float(np.median(v)) for g, v in vols.items()},
            "conditioning": {"cross_attention_dim": ctx_dim, "concatenated_channels": nets.extra_channels(self.condition)},
            "text_encoder": te,
            "noise_scheduler": dict(noise.config),
            "training": {k: self.cfg[k] for k in ("seed", "vae_steps", "unet_steps", "vae_lr", "unet_lr", "vae_batch_size",
                                                  "unet_batch_size", "conditioning_dropout", "captions_per_image", "kl_weight",
                                                  "mixed_precision", "resolution", "voxel_mm", "validation_steps")},
            "data": {"path": self.cfg["data"], "labels": self.cfg.get("labels") or self.ts.info.get("labels"), "kind": self.ts.kind,
                     "images": len(self.ts.items), "subjects": len({it.subject for it in self.ts.items}),
                     "run": self.cfg.get("run")},
        }
        tmp_info = self.out / f".{INFO}.tmp"
        tmp_info.write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.replace(tmp_info, self.out / INFO)
