"""An exported int8 model you can load and call: the export folder carries the TorchScript, the tokenizer and
`qat_model.json` (pooling, max length, kind, input names, recipe, versions), so nothing has to be guessed.

    from qat import load_int8
    model = load_int8("outputs/runs/<run>/export/qat")
    embeddings = model.encode(["a sentence", "another one"], batch_size=32)      # an embedding model
    scores = model.predict([("a query", "a passage"), ("a query", "another")])   # a score model (cross-encoder)

`encode` and `predict` take sentence-transformers' argument names; inputs are sorted by token length and padded
per batch, so real text runs at the speed of its real length, and rows come back in the caller's order.
"""
from __future__ import annotations

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


class Int8Encoder:
    """An exported int8 encoder: texts in, pooled embeddings out; or, for a score model, pairs in, scores out."""

    def __init__(self, module: Forward, tokenizer: PreTrainedTokenizerBase, info: ExportInfo,
                 backend: str = "ipex") -> None:
        self.module, self.tokenizer, self.info, self.backend = module, tokenizer, info, backend
        # A loaded TorchScript runs its first call unfused (it profiles); every call a user makes should run the
        # same fused kernels, so that one text always gets one embedding.
        with torch.no_grad():
            module(*self._tokenize([("warm up", "warm up") if self.pairs else "warm up"]))

    @property
    def pairs(self) -> bool:
        return self.info.kind == "scores"

    def _tokenize(self, texts: list[Text]) -> Batch:
        return tokenize_inputs(self.tokenizer, texts, self.info.max_length, self.info.input_names, self.pairs)

    @torch.no_grad()
    def outputs(self, texts: list[Text], batch_size: int = 32, show_progress_bar: bool | None = None,
                normalize_embeddings: bool = True) -> torch.Tensor:
        """Each input's pooled embedding (normalised unless asked not to) or score outputs, in the order given."""
        lengths = [text_length(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])   # longest first: the slowest batch shows early
        rows: list[torch.Tensor | None] = [None] * len(texts)
        starts = range(0, len(order), batch_size)
        for start in progress(starts, desc="encoding") if show_progress_bar is not False else starts:
            chosen = order[start:start + batch_size]
            batch = self._tokenize([texts[i] for i in chosen])
            vectors = model_outputs(self.module(*batch), batch[1], self.pairs, self.info.pooling, normalize_embeddings)
            for i, vector in zip(chosen, vectors):
                rows[i] = vector
        return torch.stack(rows) if rows else torch.empty(0)

    def encode(self, sentences: str | list[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               normalize_embeddings: bool = True) -> np.ndarray | torch.Tensor:
        """Embeddings of `sentences` ([n, dim]; [dim] for one string), in the order given."""
        if self.pairs:
            raise QatError("this export is a score model; expected predict([(text_a, text_b), ...]) instead of encode")
        single = isinstance(sentences, str)
        stacked = self.outputs([sentences] if single else list(sentences), batch_size, show_progress_bar,
                               normalize_embeddings)
        result = stacked[0] if single else stacked
        return result if convert_to_tensor or not convert_to_numpy else result.numpy()

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32, show_progress_bar: bool | None = None,
                convert_to_numpy: bool = True, convert_to_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """The score head's outputs for each (text_a, text_b) pair: [n] for one score, [n, labels] for several."""
        if not self.pairs:
            raise QatError("this export is an embedding model; expected encode([text, ...]) instead of predict")
        scores = self.outputs([tuple(p) for p in pairs], batch_size, show_progress_bar)
        scores = scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 1 else scores
        return scores if convert_to_tensor or not convert_to_numpy else scores.numpy()


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
    return Int8Encoder(runtime_forward(folder / info.runtimes[backend], backend, signature),
                       AutoTokenizer.from_pretrained(folder), info, backend)
