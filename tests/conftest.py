"""Shared fixtures: synthetic DICOM series (tests/dicom_factory.py) and the real-data folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.dicom_factory import SeriesInfo, write_enhanced_mr, write_series, zip_folder

# ../shared/data next to the repository (not part of it); real scans, see SOURCES.md there.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., SeriesInfo]:
    """``make_series(name, **kwargs)``: :func:`write_series` into ``tmp_path / name``."""

    def make(name: str = "series", **kwargs: object) -> SeriesInfo:
        return write_series(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def tilted_ct(tmp_path: Path) -> SeriesInfo:
    """GE-style head CT: 18.5 deg gantry tilt, 3 mm slices along the normal."""
    return write_series(
        tmp_path / "tilted", shape=(48, 56, 14), pixel_spacing=(0.9, 0.8), slice_spacing=3.0, gantry_tilt=18.5
    )


@pytest.fixture
def uneven_ct(tmp_path: Path) -> SeriesInfo:
    """Spacing changes part-way as in some head CT protocols: 8 x 2 mm, 0.7 mm, 6 x 3.5 mm."""
    gaps = [2.0] * 8 + [0.7] + [3.5] * 6
    offsets = [0.0]
    for g in gaps:
        offsets.append(offsets[-1] + g)
    return write_series(tmp_path / "uneven", shape=(40, 48, len(offsets)), slice_offsets=offsets)


@pytest.fixture
def gappy_ct(tmp_path: Path) -> SeriesInfo:
    """Twelve 2.5 mm slices with the sixth one missing."""
    return write_series(tmp_path / "gappy", shape=(40, 48, 12), slice_spacing=2.5, omit=(5,))


@pytest.fixture
def two_series_folder(tmp_path: Path) -> tuple[Path, SeriesInfo, SeriesInfo]:
    """One folder, one study, a CT and an MR series."""
    folder, study = tmp_path / "study", generate_uid()
    ct = write_series(folder, modality="CT", shape=(40, 48, 12), series_number=2, study_uid=study)
    mr = write_series(
        folder,
        modality="MR",
        shape=(32, 36, 9),
        plane="sagittal",
        series_number=3,
        mr_acquisition_type="2D",
        study_uid=study,
    )
    return folder, ct, mr


@pytest.fixture
def enhanced_mr(tmp_path: Path) -> SeriesInfo:
    """Enhanced MR file, oblique, with frames stored out of slice order."""
    order = [3, 1, 0, 2, 5, 4, 7, 6, 9, 8, 11, 10]
    return write_enhanced_mr(tmp_path / "enhanced" / "mr.dcm", oblique_deg=(12.0, -8.0), frame_order=order)


@pytest.fixture
def zipped_series(tmp_path: Path) -> tuple[Path, Path]:
    """(folder, zip of that folder) for an oblique MR series."""
    info = write_series(tmp_path / "tozip", modality="MR", oblique_deg=(10.0, 5.0), rescale_slope=2.5)
    return info.folder, zip_folder(info.folder, tmp_path / "series.zip")


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """The CLI's callback points the root logger at CliRunner's stderr, closed after each call."""
    handlers, level = logging.root.handlers[:], logging.root.level
    quieted = {name: logging.getLogger(name).level for name in ("py.warnings", "pydicom", "nibabel")}
    yield
    logging.root.handlers[:], logging.root.level = handlers, level
    logging.captureWarnings(False)  # the callback routes warnings to logging; undo it
    for name, old in quieted.items():
        logging.getLogger(name).setLevel(old)
