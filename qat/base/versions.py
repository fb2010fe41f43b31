"""The versions of the libraries an artifact, an export or a report was made with."""
from __future__ import annotations

import importlib.metadata
import platform

VERSIONED = ("torch", "intel_extension_for_pytorch", "neural_compressor_pt", "transformers", "accelerate", "qat")


def library_versions(more: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED + more:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
