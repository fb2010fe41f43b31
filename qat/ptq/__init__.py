"""Post-training quantization: calibration (with its alpha trials and the sensitivity analysis), restore of a
foreign qconf, the search space, and the PTQ artifact."""
from qat.ptq.artifact import PtqMetadata, check_ptq_artifact, read_ptq_artifact, write_ptq_artifact
from qat.ptq.calibration import apply_calibration, calibration_batches
from qat.ptq.prepare import PtqModel, SensitivityRequest, calibrate, calibration_data, check_recipe, read, restore
from qat.ptq.sensitivity import SensitivityResult, analyse_sensitivity
from qat.ptq.trials import ALPHA_OBJECTIVES, AlphaChoice, CalibrationTrials, as_made, observe_with_alphas

__all__ = [
    "ALPHA_OBJECTIVES", "AlphaChoice", "CalibrationTrials", "PtqMetadata", "PtqModel", "SensitivityRequest",
    "SensitivityResult", "analyse_sensitivity", "apply_calibration", "as_made", "calibrate", "calibration_batches",
    "calibration_data", "check_ptq_artifact", "check_recipe", "observe_with_alphas", "read", "read_ptq_artifact", "restore",
    "write_ptq_artifact",
]
