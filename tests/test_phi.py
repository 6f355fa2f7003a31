"""Patient data stays out of everything mrct writes besides DICOM outputs, and out of those too
with ``--anonymize``: reports, manifests, logs, stdout/stderr, training folders."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.labels import series_description
from mrct.log_privacy import HeaderValueFilter
from mrct.volume import Modality
from tests.dicom_factory import write_series
from tests.external_tools import dciodvfy_errors, dcm2niix_read
from tests.model_fixtures import write_tiny_model
from tests.test_anonymize import INVALID_BIRTH_DATE, PHI, SECRETS, add_phi, leaks
from tests.test_training import TINY_YAML

runner = CliRunner()
CROP = ["--crop-mm", "40,-40"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patient's study with two MR series, every header full of identifying values (in the
    second, a birth date that is not a date)."""
    root = tmp_path_factory.mktemp("phi")
    first = write_series(root / "p01" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    study = str(pydicom.dcmread(first.files[0]).StudyInstanceUID)
    second = write_series(
        root / "p01" / "t2", modality="MR", shape=(48, 48, 30), pixel_spacing=(4.0, 4.0), study_uid=study
    )
    add_phi(first.files + second.files)
    for f in second.files:  # an invalid value: pydicom's warning quotes it
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings(action="ignore"):
            ds.PatientBirthDate = INVALID_BIRTH_DATE
        ds.save_as(f)
    return root


def _mrct(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mrct -v ARGS``: logs at INFO, warnings as a user sees them."""
    cmd = [sys.executable, "-m", "mrct", "-v", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _in_text(text: str) -> list[str]:
    return [s.decode() for s in SECRETS if s.decode() in text]


def _not_dicom(folder: Path) -> list[str]:
    """:func:`leaks` outside the DICOM outputs (which keep the source's patient by default)."""
    return [hit for hit in leaks(folder) if not hit.split(":")[0].endswith(".dcm")]


def test_translate_report_and_logs_hold_no_patient_data(tmp_path: Path, studies: Path, model: Path) -> None:
    out = tmp_path / "out"
    args = ["translate", str(studies / "p01" / "t1"), "--to", "ct", "--model", str(model), *CROP]
    result = _mrct(*args, "-o", f"{out / 't1_ct'}/", "--report", str(out / "run.json"))
    assert result.returncode == 0, result.stderr
    assert _in_text(result.stdout + result.stderr) == [] and _not_dicom(out) == []
    report = json.loads((out / "run.json").read_text())
    assert report["anonymized"] is False and report["input"]["path"].endswith("t1")
    # By default the output files under the source's patient and study (README says so).
    first = pydicom.dcmread(next((out / "t1_ct").iterdir()))
    source = pydicom.dcmread(next((studies / "p01" / "t1").iterdir()))
    assert (first.PatientName, first.PatientID) == (PHI["PatientName"], PHI["PatientID"])
    assert first.StudyInstanceUID == source.StudyInstanceUID and "PatientIdentityRemoved" not in first

    anon = tmp_path / "anon"
    result = runner.invoke(
        app, [*args, "-o", f"{anon / 't1_ct'}/", "--report", str(anon / "run.json"), "--anonymize"]
    )
    assert result.exit_code == 0, result.output
    assert leaks(anon) == [] and json.loads((anon / "run.json").read_text())["anonymized"] is True


def test_choosing_among_series_lists_no_free_text(tmp_path: Path, studies: Path, model: Path) -> None:
    """The "choose one with --series" error lists UIDs, modalities and sizes: a SeriesDescription
    is free text that may hold a name (PS3.15 removes it)."""
    import shutil

    copy = tmp_path / "p01"
    shutil.copytree(studies / "p01", copy)
    for f in (copy / "t2").iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = PHI["StudyDescription"]
        ds.save_as(f)
    result = runner.invoke(app, ["translate", str(copy), "--to", "ct", "--model", str(model), *CROP])
    assert result.exit_code == 3 and "choose one with --series UID" in result.stderr
    assert _in_text(result.output) == []
    assert "'mrct info' shows their descriptions" in result.stderr  # where to find them


def test_batch_manifests_and_logs_hold_no_patient_data(tmp_path: Path, studies: Path, model: Path) -> None:
    """A plain batch (manifests, logs) and an anonymized one (every byte), the latter consistent:
    the two series of one source study stay one study, under one pseudonymous patient."""
    out, anon = tmp_path / "out", tmp_path / "anon"
    args = ["batch", str(studies), "--to", "ct", "--model", str(model), *CROP]
    result = _mrct(*args, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert _in_text(result.stdout + result.stderr) == [] and _not_dicom(out) == []
    # The source's invalid birth date (a name) is not copied, so no writer warns with it either.
    written = pydicom.dcmread(next(out.rglob("IM_0001.dcm")))
    assert written.PatientBirthDate == "" and "Invalid value for VR DA" not in result.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["done"] == 2

    anonymized = runner.invoke(app, [*args, "-o", str(anon), "--anonymize", "-q"])  # its logs: as above
    assert anonymized.exit_code == 0, anonymized.output
    assert leaks(anon) == []
    assert json.loads((anon / "manifest.json").read_text())["anonymize"] is True
    outputs = [anon / "p01" / f"{s}_synthetic_ct" for s in ("t1", "t2")]
    firsts = [pydicom.dcmread(sorted(o.iterdir())[0]) for o in outputs]
    sources = [pydicom.dcmread(next((studies / "p01" / s).iterdir())) for s in ("t1", "t2")]
    assert firsts[0].StudyInstanceUID == firsts[1].StudyInstanceUID != sources[0].StudyInstanceUID
    assert firsts[0].PatientID == firsts[1].PatientID and firsts[0].PatientID.startswith("ANON-")
    new_frames = {ds.FrameOfReferenceUID for ds in firsts}
    assert len(new_frames) == 2 and new_frames.isdisjoint({ds.FrameOfReferenceUID for ds in sources})
    for ds in firsts:  # the synthetic-image labelling survives
        assert ds.SeriesDescription == series_description(Modality.CT)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "not for diagnosis" in ds.DerivationDescription and ds.PatientIdentityRemoved == "YES"
    assert dciodvfy_errors(sorted(outputs[0].iterdir())[0]) == []
    data, _ = dcm2niix_read(outputs[1], tmp_path / "d2n")
    assert data.shape == (48, 48, 30)


def test_pydicom_messages_are_redacted() -> None:
    """pydicom quotes the header values it finds invalid; the CLI's handlers blank them."""
    record = logging.LogRecord(
        "pydicom", logging.WARNING, __file__, 1, "Invalid value for VR %s: %r.", ("DA", "Doe^Jane"), None
    )
    assert HeaderValueFilter().filter(record) and record.getMessage() == "Invalid value for VR DA: '…'."
    ours = logging.LogRecord("mrct.batch", logging.INFO, __file__, 1, "read '%s'", ("p01/t1",), None)
    assert HeaderValueFilter().filter(ours) and ours.getMessage() == "read 'p01/t1'"  # paths stay
    text = "x/pydicom/valuerep.py:440: UserWarning: Invalid value for VR PN: 'Doe^Jane'."
    warned = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (text,), None)
    assert HeaderValueFilter().filter(warned) and "Doe" not in warned.getMessage()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, studies: Path) -> tuple[Path, Path, str]:
    """``mrct prepare`` (tiny grid) on the MR study and two CTs, all full of identifying values:
    (the prepared set, the training config, what prepare logged)."""
    root = tmp_path_factory.mktemp("prepared")
    for i in range(2):
        ct = write_series(root / "ct" / f"c{i}", modality="CT", shape=(48, 48, 24), pixel_spacing=(4.0, 4.0))
        add_phi(ct.files)
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML)
    inputs = ["--mr", str(studies), "--ct", str(root / "ct"), "--config", str(config), *CROP]
    result = runner.invoke(app, ["-v", "prepare", *inputs, "-o", str(root / "set")])
    assert result.exit_code == 0, result.output
    return root / "set", config, result.output


def test_prepared_set_holds_no_patient_data(prepared: tuple[Path, Path, str]) -> None:
    """Scan ids and records come from paths, never from headers."""
    folder, _, output = prepared
    assert _in_text(output) == [] and leaks(folder) == []
    assert len(json.loads((folder / "manifest.json").read_text())["scans"]) == 4


@pytest.mark.slow
def test_training_folder_holds_no_patient_data(tmp_path: Path, prepared: tuple[Path, Path, str]) -> None:
    """Logs, config, data description, checkpoints and TensorBoard events of a run on that set."""
    folder, config, _ = prepared
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["-v", "train", "-c", str(config), "--data", str(folder), "-o", str(run), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert _in_text(result.output) == [] and leaks(run) == []
    assert (run / "log.jsonl").read_text() and list(run.rglob("events.out.tfevents*"))


def test_reader_noise_stays_off_stderr_although_pydicom_resets_its_logger() -> None:
    """Importing pydicom sets its logger back to WARNING, so a level set before (as the CLI did)
    let one line per tolerated header oddity, and decoder tracebacks, through."""
    import io
    import logging

    import pydicom.config

    from mrct.log_privacy import quiet_libraries

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.root.addHandler(handler)
    try:
        quiet_libraries([handler], logging.CRITICAL)
        pydicom.config.debug(False, False)  # what importing pydicom does
        logging.getLogger("pydicom").error("could not decode", exc_info=ValueError("x"))
        logging.getLogger("nibabel.global").warning("pixdim[0] (qfac) should be 1")
        logging.getLogger("mrct.io").warning("ours")
        assert stream.getvalue() == "ours\n"
        quiet_libraries([handler], logging.WARNING)  # --verbose
        logging.getLogger("pydicom").warning("shown")
        assert stream.getvalue().endswith("shown\n") and len(handler.filters) == 1
    finally:
        logging.root.removeHandler(handler)
