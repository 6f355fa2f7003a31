#!/usr/bin/env bash
# The bundled model's GPU training, for a machine lent for minutes (one H200 here): three
# candidate configs train side by side for a fixed wall-clock budget, and their newest
# checkpoints come back for evaluation on the held-out MRs (pipelines/evaluate_model.py).
# Before the call, on the machine that has the data (the same prepared set as
# train_default_model.sh, packed to about 36 MB; monai as a wheel when the GPU machine lacks it):
#   python pipelines/pack_prepared.py pack work/default-model/prepared .gpu/prep
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu monai==1.6.1
# On the GPU machine, from the repository root (mrct runs from the checkout, not installed):
#   bash pipelines/train_default_model_gpu.sh .gpu/prep OUT_DIR [SECONDS] [WHEEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PACKED=$1
OUT_DIR=$2
BUDGET=${3:-530}
WHEELS=${4:-$(dirname "$PACKED")}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# What `mrct train` imports; the readers (nibabel, pydicom, SimpleITK) are not needed here.
python3 -c 'import torch, monai, numpy, safetensors, typer, yaml, tqdm, PIL, tensorboard' || {
  echo "error: a package mrct train needs is missing here; carry it as a wheel in $WHEELS" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, monai; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "monai", monai.__version__)'
python3 pipelines/pack_prepared.py unpack "$PACKED" /tmp/prepared
python3 pipelines/train_within_budget.py --data /tmp/prepared --runs /tmp/runs --seconds "$BUDGET" --pack "$OUT_DIR" \
  --configs configs/head_small_crop.yaml configs/head_small_full.yaml configs/head_medium_full.yaml
