"""Benchmark: `brainsynth train` (tiny preset) samples/s and `brainsynth edit` seconds per slice.

Peers, measured in the same run on the same models and data:

- training: a bare PyTorch loop over the same diffusers models (forward, loss, backward, AdamW;
  no accelerate, no logging, no checkpoint machinery), so the ratio is our trainer's overhead;
- editing: diffusers' StableDiffusionInstructPix2PixPipeline called directly on the same
  tensors, so the ratio is the overhead of the generator's edit path;
- torch on 1 thread vs its default (the build machines have 2 shared cores, where OpenMP
  threads fighting other processes can be much slower than one thread).

    python benchmarks/train_edit.py [--threads 1,2] [--vae-steps 20] [--unet-steps 30] [--full]

`--full` also times the whole tiny preset (both stages at the preset's step counts) through the CLI.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "tests")]


def rate(stamps: list[float], batch: int) -> float:
    """Samples per second from per-step completion times (the first step is warm-up)."""
    return (len(stamps) - 1) * batch / (stamps[-1] - stamps[0])


def train_ours(pairs: Path, out: Path, vae_steps: int, unet_steps: int) -> dict[str, float]:
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    stamps: dict[str, list[float]] = {"stage 1": [], "stage 2": []}

    def progress(done, total, message=""):
        stamps[message[:7]].append(time.perf_counter())

    extra = {"preset": "tiny", "checkpoint_every": 10**6,
             "set": {"vae_steps": str(vae_steps), "unet_steps": str(unet_steps), "validation_count": "0"}}
    t0 = time.perf_counter()
    get_manager().registry("generator").create("instruct-pix2pix").train(
        TrainOptions(data=pairs, output=out, seed=0, device="cpu", extra=extra), progress)
    from brainsynth_plugins.ip2p.presets import PRESETS

    p = PRESETS["tiny"]
    return {"vae": rate(stamps["stage 1"], p["vae_batch_size"]), "unet": rate(stamps["stage 2"], p["unet_batch_size"]),
            "wall": time.perf_counter() - t0}


def train_bare(model: Path, steps: int) -> dict[str, float]:
    """The same models trained by a plain loop on random data of the same shapes."""
    import torch
    import torch.nn.functional as F
    from brainsynth_plugins.ip2p.presets import PRESETS
    from diffusers import AutoencoderKL, UNet2DConditionModel

    p = PRESETS["tiny"]
    res = p["resolution"]
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(model / "vae"))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(p["vae_batch_size"], 1, res, res) * 2 - 1
    stamps = []
    for _ in range(steps):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    out = {"vae": rate(stamps, p["vae_batch_size"])}
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model / "unet"))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    b, lat = p["unet_batch_size"], res // 4
    z, e = torch.randn(b, 8, lat, lat), torch.randn(b, 64, 384)
    stamps = []
    for _ in range(steps):
        t = torch.randint(0, 1000, (b,))
        loss = F.mse_loss(unet(z, t, e).sample, z[:, :4])
        loss.backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    out["unet"] = rate(stamps, b)
    return out


def edit_times(model: Path, pairs: Path, n: int) -> dict[str, float]:
    """Seconds per slice (20 DDIM steps) of the generator's edit and of diffusers' pipeline called
    directly, at InstructPix2Pix's guidance (7.5, image 1.5: three UNet branches in both) and at
    image guidance 1 (the tiny preset's 3.0 / 1.0: the edit runs two branches, the pipeline three)."""
    import numpy as np
    import torch
    from brainsynth_plugins.ip2p.data import load_slice
    from brainsynth_plugins.ip2p.model import IP2PModel

    m = IP2PModel(model, "cpu")
    images = [load_slice(p, m.resolution) for p in sorted((pairs / "images").glob("*_prior.png"))[:n]]
    prompt = "moderate ventricle enlargement"
    m.edit(images[:1], prompt, steps=2)  # warm-up
    out = {}
    for name, g, ig in (("", 7.5, 1.5), ("_ig1", 3.0, 1.0)):
        t = time.perf_counter()
        m.edit(images, prompt, steps=20, seed=0, batch_size=4, guidance_scale=g, image_guidance_scale=ig)
        out["ours" + name] = (time.perf_counter() - t) / len(images)
        t = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        for i in range(0, len(images), 4):
            x = torch.from_numpy(np.stack(images[i : i + 4]))[:, None]
            with torch.no_grad():
                m.pipe(prompt=[prompt] * len(x), image=x, num_inference_steps=20, generator=gen, output_type="pt",
                       guidance_scale=g, image_guidance_scale=ig)
        out["pipeline" + name] = (time.perf_counter() - t) / len(images)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    ap.add_argument("--vae-steps", type=int, default=20)
    ap.add_argument("--unet-steps", type=int, default=30)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="also time the whole tiny preset through the CLI")
    args = ap.parse_args()

    import torch
    from test_train_pairs import make_pairs

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-edit-"))
    try:
        pairs = make_pairs(tmp / "pairs", size=64, subjects=6, slices=2)
        print(f"data: {len((pairs / 'metadata.jsonl').read_text().splitlines())} pairs of 64x64 phantom slices")
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            model = tmp / f"model-{threads}"
            ours = train_ours(pairs, model, args.vae_steps, args.unet_steps)
            bare = train_bare(model, min(args.vae_steps, args.unet_steps))
            ed = edit_times(model, pairs, args.slices)
            rows.append((threads, ours, bare, ed))
        print()
        print("| torch threads | stage 1 samples/s (bare loop, ratio) | stage 2 samples/s (bare loop, ratio) | "
              "edit s/slice, 20 steps, guidance 7.5/1.5 (pipeline, ratio) | the same at 3.0/1.0 (pipeline, ratio) |")
        print("|---|---|---|---|---|")
        for threads, ours, bare, ed in rows:
            print(f"| {threads} | {ours['vae']:.1f} ({bare['vae']:.1f}, {ours['vae'] / bare['vae']:.2f}) | "
                  f"{ours['unet']:.1f} ({bare['unet']:.1f}, {ours['unet'] / bare['unet']:.2f}) | "
                  f"{ed['ours']:.3f} ({ed['pipeline']:.3f}, {ed['ours'] / ed['pipeline']:.2f}) | "
                  f"{ed['ours_ig1']:.3f} ({ed['pipeline_ig1']:.3f}, {ed['ours_ig1'] / ed['pipeline_ig1']:.2f}) |")
        if len(rows) > 1:
            a, b = rows[0], rows[-1]
            print(f"\n{b[0]} threads vs {a[0]}: stage 1 x{b[1]['vae'] / a[1]['vae']:.2f}, stage 2 x{b[1]['unet'] / a[1]['unet']:.2f}, "
                  f"edit x{a[3]['ours'] / b[3]['ours']:.2f} (speed-up; < 1 means slower)")
        if args.full:
            import subprocess

            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
                   "OMP_NUM_THREADS": str(rows[0][0])}
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "brainsynth_cli.main", "train", str(pairs), "-o", str(tmp / "full"),
                            "--preset", "tiny", "--device", "cpu"], check=True, env=env, capture_output=True)
            print(f"\nwhole tiny preset (both stages, preset steps, validation, save; OMP_NUM_THREADS={rows[0][0]}): "
                  f"{time.perf_counter() - t:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
