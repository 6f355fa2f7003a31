"""Independent DICOM tools (dicom3tools' dciodvfy, dcm2niix) wrapped for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines dciodvfy reports as errors for one file (warnings are ignored)."""
    require("dciodvfy")
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def dcm2niix_read(
    series_dir: Path, work: Path, *, rotate_3d: bool = True
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Convert a series with dcm2niix; return (data, affine) of its one NIfTI output.

    ``-p n`` applies RescaleSlope (display values), as mrct does for Philips.
    """
    require("dcm2niix")
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["dcm2niix", "-z", "n", "-b", "n", "-p", "n", "-f", "d2n", "-o", str(work)]
    if not rotate_3d:
        cmd += ["-x", "i"]
    res = subprocess.run([*cmd, str(series_dir)], capture_output=True, text=True, check=False)
    outputs = sorted(work.glob("d2n*.nii"))
    assert res.returncode == 0 and outputs, res.stdout + res.stderr
    img = nib.load(outputs[0])
    return np.asarray(img.get_fdata()), np.asarray(img.affine, dtype=np.float64)
