"""An exported int8 model you can load and call: the export folder carries the TorchScript, the tokenizer and
`qat_model.json` (pooling, max length, kind, input names, recipe, versions), so nothing has to be guessed.

    from qat import load_int8
    model = load_int8("outputs/runs/<run>/export/qat")
    embeddings = model.encode(["a sentence", "another one"], batch_size=32)

`encode` takes sentence-transformers' argument names; texts are sorted by token length and padded per batch, so
real text runs at the speed of its real length, and rows come back in the caller's order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qat.export.folder import ExportInfo, read_export_info
from qat.export.ipex import MODEL_FILE, load_exported
from qat.load import pool
from qat.progress import progress


class Int8Encoder:
    """An exported int8 encoder: texts in, pooled embeddings out."""

    def __init__(self, module: torch.jit.ScriptModule, tokenizer: PreTrainedTokenizerBase, info: ExportInfo) -> None:
        self.module, self.tokenizer, self.info = module, tokenizer, info
        # A loaded TorchScript runs its first call unfused (it profiles); every call a user makes should run the
        # same fused kernels, so that one text always gets one embedding.
        warmup = tokenizer(["warm up"], return_tensors="pt")
        with torch.no_grad():
            module(warmup["input_ids"], warmup["attention_mask"])

    @torch.no_grad()
    def encode(self, sentences: str | list[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               normalize_embeddings: bool = True) -> np.ndarray | torch.Tensor:
        """Embeddings of `sentences` ([n, dim]; [dim] for one string), in the order given."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.info.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])   # longest first: the slowest batch shows early
        rows: list[torch.Tensor | None] = [None] * len(texts)
        starts = range(0, len(order), batch_size)
        for start in progress(starts, desc="encoding") if show_progress_bar is not False else starts:
            chosen = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                                   max_length=self.info.max_length, return_tensors="pt")
            hidden = self.module(batch["input_ids"], batch["attention_mask"])
            for i, vector in zip(chosen, pool(hidden, batch["attention_mask"], self.info.pooling, normalize_embeddings)):
                rows[i] = vector
        stacked = torch.stack(rows) if rows else torch.empty(0)
        result = stacked[0] if single else stacked
        return result if convert_to_tensor or not convert_to_numpy else result.numpy()


def load_int8(folder: str | Path) -> Int8Encoder:
    """The int8 model of an export folder (IPEX is imported with qat, so its kernels are registered)."""
    folder = Path(folder)
    info = read_export_info(folder)
    return Int8Encoder(load_exported(folder / MODEL_FILE), AutoTokenizer.from_pretrained(folder), info)
