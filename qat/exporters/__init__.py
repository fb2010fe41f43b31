"""Exporters: one module per runtime, the parity check of an export against its simulation, the export folder's
description, and the loader that runs an export folder."""
from qat.exporters.folder import ExportInfo, read_export_info
from qat.exporters.loader import Int8Encoder, load_int8, runtime_forward
from qat.exporters.parity import ParityRecord, ParityTexts, parity_texts
from qat.exporters.signature import ExportSignature
from qat.exporters.speed import SpeedRecord, measure_speed
from qat.exporters.verify import ExportRecord, Runtime, RuntimeExport, check_targets, export_verified

__all__ = ["ExportInfo", "ExportRecord", "ExportSignature", "Int8Encoder", "ParityRecord", "ParityTexts", "Runtime",
           "RuntimeExport", "SpeedRecord", "check_targets", "export_verified", "load_int8", "measure_speed",
           "parity_texts", "read_export_info", "runtime_forward"]
