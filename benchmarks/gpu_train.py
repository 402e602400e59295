"""The GPU check's training measures: brainsynth's instruct-pix2pix trainer against a bare loop.

`brainsynth train` (generator instruct-pix2pix) runs its two stages one after the other into one
model folder (`--stage vae`, then `--stage unet`), so each stage's peak GPU memory is its own.
The peer is a bare PyTorch loop over the same diffusers models (AutoencoderKL and
UNet2DConditionModel built from the configs the trained folder holds), on the same training
slices, the same latents (encoded by the trained VAE, as the trainer encodes them) and the same
prompt embeddings, under the same autocast precision: forward, loss, backward, AdamW. It has no
accelerate, loss log, gradient clipping, learning-rate schedule, conditioning dropout or SSIM
term, so brainsynth / bare is what that machinery costs. Both loops wait for each step's loss
(the trainer prints it; the bare loop reads it with ``.item()``), so per-step times are real on a GPU.

Used by ``benchmarks/gpu_bench.py``; the rate helper is ``benchmarks/train_edit.py``'s.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from train_edit import rate


def reset_peak(device: str) -> None:
    """Free what is no longer referenced and start a new peak-memory window (CUDA only)."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    """torch.cuda.max_memory_allocated since the last :func:`reset_peak`, MiB; None off CUDA."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _autocast(device: str, precision: str) -> Any:
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def _stage(stamps: list[float], batch: int, steps: int, warmup: int, wall: float, peak: float | None) -> dict[str, Any]:
    """One stage's numbers; the first ``warmup`` steps are left out of the rate."""
    return {"samples_per_s": rate(stamps[warmup:], batch), "peak_gpu_mib": peak, "steps": steps,
            "timed_steps": len(stamps[warmup:]) - 1, "batch": batch, "wall_s": wall}


def train_brainsynth(pairs: Path, model: Path, *, device: str, settings: dict[str, str], warmup: int) -> dict[str, Any]:
    """Both stages through the generator's ``train`` (what ``brainsynth train --preset base`` calls)."""
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    out: dict[str, Any] = {}
    for stage, key in (("vae", "vae_batch_size"), ("unet", "unet_batch_size")):
        stamps: list[float] = []
        reset_peak(device)
        t0 = time.perf_counter()
        gen = get_manager().registry("generator").create("instruct-pix2pix")
        gen.train(TrainOptions(data=pairs, output=model, seed=0, device=device,
                               extra={"preset": "base", "stage": stage, "set": dict(settings)}),
                  lambda done, total, message="", stamps=stamps: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - t0
        cfg = _run_config(model)
        out[stage] = _stage(stamps, int(cfg[key]), len(stamps), warmup, wall, peak_mib(device))
    return out


def _run_config(model: Path) -> dict[str, Any]:
    import json

    return json.loads((model / "checkpoints" / "run.json").read_text(encoding="utf-8"))


def _images(paths: list[Path], resolution: int, channels: int, device: str) -> Any:
    """Slices as the trainer feeds them: [-1, 1], N x C x H x W."""
    import numpy as np
    import torch
    from brainsynth_plugins.ip2p.data import load_slice

    x = torch.from_numpy(np.stack([load_slice(p, resolution) for p in paths]))[:, None]
    return (x.repeat(1, channels, 1, 1) * 2 - 1).to(device)


def bare_vae(model: Path, cfg: dict[str, Any], images: Any, *, device: str, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    reset_peak(device)
    t0 = time.perf_counter()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(model / "vae")).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg["vae_lr"]))
    b, n = int(cfg["vae_batch_size"]), len(images)
    order = torch.randperm(n)
    stamps = []
    for k in range(steps):
        x = images[order[(torch.arange(b) + k * b) % n]].to(device)  # kept on the CPU, as the trainer keeps them
        with _autocast(device, "no"):  # as `brainsynth train`: the autoencoder trains in float32 whatever --mixed-precision says
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        loss = (rec.float() - x).abs().mean() + float(cfg["kl_weight"]) * post.kl().float().mean()
        _optimizer_step(loss, opt, stamps)
    out = _stage(stamps, b, steps, warmup, time.perf_counter() - t0, peak_mib(device))
    del vae, opt
    return out


def _optimizer_step(loss: Any, opt: Any, stamps: list[float]) -> None:
    """One bare training step's end: backward, AdamW step, the loss read back (as the trainer
    logs it, which waits for the device) and the time stamp."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()
    stamps.append(time.perf_counter())


def _latents(model: Path, rows: list[Any], resolution: int, channels: int, device: str) -> tuple[Any, Any]:
    """(prior, target) latents of ``rows``, as the trainer makes them: the trained VAE's posterior
    mode, the target's scaled by its scaling factor."""
    import torch
    from brainsynth_plugins.ip2p.model import image_conditioning
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model / "vae", use_safetensors=True).to(device).eval()
    prior, target = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 16):
            chunk = rows[i : i + 16]
            prior.append(image_conditioning(vae, _images([r.prior for r in chunk], resolution, channels, device)))
            target.append(image_conditioning(vae, _images([r.target for r in chunk], resolution, channels, device)))
    scale = float(vae.config.scaling_factor)
    del vae
    return torch.cat(prior), torch.cat(target) * scale


def _prompt_embeddings(model: Path, prompts: list[str], device: str) -> Any:
    """Token states of each row's prompt from the model's text encoder (padded as the trainer pads them)."""
    import json

    import torch

    from brainsynth_cli.plugin_manager import get_manager

    te = json.loads((model / "brainsynth.json").read_text(encoding="utf-8"))["text_encoder"]
    enc = get_manager().registry("text-encoder").create(te["name"], **({"path": te["path"]} if te.get("path") else {}))
    tok, text_model = enc.load()
    text_model.to(device)
    table = {}
    with torch.no_grad():
        for p in sorted(set(prompts)):
            ids = tok([p], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            table[p] = text_model(ids.to(device))[0][0].float()
    del text_model
    return torch.stack([table[p] for p in prompts])


def bare_unet(model: Path, cfg: dict[str, Any], prior: Any, target: Any, text: Any, *, device: str, steps: int,
              warmup: int) -> dict[str, Any]:
    import torch
    from brainsynth_plugins.ip2p.training import diffusion_target
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    noise_sched = DDPMScheduler.from_config(DDPMScheduler.load_config(model / "scheduler"))  # the trained noise schedule
    reset_peak(device)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model / "unet")).to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg["unet_lr"]))
    b, n, T = int(cfg["unet_batch_size"]), len(prior), int(noise_sched.config.num_train_timesteps)
    order = torch.randperm(n)
    stamps = []
    for k in range(steps):
        idx = order[(torch.arange(b) + k * b) % n].to(prior.device)
        z, p, e = target[idx], prior[idx], text[idx]
        noise = torch.randn_like(z)
        t = torch.randint(0, T, (b,), device=z.device)
        with _autocast(device, cfg["mixed_precision"]):
            pred = unet(torch.cat([noise_sched.add_noise(z, noise, t), p], 1), t, e).sample
        loss = torch.nn.functional.mse_loss(pred.float(), diffusion_target(noise_sched, z, noise, t).float())
        _optimizer_step(loss, opt, stamps)
    out = _stage(stamps, b, steps, warmup, time.perf_counter() - t0, peak_mib(device))
    del unet, opt
    return out


def train_bare(pairs: Path, model: Path, *, device: str, steps: int, warmup: int) -> dict[str, Any]:
    """Both stages' bare loops on the models and data of the brainsynth run in ``model``."""
    from brainsynth_plugins.ip2p.data import read_pairs

    cfg = _run_config(model)
    res, channels = int(cfg["resolution"]), int(cfg["channels"])
    rows = read_pairs(pairs).split("train")
    images = _images(sorted({r.prior for r in rows} | {r.target for r in rows}), res, channels, "cpu")
    out = {"vae": bare_vae(model, cfg, images, device=device, steps=steps, warmup=warmup)}
    del images
    reset_peak(device)
    prior, target = _latents(model, rows, res, channels, device)
    text = _prompt_embeddings(model, [r.prompt for r in rows], device)
    out["unet"] = bare_unet(model, cfg, prior, target, text, device=device, steps=steps, warmup=warmup)
    return out
