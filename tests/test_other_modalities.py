"""A DICOM series of another modality (PET, say) handed to translate: batch skips it by its
header, and translate took it as MR ("MR (from intensities)") and translated it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import ModalityError
from mrct.io import read_volume
from mrct.translatable import source_modality
from mrct.volume import Modality
from tests.dicom_factory import write_series
from tests.model_fixtures import write_tiny_model

runner = CliRunner()


@pytest.mark.parametrize("to", ["ct", "mr"])
def test_translate_refuses_a_series_whose_header_names_another_modality(tmp_path: Path, to: str) -> None:
    series = write_series(tmp_path / "pet", modality="PT", plane="axial").folder
    model = write_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out.nii.gz"
    result = runner.invoke(app, ["translate", str(series), "--to", to, "--model", str(model), "-o", str(out)])
    assert result.exit_code == 8, result.output
    need = "an MR" if to == "ct" else "a CT"
    assert result.output.splitlines() == [
        f"error: {series}: its DICOM Modality is PT, not {need[-2:]}; --to {to} needs {need} "
        "(pass --force to translate anyway)"
    ]
    assert not out.exists()


def test_force_and_other_take_the_intensities(tmp_path: Path) -> None:
    pet = read_volume(write_series(tmp_path / "pet", modality="PT").folder)
    assert pet.modality is None and pet.source.dicom is not None and pet.source.dicom.modality == "PT"
    with pytest.raises(ModalityError, match="Modality is PT"):
        source_modality(pet, Modality.CT, force=False)
    assert source_modality(pet, Modality.CT, force=True) is Modality.MR
    # "OT" (other) is judged from its intensities, as batch judges it.
    other = read_volume(write_series(tmp_path / "ot", modality="OT").folder)
    assert source_modality(other, Modality.CT, force=False) is Modality.MR
