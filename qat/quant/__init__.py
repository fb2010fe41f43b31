"""Fake quantization that mirrors IPEX's static int8 recipe, driven by an IPEX qconf."""
