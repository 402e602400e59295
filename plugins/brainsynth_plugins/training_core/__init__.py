"""The training core shared by the built-in trainers (``ip2p`` and ``ldm``); not a plugin.

- :mod:`.trainer`: ``StagedTrainer``, the accelerator, LR schedule, loss log and checkpoint
  save/restore both trainers use;
- :mod:`.conditioning`: InstructPix2Pix's three-way conditioning dropout (2D and 3D ip2p);
- :mod:`.batches`: ``Batches``, batch contents as a pure function of (seed, step);
- :mod:`.checkpoints`: checkpoints as safetensors + JSON (no pickle), RNG state, damaged ones set aside;
- :mod:`.ema`: diffusers' ``EMAModel`` of a model's weights, in checkpoints by parameter name;
- :mod:`.loss_log`: ``logs/loss.csv``;
- :mod:`.tracking`: ``--report-to``, accelerate's experiment trackers (TensorBoard) besides loss.csv;
- :mod:`.run_folder`: ``checkpoints/run.json``, new-folder checks and ``--resume``;
- :mod:`.config`: ``--set`` overrides and the network-size check;
- :mod:`.runtime`: ``resolve_device`` and ``quiet`` (also used when a model is loaded).

Modules import torch, diffusers and accelerate inside functions only.
"""
