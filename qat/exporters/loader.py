"""An exported int8 model you can load and call: the export folder carries the TorchScript, the tokenizer and
`qat_model.json` (pooling, max length, kind, input names, recipe, versions), so nothing has to be guessed.

    from qat import load_int8
    model = load_int8("outputs/runs/<run>/export/qat")
    embeddings = model.encode(["a sentence", "another one"], batch_size=32)      # an embedding model
    scores = model.predict([("a query", "a passage"), ("a query", "another")])   # a score model (cross-encoder)

`encode` and `predict` take sentence-transformers' argument names and return what it returns; inputs are sorted by token length and padded
per batch, so real text runs at the speed of its real length, and rows come back in the caller's order.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qat.data import Text
from qat.base.errors import QatError
from qat.exporters.folder import ExportInfo, read_export_info
from qat.exporters.signature import ExportSignature
from qat.load import model_outputs, text_length, tokenize_inputs
from qat.base.progress import progress
from qat.evaluation.metrics import Forward
from qat.quant.stats import Batch


def check_inputs(inputs: list, name: str, pairs: bool) -> None:
    """One line for the first input that is not what the model reads (a string, or a pair of strings)."""
    for i, item in enumerate(inputs):
        ok = (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item)) if pairs \
            else isinstance(item, str)
        if not ok:
            raise QatError(f"{name}[{i}]={item!r} is not valid; expected "
                           + ("a (text_a, text_b) pair of strings" if pairs else "a string"))


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QatError(f"batch_size={batch_size!r} is not valid; expected a positive integer")


def check_device(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise QatError(f"device={str(device)!r} is not supported; expected 'cpu' or None (the int8 exports run on CPUs)")


def as_returned(rows: torch.Tensor, single: bool, convert_to_numpy: bool,
                convert_to_tensor: bool) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
    """sentence-transformers' return conventions: a tensor if asked, else an array, else a list of tensors."""
    if single:
        rows = rows[0]
    if convert_to_tensor:
        return rows
    if convert_to_numpy:
        return rows.numpy()
    return rows if single else list(rows)


def activation(name: str | None, labels: int) -> torch.nn.Module:
    """A cross-encoder's own activation (sentence-transformers records its class path in config.json), else
    sentence-transformers' default: Sigmoid for one label, Identity for several."""
    if name:
        module_name, _, class_name = name.rpartition(".")
        if module_name.startswith("torch.nn"):
            return getattr(importlib.import_module(module_name), class_name)()
    return torch.nn.Sigmoid() if labels == 1 else torch.nn.Identity()


class Int8Encoder:
    """An exported int8 encoder with sentence-transformers' calls: `encode` (SentenceTransformer.encode) for an
    embedding model, `predict` (CrossEncoder.predict) for a score model. Differences: the model runs on the CPU
    only (device='cpu' or None), embeddings are float32 sentence embeddings (no precision, output_value or
    truncate_dim other than the defaults)."""

    def __init__(self, module: Forward, tokenizer: PreTrainedTokenizerBase, info: ExportInfo,
                 backend: str = "ipex", config: dict | None = None) -> None:
        self.module, self.tokenizer, self.info, self.backend = module, tokenizer, info, backend
        config = config or {}
        self.prompts = info.prompts
        self.labels = int(config.get("num_labels", len(config.get("id2label", {})) or 1))
        own = (config.get("sentence_transformers") or {}).get("activation_fn") \
            or config.get("sbert_ce_default_activation_function")
        self.activation_fn = activation(own, self.labels)
        # A loaded TorchScript runs its first call unfused (it profiles); every call a user makes should run the
        # same fused kernels, so that one text always gets one embedding.
        with torch.no_grad():
            module(*self._tokenize([("warm up", "warm up") if self.pairs else "warm up"]))

    @property
    def pairs(self) -> bool:
        return self.info.kind == "scores"

    @property
    def max_seq_length(self) -> int:
        return self.info.max_length

    def _tokenize(self, texts: list[Text]) -> Batch:
        return tokenize_inputs(self.tokenizer, texts, self.info.max_length, self.info.input_names, self.pairs)

    @torch.no_grad()
    def outputs(self, texts: list[Text], batch_size: int = 32, show_progress_bar: bool | None = None,
                normalize_embeddings: bool = False) -> torch.Tensor:
        """Each input's pooled embedding (normalised where the model normalises, or if asked) or score outputs,
        in the order given."""
        lengths = [text_length(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])   # longest first: the slowest batch shows early
        rows: list[torch.Tensor | None] = [None] * len(texts)
        starts = range(0, len(order), batch_size)
        normalize = normalize_embeddings or self.info.normalize
        for start in progress(starts, desc="encoding", report=False) if show_progress_bar is not False else starts:
            chosen = order[start:start + batch_size]
            batch = self._tokenize([texts[i] for i in chosen])
            vectors = model_outputs(self.module(*batch), batch[1], self.pairs, self.info.pooling, normalize)
            for i, vector in zip(chosen, vectors):
                rows[i] = vector
        return torch.stack(rows) if rows else torch.empty(0)

    def _prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            return prompt
        if prompt_name is None:
            return ""
        if prompt_name not in self.prompts:
            raise QatError(f"prompt_name={prompt_name!r} is not one of this model's prompts; expected one of "
                           f"{sorted(self.prompts)}")
        return self.prompts[prompt_name]

    def encode(self, sentences: str | list[str], prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str | None = "sentence_embedding", precision: str = "float32",
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: str | None = None,
               normalize_embeddings: bool = False) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Embeddings of `sentences` ([n, dim]; [dim] for one string), in the order given, as
        SentenceTransformer.encode returns them (normalised where the model's modules normalise)."""
        if self.pairs:
            raise QatError("this export is a score model; expected predict([(text_a, text_b), ...]) instead of encode")
        if output_value != "sentence_embedding":
            raise QatError(f"output_value={output_value!r} is not supported; expected 'sentence_embedding'")
        if precision != "float32":
            raise QatError(f"precision={precision!r} is not supported; expected 'float32'")
        check_device(device)
        check_batch_size(batch_size)
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        check_inputs(texts, "sentences", pairs=False)
        prefix = self._prompt(prompt_name, prompt)
        rows = self.outputs([prefix + t for t in texts], batch_size, show_progress_bar, normalize_embeddings)
        return as_returned(rows, single, convert_to_numpy, convert_to_tensor)

    def predict(self, sentences: tuple[str, str] | list[tuple[str, str]], batch_size: int = 32,
                show_progress_bar: bool | None = None, activation_fn: Callable | None = None,
                apply_softmax: bool = False, convert_to_numpy: bool = True, convert_to_tensor: bool = False,
                device: str | None = None) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Scores of (text_a, text_b) pairs as CrossEncoder.predict gives them: the head's outputs through the
        model's activation (sentence-transformers' default: Sigmoid for one label), [n] for one label, [n, labels]
        for several; one pair gives one score."""
        if not self.pairs:
            raise QatError("this export is an embedding model; expected encode([text, ...]) instead of predict")
        check_device(device)
        check_batch_size(batch_size)
        single = isinstance(sentences, tuple) and len(sentences) == 2 and all(isinstance(t, str) for t in sentences)
        pairs = [sentences] if single else list(sentences)
        check_inputs(pairs, "sentences", pairs=True)
        scores = (activation_fn or self.activation_fn)(self.outputs([tuple(p) for p in pairs], batch_size,
                                                                    show_progress_bar))
        if apply_softmax and scores.ndim == 2 and scores.shape[1] > 1:
            scores = torch.softmax(scores, dim=1)
        scores = scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 1 else scores
        return as_returned(scores, single, convert_to_numpy, convert_to_tensor)


def runtime_forward(path: Path, backend: str, signature: ExportSignature, warmup: Batch | None = None) -> Forward:
    """One runtime's export as a forward on tokenized batches. IPEX's TorchScript runs its first call unfused;
    `warmup` makes that call here, so every later call runs fused."""
    if backend == "onnx":
        from qat.exporters.onnx import load_onnx

        return load_onnx(path, signature)
    if backend == "openvino":
        from qat.exporters.openvino import load_openvino

        return load_openvino(path, signature)
    from qat.exporters.ipex import load_exported   # imports IPEX, which registers the int8 kernels

    return load_exported(path, warmup)


def load_int8(folder: str | Path, backend: str | None = None) -> Int8Encoder:
    """The int8 model of an export folder, run by `backend` (ipex, openvino or onnx; by default the first runtime
    the folder was exported for)."""
    folder = Path(folder)
    info = read_export_info(folder)
    backend = backend or next(iter(info.runtimes))
    if backend not in info.runtimes:
        raise QatError(f"backend={backend!r} is not exported in {str(folder)!r}; expected one of {list(info.runtimes)}")
    signature = ExportSignature(info.input_names, "logits" if info.kind == "scores" else "last_hidden_state")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return Int8Encoder(runtime_forward(folder / info.runtimes[backend], backend, signature),
                       AutoTokenizer.from_pretrained(folder), info, backend, config)
