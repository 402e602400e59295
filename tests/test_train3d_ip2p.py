"""`brainsynth train PAIRS --dim 3d` (3D InstructPix2Pix, MONAI networks) and `brainsynth edit` with it.

A simulated 3-subject cohort at 4 mm, made into 3D pairs with its truth labels; a model far
smaller than the `tiny` preset (8 mm grid, a few steps) is trained twice with the same seed.
The edits are not good; the plumbing, the grid, determinism, the conditioning and the edit
path's guarantees are checked on real results.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

#: An 8 mm grid of 24 x 32 x 24 voxels (192 x 256 x 192 mm), f=2 autoencoder, 2-level UNet, a few steps.
SMALL = ["--dim", "3d", "--device", "cpu", "--seed", "3", "--set", "voxel_mm=8", "--set", "grid=24,32,24",
         "--set", "vae.channels=8,8", "--set", "vae.attention_levels=false,false",
         "--set", "unet.channels=16,32", "--set", "unet.attention_levels=false,true", "--set", "unet.num_head_channels=16",
         "--set", "vae_steps=3", "--set", "unet_steps=3", "--set", "warmup_steps=1", "--batch-size", "2"]
TRAINED = "mild ventricle enlargement"


def run_cli(*args) -> tuple[int, str, str]:
    import torch

    from brainsynth_cli.main import run

    err, out = io.StringIO(), io.StringIO()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = run([str(a) for a in args])
    finally:
        torch.set_num_threads(n)
    return code, out.getvalue(), err.getvalue()


def make_pairs3d(d: Path, split: str, *extra: str) -> tuple[Path, Path, Path]:
    """A 3-subject 4 mm cohort simulated into ``d`` and its 3D pairs (copy-paste blender, no
    montage): (cohort, truth labels, pairs folder)."""
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    simulate_cohort(d / "cohort", subjects=3, sessions=2, resolution=4.0, seed=2)
    truth = d / "cohort" / "derivatives" / "brainsynth-truth"
    code, _, err = run_cli("make-pairs", d / "cohort", "-o", d / "pairs", "--labels", truth, "--dim", "3d",
                           "--split", split, "--blender", "copy-paste", "--montage", "0", *extra)
    assert code == 0, err
    return d / "cohort", truth, d / "pairs"


@pytest.fixture(scope="module")
def pairs3d(tmp_path_factory):
    return make_pairs3d(tmp_path_factory.mktemp("ip2p3d"), "2:1:0")


@pytest.fixture(scope="module")
def models(pairs3d, tmp_path_factory):
    _, _, pairs = pairs3d
    d = tmp_path_factory.mktemp("models3d")
    for name in ("a", "b"):
        code, _, err = run_cli("train", pairs, "-o", d / name, *SMALL)
        assert code == 0, err
    return d / "a", d / "b"


def _rows(pairs: Path) -> list[dict]:
    return [json.loads(line) for line in (pairs / "metadata.jsonl").read_text().splitlines()]


def test_model_folder_layout_and_record(models, pairs3d):
    model, _ = models
    info = json.loads((model / "brainsynth.json").read_text())
    assert info["generator"] == "instruct-pix2pix" and info["dims"] == ["3d"]
    assert info["grid"]["shape"] == [24, 32, 24] and info["grid"]["voxel_mm"] == 8.0
    assert info["latent"]["shape"] == [4, 12, 16, 12] and info["latent"]["scaling_factor"] > 0
    rec = info["vae_reconstruction"]
    assert rec["split"] == "validation" and rec["volumes"] >= 2 and np.isfinite(rec["psnr"]) and -1 <= rec["ssim"] <= 1
    train_rows = [r for r in _rows(pairs3d[2]) if r["split"] == "train"]
    assert info["prompts"] == sorted({r["edit_prompt"] for r in train_rows}) and TRAINED in info["prompts"]
    assert info["intervals"]["ventricle"] == ["mild"]
    assert set(info["sampling"]) == {"steps", "scheduler", "guidance_scale", "image_guidance_scale", "guidance_reference",
                                     "change_floor", "feather", "blender"}
    assert info["text_encoder"]["name"] == "minilm" and info["text_encoder"]["hidden_size"] == 384
    for part, cls in (("vae", "AutoencoderKL"), ("unet", "DiffusionModelUNet")):
        cfg = json.loads((model / part / "config.json").read_text())
        assert cfg["_class_name"] == f"monai.networks.nets.{cls}"
    unet_cfg = json.loads((model / "unet" / "config.json").read_text())
    unet = unet_cfg["kwargs"]
    assert unet["in_channels"] == 8 and unet["out_channels"] == 4 and unet["cross_attention_dim"] == 384
    assert unet_cfg["pooled_text"] == {"width": 384, "heads": 64}  # the tiny preset's pooled prompt
    weights = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pkl"))
    assert weights == ["text_encoder/model.safetensors", "unet/model.safetensors", "vae/model.safetensors"]
    assert (model / "tokenizer" / "tokenizer_config.json").is_file()
    assert info["text_encoder"]["folder"] == ["text_encoder", "tokenizer"]
    assert not (model / "checkpoints").exists()
    assert (model / "validation" / "vae.png").stat().st_size > 0 and (model / "validation" / "unet.png").stat().st_size > 0
    loss = (model / "logs" / "loss.csv").read_text().splitlines()
    assert sum(line.startswith("vae,") for line in loss) == 3 and sum(line.startswith("unet,") for line in loss) == 3


def test_same_seed_same_weights(models):
    a, b = models
    for part in ("vae", "unet"):
        assert (a / part / "model.safetensors").read_bytes() == (b / part / "model.safetensors").read_bytes()


def test_training_and_edit_see_and_condition_the_same(models, pairs3d):
    """The model-grid volume and the prior latent the trainer feeds the UNet are what `edit` builds
    from the same volume: the posterior's mode, unscaled (the target is diffused on mode x scaling)."""
    import torch
    from brainsynth_plugins.ip2p import volume_nets as vn
    from brainsynth_plugins.ip2p import volume_training as vt
    from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

    from brainsynth_cli.interfaces import TrainOptions

    model, _ = models
    _, _, pairs = pairs3d
    extra = {"dim": "3d", "set": dict(s.split("=", 1) for s in SMALL[7::2] if "=" in s)}
    cfg = vt.build_config(TrainOptions(data=pairs, output=model, seed=3, device="cpu", extra=extra))
    trainer = vt.VolumeTrainer(cfg, model, vt.read_volume_pairs(pairs), device="cpu", progress=lambda *a: None)
    trainer.check()
    trainer.load_volumes()
    row = trainer.train_pairs[0]
    m = VolumeIP2PModel(model, "cpu")
    vol, spacing = vt.read_canonical(row.prior)
    lab, _ = vt.read_canonical(row.path("input_labels_file_name"), labels=True)
    _, seen = vn.model_view(vol, lab, spacing, m.grid, m.voxel_mm)
    assert np.array_equal(seen, trainer.images[row.prior])
    ours = trainer.latents(m.vae, [row.prior], "cpu")[row.prior]
    with torch.no_grad():
        theirs = m.conditioning(torch.from_numpy(seen)[None, None] * 2 - 1)[0]
        mu, _ = m.vae.encode(torch.from_numpy(seen)[None, None] * 2 - 1)
    assert torch.equal(ours, theirs) and torch.equal(theirs, mu[0])
    assert m.scaling_factor != 1.0


def test_pooled_prompt_is_added_to_the_time_embedding(models):
    """The UNet's class-embedding slot holds the pooled prompt (diffusers' TextTimeEmbedding, as the
    2D tiny model's addition_embed_type=text): it is called on the prompt's tokens, two prompts
    pool differently, and what it returns changes the prediction."""
    import torch
    from brainsynth_plugins.ip2p import volume_nets as vn
    from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel
    from diffusers.models.embeddings import TextTimeEmbedding

    model, _ = models
    m = VolumeIP2PModel(model, "cpu")
    assert isinstance(m.unet.class_embedding, TextTimeEmbedding)
    emb = vn.embed_prompts(m.tokenizer, m.text_model, [TRAINED, "cortex atrophy"], "cpu")
    g = torch.Generator().manual_seed(0)
    x, prior = (torch.randn((1, 4, 12, 16, 12), generator=g) for _ in range(2))
    t = torch.tensor([900])
    seen = []

    def record(module, args, out):
        seen.append(args[0])

    def zero(module, args, out):
        return torch.zeros_like(out)

    with torch.no_grad():
        hook = m.unet.class_embedding.register_forward_hook(record)
        a = vn.unet_forward(m.unet, x, prior, t, emb[:1])
        hook.remove()
        assert len(seen) == 1 and torch.equal(seen[0], emb[:1])
        pooled = m.unet.class_embedding(emb)
        assert pooled.shape == (2, 64) and not torch.allclose(pooled[0], pooled[1], atol=1e-4)
        hook = m.unet.class_embedding.register_forward_hook(zero)
        b = vn.unet_forward(m.unet, x, prior, t, emb[:1])
        hook.remove()
    assert not torch.allclose(a, b, atol=1e-5)


def test_intensity_curves_are_monotone_repeatable_and_recorded(models, pairs3d, tmp_path):
    """intensity_curves=K: each curve keeps 0 and 1, is monotone, is the same for the same
    (seed, prior, k) and differs between k; curve 0 is the identity; a prompt group shares one
    curve; a run records K and its jitter (the tiny preset's 4) and learns other weights than
    without curves (--set intensity_curves=0)."""
    from brainsynth_plugins.ip2p import volume_augment as aug

    x = np.linspace(0, 1, 101, dtype=np.float32)
    ident = aug.apply(x, aug.curve(3, 0, 0, 0.2))
    assert np.array_equal(ident, x)
    for k in (1, 2, 3):
        knots = aug.curve(3, 5, k, 0.2)
        y = aug.apply(x, knots)
        assert y[0] == 0 and y[-1] == 1 and np.all(np.diff(y) >= 0) and not np.allclose(y, x)
        assert np.array_equal(knots[1], aug.curve(3, 5, k, 0.2)[1])
        assert np.max(np.abs(knots[1] - knots[0])) <= 0.2 + 1e-9  # sorting keeps every knot within the jitter
    assert not np.array_equal(aug.curve(3, 5, 1, 0.2)[1], aug.curve(3, 5, 2, 0.2)[1])
    together = aug.step_choice(3, 7, 4, 4, together=True)
    assert len(set(together)) == 1 and 0 <= together[0] <= 4
    assert aug.step_choice(3, 7, 4, 4, together=False) == aug.step_choice(3, 7, 4, 4, together=False)
    _, _, pairs = pairs3d
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "k", *SMALL, "--set", "intensity_curves=0")
    assert code == 0, err
    training = json.loads((tmp_path / "k" / "brainsynth.json").read_text())["training"]
    assert training["intensity_curves"] == 0
    curved, _ = models  # the tiny preset's 4 curves
    recorded = json.loads((curved / "brainsynth.json").read_text())["training"]
    assert recorded["intensity_curves"] == 4 and recorded["intensity_jitter"] == 0.2
    for part in ("vae", "unet"):
        assert (tmp_path / "k" / part / "model.safetensors").read_bytes() != (curved / part / "model.safetensors").read_bytes()


def test_centred_prompts_are_saved_with_the_weights(models, pairs3d, tmp_path):
    """``unet.centre_text``: the UNet sees (tokens - mean of the pairs' prompts' tokens) / spread;
    the centring is recorded in config.json and stored with the weights, so a loaded model centres
    exactly as training did. Without it (the default) nothing is stored."""
    import torch
    from brainsynth_plugins.ip2p import volume_nets as vn
    from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

    _, _, pairs = pairs3d
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "c", *SMALL, "--set", "unet_steps=2", "--set", "unet.centre_text=true")
    assert code == 0, err
    cfg = json.loads((tmp_path / "c" / "unet" / "config.json").read_text())
    m = VolumeIP2PModel(tmp_path / "c", "cpu")
    assert cfg["text_centre"] == {"tokens": m.tokenizer.model_max_length, "width": 384}
    prompts = sorted({r["edit_prompt"] for r in _rows(pairs)})
    tokens = vn.embed_prompts(m.tokenizer, m.text_model, prompts, "cpu")
    assert torch.allclose(m.unet.text_centre, tokens.mean(0), atol=1e-5)
    assert float(m.unet.text_scale) == pytest.approx(1 / float((tokens - tokens.mean(0)).std()), rel=1e-4)
    g = torch.Generator().manual_seed(0)
    x, prior = (torch.randn((1, 4, 12, 16, 12), generator=g) for _ in range(2))
    t = torch.tensor([900])
    emb = vn.embed_prompts(m.tokenizer, m.text_model, [TRAINED], "cpu")
    with torch.no_grad():
        got = vn.unet_forward(m.unet, x, prior, t, emb)
        seen = (emb - m.unet.text_centre) * m.unet.text_scale
        want = vn.nets.denoise(m.unet, "3d", torch.cat([x, prior], 1), t, seen, class_labels=seen)
        want = want + prior * m.unet.prior_scale  # the preset's prior skip, added after the network
        pooled_seen, pooled_raw = m.unet.class_embedding(seen), m.unet.class_embedding(emb)
    assert torch.equal(got, want)
    assert (pooled_seen - pooled_raw).abs().max() > 0.1  # what the time embedding gets differs (not only by a scale)
    assert "text_centre" in m.unet.state_dict()
    plain, _ = models  # trained without it
    assert "text_centre" not in json.loads((plain / "unet" / "config.json").read_text())
    assert "text_centre" not in VolumeIP2PModel(plain, "cpu").unet.state_dict()


def _strip_to_old_folder(model: Path, old: Path) -> None:
    """``old``: ``model`` as brainsynth wrote 3D folders before the pooled prompt and the copied text
    encoder (no class embedding in the UNet, no text_encoder/ and tokenizer/)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, old)
    for part in ("text_encoder", "tokenizer"):
        shutil.rmtree(old / part)
    cfg = json.loads((old / "unet" / "config.json").read_text())
    del cfg["pooled_text"]
    (old / "unet" / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(old / "unet" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("class_embedding.")}, str(old / "unet" / "model.safetensors"))
    info = json.loads((old / "brainsynth.json").read_text())
    del info["text_encoder"]["folder"]
    (old / "brainsynth.json").write_text(json.dumps(info))


def test_prior_skip_makes_the_untrained_unet_the_identity_and_is_saved(models, pairs3d, tmp_path):
    """``unet.prior_skip``: the UNet's output is the prior's latent (times the latent's scaling
    factor) plus the network's, so an untrained network (MONAI zero-initialises its last
    convolution) predicts the input unchanged; the scale is stored with the weights and a loaded
    model adds exactly it (the tiny preset has the skip). Without it (``--set unet.prior_skip=false``)
    nothing is stored. With epsilon prediction it is refused before anything is written."""
    import torch
    from brainsynth_plugins.ip2p import volume_nets as vn
    from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

    size = {"channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 8,
            "norm_num_groups": 8, "pooled_text": True}
    g = torch.Generator().manual_seed(1)
    x, prior = (torch.randn((2, 4, 8, 8, 8), generator=g) for _ in range(2))
    text, t = torch.randn((2, 6, 384), generator=g), torch.tensor([999, 10])
    fresh = vn.add_prior_skip(vn.build_unet(size, 4, 384), 0.8)
    with torch.no_grad():
        assert torch.equal(vn.unet_forward(fresh, x, prior, t, text), prior * torch.tensor(0.8))
        assert torch.equal(vn.unet_forward(fresh, x, torch.zeros_like(prior), t, text), torch.zeros_like(prior))

    _, _, pairs = pairs3d
    skip, _ = models  # the tiny preset's
    assert json.loads((skip / "unet" / "config.json").read_text())["prior_skip"] is True
    m = VolumeIP2PModel(skip, "cpu")
    scale = json.loads((skip / "brainsynth.json").read_text())["latent"]["scaling_factor"]
    assert float(m.unet.prior_scale) == pytest.approx(scale, rel=1e-6)
    x, prior = (torch.randn((1, 4, 12, 16, 12), generator=g) for _ in range(2))
    emb = vn.embed_prompts(m.tokenizer, m.text_model, [TRAINED], "cpu")
    with torch.no_grad():
        got = vn.unet_forward(m.unet, x, prior, torch.tensor([900]), emb)
        net = vn.nets.denoise(m.unet, "3d", torch.cat([x, prior], 1), torch.tensor([900]), emb, class_labels=emb)
    assert torch.allclose(got - net, prior * m.unet.prior_scale, atol=1e-5) and (got - net).abs().max() > 0.1
    plain = tmp_path / "plain"
    code, _, err = run_cli("train", pairs, "-o", plain, *SMALL, "--set", "unet_steps=2", "--set", "unet.prior_skip=false")
    assert code == 0, err
    assert "prior_skip" not in json.loads((plain / "unet" / "config.json").read_text())
    assert "prior_scale" not in VolumeIP2PModel(plain, "cpu").unet.state_dict()

    code, _, err = run_cli("train", pairs, "-o", tmp_path / "eps", *SMALL, "--set", "prediction_type=epsilon")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "prediction_type=sample" in err and "prior_skip=false" in err
    assert not (tmp_path / "eps").exists()


def test_model_folder_is_self_contained_and_old_folders_load(models, pairs3d, tmp_path):
    """An edit reads the text encoder from the model folder: the same bytes when the encoder's name
    in brainsynth.json names no plugin. A folder of the earlier layout still loads and edits."""
    import shutil

    from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

    model, _ = models
    cohort, truth, _ = pairs3d
    src = next(cohort.glob("sub-*/ses-01/anat/*_T1w.nii.gz"))
    lab = next((truth / src.name.split("_")[0] / "ses-01" / "anat").glob("*_dseg.nii.gz"))
    alone = tmp_path / "alone"
    shutil.copytree(model, alone)
    info = json.loads((alone / "brainsynth.json").read_text())
    info["text_encoder"] = {**info["text_encoder"], "name": "no-such-encoder", "path": str(tmp_path / "gone")}
    (alone / "brainsynth.json").write_text(json.dumps(info))
    old = tmp_path / "old"
    _strip_to_old_folder(model, old)
    outs = {}
    for name, folder in (("model", model), ("alone", alone), ("old", old)):
        outs[name] = tmp_path / f"{name}.nii.gz"
        code, _, err = run_cli("edit", folder, src, "--labels", lab, "--prompt", TRAINED, "-o", outs[name], "--steps", 2, "--seed", 1)
        assert code == 0, err
    assert outs["model"].read_bytes() == outs["alone"].read_bytes()
    assert outs["model"].read_bytes() != outs["old"].read_bytes()  # without its pooled prompt the UNet predicts otherwise
    assert VolumeIP2PModel(old, "cpu").unet.num_class_embeds is None


def test_autoencoder_on_its_mode_with_its_own_schedule(models, pairs3d, tmp_path):
    """``vae_latent=mode`` trains the autoencoder on the posterior mean (the latent the UNet sees,
    no sampling noise) and ``vae_lr_scheduler`` gives stage 1 its own schedule; an unknown value is
    refused in one line before anything is written."""
    _, _, pairs = pairs3d
    a, _ = models
    steps = ["--set", "vae_steps=6", "--set", "unet_steps=1"]
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "m", *SMALL, *steps, "--set", "vae_latent=mode",
                           "--set", "vae_lr_scheduler=cosine")
    assert code == 0, err
    rows = [line.split(",") for line in (tmp_path / "m" / "logs" / "loss.csv").read_text().splitlines()[1:]]
    vae_lr = [float(r[-1]) for r in rows if r[0] == "vae"]
    unet_lr = [float(r[-1]) for r in rows if r[0] == "unet"]
    assert len(vae_lr) == 6 and vae_lr[-1] < vae_lr[1]  # cosine: decays after the warm-up step
    assert unet_lr == [1e-3]  # stage 2 keeps lr_scheduler (constant after its one warm-up step)
    training = json.loads((tmp_path / "m" / "brainsynth.json").read_text())["training"]
    assert (training["vae_latent"], training["vae_lr_scheduler"]) == ("mode", "cosine")
    assert json.loads((a / "brainsynth.json").read_text())["training"]["vae_latent"] == "mode"  # the tiny preset's
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "s", *SMALL, *steps, "--set", "vae_latent=sample",
                           "--set", "vae_lr_scheduler=cosine")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "brainsynth.json").read_text())["training"]["vae_latent"] == "sample"
    assert (tmp_path / "m" / "vae" / "model.safetensors").read_bytes() != (tmp_path / "s" / "vae" / "model.safetensors").read_bytes()
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "bad", *SMALL, "--set", "vae_latent=median")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "vae_latent" in err
    assert not (tmp_path / "bad").exists()


def test_batch_size_is_refused_for_a_3d_model(models, pairs3d, tmp_path):
    model, _ = models
    cohort, _, _ = pairs3d
    src = next(cohort.glob("sub-*/ses-01/anat/*_T1w.nii.gz"))
    code, _, err = run_cli("edit", model, src, "--prompt", TRAINED, "-o", tmp_path / "x.nii.gz", "--batch-size", 2)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--batch-size" in err and str(model) in err and "leave out --batch-size" in err
    assert not list(tmp_path.iterdir())


def test_box_round_trip():
    """A change on the model grid comes back onto the input's grid where the box covers it, and is 0 elsewhere."""
    from brainsynth_plugins.ip2p import volume_nets as vn

    vol = np.zeros((40, 50, 30), np.float32)
    vol[10:30, 10:40, 5:25] = 1
    box, seen = vn.model_view(vol, None, (2.0, 2.0, 3.0), (16, 16, 16), 4.0)
    assert seen.shape == (16, 16, 16) and 0 <= seen.min() and seen.max() <= 1
    back = box.to_volume(np.ones((16, 16, 16), np.float32))
    c = tuple(round(v) for v in box.centre)
    assert back.shape == vol.shape and back[c] == pytest.approx(1.0) and back[0, 0, 0] == 0.0


def test_box_is_snapped_to_the_input_voxels():
    """At the model's voxel size a volume goes onto the model grid and back unchanged where the box
    covers it (no interpolation); the box moved by less than half a voxel from the centroid."""
    from brainsynth_plugins.ip2p import volume_nets as vn

    rng = np.random.default_rng(0)
    vol = rng.random((30, 34, 28)).astype(np.float32)
    labels = np.zeros(vol.shape, np.int16)
    labels[5:22, 7:30, 3:17] = 2
    labels[5, 7, 3] = 0  # a centroid off the voxel grid
    box = vn.place(vol, labels, (4.0, 4.0, 4.0), (16, 16, 12), 4.0)
    from scipy import ndimage

    assert np.abs(np.asarray(box.centre) - ndimage.center_of_mass(labels > 0)).max() <= 0.5
    scale, offset = box._map()
    assert np.array_equal(offset, np.round(offset)) and np.array_equal(scale, np.ones(3))
    seen = box.to_model(vol)
    back = box.to_volume(seen)
    lo = offset.astype(int)
    inside = tuple(slice(a, a + g) for a, g in zip(lo, box.grid))
    assert np.array_equal(seen, vol[inside]) and np.array_equal(back[inside], vol[inside])


def test_edit_volume_keeps_grid_header_and_outside(models, pairs3d, tmp_path):
    import nibabel as nib

    model, _ = models
    cohort, truth, _ = pairs3d
    src = next(cohort.glob("sub-*/ses-01/anat/*_T1w.nii.gz"))
    sub = src.name.split("_")[0]
    lab = next((truth / sub / "ses-01" / "anat").glob("*_dseg.nii.gz"))
    outs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.nii.gz"
        code, _, err = run_cli("edit", model, src, "--labels", lab, "--prompt", TRAINED, "-o", out, "--steps", 2, "--seed", seed)
        assert code == 0, err
        outs[name] = out
    assert outs["a"].read_bytes() == outs["b"].read_bytes()  # same seed, same bytes
    a, e, c = nib.load(src), nib.load(outs["a"]), nib.load(outs["c"])
    assert e.shape == a.shape and np.array_equal(e.affine, a.affine) and e.get_data_dtype() == a.get_data_dtype()
    assert np.array_equal(e.header.get_zooms(), a.header.get_zooms()) and int(e.header["qform_code"]) == int(a.header["qform_code"])
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["structures"] == ["ventricle"] and side["edit_path"]["region_voxels"] > 0
    assert "batch_size" not in side["sampling"]  # one volume, one pass
    before, after = np.asanyarray(a.dataobj), np.asanyarray(e.dataobj)
    changed = before != after
    assert changed.any() and not np.array_equal(after, np.asanyarray(c.dataobj))
    # outside the ventricles + 3 mm (at least 2 voxels) the output is the input, bit for bit
    from scipy import ndimage

    vent = np.isin(np.asanyarray(nib.load(lab).dataobj), [4, 5, 43, 44])
    near = ndimage.binary_dilation(vent, iterations=3)
    assert changed.sum() <= near.sum() and not changed[~near].any()


def test_untrained_prompt_and_wrong_pairs_refused(models, pairs3d, tmp_path):
    model, _ = models
    cohort, _, pairs = pairs3d
    src = next(cohort.glob("sub-*/ses-01/anat/*_T1w.nii.gz"))
    out = tmp_path / "x.nii.gz"
    code, _, err = run_cli("edit", model, src, "--prompt", "severe ventricle enlargement", "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(model) in err and "not trained on ventricle severe" in err and "mild ventricle enlargement" in err
    assert not list(tmp_path.iterdir())
    png = tmp_path / "slice.png"
    from brainsynth_cli.images import write_png

    write_png(png, np.full((16, 16), 30000, np.uint16))
    code, _, err = run_cli("edit", model, png, "--prompt", TRAINED, "-o", tmp_path / "y.png", "--no-restrict")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "3D volumes" in err and "slice.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slice.png"]
    # guidance the model never learned (the tiny preset trains without conditioning dropout): edit
    # and evaluate refuse it in one line naming the model's record, before writing anything
    record = str(model / "brainsynth.json")
    for extra, asked in ((["--guidance-reference", "empty-prompt"], "--guidance-reference empty-prompt"),
                         (["--image-guidance-scale", "1.5"], "--image-guidance-scale 1.5")):
        code, _, err = run_cli("edit", model, src, "--prompt", TRAINED, "-o", out, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert record in err and "conditioning dropout" in err and asked in err and "--guidance-reference input" in err
    code, _, err = run_cli("evaluate", model, pairs, "-o", tmp_path / "report", "--split", "train", "--guidance-reference",
                           "empty-prompt", "--no-baselines")
    assert code == 2 and len(err.strip().splitlines()) == 1 and record in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slice.png"]
    # 3D pairs without --dim 3d, and a grid the networks cannot halve: one line, nothing written
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "m2", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--dim 3d" in err
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "m3", *SMALL, "--set", "grid=24,30,24")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "multiple of 4" in err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_resume_after_interruption_gives_the_same_model(models, pairs3d, tmp_path):
    """Stopped in each stage after a checkpoint and resumed, the run ends with the uninterrupted run's weights."""
    import torch

    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    full, _ = models
    gen = get_manager().registry("generator").create("instruct-pix2pix")
    sets = dict(s.split("=", 1) for s in SMALL[7::2] if "=" in s)
    extra = {"dim": "3d", "batch_size": 2, "checkpoint_every": 2, "set": sets}
    cut = tmp_path / "cut"

    class Stop(Exception):
        pass

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for stage, at in (("stage 1", 3), ("stage 2", 3)):
            def stop(done, total, message="", stage=stage, at=at):
                if message.startswith(stage) and done == at:
                    raise Stop

            with pytest.raises(Stop):
                gen.train(TrainOptions(data=pairs3d[2], output=cut, seed=3, device="cpu", extra=extra, resume=stage == "stage 2"), stop)
            assert not (cut / "brainsynth.json").exists()
        gen.train(TrainOptions(data=pairs3d[2], output=cut, seed=3, device="cpu", extra=extra, resume=True))
    finally:
        torch.set_num_threads(n)
    for part in ("vae/model.safetensors", "unet/model.safetensors"):
        assert (full / part).read_bytes() == (cut / part).read_bytes(), part
    stages = [line.split(",")[0] for line in (cut / "logs" / "loss.csv").read_text().splitlines()[1:]]
    assert stages == ["vae"] * 3 + ["unet"] * 3


#: Colin27 (Holmes et al. 1998), skull-stripped: a real 1 mm scan, uint8, sform only (Debian's mricron-data).
COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


@pytest.fixture(scope="module")
def colin27_labels(tmp_path_factory):
    if not COLIN27.is_file():
        pytest.skip(f"{COLIN27} is missing: apt-get install mricron-data (.ci/run does)")
    d = tmp_path_factory.mktemp("colin27")
    code, _, err = run_cli("segment", COLIN27, "-o", d / "ch2bet_dseg.nii.gz", "--segmenter", "atlas")
    assert code == 0, err
    return d / "ch2bet_dseg.nii.gz"


def test_edit_a_real_scan_colin27(models, colin27_labels, tmp_path):
    """A real scan on its own 1 mm grid (181 x 217 x 181, uint8, sform only) edited by a 3D model
    trained on simulated 4 mm cohorts: grid, affine and header kept, every voxel outside the
    ventricles + 3 mm unchanged bit for bit, the same seed the same bytes."""
    import nibabel as nib

    from brainsynth_cli.edit_path import region
    from brainsynth_cli.structures import default_rules

    model, _ = models
    outs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        outs[name] = tmp_path / f"{name}.nii.gz"
        code, _, err = run_cli("edit", model, COLIN27, "--labels", colin27_labels, "--prompt", TRAINED, "-o", outs[name],
                               "--steps", 2, "--seed", seed)
        assert code == 0, err
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    src, out = nib.load(COLIN27), nib.load(outs["a"])
    assert out.shape == src.shape == (181, 217, 181) and np.array_equal(out.affine, src.affine)
    assert out.get_data_dtype() == src.get_data_dtype() == np.uint8
    # the whole header, field by field (its qform_code 0 stays 0: a written file is not "repaired")
    differ = [k for k in src.header if src.header[k].tobytes() != out.header[k].tobytes()]
    assert differ == [] and int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 4
    before, after = np.asanyarray(src.dataobj), np.asanyarray(out.dataobj)
    labels = np.asanyarray(nib.load(colin27_labels).dataobj)
    allowed = region(labels, [default_rules()["ventricle"]], (1.0, 1.0, 1.0), 3.0)
    changed = before != after
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["edit_path"]["region_voxels"] == int(allowed.sum()) > 0
    assert changed.any() and not changed[~allowed].any()
    assert not np.array_equal(after, np.asanyarray(nib.load(outs["c"]).dataobj))


def test_prior_groups_batches():
    """``unet_batching=prompt-groups``: every batch is rows of one prior under different prompts, a
    pure function of (seed, k); an epoch visits every prior that has two or more prompts; a pairs
    folder without such a prior is refused in one line."""
    from types import SimpleNamespace

    from brainsynth_plugins.ip2p.volume_training import PriorGroups

    from brainsynth_cli.errors import UserError

    rows = [SimpleNamespace(prior=f"p{i // 5}", prompt=p)
            for i, p in enumerate(["mild", "moderate", "severe", "cortex", "cortex"] * 3)]
    rows.append(SimpleNamespace(prior="alone", prompt="mild"))  # one prompt only: no group
    a, b = PriorGroups(rows, 4, seed=3), PriorGroups(rows, 4, seed=3)
    assert len(a.groups) == 3
    seen = set()
    for k in range(3):
        batch = a(k)
        assert batch == b(k) and len(batch) == 4 and len(set(batch)) == 4
        assert len({rows[i].prior for i in batch}) == 1 and len({rows[i].prompt for i in batch}) >= 3
        seen.add(rows[batch[0]].prior)
    assert seen == {"p0", "p1", "p2"}
    assert PriorGroups(rows, 8, seed=3)(0) == sorted(PriorGroups(rows, 8, seed=3)(0)) and len(PriorGroups(rows, 8, seed=3)(0)) == 5
    with pytest.raises(UserError, match="prompt-groups needs priors with pairs under two"):
        PriorGroups([SimpleNamespace(prior="x", prompt="mild")] * 3, 4, seed=0)


def test_training_on_prompt_groups_is_recorded_and_repeatable(pairs3d, tmp_path):
    """Pairs without a prior under two prompts: asked for by --set, prompt groups are refused before
    anything is written; the preset's fall back to random batches with a warning (recorded). With
    deformed targets (several prompts per prior) the run is recorded, the same seed gives the same
    weights, and ``unet_groups_from`` switches from random batches to groups part way."""
    code, _, err = run_cli("train", pairs3d[2], "-o", tmp_path / "no", *SMALL, "--set", "unet_batching=prompt-groups")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--deformed" in err and not (tmp_path / "no").exists()
    code, _, err = run_cli("train", pairs3d[2], "-o", tmp_path / "fallback", *SMALL)  # the tiny preset asks for groups
    assert code == 0 and "stage 2 uses random batches" in err and "make-pairs --deformed" in err
    assert "stage 2 learns from the real and disentangled rows" in err  # and for deformed rows
    training = json.loads((tmp_path / "fallback" / "brainsynth.json").read_text())["training"]
    assert training["unet_batching"] == "random" and training["unet_kinds"] == ["real", "disentangled"]
    _, _, pairs = make_pairs3d(tmp_path / "deformed", "2:1:0", "--deformed")
    outs = {}
    for name, sets in (("g1", ["unet_groups_from=0"]), ("g2", ["unet_groups_from=0"]), ("half", ["unet_groups_from=0.5"]),
                       ("late", ["unet_groups_from=1"]), ("random", ["unet_batching=random"]),
                       ("kinds", ["unet_kinds=real,disentangled,deformed"])):
        extra = [a for s in sets for a in ("--set", s)]
        code, _, err = run_cli("train", pairs, "-o", tmp_path / name, *SMALL, "--set", "unet_batching=prompt-groups", *extra) \
            if name != "random" else run_cli("train", pairs, "-o", tmp_path / name, *SMALL, *extra)
        assert code == 0, err
        outs[name] = (tmp_path / name / "unet" / "model.safetensors").read_bytes()
    assert outs["g1"] == outs["g2"]
    assert outs["late"] == outs["random"]  # groups from the last step on: none, every batch random
    assert len({outs["g1"], outs["half"], outs["random"]}) == 3  # groups from the start, from half way, never
    training = json.loads((tmp_path / "half" / "brainsynth.json").read_text())["training"]
    assert training["unet_batching"] == "prompt-groups" and training["unet_groups_from"] == 0.5
    # stage 2 on every kind of row instead of the preset's deformed rows: stage 1 (every training
    # image) unchanged, stage 2 not
    vae = {n: (tmp_path / n / "vae" / "model.safetensors").read_bytes() for n in ("g1", "kinds")}
    assert vae["g1"] == vae["kinds"] and outs["g1"] != outs["kinds"]
    info = json.loads((tmp_path / "kinds" / "brainsynth.json").read_text())
    assert info["training"]["unet_kinds"] == ["real", "disentangled", "deformed"]
    assert json.loads((tmp_path / "g1" / "brainsynth.json").read_text())["training"]["unet_kinds"] == ["deformed"]
    # a kind the pairs do not have: one line naming the pairs' metadata and the kinds they have, nothing written
    code, _, err = run_cli("train", pairs3d[2], "-o", tmp_path / "nodef", *SMALL, "--set", "unet_kinds=deformed")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "metadata.jsonl" in err and "unet_kinds" in err and "it has: disentangled, real" in err and not (tmp_path / "nodef").exists()
    code, _, err = run_cli("train", pairs, "-o", tmp_path / "typo", *SMALL, "--set", "unet_kinds=real,deformd")
    assert code == 2 and "unknown kind 'deformd'" in err and not (tmp_path / "typo").exists()
