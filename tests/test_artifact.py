"""The PTQ artifact's metadata is one typed record: written and read in one place, older artifacts still read."""
from dataclasses import asdict

from qat.config import SourceConfig
from qat.ptq.artifact import CalibrationData, EqualizeRecord, MixShare, PtqMetadata, SmoothQuantRecord, parse_metadata
from qat.ptq.trials import AlphaChoice
from qat.quant.config import CalibConfig, QuantConfig
from qat.quant.equalize import Equalization

VERSIONS = {"python": "3.11.9", "torch": "2.8.0", "qat": "0.1.0"}


def test_metadata_round_trips_through_json_exactly():
    choice = AlphaChoice("emd_heldout_pairs, guard/emd", {"0.5": 1.0, "0.7": 1.2}, 0.5,
                         {"emd_heldout_pairs": {"0.5": 0.01, "0.7": 0.012}})
    metadata = PtqMetadata(
        "bundled:all-MiniLM-L6-v2", "mean", 128, {"linear": 36}, VERSIONS, QuantConfig(skip=["encoder.layer.0.output"]),
        CalibConfig(samples=64), SmoothQuantRecord(enabled=True, alpha=0.5, choice=choice, unsmoothed=["a.b"]),
        EqualizeRecord(enabled=True, alpha=0.4, factors=Equalization({"l0": [1.0, 2.0]}, {})),
        CalibrationData(64, mix={"sts": MixShare(3.0, SourceConfig(kind="file", path="x.tsv", format="pairs"), 48)}))
    assert parse_metadata(asdict(metadata)) == metadata


def test_an_artifact_of_an_older_qat_is_still_read():
    """The first waves wrote no SmoothQuant choice, no equalization, no calibration data; a restored qconf's recipe
    was a sentence."""
    calibrated = {"model": "m", "pooling": "cls", "max_length": 64, "int8_ops": {"linear": 12}, "versions": VERSIONS,
                  "recipe": {"ops": ["linear", "matmul"], "skip": ["pooler"], "weight_bits": "auto"},
                  "calibration": {"algorithm": "histogram", "samples": 256},
                  "smoothquant": {"enabled": False, "alpha": 0.5}}
    old = parse_metadata(calibrated)
    assert old.recipe.skip == ["pooler"] and old.calibration.samples == 256 and old.source == "calibration"
    assert old.smoothquant.choice is None and old.smoothquant.unsmoothed == [] and old.equalize is None
    restored = parse_metadata({"model": "m", "pooling": "mean", "max_length": 128, "restored_from": "q.json",
                               "recipe": "as in the restored qconf"})
    assert restored.recipe is None and restored.source == "q.json" and restored.calibration_data is None
    single = parse_metadata({**calibrated, "calibration_data": {"source": asdict(SourceConfig(limit=256)), "texts": 256}})
    assert single.calibration_data == CalibrationData(256, source=SourceConfig(limit=256))
