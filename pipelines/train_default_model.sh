#!/usr/bin/env bash
# How the bundled model models/mrct-head-medium was made, with mrct's own commands only.
# Data: the real heads in ../shared/data: the IXI T1 MRs (CC BY-SA 3.0), the Philips 3D MPRAGE
# (dcm_qa, BSD-2) and Siemens 2D T1 DICOM series, and the UNC cadaver CT. --hold-out-from 'IXI*'
# keeps 15 IXI MRs (30 %, seed 0) out of training and puts both DICOM MRs in it;
# evaluate_model.py reports on the held-out ones. CT is scarce (one usable head CT), so training
# augments strongly: random affine and mild elastic; for MR also gamma, bias field and contrast
# remaps.
# The package is iteration 250 of the 400 that configs/head_medium_full.yaml schedules, chosen
# on training MRs (its card's metrics.checkpoint_choice). It needs a GPU. It was trained on one lent
# for minutes, through train_default_model_gpu.sh; on a GPU of your own this does the same.
# It exports to $WORK/model; the committed package is that export with a description and the
# evaluation's metrics written into its model.json (export writes a generic description and no
# metrics). Copy it into models/ by hand only after checking the evaluation.
# Usage: bash pipelines/train_default_model.sh   (resumable: run it again)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK=${WORK:-work/default-model}
DICOM_MRS=("$DATA/dicom/mr_philips_elition_t1_mprage_sag3d" "$DATA/dicom/mr_siemens_prisma_t1_fl2d_sag_hfs")
mrct prepare --mr "$DATA/mr" "${DICOM_MRS[@]}" --ct "$DATA/ct" "$DATA/dicom/ct_ge_hispeed_head_tilt" \
  -o "$WORK/prepared" --workers 2 --seed 0 --hold-out-from 'IXI*' || true  # failures are listed
mrct train --config configs/head_medium_full.yaml --data "$WORK/prepared" -o "$WORK/run" --resume --until 250
mrct export "$WORK/run" --checkpoint iter_0000250 -o "$WORK/model" --name mrct-head-medium --license CC-BY-SA-3.0 --overwrite
python3 pipelines/evaluate_model.py --model "$WORK/model" --prepared "$WORK/prepared" --mr "${DICOM_MRS[@]}" \
  --ct "$DATA/ct/unc_cthead_cadaver_hu.nii.gz" -o "$WORK/evaluation.json" --previews 2 --overwrite
