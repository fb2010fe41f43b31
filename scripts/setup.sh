#!/usr/bin/env bash
# Create .venv with the pinned stack (torch 2.8, IPEX 2.8, INC 3.7.1, ...) and qat installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,runtimes]'
