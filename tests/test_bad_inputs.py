"""Every reader and command against the bad-input corpus of tests/bad_inputs.py.

Each bad input must give a typed error (an :class:`MrctError`), and through the
CLI one line ``error: PATH: problem``, a non-zero exit code other than 70 (an
unexpected error), no traceback, no output file or temporary file, and an
untouched input. The CLI runs as a real subprocess (with its own ``TMPDIR``,
checked empty afterwards) for ``info``, and through CliRunner for ``convert``
and ``translate``, which fail at read time. ``mrct batch`` gets one folder
mixing all of them with one good series.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import GeometryError, MrctError, ReadError, SeriesSelectionError
from mrct.io import read_volume
from mrct.io.dicom_read import read_series_files
from mrct.io.dicom_scan import group_series
from mrct.io.limits import memory_limit
from tests.bad_inputs import CORPUS, NEEDS_LIMIT, SPLIT_CASES, good_nifti, good_series
from tests.dicom_factory import write_series, zip_folder

# pydicom warns as it parses the corpus' "NaN" RescaleSlope; the reader refuses it.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
runner = CliRunner()
CASES = sorted(CORPUS)
# Quick to run in a fresh interpreter, and between them every reader and every kind of
# failure that could print on its own (ITK writes some errors straight to stderr).
SUBPROCESS_SAMPLE = [
    "nifti bad crc",
    "nifti zero pixdim",
    "nifti2 absurd dims",
    "mha truncated",
    "nhdr missing data",
    "mhd pattern step zero",  # ITK's division by zero killed the process
    "dicom garbled iop",
    "dicom nan slope",
    "dicom unsupported syntax",
    "dicom deflate bomb",
    "zip lying sizes",
    "symlink loop",
    "odd name nan",
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed) with a digest of its content."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            out[rel] = (
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "-"
            )
    return out


def limit_args(name: str) -> list[str]:
    return ["--max-memory", NEEDS_LIMIT[name]] if name in NEEDS_LIMIT else []


def one_error_line(stderr: str, bad: Path, fragment: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    assert bad.name in lines[0] and fragment in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary-files folder of the test's own, to show that nothing is left in it."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.delenv("MRCT_MAX_MEMORY", raising=False)
    return folder


@pytest.mark.parametrize("name", CASES)
def test_reader_raises_a_typed_error(name: str, tmp_path: Path, private_tmp: Path) -> None:
    work = tmp_path / "in"
    work.mkdir()
    bad = CORPUS[name].build(work)
    before = snapshot(work)
    with memory_limit(NEEDS_LIMIT.get(name)), pytest.raises(MrctError) as caught:
        read_volume(bad)
    assert CORPUS[name].message in str(caught.value).lower(), caught.value
    assert bad.name in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(work) == before  # inputs are never modified
    assert list(private_tmp.iterdir()) == []  # zips unpacked to a temporary folder: removed


def run_mrct(args: list[str | Path], tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    env.pop("MRCT_MAX_MEMORY", None)
    command = [sys.executable, "-m", "mrct", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def _info_in_subprocess(name: str, tmp_path: Path) -> None:
    work, tmpdir = tmp_path / "in", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    bad = CORPUS[name].build(work)
    before = snapshot(work)
    res = run_mrct(["info", bad, *limit_args(name)], tmpdir)
    assert res.returncode not in (0, 70), res
    one_error_line(res.stderr, bad, CORPUS[name].message)
    assert res.stdout == ""
    assert snapshot(work) == before
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_info_subprocess_one_line_no_traceback(name: str, tmp_path: Path) -> None:
    _info_in_subprocess(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CASES) - set(SUBPROCESS_SAMPLE)))
def test_info_subprocess_every_case(name: str, tmp_path: Path) -> None:
    _info_in_subprocess(name, tmp_path)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("command", ["convert", "translate"])
def test_convert_and_translate_fail_cleanly(
    name: str, command: str, tmp_path: Path, private_tmp: Path
) -> None:
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    bad = CORPUS[name].build(work)
    before = snapshot(work)
    target = out / "x.nii.gz"
    args = ["convert", str(bad), str(target)] if command == "convert" else ["translate", str(bad)]
    if command == "translate":
        args += ["--to", "ct", "-o", str(target), "--no-crop", "-q"]
    result = runner.invoke(app, [*args, *limit_args(name)])
    assert result.exit_code not in (0, 70), result.output
    one_error_line(result.stderr, bad, CORPUS[name].message)
    assert result.stdout == ""
    assert list(out.iterdir()) == []  # no output, no temporary file beside it
    assert snapshot(work) == before
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_a_series_split_by_size_or_orientation(name: str, tmp_path: Path) -> None:
    """The folder lists two stacks (info) and asks for one; the mixed stack itself is refused."""
    folder = SPLIT_CASES[name](tmp_path)
    with pytest.raises(SeriesSelectionError, match=r"2 series found.*5 slices.*1 slices"):
        read_volume(folder)
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 0 and "series:      2" in result.stdout
    big, small = group_series(sorted(folder.iterdir()))  # as mrct batch might hand them over
    mixed = replace(big, files=big.files + small.files, headers=big.headers + small.headers)
    with pytest.raises(GeometryError, match=r"different sizes|different ImageOrientationPatient"):
        read_series_files(mixed, folder, None, False)


def test_good_input_with_spaces_and_non_ascii_name_converts(tmp_path: Path) -> None:
    src = good_nifti(tmp_path, "Kopf Ärztin 頭.nii.gz")
    res = run_mrct(["convert", src, tmp_path / "out dir ü" / "ausgabe ö.nrrd"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_volume(tmp_path / "out dir ü" / "ausgabe ö.nrrd").shape == (12, 10, 7)


def test_dicom_without_a_transfer_syntax_reads_by_its_encoding(tmp_path: Path) -> None:
    """Old files without (0002,0010): pydicom guesses the encoding, but will not decode pixels."""
    folder = good_series(tmp_path / "old")
    reference = read_volume(folder).array
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.file_meta.TransferSyntaxUID
        ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (read_volume(folder).array == reference).all()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_without_waiting(tmp_path: Path) -> None:
    pipe = tmp_path / "scan.nii.gz"
    os.mkfifo(pipe)
    with pytest.raises(MrctError, match="not a regular file"):
        read_volume(pipe)


def test_an_unreadable_file_is_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permissions cannot be tested as root: the reader's first open fails as it would."""
    import mrct.io.nifti

    src = good_nifti(tmp_path)

    def denied(path: Path, compressed: bool) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mrct.io.nifti, "raw_header", denied)
    with pytest.raises(MrctError, match=r"good\.nii\.gz: cannot read the file: Permission denied"):
        read_volume(src)


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux file names may hold any bytes")
def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    """NIfTI reads and writes them; NRRD/MHA (ITK would abort the process) refuse them by name."""

    def odd(name: bytes) -> Path:
        return Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + name))

    src = good_nifti(tmp_path).rename(odd(b"scan\xff.nii.gz"))
    assert run_mrct(["convert", src, tmp_path / "ok.nrrd"], tmp_path).returncode == 0
    res = run_mrct(["convert", tmp_path / "ok.nrrd", odd(b"out\xfe.mha")], tmp_path)
    assert res.returncode == 5 and "name in UTF-8" in one_error_line(res.stderr, Path("out"), "")
    assert not list(tmp_path.glob("out*"))
    nrrd = (tmp_path / "ok.nrrd").rename(odd(b"in\xfd.nrrd"))
    res = run_mrct(["convert", nrrd, tmp_path / "back.nii"], tmp_path)
    assert res.returncode == 3 and "name in UTF-8" in one_error_line(res.stderr, Path("in"), "")


def test_max_memory_option_and_environment(tmp_path: Path) -> None:
    src = good_nifti(tmp_path)  # 12 x 10 x 7 voxels: 3360 bytes as float32
    assert runner.invoke(app, ["info", str(src), "--max-memory", "4K"]).exit_code == 0
    small = runner.invoke(app, ["info", str(src), "--max-memory", "3000"])
    assert small.exit_code == 3 and "above the memory limit of 2.9 KiB" in small.stderr
    assert "(raise it with --max-memory)" in small.stderr
    env = runner.invoke(app, ["info", str(src)], env={"MRCT_MAX_MEMORY": "1K"})
    assert env.exit_code == 3 and "(raise it with MRCT_MAX_MEMORY)" in env.stderr
    assert runner.invoke(app, ["info", str(src)]).exit_code == 0  # back to the default
    bad = runner.invoke(app, ["info", str(src), "--max-memory", "lots"])
    assert bad.exit_code == 2 and "not a size" in bad.output


# ------------------------------------------------------------------------- batch

# How `mrct batch` treats some cases differently from a failed row, and why.
BATCH_EXPECTED = {
    "symlink loop": None,  # not a regular file: not listed
    "broken symlink": None,
    "folder without images": "skipped",  # a text file: "not an image file"
    "nifti named dcm": "skipped",  # batch's DICOM header check sees no DICOM
}


def _batch_tree(root: Path, names: list[str]) -> dict[str, Path]:
    write_series(root / "good mr ü", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    built = {}
    for name in names:
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        built[name] = CORPUS[name].build(folder)
    os.symlink(".", root / "loop")  # a folder that contains itself
    return built


def test_batch_translates_the_good_series_and_lists_every_bad_one(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    built = _batch_tree(root, sorted(CASES))
    before = snapshot(root)
    args = ["batch", root, "-o", out, "--to", "ct", "--no-crop", "-q", "--max-memory", "32M"]
    res = run_mrct(args, tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "series failed" in lines[0], res.stderr
    rows = {r["input"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
    assert rows["good mr ü"]["status"] == "done"
    assert (out / rows["good mr ü"]["output"]).is_dir()
    for name, bad in built.items():
        rel = bad.relative_to(root).as_posix()
        found = [r for key, r in rows.items() if key == rel or key.startswith(f"{rel}/")]
        expected = BATCH_EXPECTED.get(name, "failed")
        if expected is None:
            assert found == [], name
            continue
        assert found and all(r["status"] == expected for r in found), (name, found)
        if expected == "failed":
            assert all(CORPUS[name].message in r["message"].lower() for r in found), (name, found)
    leftovers = [p.name for p in out.rglob("*") if ".mrct-tmp-" in p.name]
    assert leftovers == []
    assert snapshot(root) == before


def test_a_slice_whose_orientation_is_nan_fails_its_series_never_splits_off(tmp_path: Path) -> None:
    """NaN equals nothing: grouped by orientation, each NaN slice was a 1-slice "series" of its
    own (info listed it, convert asked for --series, batch skipped it as a localiser, exit 0)."""
    folder = good_series(tmp_path / "in" / "t1")
    damaged = sorted(folder.glob("*.dcm"))[2]
    data = damaged.read_bytes().replace(b"1.0\\0.0\\0.0\\", b"nan\\0.0\\0.0\\", 1)
    damaged.write_bytes(data)
    why = "ImageOrientationPatient holds a value that is not a finite number"
    with pytest.raises(GeometryError, match=why) as caught:
        read_volume(folder)
    assert caught.value.path == str(damaged)
    zip_folder(folder, tmp_path / "in" / "t1.zip")
    out = tmp_path / "out"
    res = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(out), "--to", "ct", "-q"])
    assert res.exit_code == 1, res.output
    rows = json.loads((out / "manifest.json").read_text())["series"]
    assert [(r["input"], r["status"]) for r in rows] == [("t1", "failed"), ("t1.zip", "failed")]
    assert rows[0]["files"] == 6  # one row for the whole series, its damaged slice in it
    assert rows[0]["message"] == f"t1/{damaged.name}: {why}"
    assert rows[1]["message"] == f"t1.zip: series/{damaged.name}: {why}"


@pytest.mark.parametrize("implicit", [True, False])
def test_datasets_without_preamble_or_file_meta_read_like_the_folder(tmp_path: Path, implicit: bool) -> None:
    """``dcmconv -F`` and old archives write bare datasets, which dcm2niix reads; mrct said "no
    DICOM image files found" (and batch skipped every file as not an image, exit 0)."""
    folder = good_series(tmp_path / "bare")
    reference = read_volume(folder)
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.preamble, ds.file_meta = None, pydicom.dataset.FileMetaDataset()
        ds.save_as(f, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        if implicit:  # old implicit-VR exports start with the group length (0008,0000), UL
            f.write_bytes(
                b"\x08\x00\x00\x00" + (4).to_bytes(4, "little") + (0).to_bytes(4, "little") + f.read_bytes()
            )
        assert f.read_bytes()[:4] == (b"\x08\x00\x00\x00" if implicit else b"\x08\x00\x05\x00")
    bare = read_volume(folder)
    assert (bare.array == reference.array).all()
    np.testing.assert_allclose(bare.affine, reference.affine, atol=1e-9)
    # Only what starts like a dataset is forced through pydicom (which would parse anything),
    # and kept only with a valid SOP class: raw voxels that happen to start like (0008,0016)
    # with an even length are not a slice (they failed batches as "unreadable DICOM").
    (folder / "voxels.raw").write_bytes(np.array([8, 22, 40, 0, *range(100)], dtype=np.int16).tobytes())
    assert (read_volume(folder).array == reference.array).all()
    # A bare slice cut short is an error naming it, as for a file with a preamble (it dropped
    # out of the series, which then read with one slice fewer).
    last = sorted(folder.glob("*.dcm"))[-1]
    last.write_bytes(last.read_bytes()[:300])
    with pytest.raises(ReadError, match="incomplete DICOM image file") as caught:
        read_volume(folder)
    assert caught.value.path == str(last)


def test_a_dicomdir_file_reads_the_series_it_indexes(tmp_path: Path) -> None:
    """dcm2niix reads a DICOMDIR by its folder; mrct said "not a recognised image". A
    translation's default output goes beside the media folder, not into it."""
    from pydicom.fileset import FileSet

    folder = good_series(tmp_path / "series")
    media = FileSet()
    for f in sorted(folder.glob("*.dcm")):
        media.add(f)
    media.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    volume = read_volume(tmp_path / "cd" / "DICOMDIR")
    assert (volume.array == read_volume(folder).array).all()
    from mrct.io.dicom_scan import media_folder
    from mrct.translation import resolve_output
    from mrct.volume import Modality

    out, _ = resolve_output(media_folder(tmp_path / "cd" / "DICOMDIR"), None, Modality.CT, None)
    assert out == tmp_path / "cd_synthetic_ct"
    from mrct import api
    from mrct.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="inside the input folder"):  # from review: it wrote there
        api.convert(tmp_path / "cd" / "DICOMDIR", f"{tmp_path / 'cd' / 'sub'}/")
    assert not (tmp_path / "cd" / "sub").exists()
