#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (idempotent, quick when done):
#  - dcm2niix, dicom3tools (dciodvfy) and dcmtk: independent DICOM tools the tests check against;
#  - torch 2.13.0 from PyTorch's CPU index *before* mrct, so pip never pulls the multi-GB CUDA build;
#  - mrct itself, editable, with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v dcm2niix >/dev/null 2>&1 || need_apt+=(dcm2niix pigz)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v dcmdump >/dev/null 2>&1 || need_apt+=(dcmtk)
if ((${#need_apt[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: apt-get not found; install ${need_apt[*]} yourself (tests that need them will skip)" >&2
  fi
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # PyPI's Linux torch wheel depends on the CUDA libraries (GBs); PyTorch's CPU index has the
  # same version without them. Offline (a wheel cache in pip's find-links) the pin alone works.
  "$PY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu --retries 1 \
    || "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test]"
echo "mrct set-up done: $("$PY" -m mrct --version)"
