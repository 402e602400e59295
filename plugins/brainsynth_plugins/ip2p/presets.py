"""Training presets: model sizes and schedules. Every value can be overridden (``--set KEY=VALUE``)."""

from __future__ import annotations

from typing import Any

from brainsynth_cli.sampling import GUIDANCE_REFERENCES
from brainsynth_plugins.training_core.schedules import NAMES

PRESETS: dict[str, dict[str, Any]] = {
    # Trains both stages on 2 CPU cores in a few minutes at 64x64 (the demo and the tests). The
    # autoencoder does not downsample (f=1): at 64 px every pixel carries detail, and the f=4 and
    # f=2 autoencoders tried reconstructed held-out slices at 18-25 dB where this one reaches ~31.
    "tiny": {
        "resolution": 64, "channels": 1, "pretrained": None,
        "vae": {"block_out_channels": [16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
                "mid_block_attention": False},
        # The prompt also reaches every resnet block as a pooled text embedding added to the time
        # embedding (addition_embed_type=text); cross-attention alone, at 16x16 only, was not learned
        # in the CPU budget: the model applied one average change whatever the prompt asked.
        "unet": {"block_out_channels": [16, 32, 64], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
                 "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "addition_embed_type": "text"},
        # high-noise timesteps (where the size of the change is decided) and the loss x21 inside the
        # prompt's structures: with these and 700-1000 steps the edits follow the prompt's interval; 800 fit the demo
        # (benchmarks/RESULTS.md, "The prompt's size learned")
        "vae_steps": 800, "unet_steps": 800, "vae_lr": 2e-3, "unet_lr": 1e-3, "vae_batch_size": 8, "unet_batch_size": 16,
        "ssim_weight": 0.0, "vae_lr_scheduler": "cosine", "prediction_type": "sample", "region_weight": 20.0,
        "timestep_sampling": "high",
        # bf16 where the CPU/GPU computes it natively (AVX512-BF16, AMX, CUDA): 0.60 instead of 0.73 s
        # per UNet step on 2 cores, which buys 800 steps (was 700) in the demo's 15 minutes
        "mixed_precision": "auto",
        # edit defaults from sweeps on the demo's validation pairs (benchmarks/RESULTS.md, "edit quality"):
        # text guidance 1.75 measured from the input left unchanged, not from the empty prompt, which the
        # model learns as the average edit (from it, guidance 3 turned "mild" into a shrinkage on every
        # mild row, training rows included); 10 DDIM steps, image guidance 1 ("Guidance from the input")
        "guidance_scale": 1.75, "image_guidance_scale": 1.0, "sampling_steps": 10, "sampling_scheduler": "ddim",
        "guidance_reference": "input",
        # the edit path drops decoded changes below 1.5 % of the intensity window (soft threshold): the
        # model's faint, systematic change around the named structures moves no structure and costs
        # PSNR ("The change floor"; 0.005 with guidance from the empty prompt, 0.01-0.015 with it from
        # the input), and halves the change in the region's outermost voxel layer, where the model's
        # change spills beyond the moving wall; the floor chosen on the validation split, the feather
        # for its lower leak there (RESULTS, "Faster CPU training, realistic cortex targets and the feather")
        "change_floor": 0.015, "feather": True,
        # the change is put in as a deformation of the input (the `warp` blender): chosen on a second,
        # independently drawn demo cohort (seed 77, 180 test pairs): at this guidance the structures
        # change as much as with `poisson` (cortex -2.0 vs -2.2 %, ventricle mild/moderate/severe
        # +4.3/+16.2/+26.6 vs +5.1/+17.4/+26.3 %) for 0.67 dB more PSNR against the real targets
        # (RESULTS, "Edits put in as a deformation")
        "blender": "warp",
        # constant, then a linear decay to 0 over the last 20 % of the steps: over two seeds ACC 0.84 and
        # 0.84 (constant: 0.84, 0.75), MAE 4.07 / 4.18 pp (4.48 / 4.40), leak 0.72 / 0.65 pp (0.80 / 0.85), for
        # 0.3 dB more PSNR lost against no edit (benchmarks/RESULTS.md, "A learning-rate tail")
        "lr_scheduler": "warmup_stable_decay", "lr_decay_fraction": 0.2,
        "warmup_steps": 20, "validation_steps": 10, "checkpoint_every": 100,
    },
    # From scratch, sized for one GPU at 256x256 (latents 4x32x32).
    "base": {
        "resolution": 256, "channels": 1, "pretrained": None,
        "vae": {"block_out_channels": [64, 128, 256, 256], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32},
        "unet": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "attention_head_dim": 8, "norm_num_groups": 32,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]},
        "vae_steps": 20000, "unet_steps": 50000, "vae_lr": 1e-4, "unet_lr": 1e-4, "vae_batch_size": 8, "unet_batch_size": 32,
        "warmup_steps": 500, "validation_steps": 20, "checkpoint_every": 2000,
    },
    # Stable Diffusion 1.5 from --pretrained (BrainEditor's setting: stage 1 lr 4.5e-6 batch 8, stage 2 lr 1e-4 batch 32).
    "sd15": {
        "resolution": 256, "channels": 3, "pretrained": "required",
        "vae": None, "unet": None,
        "vae_steps": 10000, "unet_steps": 20000, "vae_lr": 4.5e-6, "unet_lr": 1e-4, "vae_batch_size": 8, "unet_batch_size": 32,
        "warmup_steps": 500, "validation_steps": 20, "checkpoint_every": 2000,
    },
}

#: Defaults common to all presets.
COMMON: dict[str, Any] = {
    "kl_weight": 1e-6, "ssim_weight": 0.5, "gan_weight": 0.0, "gan_start": 0,
    "conditioning_dropout": 0.05, "ema": False, "ema_decay": 0.999, "gradient_accumulation": 1,
    "validation_count": 4, "checkpoints_total_limit": 2, "lr_scheduler": "constant_with_warmup", "lr_decay_fraction": 0.2, "vae_lr_scheduler": None,
    "mixed_precision": "no", "gradient_checkpointing": False, "prediction_type": "epsilon", "latent_target": "image", "timestep_sampling": "uniform", "region_weight": 0.0, "region_margin_mm": 3.0, "guidance_scale": 7.5, "image_guidance_scale": 1.5,
    "sampling_steps": 20, "sampling_scheduler": "ddim", "change_floor": 0.0, "guidance_reference": "empty-prompt",
    "feather": False, "blender": "poisson",
}

#: What each setting may be (checked after ``--set`` overrides, before anything is written).
_STEPS = 10_000_000
SCHEDULERS = NAMES
SETTINGS: dict[str, tuple] = {
    "resolution": ("int", 8, 4096), "channels": ("choice", (1, 3)),
    "vae_steps": ("int", 1, _STEPS), "unet_steps": ("int", 1, _STEPS), "epochs": ("opt-float", 0, 100_000, True),
    "vae_lr": ("float", 0, 1, True), "unet_lr": ("float", 0, 1, True),
    "vae_batch_size": ("int", 1, 4096), "unet_batch_size": ("int", 1, 4096),
    "warmup_steps": ("int", 0, _STEPS), "validation_steps": ("int", 1, 1000), "checkpoint_every": ("int", 0, _STEPS),
    "kl_weight": ("float", 0, 1000), "ssim_weight": ("float", 0, 1000), "gan_weight": ("float", 0, 1000),
    "gan_start": ("int", 0, _STEPS), "conditioning_dropout": ("float", 0, 1 / 3), "ema": ("bool",), "ema_decay": ("float", 0, 1),
    "gradient_accumulation": ("int", 1, 1024), "validation_count": ("int", 0, 1000), "checkpoints_total_limit": ("int", 1, 1000),
    "lr_scheduler": ("choice", SCHEDULERS), "lr_decay_fraction": ("float", 0, 1), "mixed_precision": ("choice", ("no", "fp16", "bf16", "auto")),
    "gradient_checkpointing": ("bool",), "guidance_scale": ("float", 0, 100), "image_guidance_scale": ("float", 0, 100),
    "sampling_steps": ("int", 1, 1000), "sampling_scheduler": ("choice", ("ddim", "dpm++", "euler-a")), "change_floor": ("float", 0, 0.1),
    "guidance_reference": ("choice", GUIDANCE_REFERENCES), "feather": ("bool",), "blender": ("str",),
    "vae_lr_scheduler": ("choice", (None, *SCHEDULERS)), "prediction_type": ("choice", ("epsilon", "sample", "v_prediction")),
    "vae.mid_block_attention": ("bool",), "latent_target": ("choice", ("image", "change")), "timestep_sampling": ("choice", ("uniform", "high")),
    "region_weight": ("float", 0, 1000), "region_margin_mm": ("float", 0, 50),
    "vae.block_out_channels": ("ints", 1, 4096, 1, 8), "vae.layers_per_block": ("int", 1, 16),
    "vae.latent_channels": ("int", 1, 64), "vae.norm_num_groups": ("int", 1, 1024),
    "unet.block_out_channels": ("ints", 1, 8192, 1, 8), "unet.layers_per_block": ("int", 1, 16),
    "unet.attention_head_dim": ("int", 1, 1024), "unet.norm_num_groups": ("int", 1, 1024),
    "unet.down_block_types": ("strs", 1, 8), "unet.up_block_types": ("strs", 1, 8),
    "unet.addition_embed_type": ("choice", (None, "text")), "unet.addition_embed_type_num_heads": ("int", 1, 1024),
    "unet.resnet_time_scale_shift": ("choice", ("default", "scale_shift")),
}

#: UNet settings passed to diffusers' UNet2DConditionModel only when a preset or --set gives them.
OPTIONAL_UNET = ("addition_embed_type", "addition_embed_type_num_heads", "resnet_time_scale_shift")
