#!/usr/bin/env bash
# Create .venv with the pinned stack (torch 2.8, IPEX 2.8, INC 3.7.1, OpenVINO, ONNX Runtime, ...) and qat installed
# in editable mode. PYTHON=/path/to/python3.11 picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3.11}"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "not found")"
if [ "$version" != "3.11" ]; then
  echo "error: scripts/setup.sh needs Python 3.11 (IPEX 2.8 has wheels for no other); '$python' is $version; expected PYTHON=/path/to/python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "installing qat and its stack into .venv (a few minutes on a fresh machine; torch alone is a large download)"
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar on -e '.[test,runtimes,ipex]'
