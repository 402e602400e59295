"""Model sizes and schedules of the ``ldm`` generator. Every value can be overridden (``--set KEY=VALUE``).

``vae`` and ``unet`` hold one size per dimension: diffusers' AutoencoderKL and
UNet2DConditionModel for ``2d``, MONAI's AutoencoderKL and DiffusionModelUNet for ``3d``.
"""

from __future__ import annotations

from typing import Any

from brainsynth_plugins.training_core.schedules import NAMES

PRESETS: dict[str, dict[str, Any]] = {
    # Trains both stages on 2 CPU cores in a few minutes (2D 64x64 slices; 3D 4 mm volumes).
    "tiny": {
        "resolution": 64, "voxel_mm": 4.0,
        "vae": {
            "2d": {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16},
            "3d": {"channels": [8, 16, 16], "num_res_blocks": 1, "latent_channels": 3, "norm_num_groups": 8,
                   "attention_levels": [False, False, False]},
        },
        "unet": {
            "2d": {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 16,
                   "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                   "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]},
            "3d": {"channels": [32, 64], "num_res_blocks": 1, "attention_levels": [False, True], "num_head_channels": 16,
                   "norm_num_groups": 16},
        },
        "vae_steps": 300, "unet_steps": 600, "vae_lr": 1e-3, "unet_lr": 1e-3, "vae_batch_size": 4, "unet_batch_size": 16,
        "warmup_steps": 20, "checkpoint_every": 200,
    },
    # From scratch on one GPU: 2D 128x128 slices (latents 4x32x32); 3D 2 mm volumes (latents 3x26x30x24).
    "base": {
        "resolution": 128, "voxel_mm": 2.0,
        "vae": {
            "2d": {"block_out_channels": [64, 128, 256], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32},
            "3d": {"channels": [32, 64, 64], "num_res_blocks": 1, "latent_channels": 3, "norm_num_groups": 32,
                   "attention_levels": [False, False, False]},
        },
        "unet": {
            "2d": {"block_out_channels": [128, 256, 512], "layers_per_block": 2, "attention_head_dim": 8, "norm_num_groups": 32,
                   "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                   "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]},
            "3d": {"channels": [128, 256, 256], "num_res_blocks": 2, "attention_levels": [False, True, True],
                   "num_head_channels": 32, "norm_num_groups": 32},
        },
        "vae_steps": 20000, "unet_steps": 50000, "vae_lr": 1e-4, "unet_lr": 5e-5, "vae_batch_size": 8, "unet_batch_size": 16,
        "warmup_steps": 500, "checkpoint_every": 2000,
    },
}

#: Defaults common to all presets.
COMMON: dict[str, Any] = {
    "kl_weight": 1e-6, "conditioning_dropout": 0.1, "validation_steps": 20, "captions_per_image": 4, "checkpoints_total_limit": 2,
    "lr_scheduler": "constant_with_warmup", "lr_decay_fraction": 0.2, "mixed_precision": "no", "gradient_checkpointing": False,
    # Brain LDM / MONAI tutorials: linear betas 0.0015 .. 0.0195 over 1000 steps, epsilon prediction.
    "noise": {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
              "prediction_type": "epsilon", "clip_sample": False},
}

#: What each setting may be (checked after ``--set`` overrides, before anything is written).
_STEPS = 10_000_000
SCHEDULERS = NAMES
SETTINGS: dict[str, tuple] = {
    "resolution": ("int", 8, 4096), "voxel_mm": ("float", 0.25, 16),
    "vae_steps": ("int", 1, _STEPS), "unet_steps": ("int", 1, _STEPS),
    "vae_lr": ("float", 0, 1, True), "unet_lr": ("float", 0, 1, True),
    "vae_batch_size": ("int", 1, 4096), "unet_batch_size": ("int", 1, 4096),
    "warmup_steps": ("int", 0, _STEPS), "validation_steps": ("int", 1, 1000), "checkpoint_every": ("int", 0, _STEPS),
    "kl_weight": ("float", 0, 1000), "conditioning_dropout": ("float", 0, 1), "captions_per_image": ("int", 1, 100),
    "checkpoints_total_limit": ("int", 1, 1000), "lr_scheduler": ("choice", SCHEDULERS), "lr_decay_fraction": ("float", 0, 1),
    "mixed_precision": ("choice", ("no", "fp16", "bf16", "auto")), "gradient_checkpointing": ("bool",),
    "vae.block_out_channels": ("ints", 1, 4096, 1, 8), "vae.layers_per_block": ("int", 1, 16),
    "vae.latent_channels": ("int", 1, 64), "vae.norm_num_groups": ("int", 1, 1024),
    "vae.channels": ("ints", 1, 4096, 1, 8), "vae.num_res_blocks": ("int", 1, 16), "vae.attention_levels": ("bools", 1, 8),
    "unet.block_out_channels": ("ints", 1, 8192, 1, 8), "unet.layers_per_block": ("int", 1, 16),
    "unet.attention_head_dim": ("int", 1, 1024), "unet.norm_num_groups": ("int", 1, 1024),
    "unet.down_block_types": ("strs", 1, 8), "unet.up_block_types": ("strs", 1, 8),
    "unet.channels": ("ints", 1, 8192, 1, 8), "unet.num_res_blocks": ("int", 1, 16), "unet.attention_levels": ("bools", 1, 8),
    "unet.num_head_channels": ("int", 1, 1024),
    "noise.num_train_timesteps": ("int", 2, 10_000), "noise.beta_start": ("float", 0, 1, True), "noise.beta_end": ("float", 0, 1, True),
    "noise.beta_schedule": ("choice", ("linear", "scaled_linear", "squaredcos_cap_v2")),
    "noise.prediction_type": ("choice", ("epsilon", "v_prediction", "sample")), "noise.clip_sample": ("bool",),
}
