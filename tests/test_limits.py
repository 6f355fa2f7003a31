"""Resource limits: sizes are checked from headers before any voxel is read or unpacked."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import nibabel as nib
import pydicom
import pytest

from mrct.errors import TooLargeError
from mrct.io import limits, read_volume
from mrct.io.limits import (
    MIN_DEFAULT,
    default_max_memory,
    format_size,
    max_memory,
    memory_limit,
    parse_size,
    set_max_memory,
)
from tests.bad_dicom import dicom_absurd_size, dicom_deflate_bomb, dicom_over_limit
from tests.bad_files import (
    good_nifti,
    mha_absurd_dims,
    nifti_over_limit,
    zip_declares_huge,
    zip_high_ratio,
)
from tests.dicom_factory import write_series


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2000", 2000),
        ("4kb", 4096),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "8X"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|positive"):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 2048, 3 * 1024**3)] == ["512 B", "2.0 KiB", "3.0 GiB"]


def test_the_default_is_a_quarter_of_memory_and_overrides_nest() -> None:
    total = limits.system_memory()
    assert total is None or default_max_memory() == max(MIN_DEFAULT, total // 4)
    assert max_memory() == default_max_memory()
    with memory_limit("1G"):
        assert max_memory() == 1024**3
        with memory_limit(None):  # None keeps what is in force
            assert max_memory() == 1024**3
    assert max_memory() == default_max_memory()
    set_max_memory("2G")
    try:
        assert max_memory() == 2 * 1024**3
    finally:
        set_max_memory(None)
    assert max_memory() == default_max_memory()


def test_nifti_over_the_limit_is_refused_before_nibabel_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("nibabel must not be asked to load it")

    monkeypatch.setattr(nib, "load", no_load)
    with memory_limit("1G"), pytest.raises(TooLargeError, match=r"1024 x 1024 x 512 voxels need 2\.0 GiB"):
        read_volume(nifti_over_limit(tmp_path))


@pytest.mark.parametrize("build", [dicom_absurd_size, dicom_over_limit])
def test_dicom_size_is_checked_from_headers_before_pixel_data(
    build: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = build(tmp_path)  # type: ignore[operator]
    real = pydicom.dcmread

    def headers_only(path: object, *args: object, **kwargs: object) -> object:
        # Headers are read with the pixel data left in the file (skipped, or deferred).
        deferred = kwargs.get("defer_size") is not None
        assert kwargs.get("stop_before_pixels") or deferred, "pixel data read before the size check"
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", headers_only)
    with memory_limit("64M"), pytest.raises(TooLargeError):
        read_volume(folder)


def test_deflated_dicom_is_inflated_only_up_to_the_limit(tmp_path: Path) -> None:
    bomb = dicom_deflate_bomb(tmp_path)  # 48 MiB once inflated
    with memory_limit("16M"), pytest.raises(TooLargeError, match="deflated DICOM file expands beyond"):
        read_volume(bomb)


def test_metaimage_size_is_checked_before_itk(tmp_path: Path) -> None:
    with pytest.raises(TooLargeError, match="100000 x 100000 x 10"):
        read_volume(mha_absurd_dims(tmp_path))


def test_zip_sizes_are_checked_before_unpacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_extract(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be unpacked")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extract)
    with pytest.raises(TooLargeError, match="zip bomb"):
        read_volume(zip_declares_huge(tmp_path))
    with memory_limit("32M"), pytest.raises(TooLargeError, match=r"zip's content is 64\.0 MiB"):
        read_volume(zip_high_ratio(tmp_path))


def test_gzip_bomb_behind_a_small_nifti_is_cut_short(tmp_path: Path) -> None:
    """A valid small NIfTI followed, inside its gzip stream, by 64 MiB of zeros."""
    raw = gzip.decompress(good_nifti(tmp_path, "small.nii.gz").read_bytes())
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(raw + b"\0" * (64 * 1024**2), compresslevel=1))
    with pytest.raises(TooLargeError, match="gzip stream expands beyond"):
        read_volume(bomb)


def test_a_text_file_quoting_the_deflated_uid_is_not_taken_for_dicom(tmp_path: Path) -> None:
    """A README beside the slices that names the deflated transfer syntax must not stop the read."""
    series = tmp_path / "series"
    write_series(series, modality="MR")
    (series / "README.txt").write_text("Sent as Deflated Explicit VR Little Endian, 1.2.840.10008.1.2.1.99\n")
    assert read_volume(series).array.shape == (48, 40, 12)


def test_the_environment_variable_holds_for_every_command(tmp_path: Path) -> None:
    """From a hunt: MRCT_MAX_MEMORY reached only the commands with --max-memory; preview, locate,
    evaluate and prepare ignored it."""
    import os
    import subprocess
    import sys

    from mrct.io import write_volume
    from tests.phantoms import phantom

    scan = write_volume(phantom(), tmp_path / "scan.nii.gz")
    env = {**os.environ, "MRCT_MAX_MEMORY": "1K"}
    for args in (["preview", scan, "-o", tmp_path / "p.png"], ["locate", scan]):
        proc = subprocess.run(
            [sys.executable, "-m", "mrct", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 3 and "above the memory limit of 1.0 KiB" in proc.stderr, proc.stderr
        # preview and locate have no --max-memory: the message must not send the user to it
        assert "(raise it with MRCT_MAX_MEMORY)" in proc.stderr, proc.stderr
    for command in (["locate", scan], ["prepare", "--mr", scan, "--ct", scan, "-o", tmp_path / "prep"]):
        proc = subprocess.run(  # a bad value: one line before any work (prepare failed each scan)
            [sys.executable, "-m", "mrct", *map(str, command)],
            capture_output=True,
            text=True,
            env={**os.environ, "MRCT_MAX_MEMORY": "lots"},
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: MRCT_MAX_MEMORY='lots': "), proc.stderr
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "prep").exists()
    for args, code in ((["--help"], 0), (["--version"], 0), (["info", "--max-memory", "8G", scan], 0)):
        proc = subprocess.run(  # from review: help, version and the option itself were refused
            [sys.executable, "-m", "mrct", *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, "MRCT_MAX_MEMORY": "lots"},
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr


def test_the_limit_hint_names_only_options_that_exist() -> None:
    """The default limit's message lists the commands with --max-memory: exactly those."""
    import typer.main

    from mrct.cli import app
    from mrct.io import limits

    def commands(group, prefix=""):  # type: ignore[no-untyped-def]
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", cmd

    with_option = {
        name
        for name, cmd in commands(typer.main.get_command(app))
        if any("--max-memory" in p.opts for p in cmd.params)
    }
    assert with_option == set(limits.MAX_MEMORY_COMMANDS)
    with limits.memory_limit("1G"):  # from Python: named as such, not as a CLI option
        assert limits.limit_hint().endswith("(raise it with mrct.io.limits.memory_limit)")
    with limits.memory_limit(None):
        hint = limits.limit_hint()
    if limits.environment_limit() is None:
        assert hint.endswith(
            "(raise it with MRCT_MAX_MEMORY, or --max-memory for info, convert, translate, batch)"
        )


def test_a_commands_memory_limit_ends_with_the_command() -> None:
    """Run in-process (a test, a notebook), the CLI's --max-memory stayed for all that followed."""
    from typer.testing import CliRunner

    from mrct.cli import app
    from mrct.io.limits import default_max_memory, max_memory

    before = max_memory()
    CliRunner().invoke(app, ["info", "/nonexistent/scan.nii.gz", "--max-memory", "100KB"])
    assert max_memory() == before == default_max_memory()
