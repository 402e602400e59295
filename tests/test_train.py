"""brainsynth train: both stages on CPU, the stage-2 loss falls, exact resume, model folder, bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from test_train_pairs import FAST, make_pairs, one_thread, tiny_model, train_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory)


def _losses(model, stage):
    with open(model / "logs" / "loss.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r["stage"] == stage]


def test_tiny_trains_both_stages_and_stage2_loss_falls(tiny):
    _, model = tiny
    vae, unet = _losses(model, "vae"), _losses(model, "unet")
    assert len(vae) == 6 and len(unet) == 24
    assert sum(vae[-2:]) / 2 < sum(vae[:2]) / 2
    first, last = sum(unet[:6]) / 6, sum(unet[-6:]) / 6
    assert last < 0.8 * first, (first, last)
    # a diffusers pipeline folder plus brainsynth.json
    for part in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json",
                 "scheduler/scheduler_config.json"):
        assert (model / part).is_file(), part
    info = json.loads((model / "brainsynth.json").read_text())
    assert info["channels"] == 1 and info["resolution"] == 32 and info["text_encoder"]["name"] == "minilm"
    assert info["prompts"] == ["mild ventricle enlargement", "moderate ventricle enlargement", "severe ventricle enlargement"]
    assert "ventricle" in info["structures"] and "[structures.ventricle]" in info["rules"]
    from brainsynth_plugins.training_core.runtime import native_bf16

    # the tiny preset's mixed_precision=auto, resolved and recorded: bf16 only where the CPU computes it natively
    assert info["training"]["mixed_precision"] == ("bf16" if native_bf16("cpu") else "no")
    unet_cfg = json.loads((model / "unet" / "config.json").read_text())
    assert unet_cfg["in_channels"] == 8 and unet_cfg["cross_attention_dim"] == 384
    assert not list(model.rglob("*.bin")) and not list(model.rglob("*.pt"))  # no pickle anywhere
    # checkpoints (safetensors + JSON) and validation before/after pictures
    assert (model / "checkpoints" / "unet-0000012" / "optimizer-model.safetensors").is_file()
    assert (model / "validation" / "unet-0000012.png").is_file() and (model / "validation" / "unet-0000024.png").is_file()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """Kill in stage 1 and again in stage 2, each after a checkpoint; --resume twice; compare bytes."""
    import torch
    from brainsynth_plugins.training_core import checkpoints
    from safetensors.torch import load_file

    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=3, slices=1)
    sets = dict(a.split("=", 1) for a in FAST[FAST.index("--set") :: 1] if "=" in a)
    sets.update({"vae_steps": "4", "unet_steps": "4"})
    extra = {"preset": "tiny", "resolution": 32, "batch_size": 4, "checkpoint_every": 2, "ema": True,
             "conditioning_dropout": 0.2, "set": sets}
    gen = get_manager().registry("generator").create("instruct-pix2pix")
    kills = [("stage 1", 3), ("stage 2", 3)]

    def killer(done, total, message=""):
        if kills and message.startswith(kills[0][0]) and done == kills[0][1]:
            kills.pop(0)
            raise KeyboardInterrupt

    with one_thread():
        gen.train(TrainOptions(data=pairs, output=tmp_path / "a", seed=3, device="cpu", extra=extra))
        interrupted = 0
        for attempt in range(3):
            try:
                gen.train(TrainOptions(data=pairs, output=tmp_path / "b", seed=3, device="cpu", resume=attempt > 0, extra=extra), killer)
                break
            except KeyboardInterrupt:
                interrupted += 1
    assert interrupted == 2
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / part)), load_file(str(tmp_path / "b" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert (tmp_path / "a" / "logs" / "loss.csv").read_text() == (tmp_path / "b" / "logs" / "loss.csv").read_text()
    # --ema: the checkpoint resumed from holds diffusers' EMAModel state, its averages by parameter name
    ck = checkpoints.load_checkpoint(checkpoints.latest_checkpoint(tmp_path / "b", "unet"))
    assert ck["state"]["ema"]["optimization_step"] == 2 and ck["state"]["ema"]["decay"] == 0.999
    assert ck["modules"]["ema"].keys() == ck["modules"]["model"].keys()


def test_resume_a_run_started_by_an_older_version(tmp_path):
    """A run file without the settings added since (here the sampling recommendation) resumes,
    and those settings take the common defaults."""
    import json

    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager
    from brainsynth_plugins.ip2p.presets import COMMON

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    sets = dict(a.split("=", 1) for a in FAST[FAST.index("--set") :: 1] if "=" in a)
    sets.update({"vae_steps": "2", "unet_steps": "4", "validation_count": "0"})
    extra = {"preset": "tiny", "resolution": 32, "batch_size": 2, "checkpoint_every": 2, "set": sets}
    gen = get_manager().registry("generator").create("instruct-pix2pix")

    def stop(done, total, message=""):
        if message.startswith("stage 2") and done == 3:
            raise KeyboardInterrupt

    with one_thread():
        with pytest.raises(KeyboardInterrupt):
            gen.train(TrainOptions(data=pairs, output=tmp_path / "m", seed=1, device="cpu", extra=extra), stop)
        run = tmp_path / "m" / "checkpoints" / "run.json"
        old = {k: v for k, v in json.loads(run.read_text()).items() if k not in ("sampling_steps", "sampling_scheduler")}
        run.write_text(json.dumps(old))
        gen.train(TrainOptions(data=pairs, output=tmp_path / "m", seed=1, device="cpu", resume=True, extra=extra))
    sampling = json.loads((tmp_path / "m" / "brainsynth.json").read_text())["sampling"]
    assert sampling["steps"] == COMMON["sampling_steps"] and sampling["scheduler"] == COMMON["sampling_scheduler"]
    assert sampling["guidance_scale"] == old["guidance_scale"]  # what the run file holds wins


def _one_line_error(code, err, *words):
    lines = [line for line in err.strip().splitlines() if line.startswith("brainsynth: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_pairs_folder_without_metadata(tmp_path):
    (tmp_path / "pairs").mkdir()
    code, err = train_cli([tmp_path / "pairs", "-o", tmp_path / "model"])
    _one_line_error(code, err, "metadata.jsonl")
    assert not (tmp_path / "model").exists()


def test_resume_without_checkpoint(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=1, slices=1)
    (tmp_path / "model").mkdir()
    code, err = train_cli([pairs, "-o", tmp_path / "model", "--resume", *FAST])
    _one_line_error(code, err, "resume")


def test_option_errors(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=1, slices=1)
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--text-encoder", "clipp"]), "did you mean 'clip'")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--steps", "2", "--epochs", "1"]), "--steps or --epochs")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--preset", "huge"]), "tiny")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--set", "nonsense=1"]), "unknown setting")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--set", "blender=smudge"]), "--set blender=smudge: unknown blender; use one of")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--preset", "sd15"]), "--pretrained")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "busy", *FAST]), "not empty")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m2", "--stage", "unet", *FAST]), "no trained VAE")
    (tmp_path / "empty").mkdir()
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--preset", "sd15", "--pretrained", tmp_path / "empty"]), "unet/config.json")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--text-encoder", "clip", "--text-encoder-path", tmp_path / "empty", *FAST]),
                    "cannot load the CLIP text encoder")
    _one_line_error(*train_cli([pairs, "-o", tmp_path / "m", "--text-encoder", "biomedbert", *FAST]), "--text-encoder-path")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_stage_unet_with_biomedbert_follows_encoder_width(tiny, tmp_path):
    """--stage unet on a trained VAE, with a tiny random BERT saved to a folder as the text encoder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    pairs, model = tiny
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for p in ("mild moderate severe ventricle enlargement cortex atrophy",) for w in p.split()})]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    bert = tmp_path / "bert"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(bert)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(bert)
    out = tmp_path / "m"
    out.mkdir()
    shutil.copytree(model / "vae", out / "vae")
    code, err = train_cli([pairs, "-o", out, "--stage", "unet", "--text-encoder", "biomedbert", "--text-encoder-path", bert,
                           *FAST, "--steps", "2"])
    assert code == 0, err
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == 24
    # the pooled prompt's heads divide the encoder's width (64 would not divide 24)
    assert unet_cfg["addition_embed_type"] == "text" and unet_cfg["addition_embed_type_num_heads"] == 8
    info = json.loads((out / "brainsynth.json").read_text())
    assert info["text_encoder"] == {"name": "biomedbert", "path": str(bert), "hidden_size": 24, "max_length": 64}
    bad = tmp_path / "m2"
    bad.mkdir()
    shutil.copytree(model / "vae", bad / "vae")
    _one_line_error(*train_cli([pairs, "-o", bad, "--stage", "unet", "--text-encoder", "biomedbert", "--text-encoder-path", bert,
                                *FAST, "--steps", "2", "--set", "unet.addition_embed_type_num_heads=5"]),
                    "unet.addition_embed_type_num_heads=5 does not divide the text encoder's width 24")


def test_text_encoders_offline(tmp_path, monkeypatch):
    """minilm from the installed package and clip's BPE from clip-openai, with the hub switched off."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from brainsynth_cli.plugin_manager import get_manager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = get_manager().registry("text-encoder")
    assert {"minilm", "clip", "biomedbert"} <= set(reg.names())
    tok, model = reg.create("minilm").load()
    ids = tok(["mild ventricle enlargement", "severe ventricle enlargement"], padding="max_length",
              max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        h = model(ids)[0]
    assert h.shape == (2, 64, 384) and not torch.allclose(h[0], h[1])
    clip = reg.create("clip")
    tok, model = clip.load()
    # CLIP's own token ids (as openai/clip-vit-large-patch14's tokenizer gives them)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77 and model.config.hidden_size == clip.hidden_size
    # a CLIP text model from a folder (tiny, random)
    tiny_clip = tmp_path / "clip"
    tok.save_pretrained(tiny_clip)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77)).save_pretrained(tiny_clip)
    enc = reg.create("clip", path=str(tiny_clip))
    tok2, model2 = enc.load()
    assert model2.config.hidden_size == 16 == enc.hidden_size and tok2.model_max_length == 77
    with pytest.raises(Exception, match="cannot load the CLIP text encoder"):
        reg.create("clip", path=str(tmp_path / "nowhere")).load()


def test_sd15_preset_expands_a_pretrained_4_channel_unet(tmp_path):
    """--preset sd15 from a (tiny, random) Stable Diffusion folder: 3 channels, CLIP from the folder,
    UNet conv_in grown from 4 to 8 input channels with the old weights kept and the new ones zero."""
    import torch
    from brainsynth_plugins.text.encoders import clip_tokenizer
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sd = tmp_path / "sd"
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(sd)
    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    code, err = train_cli([pairs, "-o", tmp_path / "m", "--preset", "sd15", "--pretrained", sd, "--resolution", "32", "--steps", "2",
                           "--batch-size", "2", "--device", "cpu", "--set", "validation_count=0", "--set", "warmup_steps=0"])
    assert code == 0, err
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    assert w.shape[1] == 8
    assert torch.allclose(w[:, :4], unet.conv_in.weight.detach(), atol=1e-3)  # 2 AdamW steps at lr 1e-4
    assert w[:, 4:].abs().max() < 1e-3 and w[:, 4:].abs().max() > 0  # started at zero, trained
    info = json.loads((tmp_path / "m" / "brainsynth.json").read_text())
    assert info["channels"] == 3 and info["text_encoder"]["name"] == "clip" and info["text_encoder"]["path"] == str(sd)
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["text_encoder"] == ["transformers", "CLIPTextModel"]


def test_stage_vae_alone_with_patch_gan_and_epochs(tmp_path):
    """--stage vae writes only the VAE; the PatchGAN term is logged once it starts; --epochs sets the steps."""
    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=1, slices=1)  # 3 training pairs -> 6 images
    code, err = train_cli([pairs, "-o", tmp_path / "m", "--stage", "vae", *FAST, "--epochs", "2",
                           "--set", "gan_weight=0.1", "--set", "gan_start=1"])
    assert code == 0, err
    with open(tmp_path / "m" / "logs" / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == ["vae"] * 3  # ceil(2 epochs * 6 images / batch 4)
    assert float(rows[0]["gan"]) == 0 and all(float(r["gan"]) != 0 for r in rows[1:])
    assert (tmp_path / "m" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "m" / "unet").exists() and not (tmp_path / "m" / "brainsynth.json").exists()
    assert json.loads((tmp_path / "m" / "vae" / "config.json").read_text())["scaling_factor"] != 0.18215


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path):
    """The acceptance test in its literal form: real processes, SIGKILL once a stage-2 checkpoint exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import subprocess_env

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    env = subprocess_env(OMP_NUM_THREADS="1")
    args = [*FAST, "--set", "vae_steps=2", "--set", "unet_steps=20", "--checkpoint-every", "2", "--seed", "5",
            "--text-encoder", "clip"]  # the small built-in CLIP: quicker to start than MiniLM

    def cmd(out, *more):
        return [sys.executable, "-m", "brainsynth_cli.main", "train", str(pairs), "-o", str(out), *map(str, args), *more]

    done = subprocess.run(cmd(tmp_path / "a"), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "b" / "checkpoints" / "unet-0000002"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b" / "brainsynth.json").exists()
    resumed = subprocess.run(cmd(tmp_path / "b", "--resume"), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part
    assert (tmp_path / "a" / "logs" / "loss.csv").read_text() == (tmp_path / "b" / "logs" / "loss.csv").read_text()


def test_region_weight_puts_the_loss_where_the_prompt_acts(tmp_path):
    """region_weight W: the loss weight is 1 + W inside the structures a row's prompt names (its prior
    label slice, dilated by region_margin_mm) and 1 elsewhere; 0 turns it off."""
    import numpy as np

    from brainsynth_cli.images import read_png
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_plugins.ip2p.data import read_pairs
    from brainsynth_plugins.ip2p.training import Trainer, build_config

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    opts = TrainOptions(data=pairs, output=tmp_path / "m", extra={"resolution": 32, "set": {"region_weight": 9.0, "region_margin_mm": 0.0}})
    cfg = build_config(opts)
    folder = read_pairs(pairs)
    trainer = Trainer(cfg, tmp_path / "m", folder, device="cpu", progress=lambda *a: None)
    w = trainer._loss_weights((32, 32), "cpu").numpy()
    assert w.shape == (len(trainer.train_pairs), 1, 32, 32) and set(np.unique(w)) == {1.0, 10.0}
    row = trainer.train_pairs[0]
    vent = np.isin(read_png(row.path("input_labels_file_name"))[0], [4, 5, 43, 44])
    assert np.array_equal(w[0, 0] == 10.0, vent)  # a ventricle prompt: the ventricles, no margin
    cfg["region_weight"] = 0.0
    assert Trainer(cfg, tmp_path / "m", folder, device="cpu", progress=lambda *a: None)._loss_weights((32, 32), "cpu") is None
