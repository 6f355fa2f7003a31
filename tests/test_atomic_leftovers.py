"""What a killed write leaves beside its output, and who removes it.

``mrct translate``/``convert``/``export`` write under a hidden temporary name and rename; a
SIGKILL (the OOM killer, a cluster's time limit) skips the clean-up, and the half-written
temporary stayed beside the output for good. The next write of the same output removes those
of its temporaries that nobody has touched for an hour, and leaves a live writer's alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.io import atomic, leftovers, write_volume
from mrct.volume import Modality, Volume

runner = CliRunner()

# Starts a write the way mrct does, then dies as SIGKILL would: no clean-up runs.
KILLED_WRITE = """
import os, re, sys
from pathlib import Path
from mrct.io import atomic
file_out, dir_out = Path(sys.argv[1]), Path(sys.argv[2])
with atomic.atomic_dir(dir_out, atomic.Owned(re.compile(r"IM_\\d+\\.dcm")), overwrite=True) as tmp:
    (tmp / "IM_0001.dcm").write_bytes(b"half")
    with atomic.atomic_file(file_out, overwrite=True) as tmp_file:
        tmp_file.write_bytes(b"half a volume")
        os._exit(9)
"""


def _killed_write(file_out: Path, dir_out: Path) -> tuple[Path, Path]:
    """The temporaries a killed write of ``file_out`` and ``dir_out`` left: (file's, folder's)."""
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(file_out), str(dir_out)], check=False)
    assert proc.returncode == 9
    (file_tmp,) = leftovers.leftovers_of(file_out)
    (dir_tmp,) = leftovers.leftovers_of(dir_out)
    assert file_tmp.is_file() and dir_tmp.is_dir()
    return file_tmp, dir_tmp


def _volume() -> Volume:
    return Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2.0, 2.0, 3.0, 1.0]), Modality.CT)


def test_a_rewrite_removes_a_killed_writes_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    file_tmp, dir_tmp = _killed_write(out / "scan_synthetic_ct.nii.gz", out / "scan_dicom")
    assert re.fullmatch(r"\.scan_synthetic_ct\.mrct-tmp-[a-z0-9_]{8}\.nii\.gz", file_tmp.name)
    assert re.fullmatch(r"\.scan_dicom\.mrct-tmp-[a-z0-9_]{8}", dir_tmp.name)
    other = out / ".other.mrct-tmp-abcdefgh.nii.gz"  # another output's: not this write's business
    other.write_bytes(b"")

    # Within the hour they may be a concurrent write's own, and stay.
    write_volume(_volume(), out / "scan_synthetic_ct.nii.gz")
    assert file_tmp.exists() and dir_tmp.exists()

    monkeypatch.setattr(leftovers, "STALE_AFTER_S", 0.0)  # an hour later
    write_volume(_volume(), out / "scan_synthetic_ct.nii.gz", overwrite=True)
    assert not file_tmp.exists()
    assert dir_tmp.is_dir()  # the folder output's, removed by that output's next write
    with atomic.atomic_dir(out / "scan_dicom", atomic.Owned(re.compile(r"IM_\d+\.dcm"))) as tmp:
        (tmp / "IM_0001.dcm").write_bytes(b"whole")
    assert sorted(p.name for p in out.iterdir()) == [
        ".other.mrct-tmp-abcdefgh.nii.gz",
        "scan_dicom",
        "scan_synthetic_ct.nii.gz",
    ]
    assert (out / "scan_dicom" / "IM_0001.dcm").read_bytes() == b"whole"


def test_an_earlier_output_moved_aside_by_a_killed_overwrite_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between moving the old output aside and putting the new one in place: the old one
    stayed hidden as ``.NAME.mrct-old-XXXXXXXX`` while NAME itself was gone."""
    owned = atomic.Owned(re.compile(r"IM_\d+\.dcm"))
    aside = tmp_path / ".series.mrct-old-k2j3h4g5"
    aside.mkdir()
    (aside / "IM_0001.dcm").write_bytes(b"old")
    os.utime(aside, (0, 0))  # its mtime is the old output's; its ctime is the rename's
    with atomic.atomic_dir(tmp_path / "series", owned) as tmp:
        (tmp / "IM_0001.dcm").write_bytes(b"new")
    assert aside.is_dir()  # just moved aside: maybe a concurrent overwrite's, so kept
    monkeypatch.setattr(leftovers, "STALE_AFTER_S", 0.0)
    with atomic.atomic_dir(tmp_path / "series", owned, overwrite=True) as tmp:
        (tmp / "IM_0001.dcm").write_bytes(b"newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_convert_cleans_up_after_a_killed_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_volume(_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    file_tmp, dir_tmp = _killed_write(out / "ct.nrrd", out / "ct_dicom")
    monkeypatch.setattr(leftovers, "STALE_AFTER_S", 0.0)
    result = runner.invoke(app, ["convert", str(src), str(out / "ct.nrrd")])
    assert result.exit_code == 0, result.output
    assert not file_tmp.exists() and dir_tmp.is_dir()
    assert (out / "ct.nrrd").is_file()


def test_the_input_is_never_removed_as_a_leftover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a killed overwrite the earlier output survives only as ``.NAME.mrct-old-XXXXXXXX``;
    converting that copy back to NAME deleted it, the command's own input."""
    src = write_volume(_volume(), tmp_path / "seed.nii.gz")
    assert runner.invoke(app, ["convert", str(src), f"{tmp_path / 'scan_dicom'}/"]).exit_code == 0
    aside = tmp_path / ".scan_dicom.mrct-old-abcdefgh"
    (tmp_path / "scan_dicom").rename(aside)
    monkeypatch.setattr(leftovers, "STALE_AFTER_S", 0.0)
    result = runner.invoke(app, ["convert", str(aside), str(tmp_path / "scan_dicom.nii.gz")])
    assert result.exit_code == 0, result.output
    assert aside.is_dir() and len(list(aside.glob("IM_*.dcm"))) == 4
    result = runner.invoke(app, ["preview", str(aside), "-o", str(tmp_path / "scan_dicom.png")])  # a PNG too
    assert result.exit_code == 0, result.output
    assert aside.is_dir() and len(list(aside.glob("IM_*.dcm"))) == 4


def test_a_leftover_that_cannot_be_removed_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's leftover in a shared folder: removing it failed after the output was in
    place, and the write ended as "unexpected PermissionError", exit 70."""
    stuck = tmp_path / ".x.mrct-tmp-abcdefgh.nii.gz"
    stuck.write_bytes(b"")
    real_unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(1, "Operation not permitted", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(leftovers, "STALE_AFTER_S", 0.0)
    monkeypatch.setattr(Path, "unlink", refuse)
    assert write_volume(_volume(), tmp_path / "x.nii.gz").is_file()
    assert stuck.exists()
