"""qat's own site map of a model (no IPEX): the same ops, order and tensor sharing as IPEX's `prepare` records, for
every architecture the project tests; and the default job end to end with IPEX's import blocked."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from conftest import REPO
from qat.load import resolve_model_path
from qat.quant.qconf import Qconf
from qat.quant.sites import find_sites
from test_architectures import ARCHITECTURES


def layout(qconf: Qconf) -> tuple[list[str], list[tuple]]:
    """Module keys in order, and per op: module, position, op type, module or function, path, and each input's
    dtype and tensor id renumbered by first appearance (which ops share a tensor, whatever the numbering)."""
    ids: dict[int, int] = {}
    ops = []
    for key, state in qconf.data.items():
        for index, info in state["q_op_infos"].items():
            inputs = tuple((ids.setdefault(t["id"], len(ids)), t["orig_dtype"]) if t else None
                           for t in info["input_tensor_infos"])
            op_type = info["op_type"].split(" at 0x")[0]   # a builtin's repr carries its address
            ops.append((key, index, op_type, info["op_type_is_module"], info["fqn"], inputs,
                        len(info["weight_tensor_infos"])))
    return list(qconf.data), ops


@pytest.fixture(scope="module")
def example():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled:all-MiniLM-L6-v2"))
    batch = tokenizer(["a padded batch of a few words", "short"], padding=True, return_tensors="pt")
    return tokenizer.vocab_size, (batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("head", [AutoModel, AutoModelForSequenceClassification])
def test_site_map_is_what_ipex_prepare_records(name, head, example):
    pytest.importorskip("intel_extension_for_pytorch")
    from qat.exporters.ipex import ipex_skeleton
    from qat.quant.wrapper import EncoderModule

    vocab_size, batch = example
    config = ARCHITECTURES[name]
    config.vocab_size, config.num_labels = vocab_size, 1
    torch.manual_seed(0)
    model = head.from_config(config).eval()
    ours = find_sites(model, batch)
    assert sum(op.kind == "linear" for op in ours.ops) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert layout(ours) == layout(ipex_skeleton(EncoderModule(model).eval(), batch))


def test_default_job_runs_end_to_end_with_ipex_blocked(tiny_model_dir, tmp_path):
    """`import intel_extension_for_pytorch` raises in this process: calibration, training, the ONNX export and
    its parity, evaluation and the report run all the same; asking for the IPEX export is refused in one line."""
    blocked = "import sys; sys.modules['intel_extension_for_pytorch'] = None; from qat.train import main; main()"
    common = [f"model.name_or_path={tiny_model_dir}", "model.max_length=32", "+data.heldout.limit=40",
              "calib.samples=64", "recovery.force=true", "train.steps=2", "train.lr=1e-4", "train.batch_size=8"]
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", blocked, f"hydra.run.dir={run_dir}", *common,
                             "export.targets=[onnx]"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final"] == "qat" and report["training"]["step"] == 2
    onnx = report["exports"]["qat"]["runtimes"]["onnx"]
    assert list(report["exports"]["qat"]["runtimes"]) == ["onnx"] and onnx["parity"]["passed"] and onnx["int8_ops"]
    assert "| QAT int8 (exported onnx) |" in (run_dir / "report.md").read_text()

    refused = subprocess.run([sys.executable, "-c", blocked, f"hydra.run.dir={tmp_path / 'refused'}", *common,
                              "export.targets=[ipex]"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and not (tmp_path / "refused").exists()
    assert "export target 'ipex' cannot be built on this machine: intel_extension_for_pytorch" in refused.stderr
