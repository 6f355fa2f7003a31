#!/usr/bin/env bash
# How the bundled model models/mrct-head-cpu-small was made, with mrct's own commands only.
# Data: the real heads in ../shared/data (IXI T1 MRs and the Philips DICOM MR, CC BY-SA 3.0 /
# BSD-2; the UNC cadaver CT). prepare's seeded 70/30 split keeps the MR test split out of
# training; evaluate_model.py reports on it. CT is scarce (one usable head CT), so training
# uses the augmentations (random affine, mild elastic; gamma and bias field for MR).
# Usage: bash pipelines/train_default_model.sh [ITERATIONS]   (resumable: run it again)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK=${WORK:-work/default-model}
UNTIL=${1:-2000}
mrct prepare --mr "$DATA/mr" "$DATA/dicom/mr_philips_elition_t1_mprage_sag3d" "$DATA/dicom/mr_siemens_prisma_t1_fl2d_sag_hfs" \
  --ct "$DATA/ct" "$DATA/dicom/ct_ge_hispeed_head_tilt" -o "$WORK/prepared" --workers 2 --seed 0 || true  # failures are listed
mrct train --config configs/cpu_small.yaml --data "$WORK/prepared" -o "$WORK/run" --resume --until "$UNTIL"
mrct export "$WORK/run" -o models/mrct-head-cpu-small --license CC-BY-SA-3.0 --overwrite
python pipelines/evaluate_model.py --model models/mrct-head-cpu-small --prepared "$WORK/prepared" \
  --ct "$DATA/ct/unc_cthead_cadaver_hu.nii.gz" -o models/mrct-head-cpu-small/evaluation.json --previews 2
