"""Memory and time of one training step of the 3D InstructPix2Pix networks (``train --dim 3d``), on the CPU.

Each configuration runs in a fresh process: the networks of a preset (MONAI AutoencoderKL or
DiffusionModelUNet) are built, one forward + backward + AdamW step runs on random data of the
preset's grid (the VAE) or latent grid (the UNet), and the process's peak resident memory above
what it held before the step is reported, with the step's time. Sizes too large for the CPU are
run on a smaller grid and scaled linearly (activations grow with the voxels;
parameters and optimizer state do not): those rows are estimates. The total is the activations
plus 16 bytes a parameter (fp32 weights, gradients and Adam's two moments); a GPU adds its
context (about 0.5 GB) and the allocator's slack.

    OMP_NUM_THREADS=1 python benchmarks/ip2p3d_memory.py              # prints a Markdown table
    OMP_NUM_THREADS=1 python benchmarks/ip2p3d_memory.py base-unet    # only the rows of preset-stage
"""

from __future__ import annotations

import json
import subprocess
import sys

ROWS = [  # (preset, stage, batch, mixed precision, gradient checkpointing, grid run: None = the preset's full size)
    ("tiny", "vae", 2, "no", False, None),
    ("tiny", "unet", 4, "no", False, None),
    ("tiny", "unet", 4, "bf16", False, None),
    ("base", "vae", 1, "no", False, [32, 40, 32]),
    ("base", "vae", 1, "bf16", False, [32, 40, 32]),
    ("base", "unet", 1, "no", False, [8, 8, 8]),
    ("base", "unet", 1, "bf16", True, [8, 8, 8]),
]


def one(preset: str, stage: str, batch: int, precision: str, checkpointing: bool, run: list | None) -> dict:
    import resource
    import time

    import torch
    from brainsynth_plugins.ip2p import volume_nets as vn
    from brainsynth_plugins.ip2p.volume_presets import VOLUME_PRESETS
    from brainsynth_plugins.ip2p.volume_training import _checkpoint_blocks

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    torch.manual_seed(0)
    p = VOLUME_PRESETS[preset]
    full = list(p["grid"]) if stage == "vae" else [g // vn.factor(p["vae"]) for g in p["grid"]]
    grid = list(run or full)
    if stage == "vae":
        net = vn.build_vae(p["vae"])
        x = torch.rand(batch, 1, *grid)
        params = sum(t.numel() for t in net.parameters())

        def loss() -> torch.Tensor:
            mu, sigma = vn.nets.encode(net, "3d", x)
            return (vn.decode(net, mu + sigma) - x).abs().mean()
    else:
        lat = grid  # the UNet runs on the latent grid
        ch = int(p["vae"]["latent_channels"])
        net = vn.build_unet(p["unet"], ch, 384)
        if checkpointing:
            _checkpoint_blocks(net)
        z = torch.randn(batch, ch, *lat)
        text = torch.randn(batch, 64, 384)
        t = torch.full((batch,), 500)
        params = sum(t_.numel() for t_ in net.parameters())

        def loss() -> torch.Tensor:
            return vn.unet_forward(net, z, z, t, text).pow(2).mean()
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
    voxels = lambda g: g[0] * g[1] * g[2]
    return {"params_m": params / 1e6, "step_mb": max(peak - before, 0.0), "seconds": seconds, "grid": grid,
            "scale": voxels(full) / voxels(grid)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("["):
        print(json.dumps(one(*json.loads(sys.argv[1]))))
        return
    print("| preset | stage | batch | precision | checkpointing | parameters | grid run (VAE: image, UNet: latent) | step memory (MB) | kind |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        preset, stage, batch, precision, ckpt, _ = row
        if len(sys.argv) > 1 and f"{preset}-{stage}" not in sys.argv[1:]:
            continue
        try:
            res = subprocess.run([sys.executable, __file__, json.dumps(row)], capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            print(f"| {preset} | {stage} | {batch} | {precision} | {ckpt} | over 600 s on this CPU |")
            continue
        if res.returncode:
            print(f"| {preset} | {stage} | {batch} | {precision} | {ckpt} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        scale = r["scale"]
        # the step's memory holds the gradients and Adam's two moments (12 bytes a parameter, fp32) and
        # the activations; the activations scale with the voxels, the weights (4 bytes) come on top
        p = r["params_m"]
        mem = max(r["step_mb"] - 12 * p, 0.0) * scale + 16 * p
        kind = "measured (CPU)" if scale == 1 else f"estimated (measured at 1/{scale:g} of the voxels, scaled)"
        print(f"| {preset} | {stage} | {batch} | {precision} | {'yes' if ckpt else 'no'} | {r['params_m']:.2f} M | "
              f"{'x'.join(map(str, r['grid']))} | {mem:,.0f} | {kind}; {r['seconds']:.1f} s/step |")


if __name__ == "__main__":
    main()
