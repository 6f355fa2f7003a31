"""`mrct batch` over several runs: series that go and come back, shards run at different times,
and names too long for the file system (from a hunt, 2026-12-07)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from mrct import api
from mrct.batch import BatchSummary, discover
from mrct.io.dicom_scan import iter_files as discover_files
from tests.dicom_factory import write_series
from tests.model_fixtures import write_tiny_model
from tests.test_prepare import write_head


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _run(src: Path, out: Path, model: Path, shard: str | None = None) -> BatchSummary:
    options = {"model": "tiny", "search_dirs": [model.parent], "crop_mm": "40,-40", "progress": False}
    return api.batch(src, out, to="ct", shard=shard, **options)  # type: ignore[arg-type]


def _status(summary: BatchSummary) -> dict[str, tuple[str, str]]:
    return {r["input"]: (r["status"], r["output"]) for r in summary.rows}


def test_a_series_gone_for_one_run_is_done_when_it_comes_back(tmp_path: Path, model: Path) -> None:
    """Moved away for one run (a share unmounted), then back unchanged: the second run dropped its
    row, so the third took its own output for someone else's and failed it on every run after
    ("exists; pass --overwrite"). Its row is kept in the manifest's ``absent`` list meanwhile."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a" / "t1.nii.gz", "mr", seed=1)
    write_head(src / "b" / "t1.nii.gz", "mr", seed=2)
    assert _run(src, out, model).count("done") == 2
    written = (out / "b/t1_synthetic_ct.nii.gz").stat().st_mtime_ns
    shutil.move(src / "b", tmp_path / "parked")
    write_head(src / "b" / "t1.nii", "mr", seed=3)  # would be named onto b's output, were it free
    second = _run(src, out, model)
    assert _status(second) == {
        "a/t1.nii.gz": ("done", "a/t1_synthetic_ct.nii.gz"),
        "b/t1.nii": ("done", "b/t1_2_synthetic_ct.nii.gz"),
    }
    absent = json.loads((out / "manifest.json").read_text())["absent"]
    assert [(r["input"], r["output"]) for r in absent] == [("b/t1.nii.gz", "b/t1_synthetic_ct.nii.gz")]
    (src / "b" / "t1.nii").unlink()
    shutil.move(tmp_path / "parked" / "t1.nii.gz", src / "b" / "t1.nii.gz")
    third = _run(src, out, model)
    assert not third.count("failed") and third.attempted == 0, third.rows
    assert _status(third)["b/t1.nii.gz"] == ("done", "b/t1_synthetic_ct.nii.gz")
    assert (out / "b/t1_synthetic_ct.nii.gz").stat().st_mtime_ns == written
    # The output of the .nii, gone now, is kept as absent; a deleted output frees its row.
    (out / "b/t1_2_synthetic_ct.nii.gz").unlink()
    _run(src, out, model)
    assert json.loads((out / "manifest.json").read_text())["absent"] == []


def test_shards_run_at_different_times_still_cover_every_series(tmp_path: Path, model: Path) -> None:
    """Shards were dealt by position in the sorted list: a series added between shard 1/2 and 2/2
    moved the others along, and one of them fell into neither shard, both exiting 0."""
    src, out = tmp_path / "in", tmp_path / "out"
    for n, name in enumerate("acegik"):
        write_head(src / name / "t1.nii.gz", "mr", seed=n)
    first = _run(src, out, model, shard="1/2")
    for n, name in enumerate("bdf"):  # arrive meanwhile
        write_head(src / name / "t1.nii.gz", "mr", seed=10 + n)
    second = _run(src, out, model, shard="2/2")
    covered = {r["input"] for s in (first, second) for r in s.rows if r["status"] == "done"}
    assert {f"{name}/t1.nii.gz" for name in "acegik"} <= covered
    assert not {r["id"] for r in first.rows} & {r["id"] for r in second.rows if r["status"] == "done"}
    everything = {s.id for s in discover(src)}
    again = [_run(src, out, model, shard=f"{k}/2") for k in (1, 2)]
    assert {r["id"] for s in again for r in s.rows} == everything  # the late ones are dealt too


def test_a_shard_keeps_the_names_a_whole_run_gave(tmp_path: Path, model: Path) -> None:
    """A series added after a whole run, sorting before a finished one of the same name: the shard
    named both afresh, so the finished one was translated again as t1_2 and its output orphaned."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "q" / "t1.nii.gz", "mr", seed=1)
    assert _run(src, out, model).count("done") == 1
    write_head(src / "q" / "T1.nii", "mr", seed=2)
    shard = _run(src, out, model, shard="1/1")
    assert _status(shard) == {
        "q/t1.nii.gz": ("done", "q/t1_synthetic_ct.nii.gz"),
        "q/T1.nii": ("done", "q/T1_2_synthetic_ct.nii.gz"),
    }
    assert shard.earlier == 1 and shard.attempted == 1


def test_a_folder_name_too_long_once_composed_fails_nothing_else(tmp_path: Path, model: Path) -> None:
    """A folder of 80 U+0958 (240 bytes) is 480 bytes in NFC, and output folders were not
    shortened like file names: the whole batch stopped with "file name too long", exit 2."""
    src, out = tmp_path / "in", tmp_path / "out"
    long = "\u0958" * 80
    write_head(src / long / "t1.nii.gz", "mr", seed=1)
    write_head(src / "ok" / "t1.nii.gz", "mr", seed=2)
    summary = _run(src, out, model)
    assert summary.count("done") == 2, summary.rows
    outputs = {r["input"]: r["output"] for r in summary.rows}
    folder = outputs[f"{long}/t1.nii.gz"].split("/")[0]
    assert len(folder.encode()) <= 255 and (out / outputs[f"{long}/t1.nii.gz"]).is_file()


@pytest.mark.parametrize("name_bytes", [200, 255])  # the output's temporary name, or the output itself
def test_an_output_path_longer_than_the_system_takes_fails_that_series_only(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, name_bytes: int
) -> None:
    """An output folder 3.8 kB deep: the output of a series in a 200- or 255-byte folder passes
    PATH_MAX (4096 bytes), and "File name too long" stopped the whole batch, exit 2."""
    monkeypatch.chdir(tmp_path)
    write_head(Path("in") / ("x" * name_bytes) / "t1.nii.gz", "mr", seed=1)
    write_head(Path("in") / "ok" / "t1.nii.gz", "mr", seed=2)
    write_series(Path("in") / ("x" * name_bytes) / "ct", modality="CT")  # skipped by its header: not written
    out = Path("ooooo", *["d" * 200] * 19)
    out.mkdir(parents=True)
    rows = {r["input"]: r for r in _run(Path("in"), out, model).rows}
    assert rows["ok/t1.nii.gz"]["status"] == "done" and rows[f"{'x' * name_bytes}/ct"]["status"] == "skipped"
    long = rows[f"{'x' * name_bytes}/t1.nii.gz"]
    assert long["status"] == "failed" and "File name too long" in long["message"], long
    assert ("choose a shorter output folder" in long["message"]) == (name_bytes == 255)  # found in planning


def _denied(monkeypatch: pytest.MonkeyPatch, module: object, name: str, target: Path) -> None:
    """Make ``module.name(path, ...)`` raise "Permission denied" for ``target`` (tests run as root,
    whom chmod does not stop)."""
    real = getattr(module, name)

    def refuse(path: object = ".", *args: object, **kwargs: object) -> object:
        if Path(str(path)) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, refuse)


def test_a_folder_that_cannot_be_listed_is_a_failed_row(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study folder without read permission was left out silently: no row, exit 0."""
    import os

    from mrct.errors import ReadError
    from mrct.io import read_volume

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a" / "t1.nii.gz", "mr", seed=1)
    write_head(src / "b" / "t1.nii.gz", "mr", seed=2)
    _denied(monkeypatch, os, "scandir", src / "b")
    rows = {r["input"]: r for r in _run(src, out, model).rows}
    assert rows["a/t1.nii.gz"]["status"] == "done"
    assert rows["b"]["status"] == "failed", rows
    assert (
        rows["b"]["message"] == "cannot list this folder (Permission denied); what it holds is not translated"
    )
    with pytest.raises(ReadError, match=r"/b: cannot list this folder \(Permission denied\)"):
        read_volume(src)  # a DICOM folder to translate: not read without part of it


def test_an_unreadable_file_fails_the_series_of_its_folder(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice at one end of a stack that could not be read (its permissions): the series was done
    from the others, one slice short, as no gap showed it."""
    from mrct import batch_series

    src, out = tmp_path / "in", tmp_path / "out"
    folder = write_series(
        src / "c" / "ser", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0)
    ).folder
    first = sorted(folder.glob("*.dcm"), key=lambda f: pydicom.dcmread(f).InstanceNumber)[0]
    _denied(monkeypatch, batch_series, "check_deflated", first)
    rows = {r["id"].split("#")[0]: r for r in _run(src, out, model).rows}
    name = first.relative_to(src).as_posix()
    assert (
        rows[name]["status"] == "failed"
        and rows[name]["message"] == "cannot read the file (Permission denied)"
    )
    assert rows["c/ser"]["status"] == "failed", rows["c/ser"]
    assert (
        rows["c/ser"]["message"]
        == f"{name}: cannot read the file (Permission denied) in this series' folder (one of its slices?)"
    )


def test_a_line_break_in_a_file_name_is_escaped_in_the_manifest(tmp_path: Path, model: Path) -> None:
    """The failed row's message was cut at the line break: 'bad/br"oken,' and no problem."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "ok" / "t1.nii.gz", "mr", seed=1)
    (src / "bad").mkdir()
    (src / "bad" / 'br"oken,\nfile.nii.gz').write_bytes(b"\x1f\x8b garbage")
    rows = {r["input"]: r for r in _run(src, out, model).rows}
    message = rows['bad/br"oken,\nfile.nii.gz']["message"]
    assert message.startswith('bad/br"oken,\\nfile.nii.gz: ') and len(message) > 40, message
    assert "\n" not in message


def test_a_manifest_csv_of_someone_elses_is_not_replaced(tmp_path: Path, model: Path) -> None:
    """A stray manifest.json was refused, but a user's own manifest.csv was overwritten silently."""
    from mrct.errors import OutputExistsError

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "p" / "t1.nii.gz", "mr", seed=1)
    out.mkdir()
    (out / "manifest.csv").write_text("my,own,data\n")
    with pytest.raises(OutputExistsError, match=r"holds manifest\.csv but no manifest\.json"):
        _run(src, out, model)
    assert (out / "manifest.csv").read_text() == "my,own,data\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.csv"]


def test_a_scan_reached_by_several_names_is_translated_once(tmp_path: Path, model: Path) -> None:
    """A symlink to a scan in the tree was a second row and a second output. The first name in
    the walk counts, as for a folder linked into the tree. A dataset whose visible files link into
    its hidden .git/annex (DataLad) is read by the visible names."""
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "real" / "t1.nii.gz", "mr", seed=1)
    os.symlink("real/t1.nii.gz", src / "alias.nii.gz")
    os.symlink("real", src / "linked")
    annexed = src / ".git" / "annex" / "objects" / "ab" / "key.nii.gz"
    write_head(annexed, "mr", seed=2)
    (src / "sub-01" / "anat").mkdir(parents=True)
    os.symlink(
        os.path.relpath(annexed, src / "sub-01" / "anat"), src / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    )
    os.link(annexed, src / "sub-01" / "thin.nii.gz")  # git-annex's thin mode: a hard link
    rows = _run(src, out, model).rows
    assert [(r["input"], r["status"]) for r in rows] == [
        ("alias.nii.gz", "done"),
        ("sub-01/thin.nii.gz", "done"),
    ]
    assert [p.relative_to(src).as_posix() for p in discover_files(src, hidden=False)] == [
        "alias.nii.gz",
        "sub-01/thin.nii.gz",  # its files come before its folders' in the walk
    ]
    (src / "sub-01" / "thin.nii.gz").unlink()
    assert [p.relative_to(src).as_posix() for p in discover_files(src, hidden=False)] == [
        "alias.nii.gz",
        "sub-01/anat/sub-01_T1w.nii.gz",
    ]


def test_a_hidden_folder_that_cannot_be_listed_is_not_looked_into(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root-owned .Trash-0 beside the scans: hidden folders are left out unvisited, so it fails
    nothing (listing it first, then leaving it out, stopped mrct prepare's search)."""
    import os

    from mrct.io import read_volume
    from mrct.io.discover import find_scans

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "p" / "t1.nii.gz", "mr", seed=1)
    (src / ".Trash-0").mkdir()
    _denied(monkeypatch, os, "scandir", src / ".Trash-0")
    assert [r["status"] for r in _run(src, out, model).rows] == ["done"]
    assert [s.path for s in find_scans([src])] == [src / "p" / "t1.nii.gz"]
    # translate and info on a folder read its hidden files, but not a hidden folder they cannot list
    (src / "p" / "t1.nii.gz").unlink()
    series = write_series(src / "p", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    assert read_volume(src / "p").shape[2] == len(series.files)
    _denied(monkeypatch, os, "scandir", src / "p" / ".Trash-0")
    (src / "p" / ".Trash-0").mkdir()
    assert read_volume(src / "p").shape[2] == len(series.files)


def test_a_run_with_nothing_to_do_shows_no_progress_bar(tmp_path: Path, model: Path) -> None:
    """A resumed run that found everything done printed a stray "0series [00:00, ?series/s]"."""
    from typer.testing import CliRunner

    from mrct.cli import app

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "p" / "t1.nii.gz", "mr", seed=1)
    command = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0 and "series" in first.stderr  # the bar, while it translated
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0 and again.stderr == "", again.stderr
    assert again.stdout.startswith("nothing left to do: 1 done (1 by an earlier run)"), again.stdout


def test_shards_dealt_anew_find_what_the_old_shards_did(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards were dealt by position before mrct dealt them by hash. A shard rewriting its manifest
    dropped the rows of series dealt to the other one now; that one then failed them ("exists;
    pass --overwrite"), and so did every later run."""
    from mrct import batch

    src, out = tmp_path / "in", tmp_path / "out"
    for n, name in enumerate("abcdefgh"):
        write_head(src / name / "t1.nii.gz", "mr", seed=n)
    dealt = batch.shard_of
    with monkeypatch.context() as patch:
        patch.setattr(batch, "shard_of", lambda sid, n: n + 1 - dealt(sid, n))  # the other way round
        assert sum(_run(src, out, model, shard=f"{k}/2").count("done") for k in (1, 2)) == 8
    again = [_run(src, out, model, shard=f"{k}/2") for k in (1, 2)]
    assert not [r for s in again for r in s.rows if r["status"] != "done"], [s.rows for s in again]
    assert sum(s.attempted for s in again) == 0
    whole = _run(src, out, model)
    assert whole.count("done") == whole.earlier == 8
