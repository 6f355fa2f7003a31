"""Build the reference head used by brow-to-jaw localisation.

    python pipelines/build_head_template.py ../shared/data/mr/ixi_t1_2mm -o mrct/preprocessing/reference \
        --annotations tests/data/brow_jaw_annotations.json

Every 5th IXI T1 scan (sorted by name; 10 of the 50) is registered to the
first one, then, twice more, to the running mean (similarity, then affine;
normalised correlation, since all are T1). The mean, scaled to uint8 on a 2 mm
RAS grid, is the template. It averages ten people, so it shows no individual.

Landmarks: three points placed by eye on the template (right and left
supraorbital margins, menton; ``INITIAL_LANDMARKS``). Their S coordinates are
then calibrated: the localiser is run on the ten template subjects and each
level is shifted by the mean difference to the subjects' own annotations.
Only those ten subjects are used, so the other annotated heads remain a
held-out test of the localiser (tests/test_localise.py).

The shipped levels (mrct/preprocessing/reference/head_t1_template.json) come from a build
before ITK registration ran on one thread; a rebuild today gives the same image and levels
a few tenths of a mm to 4.5 mm apart (see the README's localisation section for both).

IXI is CC BY-SA 3.0 (https://brain-development.org/ixi-dataset/); the
template is a derivative under the same licence (see NOTICE.md there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from mrct.errors import InputNotFoundError, ReadError
from mrct.io import read_volume
from mrct.io.orientation import closest_canonical
from mrct.preprocessing.localise import REFERENCE_NAME, Localiser, Reference
from mrct.preprocessing.mask import working_image
from mrct.volume import Modality, Volume

# RAS mm in the template's space, placed by eye on sagittal views of the mean head.
INITIAL_LANDMARKS = {
    "right_supraorbital": (34.8, 72.0, 10.0),
    "left_supraorbital": (-29.2, 72.0, 10.0),
    "menton": (2.8, 85.0, -104.0),
}
EVERY = 5
ROUNDS = 3


def _normalised(path: Path) -> Volume:
    vol = read_volume(path, modality=Modality.MR)
    array, affine = closest_canonical(vol.array.astype(np.float32), vol.affine)
    work = working_image(Volume(array, affine, Modality.MR), Modality.MR, step_mm=2.0)
    scale = float(np.percentile(work.array[work.mask], 99))
    return Volume(work.array / scale, work.affine, Modality.MR)


def _register_to(fixed: Volume, moving: Volume, *, affine: bool) -> np.ndarray:
    """Warp ``moving`` onto ``fixed``'s grid (correlation; similarity then optionally affine)."""
    import SimpleITK as sitk

    from mrct.preprocessing.localise import anchor_lps
    from mrct.preprocessing.registration import sitk_image

    f_work = working_image(fixed, Modality.MR, step_mm=4.0)
    m_work = working_image(moving, Modality.MR, step_mm=4.0)
    f_img, m_img = sitk_image(fixed.array, fixed.affine), sitk_image(moving.array, moving.affine)
    start = sitk.Similarity3DTransform()
    start.SetCenter(anchor_lps(f_work).tolist())
    start.SetTranslation((anchor_lps(m_work) - anchor_lps(f_work)).tolist())
    stages = [sitk.Similarity3DTransform(start)]
    if affine:
        stages.append(sitk.AffineTransform(3))
    transform = stages[0]
    for stage in stages:
        if isinstance(stage, sitk.AffineTransform):
            stage.SetCenter(transform.GetCenter())
            stage.SetMatrix(transform.GetMatrix())
            stage.SetTranslation(transform.GetTranslation())
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsCorrelation()
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.25, 7)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 200, relaxationFactor=0.7)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2])
        method.SetSmoothingSigmasPerLevel([4.0, 2.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetInitialTransform(stage, inPlace=True)
        method.Execute(f_img, m_img)
        transform = stage
    warped = sitk.Resample(m_img, f_img, transform, sitk.sitkLinear, 0.0)
    return np.asarray(sitk.GetArrayFromImage(warped), dtype=np.float32).transpose(2, 1, 0)


def build_template(paths: list[Path]) -> Volume:
    vols = [_normalised(p) for p in paths]
    fixed = vols[0]
    for rnd in range(ROUNDS):
        mean = np.mean([_register_to(fixed, v, affine=rnd > 0) for v in vols], axis=0)
        fixed = Volume(mean, vols[0].affine, Modality.MR)
        print(f"round {rnd + 1}/{ROUNDS} done")
    return fixed


def calibrate(template: Volume, landmarks: dict, annotated: dict[Path, dict]) -> tuple[dict, float, float]:
    """Shift each level's S so that, on the template subjects, the mean error is zero.

    Returns the calibrated landmarks, the subjects' mean slab height (the
    localiser's prior for the jaw when the chin is not seen) and the mean height of
    their annotated menton above the chin's soft-tissue edge found by the localiser.
    """
    from mrct.preprocessing.localise import locate_volume

    work = working_image(template, Modality.MR)
    heights = [t["superior_mm"] - t["inferior_mm"] for t in annotated.values()]
    localiser = Localiser(Reference(work, landmarks, "", float(np.mean(heights))))
    errors_sup, errors_jaw, above_edge = [], [], []
    for path, truth in annotated.items():
        loc = locate_volume(read_volume(path, modality=Modality.MR), localiser)
        errors_sup.append(loc.slab.superior_mm - truth["superior_mm"])
        errors_jaw.append(loc.details["menton_registered_s_mm"] - truth["inferior_mm"])
        if loc.details["chin_edge_s_mm"] is not None:
            above_edge.append(truth["inferior_mm"] - loc.details["chin_edge_s_mm"])
        print(f"{path.name}: brow {errors_sup[-1]:+.1f} mm, jaw (registration) {errors_jaw[-1]:+.1f} mm")
    d_sup, d_jaw = float(np.mean(errors_sup)), float(np.mean(errors_jaw))
    print(f"calibration shift: brow {-d_sup:+.1f} mm, jaw {-d_jaw:+.1f} mm")
    print(f"mean slab height of the template subjects: {np.mean(heights):.1f} mm")
    print(f"menton above the chin edge: {np.mean(above_edge):.1f} mm ({len(above_edge)} subjects)")
    out = dict(landmarks)
    for key in ("right_supraorbital", "left_supraorbital"):
        r, a, s = out[key]
        out[key] = (r, a, s - d_sup)
    r, a, s = out["menton"]
    out["menton"] = (r, a, s - d_jaw)
    return out, float(np.mean(heights)), float(np.mean(above_edge))


def _annotations(path: Path) -> dict[str, dict]:
    """The brow/jaw annotations JSON, by scan file name."""
    try:
        heads = json.loads(path.read_text(encoding="utf-8"))["heads"]
        return {Path(h["path"]).name: h for h in heads}
    except (ValueError, KeyError, TypeError) as err:
        raise ReadError(f"not a brow/jaw annotations file ({err!r})", path) from None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ixi_folder", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--annotations", type=Path, help="brow/jaw annotations JSON for calibration")
    args = parser.parse_args()
    if not args.ixi_folder.is_dir():
        raise InputNotFoundError("no such folder (the IXI T1 scans)", args.ixi_folder)
    paths = sorted(args.ixi_folder.glob("*.nii.gz"))[::EVERY]
    if not paths:
        raise InputNotFoundError("no *.nii.gz scans in this folder (the IXI T1 scans)", args.ixi_folder)
    # Read before the registrations (many minutes), so a bad file stops the run at once.
    annotations = _annotations(args.annotations) if args.annotations else None
    template = build_template(paths)
    landmarks, mean_height, above_edge = dict(INITIAL_LANDMARKS), 117.0, 6.0
    if annotations is not None:
        annotated = {
            p: annotations[p.name]
            for p in paths
            if annotations.get(p.name, {}).get("inferior_mm") is not None
        }
        landmarks, mean_height, above_edge = calibrate(template, landmarks, annotated)
    args.output.mkdir(parents=True, exist_ok=True)
    scaled = np.clip(template.array / np.percentile(template.array, 99.9) * 255, 0, 255).astype(np.uint8)
    image = nib.Nifti1Image(scaled, template.affine)
    image.set_qform(template.affine, code=1)
    image.set_sform(template.affine, code=1)
    nib.save(image, args.output / f"{REFERENCE_NAME}.nii.gz")
    meta = {
        "description": f"mean T1 head of {len(paths)} IXI subjects (Hammersmith, 3T), 2 mm, RAS",
        "subjects": [p.name for p in paths],
        "licence": "CC BY-SA 3.0, derived from the IXI dataset (https://brain-development.org/ixi-dataset/)",
        "landmarks_ras_mm": {k: [round(c, 2) for c in v] for k, v in landmarks.items()},
        "mean_slab_height_mm": round(mean_height, 1),
        "menton_above_chin_edge_mm": round(above_edge, 1),
        "landmark_definitions": "supraorbital margins and menton, see ../shared/LANDMARKS.md",
        "built_by": "pipelines/build_head_template.py",
    }
    (args.output / f"{REFERENCE_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
