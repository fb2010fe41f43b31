"""Exporters from the fake-quant model to a real int8 runtime (IPEX today)."""
