"""The text encoder inside a 3D model folder, so the folder is self-contained (as the 2D folders).

Training writes the encoder it trained with as ``MODEL/text_encoder/`` (transformers'
``save_pretrained``: config.json + model.safetensors) and ``MODEL/tokenizer/``; ``edit`` loads
them from there, whatever encoder plugin or path made them. A folder written before this has
neither: it loads the encoder by the name recorded in ``brainsynth.json`` (as it did then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError

ENCODER, TOKENIZER = "text_encoder", "tokenizer"


def save_text_encoder(tokenizer: Any, model: Any, folder: Path) -> None:
    """``folder/text_encoder`` (safetensors) and ``folder/tokenizer``."""
    folder = Path(folder)
    model.save_pretrained(folder / ENCODER, safe_serialization=True)
    tokenizer.save_pretrained(folder / TOKENIZER)


def has_text_encoder(folder: Path) -> bool:
    return (Path(folder) / ENCODER / "config.json").is_file() and (Path(folder) / TOKENIZER).is_dir()


def load_text_encoder(folder: Path, spec: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, model) of a 3D model folder: its own copy when it has one, else the named plugin's
    (``spec``: ``brainsynth.json``'s ``text_encoder``). Tokens are padded to ``spec["max_length"]``,
    the length training used."""
    folder = Path(folder)
    if not has_text_encoder(folder):
        from brainsynth_plugins.ldm.model import load_text_encoder as by_name

        return by_name(spec)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder / ENCODER, local_files_only=True)
        extra = {"add_pooling_layer": False} if config.model_type == "bert" else {}  # brainsynth's BERT encoders have none
        model = AutoModel.from_pretrained(folder / ENCODER, local_files_only=True, use_safetensors=True, **extra)
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(folder / ENCODER, f"cannot be loaded as a text encoder ({first[:160]})",
                         "re-run the training (it writes text_encoder/ and tokenizer/)") from None
    if spec.get("max_length"):
        tokenizer.model_max_length = int(spec["max_length"])
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model
