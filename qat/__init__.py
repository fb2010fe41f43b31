"""qat: quantization-aware training for transformer encoders, exported to IPEX int8."""
