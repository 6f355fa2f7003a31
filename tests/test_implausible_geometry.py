"""A head whose header makes it kilometres wide: the spatial unit set to metres, or voxel sizes
off by a factor of a thousand. info and convert keep such a file as it is; localisation built
its 4 mm working grid over the whole field of view and asked for petabytes ("unexpected
RuntimeError", exit 70, naming no file)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import GeometryError
from mrct.io import read_volume
from mrct.preprocessing.mask import MAX_SPAN_MM, working_image
from mrct.volume import Modality
from tests.test_prepare import write_head

runner = CliRunner()


def _in_metres(src: Path, dst: Path) -> Path:
    img = nib.load(src)
    img.header.set_xyzt_units(xyz="meter")  # 2 mm voxels read as 2 m, as ITK reads them
    nib.save(img, dst)
    return dst


def test_a_head_in_metres_is_one_line_naming_the_file(tmp_path: Path) -> None:
    head = _in_metres(write_head(tmp_path / "mm.nii.gz", "mr"), tmp_path / "metres.nii.gz")
    result = runner.invoke(app, ["locate", str(head)])
    assert result.exit_code == 3, result.output
    error = result.output.splitlines()[-1]
    assert error == (
        f"error: {head}: the scan spans 200000 x 240000 x 200000 mm (2000 x 2000 x 2000 mm voxels), "
        "far more than a head: is the header's voxel size or spatial unit wrong?"
    )
    assert runner.invoke(app, ["info", str(head)]).exit_code == 0  # reading it is not the problem


def test_the_limit_is_past_any_real_scan(tmp_path: Path) -> None:
    """Up to 2 m across (a whole body) is worked on; beyond it is refused before any grid."""
    assert MAX_SPAN_MM == 2000.0
    volume = read_volume(write_head(tmp_path / "head.nii.gz", "ct"))  # 200 x 240 x 200 mm
    assert working_image(volume, Modality.CT).array.shape == (50, 60, 50)
    too_wide = volume.replace(affine=volume.affine * [[9], [9], [9], [1]])  # 2.16 m across
    with pytest.raises(GeometryError, match="spans 1800 x 2160 x 1800 mm"):
        working_image(too_wide, Modality.CT)
