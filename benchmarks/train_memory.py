"""Memory and time of one training step of the InstructPix2Pix networks, 2D (``train``) and 3D
(``train --dim 3d``), on the CPU, and the batch sizes that would fit a 24, 40 and 80 GB GPU.

Each configuration runs in a fresh process: the networks of a preset (2D: diffusers'
AutoencoderKL and UNet2DConditionModel as `brainsynth train` builds them; 3D: MONAI's
AutoencoderKL or DiffusionModelUNet) are built, one forward + backward + AdamW step runs on random
data of the preset's image size (the VAE) or latent size (the UNet), and the process's peak
resident memory above what it held before the step is reported, with the step's time. Sizes too
large for the CPU are run on a grid of fewer voxels and scaled linearly (activations grow with the
voxels; parameters and optimizer state do not): those rows are estimates. The total is the
activations plus 16 bytes a parameter (fp32 weights, gradients and Adam's two moments). The
largest batch for a GPU of M GB is estimated as (0.9 M - 0.5 GB context - 16 bytes a parameter)
divided by one example's activations: CPU activations in float32 (bf16 rows: under CPU autocast),
not a GPU measurement; `benchmarks/gpu.sh` measures peak GPU memory when a GPU is available.

    OMP_NUM_THREADS=1 python benchmarks/train_memory.py [2d-base-unet ...]   # prints a Markdown table
"""

from __future__ import annotations

import json
import subprocess
import sys

ROWS = [  # (dim, preset, stage, batch, mixed precision, gradient checkpointing, grid run: None = the preset's full size)
    ("2d", "base", "vae", 2, "no", False, None),
    ("2d", "base", "unet", 4, "no", False, None),
    ("2d", "base", "unet", 4, "bf16", False, None),
    ("3d", "tiny", "vae", 1, "no", False, None),
    ("3d", "tiny", "unet", 4, "no", False, None),
    ("3d", "tiny", "unet", 4, "bf16", False, None),
    ("3d", "base", "vae", 1, "no", False, [32, 40, 32]),
    ("3d", "base", "vae", 1, "bf16", False, [32, 40, 32]),
    ("3d", "base", "unet", 1, "no", False, [8, 8, 8]),
    ("3d", "base", "unet", 1, "bf16", True, [8, 8, 8]),
]
GPU_GB = (24, 40, 80)


def slice_networks(preset: str, stage: str) -> tuple[object, list[int], int]:
    """The 2D network of ``stage`` as `brainsynth train --preset PRESET` builds it (MiniLM's 384-wide
    text), the size of its input (image or latent) and its input channels."""
    from brainsynth_plugins.ip2p.presets import COMMON, PRESETS
    from brainsynth_plugins.ip2p.training import Trainer

    cfg = {**COMMON, **PRESETS[preset], "text_encoder": {"name": "minilm"}}
    builder = Trainer.__new__(Trainer)  # only the network builders are used: no pairs folder needed
    builder.cfg, builder.res, builder.channels = cfg, int(cfg["resolution"]), int(cfg["channels"])
    if stage == "vae":
        return builder._new_vae(), [builder.res, builder.res], builder.channels
    f = 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    lat = int(cfg["vae"]["latent_channels"])
    unet, _ = builder._new_unet(384, lat, builder.res // f)
    return unet, [builder.res // f] * 2, lat


def one(dim: str, preset: str, stage: str, batch: int, precision: str, checkpointing: bool, run: list | None) -> dict:
    import math
    import resource
    import time

    import torch

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    torch.manual_seed(0)
    text = torch.randn(batch, 64, 384)
    t = torch.full((batch,), 500)
    if dim == "2d":
        net, full, ch = slice_networks(preset, stage)
        if checkpointing:
            net.enable_gradient_checkpointing()
        grid = list(run or full)
        x = torch.rand(batch, ch, *grid)

        def loss() -> torch.Tensor:
            if stage == "vae":
                post = net.encode(x).latent_dist
                return (net.decode(post.sample()).sample - x).abs().mean()
            return net(torch.cat([x, x], 1), t, text).sample.pow(2).mean()
    else:
        from brainsynth_plugins.ip2p import volume_nets as vn
        from brainsynth_plugins.ip2p.volume_presets import VOLUME_PRESETS
        from brainsynth_plugins.ip2p.volume_training import _checkpoint_blocks

        p = VOLUME_PRESETS[preset]
        full = list(p["grid"]) if stage == "vae" else [g // vn.factor(p["vae"]) for g in p["grid"]]
        grid = list(run or full)
        if stage == "vae":
            net = vn.build_vae(p["vae"])
            x = torch.rand(batch, 1, *grid)

            def loss() -> torch.Tensor:
                mu, sigma = vn.nets.encode(net, "3d", x)
                return (vn.decode(net, mu + sigma) - x).abs().mean()
        else:
            ch = int(p["vae"]["latent_channels"])
            net = vn.build_unet(p["unet"], ch, 384)
            if checkpointing:
                _checkpoint_blocks(net)
            z = torch.randn(batch, ch, *grid)

            def loss() -> torch.Tensor:
                return vn.unet_forward(net, z, z, t, text).pow(2).mean()
    params = sum(t_.numel() for t_ in net.parameters())
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    before = rss_mb()
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        value = loss()
    value.float().backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"params_m": params / 1e6, "step_mb": max(peak - before, 0.0), "seconds": seconds, "grid": grid,
            "scale": math.prod(full) / math.prod(grid)}


def fits(activations_mb: float, batch: int, params_m: float, gb: int) -> int:
    """The largest batch whose activations and training state fit ``gb`` GB of GPU memory (90 %,
    after 0.5 GB of context), from one run's activations at ``batch``."""
    free = 0.9 * gb * 1024 - 512 - 16 * params_m
    per_example = activations_mb / batch
    return max(int(free // per_example), 0) if per_example > 0 else 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("["):
        print(json.dumps(one(*json.loads(sys.argv[1]))))
        return
    print("| dim | preset | stage | batch | precision | checkpointing | parameters | size run (VAE: image, UNet: latent) | "
          "step memory (MB) | largest batch at " + " / ".join(f"{g} GB" for g in GPU_GB) + " (estimate) | kind |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        dim, preset, stage, batch, precision, ckpt, _ = row
        head = f"| {dim} | {preset} | {stage} | {batch} | {precision} | {'yes' if ckpt else 'no'}"
        if len(sys.argv) > 1 and f"{dim}-{preset}-{stage}" not in sys.argv[1:]:
            continue
        try:
            res = subprocess.run([sys.executable, __file__, json.dumps(row)], capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            print(f"{head} | over 600 s on this CPU |")
            continue
        if res.returncode:
            print(f"{head} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        scale = r["scale"]
        # the step's memory holds the gradients and Adam's two moments (12 bytes a parameter, fp32) and
        # the activations; the activations scale with the voxels, the weights (4 bytes) come on top
        p = r["params_m"]
        activations = max(r["step_mb"] - 12 * p, 0.0) * scale
        mem = activations + 16 * p
        kind = "measured (CPU)" if scale == 1 else f"estimated (measured at 1/{scale:g} of the voxels, scaled)"
        batches = " / ".join(str(fits(activations, batch, p, g)) for g in GPU_GB)
        print(f"{head} | {p:.2f} M | {'x'.join(map(str, r['grid']))} | {mem:,.0f} | {batches} | {kind}; {r['seconds']:.1f} s/step |")


if __name__ == "__main__":
    main()
