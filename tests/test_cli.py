"""The CLI as users meet it: real subprocesses, one-line errors, nothing partial left."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from mrct import __version__
from mrct.cli import app
from mrct.io import read_volume, write_volume
from mrct.volume import Modality
from tests.dicom_factory import write_series
from tests.phantoms import phantom

runner = CliRunner()


def run_mrct(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrct", *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mrct.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


COMMANDS = (
    "info",
    "convert",
    "preview",
    "locate",
    "translate",
    "batch",
    "prepare",
    "train",
    "export",
    "evaluate",
)


@pytest.mark.parametrize("cmd", [*COMMANDS, "models list", "models info"])
def test_every_command_has_help_that_shows_flags_without_a_value(cmd: str) -> None:
    """typer's framed help printed ``--overwrite <bool>`` and ``--report <Path>``: a user typing
    ``--overwrite true`` got "unexpected extra argument (true)". Flags take no value; options name
    what they take."""
    result = runner.invoke(app, [*cmd.split(), "--help"], terminal_width=100)
    assert result.exit_code == 0 and "Usage" in result.output
    options = result.output.split("Options:")[1]
    assert not re.search("<(bool|str|Path)>", options), result.output
    assert re.search(r"^  --help +Show this message", options, re.M), result.output
    # Arguments are named in capitals, as in the usage line of every other tool (and the README);
    # typer printed the parameter's Python name, "translate [OPTIONS] {scan}".
    usage = result.output.split("\n", 1)[0]
    assert not re.search(r"\{[a-z_]+\}", usage), usage


@pytest.mark.parametrize("args", [[], ["models"]], ids=["mrct", "mrct-models"])
def test_a_bare_command_prints_its_help_once_on_stdout(args: list[str]) -> None:
    """With plain help, click left printing the help of ``mrct`` alone to the caller, and the
    real entry point (not typer's test runner) printed nothing."""
    proc = subprocess.run([sys.executable, "-m", "mrct", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.count("Usage: ") == 1 and "Commands:" in proc.stdout, proc.stdout


def test_info_and_convert_nifti_to_dicom_and_back(tmp_path: Path) -> None:
    vol = phantom(shape=(16, 14, 6))
    src = write_volume(vol, tmp_path / "ct.nii.gz")
    info = runner.invoke(app, ["info", str(src)])
    assert info.exit_code == 0, info.output
    assert "16 x 14 x 6" in info.output and "CT" in info.output
    res = run_mrct("convert", src, tmp_path / "dcm/", "--modality", "ct")
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "dcm").glob("*.dcm"))) == 6
    res = run_mrct("convert", tmp_path / "dcm", tmp_path / "back.nrrd")
    assert res.returncode == 0, res.stderr
    back = read_volume(tmp_path / "back.nrrd")
    assert back.modality is None or back.modality is Modality.CT
    assert back.shape[2] == 6 or sorted(back.shape) == sorted(vol.shape)


def test_convert_modality_does_not_relabel_a_dicom_series_of_another(tmp_path: Path) -> None:
    """From a CLI walk: --modality ct made a DICOM MR a CT series (MR values as HU, CT Image
    Storage) without a word; it sets what a NIfTI does not say. The header's own is accepted."""
    mr = write_series(tmp_path / "t1", modality="MR", shape=(16, 14, 6)).folder
    res = run_mrct("convert", mr, tmp_path / "ct/", "--modality", "ct")
    assert res.returncode == 8 and not (tmp_path / "ct").exists(), res.stderr
    assert res.stderr == (
        f"error: {mr}: its DICOM header says MR, not CT; --modality sets the modality of a NIfTI, "
        "NRRD or MHA input's DICOM output (or of a DICOM series of modality OT)\n"
    )
    assert run_mrct("convert", mr, tmp_path / "mr/", "--modality", "mr").returncode == 0
    pet = write_series(tmp_path / "pet", modality="MR", shape=(16, 14, 6))  # from review: a PET too
    for f in pet.files:
        ds = pydicom.dcmread(f)
        ds.Modality = "PT"
        ds.save_as(f)
    res = run_mrct("convert", pet.folder, tmp_path / "pt/", "--modality", "ct")
    assert res.returncode == 8 and "its DICOM header says PT, not CT" in res.stderr, res.stderr


def test_train_refuses_resume_with_overwrite(tmp_path: Path) -> None:
    """From a CLI walk: both were accepted and the run resumed, --overwrite ignored."""
    res = run_mrct(
        "train",
        "-c",
        "configs/cpu_small.yaml",
        "--data",
        tmp_path,
        "-o",
        tmp_path / "run",
        "--resume",
        "--overwrite",
    )
    assert res.returncode == 1 and not (tmp_path / "run").exists()
    assert (
        res.stderr == "error: give only one of --resume (continue the run) and --overwrite (start it again)\n"
    )


# --- bad input: each gets one line, a non-zero exit, and no output ------------------


def _missing(tmp: Path) -> Path:
    return tmp / "does-not-exist.nii.gz"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _text_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not an image\n")
    return tmp / "notes.txt"


def _truncated_gz(tmp: Path) -> Path:
    write_volume(phantom(shape=(40, 40, 30)), tmp / "full.nii.gz")
    data = (tmp / "full.nii.gz").read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp / "full.nii.gz").unlink()
    return tmp / "cut.nii.gz"


def _series(tmp: Path, name: str = "series", seed: int = 0) -> Path:
    return write_volume(phantom(shape=(8, 9, 5), seed=seed), tmp / f"{name}/")


def _no_pixel_data(tmp: Path) -> Path:
    folder = _series(tmp)
    first = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    del ds.PixelData
    ds.save_as(first)
    return folder


def _single_slice(tmp: Path) -> Path:
    return sorted(_series(tmp).glob("*.dcm"))[0]


def _four_d(tmp: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 3), np.float32), np.eye(4)), tmp / "4d.nii.gz")
    return tmp / "4d.nii.gz"


def _nan_voxels(tmp: Path) -> Path:
    a = np.zeros((5, 5, 5), np.float32)
    a[2, 2, 2] = np.inf
    a[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp / "nan.nii.gz")
    return tmp / "nan.nii.gz"


def _two_series(tmp: Path) -> Path:
    study = tmp / "study"
    study.mkdir()
    _series(study, "a", seed=1)
    _series(study, "b", seed=2)
    return study


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (_missing, "no such file"),
    "empty folder": (_empty_folder, "empty"),
    "text file": (_text_file, "not a recognised image"),
    "truncated gz": (_truncated_gz, "truncated or corrupt"),
    "no pixel data": (_no_pixel_data, "no pixel data"),
    "single slice": (_single_slice, "3D volume is needed"),
    "4D NIfTI": (_four_d, "3D volume is needed"),
    "NaN voxels": (_nan_voxels, "NaN or infinite"),
    "two series": (_two_series, "--series"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["info", "convert"])
def test_bad_input_gives_one_line_error(tmp_path: Path, case: str, command: str) -> None:
    if case == "two series" and command == "info":
        pytest.skip("info lists the series of a multi-series folder (tested below)")
    make, expected = BAD_INPUTS[case]
    bad = make(tmp_path)
    before = tree_digest(bad) if bad.exists() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args: list[str | Path] = [command, bad] + ([out_dir / "x.nii.gz"] if command == "convert" else [])
    res = run_mrct(*args)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    assert bad.name in lines[0], lines[0]
    assert expected in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []  # nothing partial, no temporary files
    if before is not None:
        assert tree_digest(bad) == before  # inputs are never modified


def test_two_series_folder_lists_and_selects(tmp_path: Path) -> None:
    study = _two_series(tmp_path)
    res = run_mrct("info", study)
    assert res.returncode == 0 and "2" in res.stdout
    uid = str(pydicom.dcmread(next((study / "a").glob("*.dcm"))).SeriesInstanceUID)
    res = run_mrct("convert", study, tmp_path / "a.nii.gz", "--series", uid)
    assert res.returncode == 0, res.stderr


def test_a_zip_or_dicomdir_of_two_series_lists_them_as_a_folder_does(tmp_path: Path) -> None:
    """info on a zip or a DICOMDIR holding two series failed (exit 3, choose one with --series)
    where the same folder listed both."""
    from pydicom.fileset import FileSet

    from tests.dicom_factory import zip_folder

    study = _two_series(tmp_path)
    listed = run_mrct("info", study)
    media = FileSet()
    for f in sorted(study.rglob("*.dcm")):
        media.add(f)
    media.write(tmp_path / "cd")
    for packed in (zip_folder(study, tmp_path / "study.zip"), tmp_path / "cd" / "DICOMDIR"):
        res = run_mrct("info", packed)
        assert res.returncode == 0, res.stderr
        uids = {line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")}
        assert len(uids) == 2 and all(uid in res.stdout for uid in uids), res.stdout
        uid = str(pydicom.dcmread(next((study / "a").glob("*.dcm"))).SeriesInstanceUID)
        one = run_mrct("info", packed, "--series", uid)
        assert one.returncode == 0 and "shape" in one.stdout, one.stderr
        # The zip is named a zip whether it holds one series or two (two said "dicom").
        kind = "dicom-zip" if packed.suffix == ".zip" else "dicom"
        assert [
            re.sub(r"^format: +", "", line)
            for line in (res.stdout + one.stdout).splitlines()
            if line.startswith("format:")
        ] == [kind, kind], res.stdout + one.stdout
    (tmp_path / "empty.zip").write_bytes(b"")  # the readers' own checks come first, as before
    assert "missing.zip: no such file or folder" in run_mrct("info", tmp_path / "missing.zip").stderr
    assert "empty.zip: file is empty" in run_mrct("info", tmp_path / "empty.zip").stderr


def test_a_zip_or_dicomdir_of_one_series_lists_it_as_its_folder_does(tmp_path: Path) -> None:
    """info on a zip of one series (or naming one of two with --series) showed the volume without
    the series list its folder shows: listing it unpacked the zip a second time."""
    from pydicom.fileset import FileSet

    from tests.dicom_factory import zip_folder

    study = _two_series(tmp_path)
    media = FileSet()
    for f in sorted((study / "a").glob("*.dcm")):
        media.add(f)
    media.write(tmp_path / "cd")

    def series_lines(*args: object) -> list[str]:
        res = run_mrct("info", *args)
        assert res.returncode == 0 and "shape" in res.stdout, res.stdout + res.stderr
        return [line for line in res.stdout.splitlines() if line.startswith("  ")]

    one = series_lines(study / "a")
    assert len(one) == 1
    assert series_lines(zip_folder(study / "a", tmp_path / "a.zip")) == one
    from mrct.io import survey_volume

    # From review: the files named pointed into the deleted unpacked copy.
    (listed,), volume = survey_volume(tmp_path / "a.zip")
    assert listed.files == listed.headers == () and listed.n_frames == 5 and volume is not None
    assert series_lines(tmp_path / "cd" / "DICOMDIR") == one
    uid = one[0].split()[0]
    both = series_lines(study, "--series", uid)
    assert len(both) == 2 and series_lines(zip_folder(study, tmp_path / "both.zip"), "--series", uid) == both


def test_convert_over_its_own_input_says_so_before_asking_for_overwrite(tmp_path: Path) -> None:
    """``mrct convert series series/`` said "output exists; pass --overwrite", and with it, that the
    output would replace the input: the second answer comes first now."""
    src = tmp_path / "dcm"
    assert run_mrct("convert", write_volume(phantom(), tmp_path / "in.nii.gz"), f"{src}/").returncode == 0
    result = run_mrct("convert", src, f"{src}/")
    assert result.returncode == 4 and "output would replace the input" in result.stderr, result.stderr


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    src = write_volume(phantom(), tmp_path / "in.nii.gz")
    out = tmp_path / "out.nrrd"
    assert run_mrct("convert", src, out).returncode == 0
    stamp = out.read_bytes()
    res = run_mrct("convert", src, out)
    assert res.returncode == 4 and "--overwrite" in res.stderr
    assert out.read_bytes() == stamp
    assert run_mrct("convert", src, out, "--overwrite").returncode == 0


def test_unknown_output_extension(tmp_path: Path) -> None:
    src = write_volume(phantom(), tmp_path / "in.nii.gz")
    res = run_mrct("convert", src, tmp_path / "out.xyz")
    assert res.returncode != 0 and "unknown output format" in res.stderr
    res = run_mrct("convert", src, tmp_path / "out.mhd")
    assert res.returncode != 0 and "single-file" in res.stderr
    res = run_mrct("convert", src, "-", cwd=tmp_path)  # not a DICOM folder named "-"
    assert res.returncode == 2 and "standard output) is not supported" in res.stderr  # as every output option
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_info_says_plainly_when_the_modality_cannot_be_told(tmp_path: Path) -> None:
    """A z-scored-looking volume (values around 0, many negative): no header modality, and the
    intensities fit neither CT nor MR. info said "unknown (from None)"."""
    path = tmp_path / "zscored.nii.gz"
    arr = np.random.default_rng(0).uniform(-400, 400, (20, 20, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("modality:"))
    assert line == "modality:    unknown (the header names neither CT nor MR; nor do the intensities tell)"


def test_usage_errors_are_one_line_from_the_real_entry_point(tmp_path: Path) -> None:
    """click draws usage errors in a framed box of several lines; mrct's entry point prints one
    line like every other error, exit code 2. ``mrct`` alone still prints the help (exit 0)."""
    cases = [
        (["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--to", "ct", "--workers", "0"], "'--workers'"),
        (["translate", "x.nii.gz", "--to", "xx"], "'xx' is not one of 'ct', 'mr'; see '"),
        (["translate"], "Missing argument 'SCAN'; see '"),
        (["bogus"], "No such command 'bogus'; see '"),
        (["translate", "x.nii.gz"], "Missing option '--to'. Choose from: ct, mr; see '"),
    ]
    for args, message in cases:
        result = run_mrct(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and result.stdout == ""
    bare = run_mrct()
    assert bare.returncode == 0 and "Usage: " in bare.stdout and "translate" in bare.stdout
    assert bare.stdout.count("Usage: ") == 1  # the help once, not twice
    models = run_mrct("models")
    assert models.returncode == 0 and models.stdout.count("Usage: ") == 1


def test_a_line_break_in_a_file_name_keeps_the_error_on_one_line(tmp_path: Path) -> None:
    odd = tmp_path / "scan\nname.nii.gz"
    odd.write_bytes(b"not a nifti")
    result = runner.invoke(app, ["info", str(odd)])
    assert result.exit_code == 3 and result.stderr.count("\n") == 1, result.stderr
    assert "scan\\nname.nii.gz" in result.stderr


def test_outputs_inside_a_dicom_input_folder_are_refused(tmp_path: Path) -> None:
    """From a hunt: convert, preview and prepare wrote into a DICOM input folder (translate
    refused it), and the folder then read as two series ("2 series found")."""

    folder = write_series(tmp_path / "t1", modality="MR", shape=(32, 32, 12)).files[0].parent
    before = tree_digest(folder)
    for args, code in (
        (["convert", folder, folder / "x.nii.gz"], 4),
        (["convert", folder, f"{folder / 'sub'}/"], 4),
        (["preview", folder, "-o", folder / "p.png"], 4),
        (["prepare", "--mr", folder, "--ct", folder, "-o", folder / "prep"], 4),
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (args, result.output)
        assert "inside the input folder" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert tree_digest(folder) == before and read_volume(folder).shape == (32, 32, 12)
