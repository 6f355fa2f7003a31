"""Output paths the file system itself objects to: a link that leads nowhere, a name too long.

Each was a review's finding: a dangling link at the output path was replaced without
``--overwrite``, and a name over 255 bytes ended as "unexpected OSError" (exit 70).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrct.api_args import ArgumentError
from mrct.cli import app
from mrct.io import read_volume
from tests.bad_files import good_nifti

runner = CliRunner()
TOO_LONG = "x" * 250 + ".nii.gz"  # 257 bytes: one byte more than any Linux file system holds


@pytest.mark.parametrize(
    "command",
    [["convert", "{src}", "{out}"], ["preview", "{src}", "-o", "{out}"]],
    ids=["convert", "preview"],
)
def test_a_dangling_link_at_the_output_is_not_replaced_without_overwrite(
    tmp_path: Path, command: list[str]
) -> None:
    src = good_nifti(tmp_path)
    out = tmp_path / ("out.png" if command[0] == "preview" else "out.nii.gz")
    out.symlink_to(tmp_path / "gone" / "elsewhere.nii.gz")
    args = [a.format(src=src, out=out) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 4, result.output
    assert result.output.strip() == f"error: {out}: output exists; pass --overwrite to replace it"
    assert out.is_symlink() and os.readlink(out) == str(tmp_path / "gone" / "elsewhere.nii.gz")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not out.is_symlink()  # the link itself replaced, nothing made at its target
    assert not (tmp_path / "gone").exists()


def test_a_name_too_long_is_a_one_line_error(tmp_path: Path) -> None:
    src = good_nifti(tmp_path)
    cases = {
        "info": ["info", str(tmp_path / TOO_LONG)],
        "convert": ["convert", str(src), str(tmp_path / TOO_LONG)],
        "convert to DICOM": ["convert", str(src), f"{tmp_path / TOO_LONG}/"],
        "preview": ["preview", str(src), "-o", str(tmp_path / (TOO_LONG + ".png"))],
    }
    for name, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        (line,) = result.output.splitlines()
        assert line.startswith(f"error: {tmp_path}/xxx"), (name, line)
        assert line.endswith(": file name too long for the file system (most hold 255 bytes per name)"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
    with pytest.raises(ArgumentError, match="file name too long for the file system"):  # typed, for Python
        read_volume(tmp_path / TOO_LONG)


def test_a_report_name_too_long_fails_naming_it(tmp_path: Path) -> None:
    """--report's name reaches the file system unchecked by the API's arguments: still one line
    naming it, exit 2, and nothing written."""
    from tests.model_fixtures import write_tiny_model
    from tests.test_prepare import write_head

    src = write_head(tmp_path / "mr.nii.gz", "mr", seed=3)
    tiny = write_tiny_model(tmp_path / "tiny")
    report = tmp_path / ("r" * 252 + ".json")
    args = ["translate", str(src), "--to", "ct", "--model", str(tiny), "-o", str(tmp_path / "ct.nii.gz")]
    result = runner.invoke(app, [*args, "--report", str(report)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: {report}: file name too long for the file system (most hold 255 bytes per name)"
    ]
    assert not (tmp_path / "ct.nii.gz").exists()


def test_the_root_as_output_is_the_root_and_an_empty_name_is_refused(tmp_path: Path) -> None:
    """``-o /`` lost its only character to the strip of DICOM's trailing slash and became the
    folder the command ran in ("./: output exists"; with --overwrite the whole conversion ran
    before failing); ``-o ""`` was that folder too."""
    src = good_nifti(tmp_path)
    # The root holds the input: that is said first, as --overwrite cannot help.
    line = f"error: /: output folder holds the input {src}; choose another output path"
    for given in ("/", "//"):
        result = runner.invoke(app, ["convert", str(src), given])
        assert (result.exit_code, result.output.splitlines()) == (4, [line]), given
    result = runner.invoke(app, ["convert", str(src), "/", "--overwrite"])
    assert result.exit_code == 4 and result.output.startswith("error: /: "), result.output


@pytest.mark.parametrize(
    "args",
    [
        ["info", ""],
        ["batch", "", "-o", "{tmp}/out", "--to", "ct"],
        ["batch", "{tmp}", "-o", "", "--to", "ct"],
        ["translate", "{src}", "--to", "mr", "--report", ""],
        ["models", "list", "--dir", ""],
        ["translate", "{src}", "--to", "mr", "-o", ""],
        ["translate", "{src}", "--to", "mr", "--model", ""],
        ["convert", "{src}", ""],
    ],
    ids=["info", "batch-in", "batch-out", "report", "models-dir", "translate-out", "model", "convert-out"],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(
    tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset shell variable: ``mrct batch "$IN" -o "$OUT"`` with OUT unset wrote its manifest
    and outputs into the folder it ran in, and with IN unset translated that folder."""
    src = good_nifti(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, [a.format(tmp=tmp_path, src=src) for a in args])
    assert result.exit_code == 2, result.output
    assert "is empty (an unset shell variable?)" in result.output
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["translate", "{src}", "--to", "mr", "--report", "-"],
        ["translate", "{src}", "--to", "mr", "--preview", "-"],
        ["preview", "{src}", "-o", "-"],
        ["batch", "{tmp}/in", "-o", "-", "--to", "ct"],
        ["prepare", "--mr", "{src}", "-o", "-"],
        ["evaluate", "{src}", "{src}", "-o", "-"],
        ["translate", "{src}", "--to", "mr", "-o", "-"],
        ["convert", "{src}", "-"],
        ["train", "-c", "{src}", "--data", "{tmp}", "-o", "-"],
        ["export", "{tmp}", "-o", "-"],
    ],
    ids=[
        "report",
        "translate-preview",
        "preview",
        "batch",
        "prepare",
        "evaluate",
        "translate",
        "convert",
        "train",
        "export",
    ],
)
def test_a_dash_for_standard_output_is_refused_not_written_as_a_file_named_dash(
    tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--report -`` wrote the report to a file named "-" in the current folder, and ``batch -o -``
    made a folder of that name; by convention "-" asks for standard output."""
    src = good_nifti(tmp_path)
    (tmp_path / "in").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, [a.format(tmp=tmp_path, src=src) for a in args])
    assert result.exit_code == 2, result.output
    assert "'-' (standard output) is not supported" in result.output
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("option", ["--report", "--preview"])
def test_a_folder_named_as_report_or_preview_is_refused_as_a_folder_first(
    tmp_path: Path, option: str
) -> None:
    """From a hunt: a folder given to --report said "output exists; pass --overwrite", and with
    --overwrite then "is a folder": the first advice could never work."""
    from tests.model_fixtures import write_tiny_model
    from tests.test_prepare import write_head

    src = write_head(tmp_path / "mr.nii.gz", "mr", seed=3)
    tiny = write_tiny_model(tmp_path / "tiny")
    folder = tmp_path / ("r" if option == "--report" else "p.png")
    folder.mkdir()
    args = ["translate", str(src), "--to", "ct", "--model", str(tiny), "-o", str(tmp_path / "ct.nii.gz")]
    result = runner.invoke(app, [*args, option, str(folder)])
    assert result.exit_code == 4, result.output
    assert result.output.splitlines() == [f"error: {folder}: is a folder; {option} needs a file name"]
    assert not (tmp_path / "ct.nii.gz").exists()


@pytest.mark.parametrize("command", ["convert", "translate"])
def test_an_empty_folder_made_for_a_dicom_output_takes_it_without_overwrite(
    tmp_path: Path, command: str
) -> None:
    """``mkdir out && mrct translate scan.nii.gz --to ct -o out/``, as dcm2niix -o takes a folder:
    an empty folder was "output exists; pass --overwrite", though replacing it loses nothing."""
    from tests.model_fixtures import write_tiny_model
    from tests.test_prepare import write_head

    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"")  # litter a file manager leaves does not count
    if command == "convert":
        args = ["convert", str(good_nifti(tmp_path)), f"{out}/", "--modality", "ct"]
    else:
        src = write_head(tmp_path / "mr.nii.gz", "mr", seed=3)
        tiny = write_tiny_model(tmp_path / "tiny")
        args = [
            "translate",
            str(src),
            "--to",
            "ct",
            "--model",
            str(tiny),
            "--crop-mm",
            "40,-40",
            "-o",
            f"{out}/",
        ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "IM_0001.dcm").is_file() and read_volume(out).array.ndim == 3

    taken = tmp_path / "taken"  # a folder holding anything else is still refused, untouched
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    linked = tmp_path / "linked"  # as is a link to an empty folder: a link is never replaced unasked
    (tmp_path / "elsewhere").mkdir()
    linked.symlink_to(tmp_path / "elsewhere")
    for folder in (taken, linked):
        given = [f"{folder}/" if a == f"{out}/" else a for a in args]
        result = runner.invoke(app, given)
        assert result.exit_code == 4, result.output
        assert result.output.count("\n") == 1 and "--overwrite" in result.output
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and linked.is_symlink()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_model_package_goes_into_an_empty_folder_without_overwrite(tmp_path: Path) -> None:
    from mrct.io.atomic import atomic_dir, check_output
    from mrct.models import PACKAGE_FILES

    out = tmp_path / "package"
    out.mkdir()
    check_output(out, overwrite=False, owned=PACKAGE_FILES)  # an empty folder is a place to write
    with atomic_dir(out, PACKAGE_FILES) as tmp:
        (tmp / "model.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["model.json"]
    with pytest.raises(Exception, match="output exists"):  # now it holds an output
        check_output(out, overwrite=False, owned=PACKAGE_FILES)


def test_an_empty_folder_keeps_its_permissions_and_is_never_emptied_by_a_race(tmp_path: Path) -> None:
    """From review: the output took the empty folder's place with the default permissions (a
    folder made private for patient data became world-readable), and a file landing in it
    between the check and the swap was deleted with it."""
    from mrct.errors import OutputExistsError
    from mrct.io.atomic import _take_place_of_empty

    out = tmp_path / "private"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)  # whatever the umask
    src = good_nifti(tmp_path)
    result = runner.invoke(app, ["convert", str(src), f"{out}/", "--modality", "ct"])
    assert result.exit_code == 0, result.output
    assert (out.stat().st_mode & 0o777) == 0o750 and (out / "IM_0001.dcm").is_file()
    again = runner.invoke(app, ["convert", str(src), f"{out}/", "--modality", "ct", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (out.stat().st_mode & 0o777) == 0o750  # from review: --overwrite gave the default permissions

    from mrct.io.atomic import atomic_dir
    from mrct.models import PACKAGE_FILES

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2770)  # setgid: files written inside take the folder's group
    with atomic_dir(shared, PACKAGE_FILES) as tmp:
        assert (tmp.stat().st_mode & 0o7777) == 0o2770  # before anything is written in it
        (tmp / "model.json").write_text("{}")
    assert (shared.stat().st_mode & 0o7777) == 0o2770
    assert (shared / "model.json").stat().st_gid == shared.stat().st_gid

    made, late = tmp_path / "made", tmp_path / ".made.mrct-tmp-x"
    made.mkdir()
    late.mkdir()
    (late / "IM_0001.dcm").write_bytes(b"new")
    (made / "notes.txt").write_text("keep")  # landed after the last check
    with pytest.raises(OutputExistsError, match="appeared while writing"):
        _take_place_of_empty(late, made)
    assert [p.name for p in made.iterdir()] == ["notes.txt"]


def test_the_current_folder_or_a_mount_point_is_refused_as_a_folder_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From review: from inside an empty folder, ``-o "$PWD/"`` swapped the folder under the shell
    (left in a deleted folder) and exited 70; ``-o ./`` failed after all the work. An empty mount
    point (a container's output volume) failed only when renamed onto."""
    src = good_nifti(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for given in (f"{here}/", "./"):
        result = runner.invoke(app, ["convert", str(src), given, "--modality", "ct"])
        assert result.exit_code == 4, result.output
        assert "is the current folder (or holds it)" in result.output and result.output.count("\n") == 1
    assert not any(here.iterdir()) and here.is_dir()
    monkeypatch.chdir(tmp_path)
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(mounted))
    result = runner.invoke(app, ["convert", str(src), f"{mounted}/", "--modality", "ct"])
    assert result.exit_code != 0 and "is a mount point" in result.output, result.output
    assert not any(mounted.iterdir())
