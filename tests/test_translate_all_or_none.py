"""`mrct translate` writes all its outputs or none: a run stopped after its image was in place
exits non-zero, so it must not leave that image behind without its report and preview (a retry of
the same command was refused on it: "output exists")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrct import api, translation
from mrct.errors import OutputExistsError, WriteError
from tests.test_translate import CROP, heads, tiny_model  # noqa: F401 (fixtures)


def _in_folder(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)


def _cli_script(patch: str, argv: list[str]) -> str:
    return f"""
import os, signal, sys
from mrct import cli, translation
{patch}
sys.argv = ["mrct", "translate", *{argv!r}]
cli.main()
"""


def test_sigterm_after_the_series_is_in_place_removes_it_and_a_retry_succeeds(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
) -> None:
    """From a hunt: SIGTERM while the preview was drawn left the whole series, no report and no
    preview, and exit 143; the same command again then failed with "output exists"."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "--format", "dicom"]
    argv += ["-o", str(out / "sct"), "--report", str(out / "run.json"), "--preview", str(out / "p.png")]
    patch = """
draw = translation.write_preview
def dying(*args, **kwargs):
    assert os.listdir(sys.argv[-5])  # the series is in place
    os.kill(os.getpid(), signal.SIGTERM)
    return draw(*args, **kwargs)
translation.write_preview = dying
"""
    done = _run(_cli_script(patch, argv))
    assert done.returncode == 143, done.stderr
    assert done.stderr == "error: terminated (SIGTERM); unfinished outputs are removed\n"
    assert _in_folder(out) == []  # neither the series nor a hidden temporary name
    again = _run(_cli_script("", argv))
    assert again.returncode == 0, again.stderr
    assert _in_folder(out) == ["p.png", "run.json", "sct"]


def test_a_report_that_cannot_be_written_takes_the_image_and_preview_with_it(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk for the report: the run fails, and none of its outputs stays. With --overwrite,
    the earlier ones it had replaced are gone too (the run was asked to replace them)."""
    src, out = heads / "mr.nii.gz", tmp_path / "sct.nii.gz"
    outputs = {"report": tmp_path / "run.json", "preview": tmp_path / "p.png"}
    api.translate_file(src, out, to="ct", model=tiny_model, crop_mm=(40, -40), **outputs)
    real = translation.atomic_file

    def full_disk(path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path.name == "run.json":
            raise WriteError("cannot write here (No space left on device)", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(translation, "atomic_file", full_disk)
    for overwrite in (False, True):
        if not overwrite:  # a first run into an empty folder
            src_copy = tmp_path / "fresh" / "mr.nii.gz"
            src_copy.parent.mkdir()
            src_copy.write_bytes(src.read_bytes())
            here = {k: tmp_path / "fresh" / v.name for k, v in outputs.items()}
            with pytest.raises(WriteError, match="No space left"):
                api.translate_file(src_copy, to="ct", model=tiny_model, crop_mm=(40, -40), **here)
            assert _in_folder(tmp_path / "fresh") == ["mr.nii.gz"]
        else:
            with pytest.raises(WriteError, match="No space left"):
                api.translate_file(
                    src, out, to="ct", model=tiny_model, crop_mm=(40, -40), overwrite=True, **outputs
                )
            assert _in_folder(tmp_path) == ["fresh"]


def test_a_file_that_appeared_at_the_report_path_is_left_alone(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone else's report written there meanwhile is refused ("output exists") and kept; only
    what this run put in place is taken back."""
    report = tmp_path / "run.json"
    draw = translation.write_preview

    def racing(*args, **kwargs):  # type: ignore[no-untyped-def]
        report.write_text("theirs")
        return draw(*args, **kwargs)

    monkeypatch.setattr(translation, "write_preview", racing)
    with pytest.raises(OutputExistsError, match=r"run\.json: output exists"):
        api.translate_file(
            heads / "mr.nii.gz",
            tmp_path / "sct.nii.gz",
            to="ct",
            model=tiny_model,
            crop_mm=(40, -40),
            report=report,
            preview=tmp_path / "p.png",
        )
    assert _in_folder(tmp_path) == ["run.json"] and report.read_text() == "theirs"


def test_what_another_run_put_in_place_meanwhile_is_never_taken_back(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From review: the clean-up took back whatever had changed at the output paths, so a run
    refused on an image that a twin run had just finished deleted that run's preview and report,
    and a file written at the report path meanwhile went when the preview failed."""
    src, out = heads / "mr.nii.gz", tmp_path / "sct.nii.gz"
    extra = {"report": tmp_path / "run.json", "preview": tmp_path / "p.png"}
    real_write = translation._write

    def twin_finishes_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(translation, "_write", real_write)
        api.translate_file(src, out, to="ct", model=tiny_model, crop_mm=(40, -40), **extra)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(translation, "_write", twin_finishes_first)
    with pytest.raises(OutputExistsError, match=r"sct\.nii\.gz: output exists"):
        api.translate_file(src, out, to="ct", model=tiny_model, crop_mm=(40, -40), **extra)
    assert _in_folder(tmp_path) == ["p.png", "run.json", "sct.nii.gz"]

    for path in (out, *extra.values()):
        path.unlink()

    def theirs_then_failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        extra["report"].write_text("theirs")
        raise WriteError("cannot write here (No space left on device)", extra["preview"])

    monkeypatch.setattr(translation, "write_preview", theirs_then_failing)
    with pytest.raises(WriteError):
        api.translate_file(src, out, to="ct", model=tiny_model, crop_mm=(40, -40), **extra)
    assert _in_folder(tmp_path) == ["run.json"] and extra["report"].read_text() == "theirs"


def test_an_empty_folder_made_for_the_series_is_there_again_after_a_failure(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From review: the series took the place of a private empty folder, and the failure then
    left no folder; the retry made one readable by all. With --overwrite, a FIFO named as the
    report is not an earlier output to take back."""
    out = tmp_path / "sct"
    out.mkdir(mode=0o700)
    out.chmod(0o700)  # whatever the umask

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise WriteError("cannot write here (No space left on device)", tmp_path / "p.png")

    monkeypatch.setattr(translation, "write_preview", failing)
    args = {"to": "ct", "model": tiny_model, "crop_mm": (40, -40), "output_format": "dicom"}
    with pytest.raises(WriteError):
        api.translate_file(heads / "mr.nii.gz", out, preview=tmp_path / "p.png", **args)
    assert _in_folder(tmp_path) == ["sct"] and _in_folder(out) == []
    assert out.stat().st_mode & 0o777 == 0o700
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    with pytest.raises(WriteError):
        api.translate_file(
            heads / "mr.nii.gz", out, preview=tmp_path / "p.png", report=fifo, overwrite=True, **args
        )
    assert _in_folder(tmp_path) == ["run.fifo", "sct"] and _in_folder(out) == []


def test_ctrl_c_once_the_outputs_are_in_place_ends_the_run_as_done(
    tmp_path: Path,
    heads: Path,  # noqa: F811
    tiny_model: Path,  # noqa: F811
) -> None:
    """From a hunt: Ctrl-C as the run ended printed a traceback (raised in torch's exit callbacks,
    or as the command returned). Every output is in place by then: the run is done, exit 0."""
    out = tmp_path / "sct.nii.gz"
    argv = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(out)]
    for when in ("as it says so", "at exit"):
        out.unlink(missing_ok=True)
        if when == "as it says so":
            patch = """
import typer
say = typer.echo
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return say(*args, **kwargs)
cli.typer.echo = interrupted
"""
        else:
            patch = "import atexit; atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))"
        done = _run(_cli_script(patch, argv))
        assert done.returncode == 0, (when, done.stderr)
        assert "Traceback" not in done.stderr and "error" not in done.stderr, when
        assert out.is_file()
