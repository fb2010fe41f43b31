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
# A first install holds the downloaded wheels and the unpacked stack (torch's CUDA build and its libraries) at once:
# refuse at the start, not halfway through with a full disk.
need_gib=12
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; }; then
  free_gib="$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')"
  if [ "$free_gib" -lt "$need_gib" ]; then
    echo "error: scripts/setup.sh needs about $need_gib GiB free on the disk of $(pwd) for a first install; $free_gib GiB are free" >&2
    exit 2
  fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "installing qat and its stack into .venv (a few minutes on a fresh machine; torch alone is a large download)"
# No pip cache: a second copy of the CUDA wheels would take another 3 GB for nothing.
.venv/bin/python -m pip install --disable-pip-version-check --no-cache-dir --progress-bar on -e '.[test,runtimes,ipex]'
