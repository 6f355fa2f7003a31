"""Property-based tests (hypothesis): readers under byte damage, and the geometry round trip.

Readers: a small valid file with random bytes changed, or cut short, is either
read or refused with an :class:`MrctError`; nothing else may escape, and a
low memory limit keeps any misread header from allocating much. Geometry:
preprocessing to the model grid and back restores the input's shape and affine
exactly, for random rotations (oblique included), flips, anisotropic spacing
and shapes, with an explicit slab (no localiser, so it is fast).

Examples are derandomised so that the suite is repeatable; a failure prints the
smallest damage that triggers it.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import DeflatedExplicitVRLittleEndian

from mrct.errors import MrctError
from mrct.io import read_volume, write_volume
from mrct.io.limits import memory_limit
from mrct.preprocessing.chain import invert, preprocess
from mrct.preprocessing.config import GridConfig, PreprocessConfig
from mrct.preprocessing.crop import CropRequest
from mrct.volume import Modality, Volume
from tests.dicom_factory import write_series
from tests.phantoms import phantom, rotation

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about the values it is fed


@st.composite
def damage(draw: st.DrawFn, size: int, header: int) -> tuple[list[tuple[int, int]], int | None]:
    """Byte changes (mostly in the first ``header`` bytes, where parsers look) and maybe a cut."""
    near = st.integers(0, max(0, min(header, size) - 1))
    anywhere = st.integers(0, size - 1)
    changes = draw(st.lists(st.tuples(st.one_of(near, anywhere), st.integers(0, 255)), max_size=8))
    cut = draw(st.one_of(st.none(), st.integers(0, size - 1)))
    return changes, cut


def damaged(data: bytes, changes: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, value in changes:
        out[at] = value
    return bytes(out[:cut] if cut is not None else out)


def read_or_refuse(path: Path) -> None:
    """The property: a Volume, or an MrctError. Any other exception fails the test."""
    with memory_limit("64M"):
        try:
            volume = read_volume(path)
        except MrctError:
            return
    assert volume.array.ndim == 3 and np.all(np.isfinite(volume.affine))


def _fuzz_file(
    source: bytes, name: str, header: int, capfd: pytest.CaptureFixture[str] | None = None
) -> Callable[..., None]:
    """With ``capfd``, also nothing may appear on the process's stderr (C libraries write there)."""

    @FUZZ
    @given(damage(len(source), header))
    def run(hurt: tuple[list[tuple[int, int]], int | None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(damaged(source, *hurt))
            if capfd is not None:
                capfd.readouterr()
            read_or_refuse(path)
            if capfd is not None:
                assert capfd.readouterr().err == ""

    return run


def _uncompressed_mha(volume: Volume, path: Path) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(volume.array), str(path), useCompression=False)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    vol = phantom(shape=(8, 7, 6))
    return {
        "nii": write_volume(vol, root / "v.nii"),
        "nii.gz": write_volume(vol, root / "v.nii.gz"),
        "mha": write_volume(vol, root / "v.mha"),  # compressed
        "raw.mha": _uncompressed_mha(vol, root / "raw.mha"),
        "nrrd": write_volume(vol, root / "v.nrrd"),
        "series": write_series(root / "series", modality="MR", shape=(12, 10, 5), rescale_slope=2.0).folder,
    }


@pytest.mark.parametrize("kind", ["nii", "mha", "raw.mha", "nrrd"])
def test_damaged_image_files_are_read_or_refused(
    sources: dict[str, Path], kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # ITK's MetaIO used to print its complaints, and hang on a corrupt compressed stream.
    _fuzz_file(sources[kind].read_bytes(), f"fuzz.{kind}", header=400, capfd=capfd)()


def test_damaged_gzip_nifti_is_read_or_refused(sources: dict[str, Path]) -> None:
    _fuzz_file(sources["nii.gz"].read_bytes(), "fuzz.nii.gz", header=64)()


def test_damaged_nifti_header_inside_gzip_is_read_or_refused(sources: dict[str, Path]) -> None:
    raw = gzip.decompress(sources["nii.gz"].read_bytes())

    @FUZZ
    @given(damage(len(raw), 352))
    def run(hurt: tuple[list[tuple[int, int]], int | None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fuzz.nii.gz"
            path.write_bytes(gzip.compress(damaged(raw, *hurt)))
            read_or_refuse(path)

    run()


def _fuzz_series(folder: Path, prepare: Callable[[Path], None] | None = None, zipped: bool = False) -> None:
    """Damage one slice file of a copy of ``folder`` (optionally zipped after) and read it."""
    victim = sorted(folder.glob("*.dcm"))[1]
    source = victim.read_bytes()

    @FUZZ
    @given(damage(len(source), 1200))
    def run(hurt: tuple[list[tuple[int, int]], int | None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "series"
            shutil.copytree(folder, copy)
            (copy / victim.name).write_bytes(damaged(source, *hurt))
            target = copy
            if zipped:
                target = Path(tmp) / "series.zip"
                with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                    for f in sorted(copy.iterdir()):
                        zf.write(f, f"s/{f.name}")
            read_or_refuse(target)

    run()


def test_damaged_dicom_slice_is_read_or_refused(sources: dict[str, Path]) -> None:
    _fuzz_series(sources["series"])


def test_damaged_deflated_dicom_slice_is_read_or_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(sources["series"], tmp_path / "deflated")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(f, enforce_file_format=True)
    assert read_volume(folder).shape == read_volume(sources["series"]).shape
    _fuzz_series(folder)


def test_damaged_zip_is_read_or_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(sources["series"].iterdir()):
            zf.write(f, f"s/{f.name}")
    _fuzz_file(archive.read_bytes(), "fuzz.zip", header=200)()


# ----------------------------------------------------------------------------- geometry

SMALL = PreprocessConfig(grid=GridConfig(depth=10, height=48, width=48, inplane_mm=5.0))


@st.composite
def grids(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """(affine, shape, head radius): a random oblique, anisotropic, possibly flipped grid
    whose field of view (170-260 mm a side) holds a ball-shaped head at the world origin."""
    shape = tuple(draw(st.integers(16, 48)) for _ in range(3))
    extent = np.array([draw(st.floats(170.0, 260.0)) for _ in range(3)])
    angles = [draw(st.floats(-180.0, 180.0)) for _ in range(3)]
    flips = np.array([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(flips * extent / np.array(shape))
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)  # grid centre at the origin
    radius = draw(st.floats(60.0, 80.0))
    return affine, shape, radius  # type: ignore[return-value]


def ball_head(affine: np.ndarray, shape: tuple[int, int, int], radius: float) -> Volume:
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = affine[:3, :3] @ idx + affine[:3, 3:]
    inside = (np.linalg.norm(world, axis=0) <= radius).reshape(shape)
    values = np.where(inside, 40.0 + 0.5 * world[2].reshape(shape), -1000.0)
    return Volume(values.astype(np.float32), affine, Modality.CT)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(grids(), st.floats(0.2, 0.8), st.floats(0.2, 0.8))
def test_forward_then_inverse_restores_the_geometry_exactly(
    grid: tuple[np.ndarray, tuple[int, int, int], float], top: float, bottom: float
) -> None:
    affine, shape, radius = grid
    volume = ball_head(affine, shape, radius)
    slab = CropRequest.millimetres(top * radius, -bottom * radius)
    out = preprocess(volume, SMALL, slab, modality=Modality.CT)
    assert out.image.shape == SMALL.grid.shape
    back = invert(out.record, out.image)
    assert back.shape == volume.shape
    assert np.array_equal(back.affine, volume.affine)  # bit for bit, not just close
    assert back.orientation == volume.orientation and back.spacing == volume.spacing
    assert np.all(np.isfinite(back.array))
    # Well above the slab, the output holds the background (-1024 HU).
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    z = (affine[2, :3] @ idx + affine[2, 3]).reshape(shape)
    step = float(np.abs(affine[:3, :3]).max())
    assert np.all(back.array[z > top * radius + 2 * step] == out.record.intensity.background)
