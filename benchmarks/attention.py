"""Benchmark: the attention kernel of a `tiny` UNet training step on the CPU.

Peer, measured in the same run on the same network, data and threads: diffusers' default attention
processor (torch's fused ``scaled_dot_product_attention``). Ours: what `brainsynth train` sets on the
CPU (``training_core.attention.ShortSequenceAttention``: diffusers' classic processor for short
sequences while gradients are recorded, the fused kernel otherwise). Rounds alternate between the
two so that a machine that slows down mid-run slows both.

    python benchmarks/attention.py [--rounds 3] [--steps 20] [--threads 2]

Prints seconds per training step (forward, loss, backward, AdamW; bf16 autocast where the CPU
computes it natively, as the preset's ``mixed_precision=auto``) and per edit-sized forward pass
without gradients (batch 2), with the ratio ours / peer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]


def tiny_unet(seed: int):
    import torch
    from brainsynth_plugins.ip2p.presets import OPTIONAL_UNET, PRESETS
    from diffusers import UNet2DConditionModel

    p = PRESETS["tiny"]
    u = p["unet"]
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=p["resolution"], in_channels=2 * p["vae"]["latent_channels"], out_channels=p["vae"]["latent_channels"],
        down_block_types=tuple(u["down_block_types"]), up_block_types=tuple(u["up_block_types"]),
        block_out_channels=tuple(u["block_out_channels"]), layers_per_block=u["layers_per_block"],
        attention_head_dim=u["attention_head_dim"], norm_num_groups=u["norm_num_groups"], cross_attention_dim=384,
        **{k: u[k] for k in OPTIONAL_UNET if u.get(k) is not None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from brainsynth_plugins.ip2p.presets import PRESETS
    from brainsynth_plugins.training_core.attention import train_attention
    from brainsynth_plugins.training_core.runtime import resolve_mixed_precision

    torch.set_num_threads(args.threads)
    p = PRESETS["tiny"]
    bf16 = resolve_mixed_precision(p["mixed_precision"], "cpu") == "bf16"
    batch, lat = p["unet_batch_size"], p["vae"]["latent_channels"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 2 * lat, p["resolution"], p["resolution"], generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    text = torch.randn(batch, 64, 384, generator=gen)
    nets = {"peer (fused kernel)": tiny_unet(0), "ours": tiny_unet(0)}
    train_attention(nets["ours"], "cpu")
    opts = {k: torch.optim.AdamW(n.parameters(), lr=1e-4) for k, n in nets.items()}

    def train_step(name: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = nets[name](x, t, text).sample
        loss = (out.float() - x[:, :lat]).square().mean()
        loss.backward()
        opts[name].step()
        opts[name].zero_grad()

    def edit_pass(name: str) -> None:
        with torch.no_grad():
            nets[name](x[:2], t[:2], text[:2])

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name in nets:
            for kind, fn, n in (("train step", train_step, args.steps), ("edit forward", edit_pass, 4 * args.steps)):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn(name)
                if r:
                    times.setdefault((kind, name), []).append((time.perf_counter() - t0) / n)
    print(f"tiny UNet, batch {batch} ({'bf16' if bf16 else 'float32'}), {args.threads} torch threads, "
          f"{args.rounds} rounds x {args.steps} steps; median s per call")
    for kind in ("train step", "edit forward"):
        peer = statistics.median(times[(kind, "peer (fused kernel)")])
        ours = statistics.median(times[(kind, "ours")])
        print(f"  {kind:12s} peer {peer:.4f}  ours {ours:.4f}  ratio {ours / peer:.2f}")


if __name__ == "__main__":
    main()
