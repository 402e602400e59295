"""The training core shared by the ip2p and ldm trainers: batches, LR schedule, loss log,
checkpoints (round trip, damaged latest set aside), the run folder and ``--set`` overrides."""

from __future__ import annotations

import csv
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from brainsynth_plugins.training_core import checkpoints, run_folder
from brainsynth_plugins.training_core.batches import Batches
from brainsynth_plugins.training_core.config import apply_overrides, parse_setting, sizes_must_fit
from brainsynth_plugins.training_core.loss_log import append_log, trim_log
from brainsynth_plugins.training_core.trainer import StagedTrainer

from brainsynth_cli.errors import InputError, UserError


# -- batches -------------------------------------------------------------------------------------
def _stream(b: Batches, batches: int) -> list[int]:
    return [i for k in range(batches) for i in b(k)]


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = Batches(10, 5, seed=3), Batches(10, 5, seed=3)
    assert [a(k) for k in (0, 7, 2, 7)] == [b(k) for k in (0, 7, 2, 7)]  # any order of asking
    assert _stream(Batches(10, 5, seed=3), 4) != _stream(Batches(10, 5, seed=4), 4)


def test_every_index_once_per_epoch_even_across_batch_boundaries():
    n, batch = 10, 4  # batches straddle the epochs
    flat = _stream(Batches(n, batch, seed=1), 10)  # 40 indices = 4 epochs
    epochs = [flat[e * n : (e + 1) * n] for e in range(4)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a new permutation each epoch


def test_ranks_take_disjoint_shards_of_the_single_process_stream():
    n, batch, world = 12, 3, 2
    one = Batches(n, batch, seed=5)
    ranks = [Batches(n, batch, seed=5, rank=r, world=world) for r in range(world)]
    for k in range(6):
        assert ranks[0](k) == one(2 * k) and ranks[1](k) == one(2 * k + 1)
    epoch = [i for k in range(2) for r in ranks for i in r(k)]  # 2 steps x 2 ranks x 3 = one epoch
    assert sorted(epoch) == list(range(n))
    assert not set(ranks[0](0) + ranks[0](1)) & set(ranks[1](0) + ranks[1](1))


# -- the trainer's shared machinery -------------------------------------------------------------
def _trainer(tmp_path, **cfg):
    base = {"mixed_precision": "no", "lr_scheduler": "constant_with_warmup", "warmup_steps": 2, "checkpoints_total_limit": 2}
    return StagedTrainer({**base, **cfg}, tmp_path / "model", device="cpu", progress=lambda *a: None)


def _lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_lr_schedule_warms_up_then_follows_its_shape(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    linear = _trainer(tmp_path, lr_scheduler="linear", warmup_steps=2)._lr_scheduler(opt, total=6)
    assert _lrs(linear, opt, 7) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    opt = torch.optim.SGD([p], lr=1.0)
    # accelerate steps the scheduler once per process: with 2 processes warm-up lasts 4 scheduler steps
    const = _trainer(tmp_path, warmup_steps=2)._lr_scheduler(opt, total=6, world=2)
    assert _lrs(const, opt, 6) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    opt = torch.optim.SGD([p], lr=1.0)
    cosine = _trainer(tmp_path, warmup_steps=0)._lr_scheduler(opt, total=4, name="cosine")
    assert _lrs(cosine, opt, 5) == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)


def test_loss_log_appends_and_trims_back_to_a_checkpoint(tmp_path):
    fields = ("stage", "step", "loss", "lr")
    log = tmp_path / "logs" / "loss.csv"
    for stage, steps in (("vae", 4), ("unet", 3)):
        for s in range(1, steps + 1):
            append_log(log, fields, {"stage": stage, "step": s, "loss": 1 / 3, "lr": 0.001})

    def rows():
        with open(log, newline="") as fh:
            return [(r["stage"], int(r["step"])) for r in csv.DictReader(fh)]

    assert log.read_text().splitlines()[:2] == ["stage,step,loss,lr", "vae,1,0.333333,0.001"]
    trim_log(log, fields, "unet", 1)  # resuming stage 2 from its step-1 checkpoint keeps all of stage 1
    assert rows() == [("vae", 1), ("vae", 2), ("vae", 3), ("vae", 4), ("unet", 1)]
    trim_log(log, fields, "vae", 2)  # resuming stage 1: stage 2 rows go as well
    assert rows() == [("vae", 1), ("vae", 2)]


def _parts(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt


def _train_step(model, opt, sched, gen):
    x = torch.randn(4, 3, generator=gen) + torch.rand(1)  # the run's generator and torch's global RNG
    loss = (model(x) ** 2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return torch.randn(1, generator=gen)


def test_warmup_stable_decay_holds_the_rate_then_decays_to_zero_and_resumes(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    wsd = _trainer(tmp_path, lr_scheduler="warmup_stable_decay", warmup_steps=2, lr_decay_fraction=0.4)._lr_scheduler(opt, total=10)
    assert _lrs(wsd, opt, 11) == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    # a restored schedule continues where it stopped (its state is its step count)
    opt = torch.optim.SGD([p], lr=1.0)
    first = _trainer(tmp_path, lr_scheduler="warmup_stable_decay", warmup_steps=2, lr_decay_fraction=0.4)._lr_scheduler(opt, total=10)
    _lrs(first, opt, 7)
    opt2 = torch.optim.SGD([p], lr=1.0)
    again = _trainer(tmp_path, lr_scheduler="warmup_stable_decay", warmup_steps=2, lr_decay_fraction=0.4)._lr_scheduler(opt2, total=10)
    again.load_state_dict(first.state_dict())
    opt2.step()
    again.step()
    assert again.get_last_lr()[0] == pytest.approx(0.5)
    # with 2 processes accelerate steps it twice per step: warm-up and decay last twice as many calls
    opt3 = torch.optim.SGD([p], lr=1.0)
    two = _trainer(tmp_path, lr_scheduler="warmup_stable_decay", warmup_steps=1, lr_decay_fraction=0.5)._lr_scheduler(opt3, total=2, world=2)
    assert _lrs(two, opt3, 4) == pytest.approx([0.0, 0.5, 1.0, 0.5])


def test_checkpoint_round_trip_continues_exactly(tmp_path):
    t = _trainer(tmp_path)
    model, opt = _parts()
    sched = t._lr_scheduler(opt, total=10)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        _train_step(model, opt, sched, gen)
    t._save_checkpoint("unet", 3, {"model": model.state_dict()}, {"model": opt}, sched, gen, extra={"ema_step": 3})
    lr_at_3 = sched.get_last_lr()
    after = [_train_step(model, opt, sched, gen) for _ in range(2)]
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2 = _parts(seed=1)  # different starting weights: all must come from the checkpoint
    sched2 = t._lr_scheduler(opt2, total=10)
    gen2 = torch.Generator().manual_seed(99)
    start = checkpoints.latest_checkpoint(t.out, "unet")
    assert start is not None and start.path.name == "unet-0000003"
    step, data = t._restore(start, {"model": model2}, {"model": opt2}, sched2, gen2)
    assert step == 3 and data["state"]["ema_step"] == 3 and sched2.get_last_lr() == lr_at_3
    again = [_train_step(model2, opt2, sched2, gen2) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(after, again))
    assert all(torch.equal(expected[k], v) for k, v in model2.state_dict().items())
    names = sorted(f.name for f in start.path.iterdir())
    assert names == ["model.safetensors", "optimizer-model.safetensors", "rng.safetensors", "state.json"]


def test_only_the_last_checkpoints_per_stage_are_kept(tmp_path):
    t = _trainer(tmp_path, checkpoints_total_limit=2)
    model, opt = _parts()
    sched = t._lr_scheduler(opt, total=10)
    gen = torch.Generator().manual_seed(0)
    for stage, step in (("vae", 2), ("vae", 4), ("vae", 6), ("unet", 2)):
        t._save_checkpoint(stage, step, {"model": model.state_dict()}, {"model": opt}, sched, gen)
    found = [(c.stage, c.step) for c in checkpoints.list_checkpoints(t.out)]
    assert found == [("vae", 4), ("vae", 6), ("unet", 2)]
    assert checkpoints.latest_checkpoint(t.out) == checkpoints.list_checkpoints(t.out)[-1]
    assert checkpoints.latest_checkpoint(t.out, "vae").step == 6
    assert not list((t.out / "checkpoints").glob(".tmp-*"))


def test_resume_sets_a_truncated_latest_checkpoint_aside(tmp_path, capsys):
    t = _trainer(tmp_path)
    run_folder.write_run(t.out, {"seed": 1, "stage": "all"})
    model, opt = _parts()
    sched = t._lr_scheduler(opt, total=10)
    gen = torch.Generator().manual_seed(0)
    for step in (2, 4):
        t._save_checkpoint("unet", step, {"model": model.state_dict()}, {"model": opt}, sched, gen)
    latest = t.out / "checkpoints" / "unet-0000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:-5])
    assert run_folder.resume_run(t.out) == {"seed": 1, "stage": "all"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet-0000004 is unreadable (model.safetensors is truncated" in err[0] and "resuming from unet-0000002" in err[0]
    assert checkpoints.latest_checkpoint(t.out).path.name == "unet-0000002"
    assert (t.out / "checkpoints" / ".unreadable-unet-0000004").is_dir()
    # the only checkpoint left is damaged too: one-line error, nothing moved
    (t.out / "checkpoints" / "unet-0000002" / "rng.safetensors").write_bytes(b"\x00")
    with pytest.raises(InputError, match="cannot be resumed from .*no earlier checkpoint is readable"):
        run_folder.resume_run(t.out)
    assert (t.out / "checkpoints" / "unet-0000002").is_dir()


def test_run_folder_checks(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(InputError, match="no checkpoints/run.json"):
        run_folder.resume_run(out)
    run_folder.write_run(out, {"a": 1})
    assert json.loads((out / "checkpoints" / "run.json").read_text()) == {"a": 1}
    with pytest.raises(InputError, match="exists and is not empty"):
        run_folder.refuse_not_empty(out)
    (out / "brainsynth.json").write_text("{}")
    with pytest.raises(InputError, match="holds a finished model"):
        run_folder.resume_run(out)
    (out / "checkpoints" / "run.json").write_text("[1]")
    with pytest.raises(InputError, match="not a readable run file"):
        run_folder.load_run(out)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run_folder.refuse_file(tmp_path / "f")
    run_folder.refuse_not_empty(tmp_path / "new")  # a folder that does not exist yet is fine


# -- configuration -------------------------------------------------------------------------------
def test_set_overrides_parse_and_refuse_unknown_or_fixed_keys():
    assert parse_setting("16,32") == [16, 32] and parse_setting("1e-3") == 0.001 and parse_setting("cosine") == "cosine"
    cfg = {"lr": 1.0, "vae": {"block_out_channels": [64]}, "seed": 0, "data": "/x", "preset": "tiny"}
    apply_overrides(cfg, {"lr": "0.5", "vae.block_out_channels": "16,32", "seed": 3})
    assert cfg["lr"] == 0.5 and cfg["vae"]["block_out_channels"] == [16, 32] and cfg["seed"] == 3
    with pytest.raises(UserError) as e:
        apply_overrides(cfg, {"nonsense": "1"}, unlisted=("data",))
    assert str(e.value) == "--set nonsense: unknown setting; known: lr, preset, seed, vae (model sizes as vae.KEY / unet.KEY)"
    with pytest.raises(UserError, match="--set seed: unknown setting; known: lr, vae "):
        apply_overrides(cfg, {"seed": "1"}, fixed=("seed", "data"), unlisted=("preset",))
    with pytest.raises(UserError, match="--set lr.x: unknown setting"):
        apply_overrides(cfg, {"lr.x": "1"})


def test_sizes_must_fit_builds_on_meta_and_fails_in_one_line():
    with sizes_must_fit():
        layer = torch.nn.Linear(1000, 1000)
    assert layer.weight.device.type == "meta"
    with pytest.raises(UserError) as e, sizes_must_fit():
        torch.nn.GroupNorm(8, 12)  # 12 channels in 8 groups
    msg = str(e.value)
    assert msg.startswith("the model sizes do not fit together (") and "\n" not in msg and "--set vae.*/unet.*" in msg
    with pytest.raises(UserError, match="^own message$"), sizes_must_fit():
        raise UserError("own message")


def test_validation_rows_show_one_prompt_after_another() -> None:
    from types import SimpleNamespace

    from brainsynth_plugins.ip2p.training import one_per_prompt

    rows = [SimpleNamespace(prompt=p, n=i) for i, p in enumerate(["a", "a", "a", "b", "b", "c"])]
    assert [r.n for r in one_per_prompt(rows, 4)] == [0, 3, 5, 1]
    assert [r.n for r in one_per_prompt(rows, 10)] == [0, 3, 5, 1, 4, 2]
    assert one_per_prompt(rows, 0) == [] and one_per_prompt([], 4) == []


def test_high_timestep_sampling_puts_more_of_the_batch_at_high_noise():
    import torch
    from brainsynth_plugins.ip2p.training import training_timesteps

    g = torch.Generator().manual_seed(0)
    uni = training_timesteps("uniform", 1000, 20000, g, "cpu")
    high = training_timesteps("high", 1000, 20000, g, "cpu")
    assert int(high.min()) >= 0 and int(high.max()) <= 999
    # density 2t/T: P(t >= T/2) = 3/4 against 1/2 for uniform
    assert abs(float((high >= 500).float().mean()) - 0.75) < 0.02
    assert abs(float((uni >= 500).float().mean()) - 0.5) < 0.02


# -- mixed precision -----------------------------------------------------------------------------
def test_mixed_precision_auto_is_bf16_only_where_native(monkeypatch):
    from brainsynth_plugins.training_core import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device: device == "cpu")
    assert runtime.resolve_mixed_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert runtime.resolve_mixed_precision("auto", "cpu") == "no"
    assert runtime.resolve_mixed_precision("bf16", "cpu") == "bf16"  # asked for: given, emulated or not
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        runtime.resolve_mixed_precision("fp16", "cpu")
    with pytest.raises(UserError, match="must be no, fp16, bf16 or auto"):
        runtime.resolve_mixed_precision("half", "cpu")


def test_native_bf16_reads_the_cpu_flags():
    from pathlib import Path

    from brainsynth_plugins.training_core.runtime import native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = cpuinfo.read_text().split()
    assert native_bf16("cpu") == ("avx512_bf16" in flags or "amx_tile" in flags)
    assert native_bf16("mps") is False


def test_out_of_memory_becomes_one_line_naming_the_preset_and_a_smaller_batch():
    from brainsynth_plugins.training_core.memory import out_of_memory_advice

    from brainsynth_cli.errors import UserError

    cfg = {"preset": "base", "mixed_precision": "no", "gradient_checkpointing": False}
    with pytest.raises(UserError) as err, out_of_memory_advice(cfg, "unet", 32, "cuda"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert str(err.value) == ("out of GPU memory in stage unet (base preset, batch 32 per process); train again into a new folder "
                              "with --batch-size 16 or --gradient-checkpointing or --mixed-precision bf16")
    with (pytest.raises(UserError, match=r"out of memory in stage vae \(tiny preset, batch 8 per process\); .*--batch-size 4$"),
          out_of_memory_advice({**cfg, "preset": "tiny", "gradient_checkpointing": True}, "vae", 8, "cpu")):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    with pytest.raises(RuntimeError, match="shape mismatch"), out_of_memory_advice(cfg, "vae", 8, "cpu"):  # the rest is not translated
        raise RuntimeError("shape mismatch")


def test_train_out_of_memory_is_exit_2_and_one_line(tmp_path, monkeypatch, capsys):
    from brainsynth_plugins.ip2p import training
    from test_train_pairs import FAST, make_pairs

    from brainsynth_cli.main import run

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)

    def too_big(self, start):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training.Trainer, "train_vae", too_big)
    code = run(["train", str(pairs), "-o", str(tmp_path / "m"), *FAST, "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("brainsynth: error: out of memory in stage vae (tiny preset, batch 4 per process)")


# -- attention kernel while training on the CPU ------------------------------------------------
def _tiny_attention_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, in_channels=2, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                                attention_head_dim=4, norm_num_groups=4, cross_attention_dim=12,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


def test_training_attention_is_the_same_attention_with_the_same_gradients():
    from brainsynth_plugins.training_core.attention import ShortSequenceAttention, train_attention

    fused, short = _tiny_attention_unet(), _tiny_attention_unet()
    assert train_attention(short, "cpu")
    assert all(isinstance(p, ShortSequenceAttention) for p in short.attn_processors.values())
    x, t, text = torch.randn(3, 2, 16, 16), torch.tensor([10, 500, 990]), torch.randn(3, 5, 12)
    out_f, out_s = fused(x, t, text).sample, short(x, t, text).sample
    assert torch.allclose(out_f, out_s, atol=1e-5)
    out_f.square().mean().backward()
    out_s.square().mean().backward()
    grads = [(a.grad, b.grad) for a, b in zip(fused.parameters(), short.parameters()) if a.grad is not None]
    assert len(grads) == len(list(fused.parameters()))
    assert max(float((a - b).abs().max() / (a.abs().max() + 1e-12)) for a, b in grads) < 1e-4


def test_training_attention_picks_the_classic_kernel_only_for_short_sequences_with_gradients():
    from brainsynth_plugins.training_core.attention import SHORT, ShortSequenceAttention, train_attention
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    proc = ShortSequenceAttention()
    positions = torch.zeros(2, 256, 8)  # 16x16 latents
    assert isinstance(proc.pick(positions), AttnProcessor)  # self-attention, 256 x 256 = SHORT
    assert isinstance(proc.pick(positions, torch.zeros(2, 64, 8)), AttnProcessor)  # to 64 text tokens
    assert isinstance(proc.pick(torch.zeros(2, 1024, 8)), AttnProcessor2_0)  # 32x32: the fused kernel
    assert isinstance(proc.pick(torch.zeros(2, 8, 16, 16)), AttnProcessor)  # an image's 256 positions
    assert isinstance(proc.pick(torch.zeros(2, 8, 32, 32)), AttnProcessor2_0)
    with torch.no_grad():  # validation images and edits: the fused kernel
        assert isinstance(proc.pick(positions), AttnProcessor2_0)
    assert SHORT == 256 * 256
    unet = _tiny_attention_unet()
    assert not train_attention(unet, "cuda")  # GPUs keep the fused kernel
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert not train_attention(torch.nn.Linear(2, 2), "cpu")  # no diffusers attention (e.g. MONAI's)
