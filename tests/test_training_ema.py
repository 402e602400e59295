"""The UNet's EMA (diffusers' EMAModel) in checkpoints: saved by parameter name, restored exactly
on resume, and checkpoints of the hand-written EMA it replaced still load."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from brainsynth_plugins.training_core import checkpoints
from brainsynth_plugins.training_core.ema import ema_settings, ema_tensors, load_ema, new_ema
from brainsynth_plugins.training_core.trainer import StagedTrainer

from brainsynth_cli.errors import UserError

DECAY = 0.9


def _trainer(tmp_path):
    cfg = {"mixed_precision": "no", "lr_scheduler": "constant", "warmup_steps": 0, "checkpoints_total_limit": 2}
    return StagedTrainer(cfg, tmp_path / "model", device="cpu", progress=lambda *a: None)


def _parts(seed):
    """A model with float buffers besides its parameters (BatchNorm), its optimizer and an EMA."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, new_ema(model, DECAY)


def _step(model, opt, sched, gen, ema):
    loss = (model(torch.randn(8, 3, generator=gen)) ** 2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    ema.step(model.parameters())


def _copy(tensors):
    return {k: v.detach().clone() for k, v in tensors.items()}


def test_ema_weights_round_trip_through_a_checkpoint_and_resume_exactly(tmp_path):
    t = _trainer(tmp_path)
    model, opt, ema = _parts(0)
    sched = t._lr_scheduler(opt, total=10)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        _step(model, opt, sched, gen, ema)
    saved = _copy(ema_tensors(ema, model))
    assert not all(torch.equal(saved[k], v) for k, v in model.named_parameters())  # an average, not the weights
    t._save_checkpoint("unet", 3, {"model": model.state_dict(), "ema": ema_tensors(ema, model)}, {"model": opt},
                       sched, gen, extra={"ema": ema_settings(ema)})
    for _ in range(2):
        _step(model, opt, sched, gen, ema)
    expected = _copy(ema_tensors(ema, model))

    model2, opt2, ema2 = _parts(1)  # other starting weights and averages: all must come from the checkpoint
    sched2 = t._lr_scheduler(opt2, total=10)
    gen2 = torch.Generator().manual_seed(99)
    start = checkpoints.latest_checkpoint(t.out, "unet")
    step, data = t._restore(start, {"model": model2}, {"model": opt2}, sched2, gen2)
    assert step == 3 and data["state"]["ema"]["optimization_step"] == 3
    assert sorted(data["modules"]["ema"]) == sorted(n for n, _ in model.named_parameters())
    load_ema(ema2, model2, data["modules"]["ema"], data["state"])
    assert ema2.optimization_step == 3 and ema2.decay == DECAY
    assert all(torch.equal(saved[k], v) for k, v in ema_tensors(ema2, model2).items())
    for _ in range(2):
        _step(model2, opt2, sched2, gen2, ema2)
    assert all(torch.equal(expected[k], v) for k, v in ema_tensors(ema2, model2).items())


def test_a_checkpoint_of_the_hand_written_ema_still_loads(tmp_path):
    """Before EMAModel, checkpoints held every floating-point entry of the state dict (buffers
    too) by name as ema.safetensors, and the step as state.json's ema_step."""
    t = _trainer(tmp_path)
    model, opt, _ = _parts(0)
    sched = t._lr_scheduler(opt, total=10)
    gen = torch.Generator().manual_seed(5)
    old = {k: (v.detach().float() + 0.25 * (i + 1)) for i, (k, v) in enumerate(model.state_dict().items())
           if v.is_floating_point()}
    assert "1.running_mean" in old  # a buffer: the old format had them, EMAModel averages parameters only
    t._save_checkpoint("unet", 7, {"model": model.state_dict(), "ema": old}, {"model": opt}, sched, gen,
                       extra={"ema_step": 7})

    model2, opt2, ema2 = _parts(1)
    _, data = t._restore(checkpoints.latest_checkpoint(t.out), {"model": model2}, {"model": opt2},
                         t._lr_scheduler(opt2, total=10), torch.Generator())
    assert "ema" not in data["state"]
    load_ema(ema2, model2, data["modules"]["ema"], data["state"])
    assert ema2.optimization_step == 7 and ema2.decay == DECAY
    names = [n for n, _ in model2.named_parameters()]
    assert list(ema_tensors(ema2, model2)) == names
    assert all(torch.equal(old[n], v) for n, v in ema_tensors(ema2, model2).items())
    ema2.copy_to(model2.parameters())  # what the model is saved with at the end of training
    assert all(torch.equal(old[n], p) for n, p in model2.named_parameters())


def test_ema_weights_that_do_not_fit_the_model_are_refused_in_one_line():
    model, _, ema = _parts(0)
    tensors = {k: v for k, v in ema_tensors(ema, model).items() if k != "2.bias"}
    with pytest.raises(UserError, match="lack 1 of the model's parameters"):
        load_ema(ema, model, tensors, {"ema_step": 1})
