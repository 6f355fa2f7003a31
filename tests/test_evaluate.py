"""mrct evaluate: predictions against ground truth, per case, from files or folders."""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mrct import api, metrics
from mrct.cli import app
from mrct.errors import InputNotFoundError, OutputExistsError, ReadError
from mrct.evaluate import slice_axis

runner = CliRunner()
SHAPE = (8, 9, 10)  # SSIM needs 7 voxels along every axis
# Axial slices along k (2 mm), anisotropic in-plane, off-origin: the usual NIfTI layout.
AFFINE = np.array([[-0.9, 0, 0, 40.0], [0, 1.1, 0, -30.0], [0, 0, 2.0, 12.0], [0, 0, 0, 1]])


def _ct(seed: int) -> np.ndarray:
    """A little head: air around a water-ish block with a bone plate, in int16 HU."""
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -1000.0)
    hu[1:7, 2:8, 1:9] = 40 + rng.normal(0, 20, (6, 6, 8))
    hu[1:7, 2:4, 1:9] = 900
    return hu.astype(np.int16)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[1:7, 2:8, 1:9] = 1
    return m


@pytest.fixture
def ct_cases(tmp_path: Path) -> tuple[Path, Path, Path]:
    """pred/, gt/ and masks/ with two cases; gt/ has one more, without prediction."""
    pred, gt, masks = (tmp_path / n for n in ("pred", "gt", "masks"))
    for d in (pred, gt, masks):
        d.mkdir()
    for n, name in enumerate(("case1", "case2")):
        truth = _ct(n)
        noisy = truth + np.random.default_rng(10 + n).normal(0, 30 * (n + 1), SHAPE)
        _nifti(gt / f"{name}.nii.gz", truth)
        _nifti(pred / (f"{name}.nii" if n else f"{name}.nii.gz"), noisy.astype(np.float32))
        _nifti(masks / f"{name}.nii.gz", _mask())
    _nifti(gt / "case3.nii.gz", _ct(3))
    return pred, gt, masks


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_ct_folders_through_the_cli(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, masks = ct_cases
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["evaluate", str(pred), str(gt), "--mask", str(masks), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert [r["case"] for r in rows] == ["case1", "case2"]  # case3 has no prediction: left out
    assert f"{gt}: 1 ground-truth volume(s) have no prediction and are left out: case3" in result.output
    assert list(rows[0]) == [
        "case",
        "mae_hu",
        "psnr_db",
        "ssim",
        "flicker_hu",
        "flicker_gt_hu",
        "flicker_ratio",
    ]
    p = np.asarray(nib.load(str(pred / "case2.nii")).dataobj, dtype=np.float64)
    g, m = np.asarray(nib.load(str(gt / "case2.nii.gz")).dataobj, dtype=np.float64), _mask()
    row = rows[1]
    assert float(row["mae_hu"]) == pytest.approx(metrics.mae(p, g, m), rel=1e-7)
    assert float(row["psnr_db"]) == pytest.approx(metrics.psnr(p, g, m), rel=1e-7)
    assert float(row["ssim"]) == pytest.approx(metrics.ssim(p, g, m), rel=1e-7)
    flicker = metrics.slice_flicker(metrics.clip_hu(p), m, axis=2)  # k is the axial slice axis
    assert float(row["flicker_hu"]) == pytest.approx(flicker, rel=1e-7)
    assert float(row["flicker_ratio"]) == pytest.approx(flicker / float(row["flicker_gt_hu"]), rel=1e-6)
    assert float(row["flicker_ratio"]) > 1  # noise added slice by slice flickers
    assert "| mae_hu | 2 |" in result.output and "±" in result.output and "median" in result.output
    assert f"wrote {out} (2 cases)" in result.output


def test_summary_is_mean_std_median(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, masks = ct_cases
    evaluation = api.evaluate(pred, gt, tmp_path / "r.csv", mask=masks)
    values = [r["mae_hu"] for r in evaluation.rows]
    s = evaluation.summary()["mae_hu"]
    assert (s.n, s.mean, s.median) == (2, pytest.approx(sum(values) / 2), pytest.approx(sum(values) / 2))
    assert s.std == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2))  # sample std of two
    assert s.std == pytest.approx(statistics.stdev(values))


def test_single_files_and_one_mask_for_all(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, masks = ct_cases
    one = api.evaluate(
        pred / "case1.nii.gz", gt / "case1.nii.gz", tmp_path / "one.csv", mask=masks / "case1.nii.gz"
    )
    shared = api.evaluate(pred, gt, tmp_path / "all.csv", mask=masks / "case1.nii.gz")
    assert one.rows[0] == shared.rows[0]
    unmasked = api.evaluate(pred / "case1.nii.gz", gt / "case1.nii.gz", tmp_path / "nomask.csv")
    assert unmasked.rows[0]["mae_hu"] < one.rows[0]["mae_hu"]  # air matches perfectly outside the head


def test_mismatched_grids_name_the_file(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, _ = ct_cases
    _nifti(pred / "case1.nii.gz", np.zeros((8, 9, 11), dtype=np.int16))
    result = runner.invoke(app, ["evaluate", str(pred), str(gt), "-o", str(tmp_path / "r.csv")])
    assert result.exit_code == ReadError.exit_code
    line = result.stderr.strip().splitlines()[-1]  # after the warning that case3 has no prediction
    assert (
        line == f"error: {pred / 'case1.nii.gz'}: shape (8, 9, 11) differs from the ground truth's (8, 9, 10)"
    )
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    _nifti(pred / "case1.nii.gz", _ct(0), moved)
    with pytest.raises(
        ReadError, match=r"case1.nii.gz: affine differs from the ground truth's \(by up to 0.5 mm\)"
    ):
        api.evaluate(pred, gt, tmp_path / "r.csv")
    _nifti(tmp_path / "bad_mask.nii.gz", _mask(), moved)
    with pytest.raises(ReadError, match=r"bad_mask\.nii\.gz: affine differs"):
        api.evaluate(
            pred / "case2.nii", gt / "case2.nii.gz", tmp_path / "r.csv", mask=tmp_path / "bad_mask.nii.gz"
        )
    assert not (tmp_path / "r.csv").exists()  # nothing partial is written


def test_missing_ground_truth_and_existing_output(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, masks = ct_cases
    (gt / "case2.nii.gz").unlink()
    with pytest.raises(InputNotFoundError, match="no ground truth named 'case2'"):
        api.evaluate(pred, gt, tmp_path / "r.csv")
    (masks / "case1.nii.gz").unlink()
    with pytest.raises(InputNotFoundError, match="no mask named 'case1'"):
        api.evaluate(pred, gt, tmp_path / "r.csv", mask=masks)
    (tmp_path / "r.csv").write_text("keep")
    result = runner.invoke(
        app,
        ["evaluate", str(pred / "case1.nii.gz"), str(pred / "case1.nii.gz"), "-o", str(tmp_path / "r.csv")],
    )
    assert result.exit_code == OutputExistsError.exit_code and "--overwrite" in result.output
    assert (tmp_path / "r.csv").read_text() == "keep"
    # From a hunt: with --overwrite, -o naming an input replaced it by the CSV.
    before = (gt / "case1.nii.gz").read_bytes()
    for target in (gt / "case1.nii.gz", pred / "case1.nii.gz"):
        result = runner.invoke(
            app,
            [
                "evaluate",
                str(pred / "case1.nii.gz"),
                str(gt / "case1.nii.gz"),
                "-o",
                str(target),
                "--overwrite",
            ],
        )
        assert result.exit_code == 4 and "output would replace the input" in result.stderr, result.output
    assert (gt / "case1.nii.gz").read_bytes() == before


def test_mnist_l2_on_npy_volumes(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    truth = -np.ones((30, 12, 12), dtype=np.float32)
    truth[:, 4:8, 4:8] = 1.0
    guess = truth.copy()
    guess[::2, 3, 4:8] = 1.0  # 4 wrong voxels on every other slice: 60 on the [0, 1] scale
    np.save(gt / "00042.npy", truth)
    np.save(pred / "00042.npy", guess)
    np.save(gt / "00043.npy", truth)  # no prediction: ignored
    result = runner.invoke(
        app, ["evaluate", str(pred), str(gt), "--metric", "mnist-l2", "-o", str(tmp_path / "r.csv")]
    )
    assert result.exit_code == 0, result.output
    (row,) = _rows(tmp_path / "r.csv")
    assert row["case"] == "00042" and float(row["l2"]) == pytest.approx(np.sqrt(60))
    assert float(row["flicker_gt"]) == 0.0 and float(row["flicker"]) > 0  # alternating slices flicker
    assert float(row["flicker_ratio"]) == np.inf
    np.save(pred / "00042.npy", (guess + 1) * 127.5)  # 0..255, not the prepared-set scale
    with pytest.raises(ReadError, match=r"00042.npy: values 0..255 are off \[-1, 1\]"):
        api.evaluate(pred, gt, tmp_path / "r2.csv", metric="mnist-l2")


def test_slice_axis_follows_the_affine() -> None:
    assert slice_axis(AFFINE) == 2
    sagittal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert slice_axis(sagittal) == 1
    assert slice_axis(None) == 0  # mrct's (D, H, W) arrays


def test_cli_subprocess(ct_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred, gt, masks = ct_cases
    out = tmp_path / "results.csv"
    run = subprocess.run(
        [sys.executable, "-m", "mrct", "evaluate", str(pred), str(gt), "--mask", str(masks), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "| ssim | 2 |" in run.stdout and len(_rows(out)) == 2


def test_a_case_name_that_is_not_utf8_is_written_to_the_csv(tmp_path: Path) -> None:
    """A Latin-1 file name once stopped the CSV with an UnicodeEncodeError (exit 70)."""
    import os

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    name = os.fsdecode(b"cas\xe9")
    try:
        _nifti(gt / f"{name}.nii.gz", _ct(0))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    _nifti(pred / f"{name}.nii.gz", _ct(0))
    result = runner.invoke(app, ["evaluate", str(pred), str(gt), "-o", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.csv").read_bytes().decode("utf-8")  # valid UTF-8 for pandas
    assert text.splitlines()[1].startswith("cas\\xe9,0,")


def test_mae_is_synthrad2023s_unclipped_and_psnr_ssim_clip(tmp_path: Path) -> None:
    """SynthRAD2023's reference MAE does not clip (its PSNR and SSIM do); mrct clipped it too."""
    gt = _ct(0).astype(np.float32)
    pred = gt.copy()
    pred[3, 5, 4] = 3500.0  # metal in the prediction, above the 3000 HU clip
    row = api.evaluate(
        _nifti(tmp_path / "p.nii.gz", pred), _nifti(tmp_path / "g.nii.gz", gt), tmp_path / "x.csv"
    ).rows[0]
    assert row["mae_hu"] == pytest.approx(abs(3500.0 - float(gt[3, 5, 4])) / gt.size)
    assert row["psnr_db"] == pytest.approx(metrics.psnr(metrics.clip_hu(pred), metrics.clip_hu(gt)))


def test_bad_masks_and_nan_arrays_name_their_file_with_exit_3(tmp_path: Path) -> None:
    """NaN in a .npy was evaluated to nan (exit 0); mask problems were blamed on the prediction
    (exit 1); a mask one slice thin aborted every case for want of a flicker."""
    gt, pred = _nifti(tmp_path / "g.nii.gz", _ct(0)), _nifti(tmp_path / "p.nii.gz", _ct(1))
    empty = _nifti(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    result = runner.invoke(
        app, ["evaluate", str(pred), str(gt), "-o", str(tmp_path / "a.csv"), "--mask", str(empty)]
    )
    assert result.exit_code == 3 and f"{empty}: the mask selects no voxel" in result.stderr, result.output
    thin = _mask()
    thin[:, :, [1, 2, 4, 5, 6, 7, 8]] = 0  # one slice along the slice axis (k, 2 mm)
    row = api.evaluate(pred, gt, tmp_path / "b.csv", mask=_nifti(tmp_path / "thin.nii.gz", thin)).rows[0]
    assert row["flicker_hu"] is None and row["flicker_ratio"] is None and row["mae_hu"] > 0
    assert ",," in (tmp_path / "b.csv").read_text()  # empty cells, not "nan"
    edge = np.zeros(SHAPE, np.uint8)
    edge[0, :, :] = 1  # on the border: SSIM's window has no voxel to average (it stopped every case)
    row = api.evaluate(pred, gt, tmp_path / "e.csv", mask=_nifti(tmp_path / "edge.nii.gz", edge)).rows[0]
    assert row["ssim"] is None and row["mae_hu"] == 0.0  # air on both: measured, and equal
    nan = np.zeros((8, 8, 8))
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", np.zeros((8, 8, 8)))
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "nan.npy"), str(tmp_path / "ok.npy"), "-o", str(tmp_path / "c.csv")]
    )
    assert result.exit_code == 3 and "NaN" in result.stderr, result.output


def test_a_bad_input_leaves_no_output_folders_and_a_file_for_a_series_is_refused_first(
    tmp_path: Path,
) -> None:
    """From a hunt: evaluate made -o's folders before reading its inputs (left behind on a bad
    one); convert read a whole scan before refusing a file where its DICOM series would go."""
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    result = runner.invoke(
        app, ["evaluate", str(bad), str(bad), "-o", str(tmp_path / "new" / "sub" / "r.csv")]
    )
    assert result.exit_code == 3 and not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("mine")
    result = runner.invoke(app, ["convert", str(bad), f"{tmp_path / 'afile'}/", "--overwrite"])
    assert result.exit_code == 4 and "is not a folder" in result.stderr, result.output  # not a read error
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_file_against_a_folder_says_which_is_which(
    ct_cases: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """From a CLI walk: "PRED and GT must both be..." (the help names it TRUTH), exit 3 (an
    unreadable input) for a usage mismatch."""
    pred, gt, _ = ct_cases
    result = runner.invoke(
        app, ["evaluate", str(pred), str(gt / "case1.nii.gz"), "-o", str(tmp_path / "r.csv")]
    )
    assert result.exit_code == 1
    assert "PRED is a folder and TRUTH a file: give two files, or two folders of volumes" in result.output
