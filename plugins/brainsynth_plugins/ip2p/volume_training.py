"""Training the 3D InstructPix2Pix model (``brainsynth train PAIRS --dim 3d``) on make-pairs' 3D pairs.

Stage 1 trains MONAI's 3D ``AutoencoderKL`` on every prior and target volume of the training
split (L1 + ``kl_weight`` KL); stage 2 trains MONAI's ``DiffusionModelUNet`` on (noisy target
latent, prior latent) with the prompt by cross-attention. What is the same as the 2D trainer is
shared with it: the staged trainer (accelerator, LR schedule, loss log, checkpoints), batches as
a pure function of (seed, step), the three-way conditioning dropout, the prior-latent convention
(posterior mode, unscaled; targets diffused on mode x scaling factor), the objective and
timestep sampling, the loss weighted inside the prompt's structures.

Volumes are resampled once onto the model's grid (:mod:`.volume_nets`), the pair's prior and
target on the prior's box. Every random draw comes from one CPU generator per stage whose state
is checkpointed; on the CPU the algorithms are deterministic, so the same seed gives the same
weights, byte for byte.
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
from brainsynth_cli.limits import check_settings
from brainsynth_cli.pairs_folder import PairsFolder, read_pairs_folder
from brainsynth_plugins.ip2p import volume_augment as aug
from brainsynth_plugins.ip2p import volume_nets as vn
from brainsynth_plugins.ip2p import volume_text as vt
from brainsynth_plugins.ip2p.data import trained_intervals, trained_prompts
from brainsynth_plugins.ip2p.volume_presets import VOLUME_COMMON, VOLUME_PRESETS, VOLUME_SETTINGS
from brainsynth_plugins.training_core import checkpoints as ckpts
from brainsynth_plugins.training_core import run_folder
from brainsynth_plugins.training_core.batches import Batches, PriorGroups
from brainsynth_plugins.training_core.conditioning import drop_conditioning
from brainsynth_plugins.training_core.config import apply_overrides, check_blender, sizes_must_fit
from brainsynth_plugins.training_core.memory import out_of_memory_advice
from brainsynth_plugins.training_core.runtime import deterministic_on_cpu, quiet, resolve_mixed_precision
from brainsynth_plugins.training_core.trainer import StagedTrainer

NIFTI = (".nii", ".nii.gz")
KINDS = ("real", "disentangled", "deformed")  # make-pairs' row kinds


# ---------------------------------------------------------------------------------------------
# configuration and data
# ---------------------------------------------------------------------------------------------
def build_config(options: TrainOptions) -> dict[str, Any]:
    """3D preset + command-line options + ``--set`` overrides -> the run's configuration."""
    ex = dict(options.extra)
    preset = ex.get("preset") or "tiny"
    if preset not in VOLUME_PRESETS:
        raise UserError(f"unknown preset {preset!r} for --dim 3d; available: {', '.join(VOLUME_PRESETS)}")
    if ex.get("pretrained"):
        raise UserError("--dim 3d trains from scratch (there is no pretrained 3D InstructPix2Pix); leave out --pretrained")
    if ex.get("channels") not in (None, 1):
        raise UserError("--dim 3d models grey volumes; leave out --channels (or give 1)")
    if ex.get("resolution") is not None:
        raise UserError("--resolution is for 2D slices; a 3D model's grid is --set voxel_mm=MM and --set grid=X,Y,Z")
    if (ex.get("stage") or "all") != "all":
        raise UserError("--dim 3d trains both stages in one run (resume with --resume); leave out --stage")
    if ex.get("ema"):
        raise UserError("--ema is not supported with --dim 3d yet; leave it out")
    if ex.get("run") is not None:
        raise UserError("--run picks T1w runs of a dataset (--task generate); for edit pairs give it to make-pairs")
    cfg: dict[str, Any] = copy.deepcopy({**VOLUME_COMMON, **VOLUME_PRESETS[preset]})
    cfg.update({"preset": preset, "dim": "3d", "seed": int(options.seed), "data": str(Path(options.data).resolve()),
                "epochs": ex.get("epochs")})
    if ex.get("steps") is not None:
        cfg["vae_steps"] = cfg["unet_steps"] = int(ex["steps"])
    if ex.get("batch_size") is not None:
        cfg["vae_batch_size"] = cfg["unet_batch_size"] = int(ex["batch_size"])
    if ex.get("lr") is not None:
        cfg["unet_lr"] = float(ex["lr"])
    for key in ("mixed_precision", "conditioning_dropout", "checkpoint_every"):
        if ex.get(key) is not None:
            cfg[key] = ex[key]
    if ex.get("gradient_checkpointing"):
        cfg["gradient_checkpointing"] = True
    te = ex.get("text_encoder") or "minilm"
    cfg["text_encoder"] = {"name": te, "path": str(ex["text_encoder_path"]) if ex.get("text_encoder_path") else None}
    apply_overrides(cfg, ex.get("set") or {}, fixed=("data", "dim", "seed", "text_encoder", "preset"))
    for part in ("vae", "unet"):  # "--set vae.channels=16" means a one-level list
        for key in ("channels", "attention_levels"):
            if key in cfg[part] and not isinstance(cfg[part][key], list):
                cfg[part][key] = [cfg[part][key]]
    if not isinstance(cfg["grid"], list):
        cfg["grid"] = [cfg["grid"]] * 3
    if not isinstance(cfg["unet_kinds"], list):
        cfg["unet_kinds"] = [cfg["unet_kinds"]]
    check_settings(cfg, VOLUME_SETTINGS, nested=("vae", "unet"))
    check_blender(cfg)
    cfg["grid"] = [int(g) for g in cfg["grid"]]
    cfg["voxel_mm"] = float(cfg["voxel_mm"])
    for part in ("vae", "unet"):
        levels = cfg[part].get("attention_levels")
        if levels is not None and len(levels) != len(cfg[part]["channels"]):
            raise UserError(f"{part}.attention_levels has {len(levels)} entries but {part}.channels {len(cfg[part]['channels'])}; give as many")
    unknown = [k for k in cfg["unet_kinds"] if k not in KINDS]
    if unknown:
        raise UserError(f"--set unet_kinds: unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    if cfg["unet"].get("prior_skip") and cfg["prediction_type"] != "sample":
        raise UserError(f"unet.prior_skip=true needs prediction_type=sample (the skip adds the prior's latent to "
                        f"the predicted clean latent), not {cfg['prediction_type']}: add --set prediction_type=sample, "
                        "or --set unet.prior_skip=false")
    multiple = vn.factor(cfg["vae"]) * vn.factor(cfg["unet"])
    if any(g % multiple for g in cfg["grid"]):
        raise UserError(f"--set grid={','.join(map(str, cfg['grid']))}: each size must be a multiple of {multiple} "
                        "(the autoencoder's and the UNet's downsampling)")
    return cfg


def read_volume_pairs(root: str | Path) -> PairsFolder:
    """A pairs folder of 3D NIfTI pairs (``make-pairs --dim 3d``) with label maps and a training split."""
    folder = read_pairs_folder(root)
    if folder.dim != "3d":
        raise InputError(folder.root, f"holds {folder.dim} pairs", "train without --dim 3d, or run make-pairs with --dim 3d")
    for row in folder.rows:
        for f in (row.prior, row.target):
            if not f.name.lower().endswith(NIFTI):
                raise InputError(f, "is not a NIfTI volume", "--dim 3d trains on the volumes of make-pairs --dim 3d")
        if row.path("input_labels_file_name") is None:
            raise InputError(folder.root / "metadata.jsonl", f"line {row.number} has no input_labels_file_name",
                             "re-run make-pairs --dim 3d (it writes a label map with every prior)")
    if not folder.split("train"):
        raise InputError(folder.root / "metadata.jsonl", "has no rows with split \"train\"",
                         "re-run make-pairs with a split that leaves training subjects")
    return folder


def read_canonical(path: Path, labels: bool = False) -> tuple[Any, tuple[float, ...]]:
    """A volume (or label map) in its canonical RAS voxel frame, as ``edit`` reads its input, and its voxel size."""
    import numpy as np

    from brainsynth_cli.images import read_labels, read_volume
    from brainsynth_cli.slices import to_canonical

    vol = read_labels(path) if labels else read_volume(path)
    canon, ornt = to_canonical(vol.data, vol.affine)
    spacing = tuple(float(vol.voxel_size[int(ax)]) for ax in ornt[:, 0])
    return (np.asarray(canon) if labels else np.asarray(canon, np.float32)), spacing


def train(options: TrainOptions, progress: Progress | None = None) -> Path:
    """Validate everything (options, sizes, every volume), write ``checkpoints/run.json``, train both
    stages (or ``--resume``); returns the model folder."""
    from brainsynth_cli.launch import process_rank

    if process_rank()[1] > 1:
        raise UserError("--dim 3d trains on one process: run `brainsynth train` without accelerate launch or torchrun "
                        "(several processes train 2D models)")
    out = Path(options.output)
    progress = progress or (lambda done, total, message="": None)
    cfg = run_folder.new_or_resumed(out, options.resume, lambda: build_config(options))
    pairs = read_volume_pairs(cfg["data"])
    trainer = VolumeTrainer(cfg, out, pairs, device=options.device, progress=progress)
    # prompt groups asked for by --set (or recorded by a run being resumed) are required; the preset's may fall back
    asked = options.extra.get("set") or {}
    trainer.check(groups_required=bool(options.resume) or "unet_batching" in asked,
                  kinds_required=bool(options.resume) or "unet_kinds" in asked)
    trainer.load_volumes()  # every volume read now: a bad one fails before anything is written
    if not options.resume:
        with sizes_must_fit():
            vn.build_vae(cfg["vae"])
            vn.build_unet(cfg["unet"], int(cfg["vae"]["latent_channels"]), trainer.text_width)
        run_folder.write_run(out, cfg)
    return trainer.run(options.resume)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class VolumeTrainer(StagedTrainer):
    LOSS_FIELDS = ("stage", "step", "loss", "l1", "kl", "lr")

    def __init__(self, cfg: dict[str, Any], out: Path, pairs: PairsFolder, *, device: str, progress: Progress) -> None:
        super().__init__(cfg, out, device=device, progress=progress)
        self.pairs = pairs
        self.train_pairs = pairs.split("train")  # stage 1 learns every training image
        # stage 2 learns from the training rows of the kinds in unet_kinds (all three by default)
        self.unet_pairs = [r for r in self.train_pairs if r.kind in cfg.get("unet_kinds", KINDS)]
        self.val_pairs = pairs.split("validation")
        self.grid = tuple(int(g) for g in cfg["grid"])
        self.images: dict[Path, Any] = {}  # model-grid volumes in [0, 1]
        self.regions: dict[int, Any] = {}  # training row index -> region mask on the model grid

    def check(self, groups_required: bool = False, kinds_required: bool = False) -> None:
        """Load the text encoder and settle what depends on the pairs. ``groups_required`` false: a
        preset's ``unet_batching=prompt-groups`` on pairs without a prior under two prompts falls
        back to random batches, with a warning (recorded in the run's configuration).
        ``kinds_required`` false: a preset's ``unet_kinds`` the pairs have no training row of fall
        back to every kind they have, with a warning (recorded too)."""
        from brainsynth_plugins.ldm.model import load_text_encoder

        quiet()
        te = self.cfg["text_encoder"]
        self.tokenizer, self.text_model = load_text_encoder({"name": te["name"], "path": te["path"]})
        self.text_width = int(self.text_model.config.hidden_size)
        te["hidden_size"], te["max_length"] = self.text_width, int(self.tokenizer.model_max_length)
        self.cfg["mixed_precision"] = resolve_mixed_precision(self.cfg["mixed_precision"], self.device_name)
        fallbacks: list[str] = []  # warned about once every check has passed: an error stays one line
        meta = self.pairs.root / "metadata.jsonl"
        if not self.unet_pairs and not kinds_required and self.train_pairs:  # the preset's kinds fall back
            have = [k for k in KINDS if any(r.kind == k for r in self.train_pairs)]
            fallbacks.append(f"{meta}: no training row of the kinds the preset learns from "
                             f"({', '.join(self.cfg['unet_kinds'])}), so stage 2 learns from the {' and '.join(have)} rows; "
                             "the preset was measured on deformed targets (make the pairs with make-pairs --deformed)")
            self.cfg["unet_kinds"] = have
            self.unet_pairs = [r for r in self.train_pairs if r.kind in have]
        if not self.unet_pairs:
            kinds = ", ".join(sorted({r.kind for r in self.train_pairs})) or "none"
            raise InputError(meta,
                             f"has no training row of the kinds in unet_kinds ({', '.join(self.cfg['unet_kinds'])}; it has: {kinds})",
                             "give --set unet_kinds= the kinds it has, or make the pairs with make-pairs --deformed")
        if self.cfg.get("unet_batching") == "prompt-groups":  # settled now, before stage 1
            try:
                PriorGroups(self.unet_pairs, int(self.cfg["unet_batch_size"]), int(self.cfg["seed"]))
            except UserError:
                if groups_required:
                    raise
                fallbacks.append(f"{meta}: no prior has pairs under two or more prompts, so stage 2 uses random "
                                 "batches, which do not teach the prompt's size (make the pairs with make-pairs --deformed)")
                self.cfg["unet_batching"] = "random"
        for line in fallbacks:
            logging.getLogger(__name__).warning("%s", line)
        if self.cfg.get("epochs"):
            n_img = len({p.prior for p in self.train_pairs} | {p.target for p in self.train_pairs})
            self.cfg["vae_steps"] = math.ceil(float(self.cfg["epochs"]) * n_img / int(self.cfg["vae_batch_size"]))
            self.cfg["unet_steps"] = math.ceil(float(self.cfg["epochs"]) * len(self.unet_pairs) / int(self.cfg["unet_batch_size"]))
            self.cfg["epochs"] = None

    # -- data --------------------------------------------------------------------------------
    def load_volumes(self) -> None:
        """Every pair's prior and target on the prior's box of the model grid; the training rows'
        loss regions (the structures each prompt names, dilated by ``region_margin_mm``)."""
        import numpy as np

        from brainsynth_cli.edit_path import region
        from brainsynth_cli.structures import default_rules, rules_from_text

        rules = rules_from_text(self.pairs.info["rules"], "pairs.json rules") if self.pairs.info.get("rules") else default_rules()
        lam = float(self.cfg.get("region_weight") or 0.0)
        train_index = {r.number: i for i, r in enumerate(self.unet_pairs)}
        current: tuple[Path, Path] | None = None  # rows share priors (real, disentangled, deformed): each is read once
        for row in sorted(self.pairs.rows, key=lambda r: (str(r.prior), str(r.path("input_labels_file_name")), r.number)):
            if (row.prior, row.path("input_labels_file_name")) != current:
                current = (row.prior, row.path("input_labels_file_name"))
                prior, spacing = read_canonical(row.prior)
                labels, _ = read_canonical(current[1], labels=True)
                if labels.shape != prior.shape:
                    raise InputError(row.path("input_labels_file_name"), f"has shape {labels.shape} but its image {prior.shape}",
                                     "re-run make-pairs --dim 3d")
                box, self.images[row.prior] = vn.model_view(prior, labels, spacing, self.grid, self.cfg["voxel_mm"])
            target, _ = read_canonical(row.target)
            if target.shape != prior.shape:
                raise InputError(row.target, f"has shape {target.shape} but its prior {prior.shape}", "re-run make-pairs --dim 3d")
            self.images[row.target] = np.clip(box.to_model(target), 0, 1)
            if lam > 0 and row.number in train_index:
                names = [k for k, v in (row.data.get("intervals") or {}).items() if v and k in rules.names()]
                m = region(labels, [rules[n] for n in names], spacing, float(self.cfg["region_margin_mm"])) if names else np.zeros(labels.shape, bool)
                self.regions[train_index[row.number]] = box.to_model(m.astype(np.float32), order=1) > 0.5

    def tensor(self, paths: list[Path]) -> Any:
        import numpy as np
        import torch

        return torch.from_numpy(np.stack([self.images[p] for p in paths]))[:, None] * 2 - 1

    # -- run ---------------------------------------------------------------------------------
    def run(self, resume: bool) -> Path:

        with deterministic_on_cpu(self.device_name):
            self.out.mkdir(parents=True, exist_ok=True)
            if resume:
                for stage in ckpts.STAGES:
                    if stage == "vae" and (self.out / "vae" / "config.json").is_file():
                        continue
                    start = ckpts.latest_checkpoint(self.out, stage)
                    self._trim_log(stage, start.step if start is not None else 0)
                    break
            if not (self.out / "vae" / "config.json").is_file():
                with out_of_memory_advice(self.cfg, "vae", int(self.cfg["vae_batch_size"]), self.device_name):
                    self.train_vae(ckpts.latest_checkpoint(self.out, "vae") if resume else None)
            with out_of_memory_advice(self.cfg, "unet", int(self.cfg["unet_batch_size"]), self.device_name):
                self.train_unet(ckpts.latest_checkpoint(self.out, "unet") if resume else None)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
            return self.out

    # -- stage 1 -----------------------------------------------------------------------------
    def train_vae(self, start: ckpts.Checkpoint | None) -> None:
        import torch
        import torch.nn.functional as F

        cfg = self.cfg
        total = int(cfg["vae_steps"])
        paths = sorted({p.prior for p in self.train_pairs} | {p.target for p in self.train_pairs})
        torch.manual_seed(int(cfg["seed"]))
        vae = vn.build_vae(cfg["vae"])
        vn.nets.use_flash_attention(vae, self.device_name == "cuda")  # MONAI's fused attention on GPUs
        acc = self._accelerator()
        opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg["vae_lr"]))
        sched = self._lr_scheduler(opt, total, name=cfg.get("vae_lr_scheduler"))
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 7 + 1)
        step = 0
        if start is not None:
            step, _ = self._restore(start, {"model": vae}, {"model": opt}, sched, gen)
        vae.train()
        vae, opt, sched = acc.prepare(vae, opt, sched)
        batches = Batches(len(paths), int(cfg["vae_batch_size"]), int(cfg["seed"]))
        every = int(cfg["checkpoint_every"])
        kl_w = float(cfg["kl_weight"])
        sample = (cfg.get("vae_latent") or "sample") == "sample"
        curves = int(cfg.get("intensity_curves") or 0)
        while step < total:
            picked = batches(step)
            if curves:  # each image through one of its curves (or none), as stage 2 will see it
                ks = aug.step_choice(int(cfg["seed"]), step, len(picked), curves, together=False)
                x = self._through_curves([paths[i] for i in picked], list(picked), ks).to(acc.device)
            else:
                x = self.tensor([paths[i] for i in picked]).to(acc.device)
            with acc.autocast():
                mean, std = vn.nets.encode(acc.unwrap_model(vae), vn.DIM, x)
                eps = torch.randn(mean.shape, generator=gen).to(acc.device)
                z = mean + std * eps if sample else mean  # "mode": the deterministic latent the UNet sees
                rec = vn.decode(acc.unwrap_model(vae), z)
            l1 = F.l1_loss(rec.float(), x.float())
            var = std.float() ** 2
            kl = 0.5 * (mean.float() ** 2 + var - torch.log(var.clamp_min(1e-12)) - 1).flatten(1).sum(1).mean()
            loss = l1 + kl_w * kl
            self._optimizer_step(acc, loss, vae.parameters(), opt, sched)
            step += 1
            self._log({"stage": "vae", "step": step, "loss": float(loss.detach()), "l1": float(l1.detach()),
                       "kl": float(kl.detach()), "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 1 (3D autoencoder) L1 {float(l1.detach()):.4f}")
            if every > 0 and step % every == 0 and step < total:
                self._save_checkpoint("vae", step, {"model": acc.unwrap_model(vae).state_dict()}, {"model": opt}, sched, gen)
        vae = acc.unwrap_model(vae).eval()
        with torch.no_grad():
            lat = torch.cat([vn.volume_conditioning(vae, self.tensor(paths[i : i + 4]).to(acc.device))
                             for i in range(0, min(32, len(paths)), 4)])
        std = float(lat.float().std())
        scaling = 1.0 / std if std > 1e-8 else 1.0
        tmp = self.out / ".tmp-vae"
        shutil.rmtree(tmp, ignore_errors=True)
        vn.nets.save(vae, vn.DIM, "vae", tmp, vn.vae_kwargs(cfg["vae"]))
        meta = {"scaling_factor": scaling, "latent_shape": [int(s) for s in lat.shape[1:]]}
        (tmp / "brainsynth-latent.json").write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(self.out / "vae", ignore_errors=True)
        os.replace(tmp, self.out / "vae")
        self.validate_vae(vae)
        acc.free_memory()

    def _validation_rows(self) -> list[Any]:
        from brainsynth_plugins.ip2p.training import one_per_prompt

        return one_per_prompt(self.val_pairs or self.train_pairs, int(self.cfg["validation_count"]))

    @staticmethod
    def _shown(volume: Any) -> Any:
        """The middle axial slice of a model-grid volume (canonical axes), in the display orientation."""
        from brainsynth_cli.figures.orientation import display

        return display(volume[:, :, volume.shape[2] // 2])

    def validate_vae(self, vae: Any) -> None:
        """``validation/vae.png``: validation priors and their reconstructions D(E(x)), middle axial slice of the model grid."""
        import torch

        from brainsynth_cli.figures.comparison import comparison_figure
        from brainsynth_cli.figures.save import save_figure

        rows = self._validation_rows()
        if not rows:
            return
        device = next(vae.parameters()).device
        items = []
        with torch.no_grad():
            for r in rows:
                x = self.tensor([r.prior]).to(device)
                rec = ((vn.decode(vae, vn.volume_conditioning(vae, x)).float() + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy()
                items.append((f"{r.subject}: {r.prior.parent.name} prior (middle axial slice)", self._shown(self.images[r.prior]), self._shown(rec)))
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        save_figure(comparison_figure(items, columns=("input", "reconstruction"),
                                      title="3D autoencoder: validation priors and their reconstructions"),
                    self.out / "validation" / "vae.png")

    def validate_unet(self) -> None:
        """``validation/unet.png``: validation pairs edited by the saved model as ``edit`` runs it (no
        restriction), the middle axial slice of the model grid: prior, edit, target."""
        import numpy as np

        from brainsynth_cli.edit_montage import EditRow, edit_montage
        from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

        rows = self._validation_rows()
        if not rows:
            return
        model = VolumeIP2PModel(self.out, self.device_name, text=(self.tokenizer, self.text_model))
        shown = []
        for i, r in enumerate(rows):
            vol, spacing = read_canonical(r.prior)
            lab, _ = read_canonical(r.path("input_labels_file_name"), labels=True)
            out = model.edit([vol], r.prompt, labels=[lab], spacing=spacing, steps=int(self.cfg["validation_steps"]),
                             guidance_scale=float(self.cfg["guidance_scale"]), image_guidance_scale=float(self.cfg["image_guidance_scale"]),
                             guidance_reference=str(self.cfg["guidance_reference"]), seed=int(self.cfg["seed"]) + i)[0]
            _, seen = vn.model_view(np.asarray(out, np.float32), lab, spacing, self.grid, self.cfg["voxel_mm"])
            shown.append(EditRow(title=r.prompt, prior=self._shown(self.images[r.prior]), edited=self._shown(seen),
                                 target=self._shown(self.images[r.target]), note=f"{r.subject}, middle axial slice of the model grid"))
        (self.out / "validation").mkdir(parents=True, exist_ok=True)
        edit_montage(self.out / "validation" / "unet.png", shown,
                     title=f"validation edits after {self.cfg['unet_steps']} UNet steps (residual decoding, no restriction)")

    def vae_reconstruction(self, vae: Any) -> dict[str, Any]:
        """PSNR and SSIM of D(E(x)) against x on the validation split's volumes (train split if it
        has none), on the model grid: the ceiling of an edit that decodes whole volumes."""
        import numpy as np
        import torch

        from brainsynth_plugins.evaluate import metrics

        rows = self.val_pairs
        split = "validation" if rows else "train"
        paths = sorted({p.prior for p in (rows or self.train_pairs)} | {p.target for p in (rows or self.train_pairs)})[:32]
        psnr, ssim = [], []
        device = next(vae.parameters()).device
        with torch.no_grad():
            for p in paths:
                x = self.tensor([p]).to(device)
                rec = vn.decode(vae, vn.volume_conditioning(vae, x)).float()
                a = ((x + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy()
                b = ((rec + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy()
                psnr.append(metrics.psnr(a, b, 1.0))
                ssim.append(metrics.ssim(a, b, 1.0))
        return {"split": split, "volumes": len(paths), "grid": list(self.grid), "psnr": round(float(np.mean(psnr)), 3),
                "ssim": round(float(np.mean(ssim)), 4)}

    # -- stage 2 -----------------------------------------------------------------------------
    def noise_scheduler(self) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             prediction_type=str(self.cfg["prediction_type"]), clip_sample=False, timestep_spacing="trailing")

    def train_unet(self, start: ckpts.Checkpoint | None) -> None:
        import torch

        from brainsynth_plugins.ip2p.training import diffusion_target, training_timesteps

        cfg = self.cfg
        total = int(cfg["unet_steps"])
        vae = vn.nets.load(vn.DIM, "vae", self.out / "vae").eval()
        vn.nets.use_flash_attention(vae, self.device_name == "cuda")
        vae.requires_grad_(False)
        scale = float(json.loads((self.out / "vae" / "brainsynth-latent.json").read_text(encoding="utf-8"))["scaling_factor"])
        acc = self._accelerator()
        vae.to(acc.device)
        # latents once, in a fixed order: the posterior mode, unscaled (the prior's conditioning, as edit builds it)
        paths = sorted({p.prior for p in self.unet_pairs + self.val_pairs} | {p.target for p in self.unet_pairs})
        latents = self.latents(vae, paths, acc.device)
        curves = int(cfg.get("intensity_curves") or 0)
        curved = self.curved_latents(vae, curves, acc.device) if curves else {}
        lat_ch = int(cfg["vae"]["latent_channels"])
        prompts = sorted({p.prompt for p in self.pairs.rows}) + [""]
        vecs = vn.embed_prompts(self.tokenizer, self.text_model, prompts, acc.device)
        emb = {p: vecs[i] for i, p in enumerate(prompts)}
        null = emb[""]
        weights = self._loss_weights(latents[self.unet_pairs[0].prior].shape[1:], acc.device)
        torch.manual_seed(int(cfg["seed"]) + 1)
        unet = vn.build_unet(cfg["unet"], lat_ch, self.text_width)
        if cfg["unet"].get("centre_text"):  # on every prompt of the pairs folder (not the empty one), as saved with the weights
            vn.centre_text(unet, torch.stack([emb[p] for p in prompts if p]).cpu())
        if cfg["unet"].get("prior_skip"):  # the network models the change; zero output = the input unchanged
            vn.add_prior_skip(unet, scale)
        vn.nets.use_flash_attention(unet, self.device_name == "cuda")
        noise_sched = self.noise_scheduler()
        opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg["unet_lr"]))
        sched = self._lr_scheduler(opt, total)
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 7 + 2)
        step = 0
        if start is not None:
            step, _ = self._restore(start, {"model": unet}, {"model": opt}, sched, gen)
        if cfg["gradient_checkpointing"]:
            _checkpoint_blocks(unet)
        unet.train()
        unet, opt, sched = acc.prepare(unet, opt, sched)
        randomly = Batches(len(self.unet_pairs), int(cfg["unet_batch_size"]), int(cfg["seed"]))
        groups = PriorGroups(self.unet_pairs, int(cfg["unet_batch_size"]), int(cfg["seed"])) \
            if cfg.get("unet_batching") == "prompt-groups" else None
        groups_from = math.ceil(float(cfg.get("unet_groups_from") or 0.0) * total) if groups is not None else total
        every = int(cfg["checkpoint_every"])
        drop = float(cfg["conditioning_dropout"])
        T = int(noise_sched.config.num_train_timesteps)
        while step < total:
            grouped = step >= groups_from  # random batches first (anatomy), then prompt groups (the prompt's size)
            picked = groups(step) if grouped else randomly(step)
            rows = [self.unet_pairs[i] for i in picked]
            ks = aug.step_choice(int(cfg["seed"]), step, len(rows), curves, together=grouped) if curves else [0] * len(rows)
            target = torch.stack([curved[(r.target, k)] if k else latents[r.target] for r, k in zip(rows, ks)]) * scale
            prior = torch.stack([curved[(r.prior, k)] if k else latents[r.prior] for r, k in zip(rows, ks)])
            text = torch.stack([emb[r.prompt] for r in rows])
            if grouped:  # one noise draw and one timestep for the whole group: the rows differ by prompt and target only
                noise = torch.randn((1, *target.shape[1:]), generator=gen).expand_as(target).contiguous().to(acc.device)
                t = training_timesteps(str(cfg["timestep_sampling"]), T, 1, gen, "cpu").repeat(len(rows)).to(acc.device)
            else:
                noise = torch.randn(target.shape, generator=gen).to(acc.device)
                t = training_timesteps(str(cfg["timestep_sampling"]), T, len(rows), gen, "cpu").to(acc.device)
            noisy = noise_sched.add_noise(target, noise, t)
            if drop > 0:  # InstructPix2Pix: drop text, both, image (each with probability `drop`), as in 2D
                text, prior = drop_conditioning(text, prior, null, drop, gen)
            with acc.autocast():
                pred = vn.unet_forward(unet, noisy, prior.to(acc.device), t, text.to(acc.device))
            err = (pred.float() - diffusion_target(noise_sched, target, noise, t).float()) ** 2
            if weights is None:
                loss = err.mean()
            else:  # the named structures' region counts 1 + region_weight times (as in 2D)
                w = weights[picked]
                loss = (err * w).mean() / w.mean()
            self._optimizer_step(acc, loss, unet.parameters(), opt, sched)
            step += 1
            self._log({"stage": "unet", "step": step, "loss": float(loss.detach()), "lr": float(sched.get_last_lr()[0])})
            self.progress(step, total, f"stage 2 (3D unet) loss {float(loss.detach()):.4f}")
            if every > 0 and step % every == 0 and step < total:
                self._save_checkpoint("unet", step, {"model": acc.unwrap_model(unet).state_dict()}, {"model": opt}, sched, gen)
        unet = acc.unwrap_model(unet).eval()
        self.save_model(unet, vae, noise_sched, scale, [int(s) for s in latents[paths[0]].shape])
        acc.free_memory()
        self.validate_unet()

    def latents(self, vae: Any, paths: list[Path], device: Any) -> dict[Path, Any]:
        """The posterior modes, unscaled, of the model-grid volumes ``paths`` (computed in chunks of 4, in order)."""
        return dict(zip(paths, _encode(vae, paths, self.tensor, device)))

    def curved_latents(self, vae: Any, curves: int, device: Any) -> dict[tuple[Path, int], Any]:
        """The latents (as :meth:`latents`) of every training prior and its targets through the
        prior's curves 1..``curves`` (:mod:`.volume_augment`), keyed by (path, curve)."""
        targets: dict[Path, set[Path]] = {}
        for r in self.unet_pairs:
            targets.setdefault(r.prior, set()).add(r.target)
        out: dict[tuple[Path, int], Any] = {}
        for i, prior in enumerate(sorted(targets)):
            paths = [prior, *sorted(targets[prior])]
            for k in range(1, curves + 1):
                through = lambda chunk, i=i, k=k: self._through_curves(chunk, [i] * len(chunk), [k] * len(chunk))
                out.update(zip([(p, k) for p in paths], _encode(vae, paths, through, device)))
        return out

    def _through_curves(self, paths: list[Path], indices: list[int], ks: list[int]) -> Any:
        """:meth:`tensor` of ``paths``, each through curve ``ks[n]`` of index ``indices[n]``."""
        import numpy as np
        import torch

        seed, jitter = int(self.cfg["seed"]), float(self.cfg.get("intensity_jitter") or 0.0)
        arrays = [aug.apply(self.images[p], aug.curve(seed, i, k, jitter)) for p, i, k in zip(paths, indices, ks)]
        return torch.from_numpy(np.stack(arrays))[:, None] * 2 - 1

    def _loss_weights(self, latent_shape: Any, device: Any) -> Any:
        """Per training row, 1 + region_weight inside the prompt's structures (max-pooled to the latent grid), else 1."""
        import torch
        import torch.nn.functional as F

        lam = float(self.cfg.get("region_weight") or 0.0)
        if lam <= 0 or not self.regions:
            return None
        maps = []
        for i in range(len(self.unet_pairs)):
            m = torch.from_numpy(self.regions[i].astype("float32"))[None, None]
            maps.append(1.0 + lam * F.adaptive_max_pool3d(m, tuple(int(v) for v in latent_shape))[0])
        return torch.stack(maps).to(device)

    def save_model(self, unet: Any, vae: Any, noise_sched: Any, scale: float, latent_shape: list[int]) -> None:
        from brainsynth_cli import __version__
        from brainsynth_cli.structures import default_rules, rules_from_text

        recon = self.vae_reconstruction(vae)
        tmp = self.out / ".tmp-unet"
        shutil.rmtree(tmp, ignore_errors=True)
        vn.save_unet(unet, tmp, self.cfg["unet"], int(self.cfg["vae"]["latent_channels"]), self.text_width)
        shutil.rmtree(self.out / "unet", ignore_errors=True)
        os.replace(tmp, self.out / "unet")
        noise_sched.save_pretrained(self.out / "scheduler")
        for part in (vt.ENCODER, vt.TOKENIZER):
            shutil.rmtree(self.out / part, ignore_errors=True)
        vt.save_text_encoder(self.tokenizer, self.text_model, self.out)  # the folder needs no encoder by name
        rules_text = self.pairs.info.get("rules") or default_rules().to_toml()
        rules = rules_from_text(rules_text, "pairs.json rules")
        cfg = self.cfg
        info = {
            "format": "brainsynth-model", "version": 1, "generator": "instruct-pix2pix", "brainsynth": __version__,
            "dims": ["3d"], "preset": cfg["preset"], "channels": 1, "channel_mode": "grey",
            "grid": {"shape": list(self.grid), "voxel_mm": cfg["voxel_mm"], "axes": "canonical RAS voxel axes of the input",
                     "centre": "centroid of the input's labelled voxels (else of its foreground), moved by under half an "
                               "input voxel to put the box's first voxel on an input voxel"},
            "latent": {"channels": int(cfg["vae"]["latent_channels"]), "shape": latent_shape, "scaling_factor": scale,
                       "vae_scale_factor": vn.factor(cfg["vae"])},
            "intensity_normalisation": {"method": "percentile-0.5-99.5-nonzero window", "model_range": [-1, 1]},
            "structures": [s.name for s in rules.described()], "rules": rules_text,
            "prompts": trained_prompts(self.pairs, self.unet_pairs), "intervals": trained_intervals(self.pairs, self.unet_pairs),
            "vae_reconstruction": recon, "latent_target": "image", "prediction_type": str(noise_sched.config.prediction_type),
            "text_encoder": {**cfg["text_encoder"], "folder": [vt.ENCODER, vt.TOKENIZER]},
            "training": {k: cfg[k] for k in ("seed", "vae_steps", "unet_steps", "vae_lr", "unet_lr", "vae_batch_size",
                                             "unet_batch_size", "conditioning_dropout", "mixed_precision", "kl_weight",
                                             "prediction_type", "timestep_sampling", "region_weight", "gradient_checkpointing")}
                        | {"vae_latent": cfg.get("vae_latent") or "sample", "vae_lr_scheduler": cfg.get("vae_lr_scheduler"),
                           "unet_batching": cfg.get("unet_batching") or "random",
                           "unet_groups_from": float(cfg.get("unet_groups_from") or 0.0),
                           "unet_kinds": list(cfg.get("unet_kinds") or KINDS),
                           "intensity_curves": int(cfg.get("intensity_curves") or 0),
                           "intensity_jitter": float(cfg.get("intensity_jitter") or 0.0)},
            "data": cfg["data"], "pairs": {k: v for k, v in self.pairs.info.items() if k != "rules"},
            "sampling": {"steps": int(cfg["sampling_steps"]), "scheduler": str(cfg["sampling_scheduler"]),
                         "guidance_scale": float(cfg["guidance_scale"]), "image_guidance_scale": float(cfg["image_guidance_scale"]),
                         "guidance_reference": str(cfg["guidance_reference"]), "change_floor": float(cfg.get("change_floor") or 0.0),
                         "feather": bool(cfg.get("feather")), "blender": str(cfg.get("blender") or "poisson")},
        }
        tmp_info = self.out / f".{run_folder.MODEL_INFO}.tmp"
        tmp_info.write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.replace(tmp_info, self.out / run_folder.MODEL_INFO)


def _encode(vae: Any, keys: list[Any], tensor: Any, device: Any) -> list[Any]:
    """The prior latents (:func:`volume_nets.volume_conditioning`) of ``tensor(chunk)`` for ``keys``
    in chunks of 4, in order, without gradients."""
    import torch

    out: list[Any] = []
    with torch.no_grad():
        for i in range(0, len(keys), 4):
            out.extend(vn.volume_conditioning(vae, tensor(keys[i : i + 4]).to(device)))
    return out


def _checkpoint_blocks(unet: Any) -> None:
    """Gradient checkpointing of the MONAI UNet's down, middle and up blocks (recomputed in backward)."""
    import torch.utils.checkpoint as cp

    def wrap(block: Any) -> None:
        forward = block.forward

        def checkpointed(*args: Any, **kwargs: Any) -> Any:
            if not block.training:
                return forward(*args, **kwargs)
            return cp.checkpoint(forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed

    for block in [*unet.down_blocks, unet.middle_block, *unet.up_blocks]:
        wrap(block)
