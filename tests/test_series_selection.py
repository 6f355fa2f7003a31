"""Images without a SeriesInstanceUID beside a series that has one: info listed them with an
empty UID, and no --series value could choose them ("" meant no choice)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from mrct.cli import app
from mrct.io import read_volume
from tests.dicom_factory import write_series

runner = CliRunner()


def test_the_series_without_a_uid_is_chosen_as_no_uid(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    mr = write_series(tmp_path / "mr", modality="MR", shape=(20, 24, 6))
    ct = write_series(tmp_path / "ct", modality="CT", shape=(20, 24, 8))
    folder.mkdir()
    for f in mr.files:
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(folder / f"mr_{f.name}")
    for f in ct.files:
        shutil.copy(f, folder / f"ct_{f.name}")
    info = runner.invoke(app, ["info", str(folder)])
    assert info.exit_code == 0, info.output
    assert any(line.split()[:3] == ["no-uid", "MR", "6"] for line in info.output.splitlines()), info.output
    chosen = read_volume(folder, series="no-uid")
    assert chosen.shape[2] == 6
    assert read_volume(folder, series=ct.series_uid).shape[2] == 8
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in folder.glob("mr_*"):
        shutil.copy(f, alone / f.name)
    assert read_volume(alone).shape == chosen.shape  # alone, it needs no name, as before
