"""Exporters: one module per runtime, the parity check of an export against its simulation, the export folder's
description, and the loader that runs an export folder."""
from qat.exporters.folder import ExportInfo, read_export_info
from qat.exporters.ipex import load_exported
from qat.exporters.loader import Int8Encoder, load_int8
from qat.exporters.parity import ParityRecord
from qat.exporters.verify import ExportRecord, export_verified

__all__ = ["ExportInfo", "ExportRecord", "Int8Encoder", "ParityRecord", "export_verified", "load_exported",
           "load_int8", "read_export_info"]
