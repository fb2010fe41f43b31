"""Restoring PTQ models made elsewhere: Intel Neural Compressor's qconfig.json, on a tiny BERT."""
import contextlib
import json
import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

from conftest import ONE_TARGET, REPO
from qat.quant.config import QuantConfig
from qat.base.errors import QatError
from qat.quant.qconf import Qconf
from qat.ptq.restore import restore_qconf

pytestmark = pytest.mark.ipex   # the qconfs are INC's, made through its IPEX path


def inc_qconf(model_dir, out_dir, texts):
    """Quantize with INC 3.7's IPEX path (static, default config) and return its saved qconfig.json."""
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare
    from transformers import AutoModel, AutoTokenizer

    import qat.base.ipex  # noqa: F401  (INC picks its IPEX backend when IPEX is imported)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    enc = tokenizer(texts[:32], padding=True, return_tensors="pt")
    with contextlib.chdir(out_dir.parent):  # INC writes its nc_workspace/ into the working directory
        prepared = prepare(model, quant_config=StaticQuantConfig(),
                           example_inputs=(enc["input_ids"][:8], enc["attention_mask"][:8]))
        with torch.no_grad():
            for start in range(0, 32, 8):
                prepared(enc["input_ids"][start:start + 8], enc["attention_mask"][start:start + 8])
        convert(prepared).save(str(out_dir))
    return out_dir / "qconfig.json"


@pytest.fixture(scope="module")
def inc_json(tiny_model_dir, tmp_path_factory, texts):
    return inc_qconf(tiny_model_dir, tmp_path_factory.mktemp("inc"), texts)


def test_inc_scales_land_on_the_right_ops(tiny_encoder, inc_json, texts):
    foreign = Qconf.read(inc_json)
    restored = restore_qconf(tiny_encoder, foreign, texts, QuantConfig(weight_bits="8"))
    theirs = {op.fqn: op for op in foreign.ops if op.kind == "linear"}
    for op in restored.ops:
        if op.kind == "linear":
            source = theirs[op.name]
            assert op.info["input_tensor_infos"][0]["scale"] == source.info["input_tensor_infos"][0]["scale"]
            assert op.quantized == source.quantized
    kept = [op for op in foreign.ops if not op.fqn.startswith("pooler")]  # qat drops the unused pooler
    assert restored.int8_counts() == {kind: sum(op.kind == kind and op.quantized for op in kept)
                                      for kind in restored.int8_counts()}


def test_qconf_of_a_deeper_model_is_refused(tiny_encoder, tiny_model_dir, tmp_path, texts):
    deeper_dir = tmp_path / "deeper"
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 3
    BertModel(config).save_pretrained(deeper_dir)
    tiny_encoder.tokenizer.save_pretrained(deeper_dir)
    foreign = Qconf.read(inc_qconf(deeper_dir, tmp_path / "inc_deeper", texts))
    with pytest.raises(QatError, match="does not match the model: modules only in the qconf"):
        restore_qconf(tiny_encoder, foreign, texts, QuantConfig())


def test_train_job_restores_an_inc_model_and_exports_it(tiny_model_dir, inc_json, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "qat.train", f"hydra.run.dir={run_dir}", f"model.name_or_path={tiny_model_dir}",
         "model.max_length=32", f"ptq.qconf={inc_json}", "train=none", ONE_TARGET],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ptq_source"] == str(inc_json)
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["int8_ops"]["linear"] == 12 and report["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["passed"]
    # INC's scales reach every record of a tensor, so IPEX's unfused graph is exactly the restored simulation
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["unfused_max_abs_diff"] == 0.0
    assert json.loads((run_dir / "ptq" / "metadata.json").read_text())["restored_from"] == str(inc_json)
