"""`mrct batch` over zips: a study zip holding several series is listed like its unpacked folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from mrct.batch import discover
from mrct.cli import app
from mrct.io import read_volume
from mrct.volume import Modality
from tests.dicom_factory import write_series
from tests.model_fixtures import write_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _zip(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(folder).as_posix())
    return path


def _study(folder: Path) -> dict[str, str]:
    """A localiser, a T1 and a CT of one study (as a PACS export zips them); their UIDs."""
    localiser = write_series(folder / "loc", modality="MR", shape=(48, 48, 3), series_number=1)
    t1 = write_series(
        folder / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0), series_number=3
    )
    ct = write_series(folder / "ct", modality="CT", shape=(40, 48, 12), series_number=5)
    return {"loc": localiser.series_uid, "t1": t1.series_uid, "ct": ct.series_uid}


def test_a_study_zip_is_one_row_per_series_like_its_unpacked_folder(tmp_path: Path, model: Path) -> None:
    uids = _study(tmp_path / "study")
    src = tmp_path / "in"
    (src / "p01").mkdir(parents=True)
    _zip(tmp_path / "study", src / "p01" / "study.zip")
    _zip(tmp_path / "study" / "t1", src / "p01" / "t1only.zip")  # files at the zip's root

    found = {s.id: s for s in discover(src)}
    assert sorted(found) == sorted(
        [f"p01/study.zip/{k}#{uids[k]}" for k in ("loc", "t1", "ct")] + [f"p01/t1only.zip#{uids['t1']}"]
    )

    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    args.append("-q")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
    t1_row = rows[f"p01/study.zip/t1#{uids['t1']}"]
    assert t1_row["status"] == "done" and t1_row["series_uid"] == uids["t1"]
    assert t1_row["input"] == "p01/study.zip" and t1_row["output"] == "p01/study_s3_synthetic_ct"
    assert rows[f"p01/study.zip/loc#{uids['loc']}"]["status"] == "skipped"
    assert "localiser" in rows[f"p01/study.zip/loc#{uids['loc']}"]["message"]
    assert rows[f"p01/study.zip/ct#{uids['ct']}"]["status"] == "skipped"
    assert "already CT" in rows[f"p01/study.zip/ct#{uids['ct']}"]["message"]
    assert rows[f"p01/t1only.zip#{uids['t1']}"]["status"] == "done"

    # The T1 from the study zip is the same synthetic CT as from the T1's own zip, on its grid.
    from_study = read_volume(out / "p01/study_s3_synthetic_ct")
    alone = read_volume(out / rows[f"p01/t1only.zip#{uids['t1']}"]["output"])
    source = read_volume(tmp_path / "study" / "t1")
    assert from_study.modality is Modality.CT
    np.testing.assert_allclose(from_study.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(from_study.array, alone.array)

    again = runner.invoke(app, args)  # resumed: nothing more to do
    assert again.exit_code == 0
    assert again.stdout.startswith("nothing left to do: 2 done (2 by an earlier run)")


def test_a_damaged_zip_stays_one_failed_row(tmp_path: Path, model: Path) -> None:
    _study(tmp_path / "study")
    src = tmp_path / "in"
    src.mkdir()
    data = _zip(tmp_path / "study", tmp_path / "study.zip").read_bytes()
    (src / "cut.zip").write_bytes(data[: len(data) // 2])
    assert [s.id for s in discover(src)] == ["cut.zip"]
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (row,) = json.loads((out / "manifest.json").read_text())["series"]
    assert row["status"] == "failed" and row["message"].startswith("cut.zip: not a readable zip file")


def test_a_zip_that_gains_or_loses_series_keeps_its_row_and_output(tmp_path: Path, model: Path) -> None:
    """Row ids name the series, not how many the zip holds: the T1 stays done under one id and one
    output as a localiser comes and goes (an id that changed failed every later run: "exists")."""
    uids = _study(tmp_path / "study")
    shutil.rmtree(tmp_path / "study" / "ct")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    args.append("-q")
    t1 = f"x.zip/t1#{uids['t1']}"
    for folders in (["t1"], ["t1", "loc"], ["t1"]):
        (src / "x.zip").unlink(missing_ok=True)
        with zipfile.ZipFile(src / "x.zip", "w") as zf:
            for f in sorted((tmp_path / "study").rglob("*")):
                if f.is_file() and f.parent.name in folders:
                    zf.write(f, f.relative_to(tmp_path / "study").as_posix())
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows = {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
        assert rows[t1]["status"] == "done" and rows[t1]["output"] == "x_synthetic_ct"


def test_a_series_in_a_zip_is_named_by_its_folder_there_not_the_temporary_copy(
    tmp_path: Path, model: Path
) -> None:
    study = tmp_path / "study"
    write_series(study / "loc", modality="MR", shape=(48, 48, 3), series_number=1)
    write_series(study / "t1", modality="MR", shape=(48, 48, 36), omit=(20,), series_number=3)
    write_series(study / "tilt", modality="CT", shape=(40, 48, 12), gantry_tilt=15.0, series_number=4)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(study, src / "gap.zip")
    args = ["batch", str(src), "-o", str(out), "--to", "mr", "--model", str(model), "--crop-mm", "40,-40"]
    result = runner.invoke(app, [*args, "-q"])  # the tilted CT, read (a phantom, not a head: it fails)
    tilt = [line for line in result.stderr.splitlines() if "gantry tilt" in line]
    assert tilt and all(m.startswith(f"WARNING: {src / 'gap.zip' / 'tilt'}: ") for m in tilt)

    args[args.index("mr")] = "ct"
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "out_ct"), "-q"])
    assert result.exit_code == 1
    rows = json.loads((tmp_path / "out_ct" / "manifest.json").read_text())["series"]
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert failed["message"].startswith("gap.zip: t1: missing slice(s)")
    assert "mrct-zip-" not in json.dumps(rows)


def test_copies_left_by_a_killed_process_are_removed_by_a_later_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILLed batch (the OOM killer) left its unpacked zip in the temporary folder for good."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    old = time.time() - 7200
    names = {
        "dead_old": "mrct-zip-99999999-abcd1234",  # no such process, two hours old: removed
        "dead_new": "mrct-zip-99999998-abcd1234",  # no such process, but young: kept
        "alive_old": f"mrct-zip-{os.getpid()}-abcd1234",  # this process: kept
        "other": "mrct-zipper-99999999-abcd1234",  # not ours: kept
        "huge": "mrct-zip-99999999999999999999-abcd1234",  # no PID can be this: kept, and no error
    }
    for key, name in names.items():
        (scratch / name).mkdir()
        (scratch / name / "IM_0001.dcm").write_bytes(b"x")
        if key != "dead_new":
            os.utime(scratch / name, (old, old))
    write_series(tmp_path / "t1", modality="MR", shape=(8, 8, 6))
    volume = read_volume(_zip(tmp_path / "t1", tmp_path / "t1.zip"))
    assert volume.shape == (8, 8, 6)
    assert sorted(p.name for p in scratch.iterdir()) == sorted(v for k, v in names.items() if k != "dead_old")


def test_a_zip_is_judged_as_its_unpacked_folder_damage_hidden_entries_and_uidless_images(
    tmp_path: Path, model: Path
) -> None:
    """Its series fail alone (a cut localiser failed the whole zip), hidden folders are left out
    (they were translated), a series without a SeriesInstanceUID is translated (the zip was "2
    series found", with nothing to choose), and warnings name the zip, not its temporary copy."""
    study = tmp_path / "study"
    localiser = write_series(study / "loc", modality="MR", shape=(48, 48, 3), series_number=1)
    localiser.files[0].write_bytes(localiser.files[0].read_bytes()[:300])  # cut before its UID
    t1 = write_series(study / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    for f in t1.files:
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(f)
    for f in t1.files:  # the same images twice
        shutil.copy(f, f.with_name(f"copy_{f.name}"))
    write_series(study / ".trash" / "old", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    (study / "__MACOSX").mkdir()
    (study / "__MACOSX" / "._IM_0001.dcm").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(study, src / "study.zip")
    shutil.copytree(study, src / "unpacked")

    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    result = runner.invoke(app, args)
    rows = json.loads((out / "manifest.json").read_text())["series"]
    by_id = {r["id"]: (r["status"], r["message"]) for r in rows}
    zipped = {k[len("study.zip") :]: v for k, v in by_id.items() if k.startswith("study.zip")}
    unpacked = {k[len("unpacked") :]: v for k, v in by_id.items() if k.startswith("unpacked")}
    assert [v[0] for v in zipped.values()] == ["failed", "failed", "done"], zipped
    assert {k: v[0] for k, v in zipped.items()} == {k: v[0] for k, v in unpacked.items()}
    cut = zipped[f"/loc/{localiser.files[0].name}"]
    why = "incomplete DICOM image file (truncated?)"
    assert cut == ("failed", f"study.zip: loc/{localiser.files[0].name}: {why}")
    assert result.exit_code == 1 and "mrct-zip-" not in result.output
    assert f"WARNING: {src / 'study.zip' / 't1'}: 36 duplicate file(s)" in result.stderr


def test_a_zip_that_cannot_be_listed_once_keeps_its_rows(tmp_path: Path, model: Path) -> None:
    """A listing that failed once (here the memory limit; a full temporary folder alike) dropped
    the zip's rows, and every later run failed its series ("exists; pass --overwrite")."""
    uids = _study(tmp_path / "study")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(tmp_path / "study", src / "x.zip")
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    t1 = f"x.zip/t1#{uids['t1']}"

    def rows() -> dict[str, dict]:
        return {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}

    # The zip fails; its series' rows are kept as they were, to be judged when it is listed again.
    starved = runner.invoke(app, [*args, "-q", "--max-memory", "100KB"])
    assert starved.exit_code == 1
    assert starved.stdout.startswith("1 done (1 by an earlier run), 2 skipped, 1 failed;")
    assert rows()["x.zip"]["status"] == "failed" and "memory limit" in rows()["x.zip"]["message"]
    assert rows()[t1]["status"] == "done" and rows()[t1]["output"] == "x_s3_synthetic_ct"
    again = runner.invoke(app, [*args, "-q"])
    assert again.exit_code == 0
    assert again.stdout.startswith("nothing left to do: 1 done (1 by an earlier run)")
    assert "x.zip" not in rows()

    # With --overwrite they fail, keeping their outputs' names, and the next run redoes them.
    forced = runner.invoke(app, [*args, "-q", "--max-memory", "100KB", "--overwrite"])
    assert forced.exit_code == 1
    assert rows()[t1]["status"] == "failed" and rows()[t1]["output"] == "x_s3_synthetic_ct"
    again = runner.invoke(app, [*args, "-q"])
    assert again.exit_code == 0 and again.stdout.startswith("1 done, 2 skipped, 0 failed"), again.output

    # A row a killed run left pending is not kept as it is: it fails, keeping its output's name.
    content = json.loads((out / "manifest.json").read_text())
    content["series"] = [{**r, "status": "pending"} if r["id"] == t1 else r for r in content["series"]]
    (out / "manifest.json").write_text(json.dumps(content))
    starved = runner.invoke(app, [*args, "-q", "--max-memory", "100KB"])
    assert rows()[t1]["status"] == "failed" and rows()[t1]["output"] == "x_s3_synthetic_ct"
    assert rows()[t1]["message"] == "not checked: its zip could not be listed"


def test_a_zip_of_one_series_is_judged_by_its_listing_and_scans_in_a_zip_are_listed(
    tmp_path: Path, model: Path
) -> None:
    """A zip holding a localiser alone was read and failed ("no head found"); a NIfTI inside a
    study zip had no row at all."""
    write_series(tmp_path / "loc", modality="MR", shape=(48, 48, 3))
    uids = _study(tmp_path / "study")
    (tmp_path / "study" / "head.nii.gz").write_bytes(b"not read")
    src = tmp_path / "in"
    src.mkdir()
    _zip(tmp_path / "loc", src / "loc.zip")
    _zip(tmp_path / "study", src / "study.zip")
    rows = {s.id: s for s in discover(src)}
    (localiser,) = [v for k, v in rows.items() if k.startswith("loc.zip#")]
    assert localiser.skip == "a 3-image stack (a localiser?)"
    assert rows["study.zip/head.nii.gz"].skip == "a scan file inside a zip; unzip it to translate it"
    assert rows[f"study.zip/t1#{uids['t1']}"].skip is None


def test_a_zip_of_documents_or_nothing_is_skipped_as_its_folder_would_be(tmp_path: Path) -> None:
    """From a hunt: a zipped report (or an empty zip) was a failed row on every run, so a study
    tree holding one never finished with exit 0; unzipped, the same files are skipped."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report.txt").write_text("radiology report\n")
    src = tmp_path / "in"
    src.mkdir()
    _zip(docs, src / "docs.zip")
    zipfile.ZipFile(src / "empty.zip", "w").close()
    rows = {s.id: s for s in discover(src)}
    assert sorted(rows) == ["docs.zip", "empty.zip"]
    for row in rows.values():
        assert row.error is None and row.skip == "a zip holding no image files (DICOM, NIfTI, NRRD or MHA)"


def test_a_damaged_series_keeps_its_output_and_no_other_series_takes_it(tmp_path: Path, model: Path) -> None:
    """Series A (number 3) is done, then a file of it is cut short and series C (number 3 too) is
    added: C gets a name of its own, and A's output is not touched. Once A is mended it is
    translated again onto its own output (its failed row lost the output's name: "exists" for ever)."""
    src, out = tmp_path / "in", tmp_path / "out"
    mr = {"modality": "MR", "shape": (48, 48, 36), "pixel_spacing": (4.0, 4.0)}
    a = write_series(src / "study", series_number=3, **mr)  # type: ignore[arg-type]
    write_series(src / "study", series_number=5, **mr)  # type: ignore[arg-type]
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    written = (out / "study_s3_synthetic_ct").stat().st_mtime_ns
    whole = a.files[5].read_bytes()
    a.files[5].write_bytes(whole[:2000])
    c = write_series(src / "study", series_number=3, **mr)  # type: ignore[arg-type]
    assert runner.invoke(app, [*args, "-q"]).exit_code == 1

    def row(uid: str) -> tuple[str, str]:
        found = [
            r for r in json.loads((out / "manifest.json").read_text())["series"] if r["series_uid"] == uid
        ]
        return found[0]["status"], found[0]["output"]

    assert row(c.series_uid) == ("done", "study_s3_2_synthetic_ct")
    assert row(a.series_uid) == ("failed", "study_s3_synthetic_ct")
    assert (out / "study_s3_synthetic_ct").stat().st_mtime_ns == written

    a.files[5].write_bytes(whole)
    mended = runner.invoke(app, [*args, "-q"])
    assert mended.exit_code == 0, mended.output
    assert row(a.series_uid) == ("done", "study_s3_synthetic_ct")


def test_an_unchanged_zip_whose_row_ids_changed_is_not_redone(tmp_path: Path, model: Path) -> None:
    """Rows written by an earlier mrct (one row ``x.zip``, no series UID) for a zip now listed as
    several rows: its series was translated again although the zip had not changed."""
    write_series(tmp_path / "study" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    (tmp_path / "study" / "head.nii.gz").write_bytes(b"not read")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(tmp_path / "study", src / "x.zip")
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    content = json.loads((out / "manifest.json").read_text())
    (done,) = [r for r in content["series"] if r["status"] == "done"]
    content["series"] = [{**done, "id": "x.zip", "series_uid": ""}]  # as 5177425 wrote it
    (out / "manifest.json").write_text(json.dumps(content))
    written = (out / done["output"]).stat().st_mtime_ns

    again = runner.invoke(app, [*args, "-q"])
    assert again.exit_code == 0
    assert again.stdout.startswith("nothing left to do: 1 done (1 by an earlier run)")
    assert (out / done["output"]).stat().st_mtime_ns == written
    rows = {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
    assert rows[done["id"]]["series_uid"] == done["series_uid"]  # filled in


def test_a_series_without_uid_never_takes_over_a_removed_series_output(tmp_path: Path, model: Path) -> None:
    mr = {"modality": "MR", "shape": (48, 48, 36), "pixel_spacing": (4.0, 4.0), "series_number": 3}
    study = tmp_path / "study"
    write_series(study / "a", **mr)  # type: ignore[arg-type]
    write_series(study / "b", **mr)  # type: ignore[arg-type]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(study, src / "x.zip")
    args = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "40,-40"]
    assert runner.invoke(app, [*args, "-q"]).exit_code == 0
    a_output = out / "x_s3_synthetic_ct"
    before = a_output.stat().st_mtime_ns

    shutil.rmtree(study / "a")
    c = write_series(study / "c", **mr)  # type: ignore[arg-type]
    for f in c.files:
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(f)
    (src / "x.zip").unlink()
    _zip(study, src / "x.zip")
    result = runner.invoke(app, [*args, "-q"])
    rows = {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
    assert result.exit_code == 0, result.output
    assert rows["x.zip/c#"]["status"] == "done"  # under a name of its own: A's stays reserved
    assert rows["x.zip/c#"]["output"] not in ("x_s3_synthetic_ct", "x_s3_2_synthetic_ct")
    assert a_output.stat().st_mtime_ns == before  # B, in a changed zip, is translated again onto its own


def _args(src: Path, out: Path, model: Path, *extra: str) -> list[str]:
    options = ["--to", "ct", "--model", str(model), "--crop-mm", "40,-40", "-q"]
    return ["batch", str(src), "-o", str(out), *options, *extra]


def _rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}


def test_names_of_a_zip_not_listed_this_time_stay_reserved(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named like the zip took the zip's output name while the zip could not be listed
    (and with --overwrite replaced the zip series' output)."""
    import mrct.io.dicom_zip as dicom_zip

    t1 = write_series(tmp_path / "study" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _zip(tmp_path / "study" / "t1", src / "x.zip")
    assert runner.invoke(app, _args(src, out, model)).exit_code == 0
    written = (out / "x_synthetic_ct").stat().st_mtime_ns
    write_series(src / "x~", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))

    def full(*_: object) -> Path:
        raise dicom_zip.ReadError("cannot unpack the zip file: No space left on device", src / "x.zip")

    monkeypatch.setattr(dicom_zip, "extract_zip", full)
    for extra in ((), ("--overwrite",)):
        result = runner.invoke(app, _args(src, out, model, *extra))
        assert result.exit_code == 1
        rows = _rows(out)
        (folder,) = [r for r in rows.values() if r["input"] == "x~"]
        assert folder["status"] == "done" and folder["output"] != "x_synthetic_ct"
        assert rows[f"x.zip#{t1.series_uid}"]["output"] == "x_synthetic_ct"
        assert (out / "x_synthetic_ct").stat().st_mtime_ns == written


def test_a_failed_row_keeps_only_an_output_of_its_own(tmp_path: Path, model: Path) -> None:
    """A user's file where a series' output would go is never claimed by that series' failed row
    (a later run replaced it); an output refused once for another reason keeps its owner."""
    from tests.test_prepare import write_head

    src, out = tmp_path / "in", tmp_path / "out"
    head = write_head(src / "head.nii.gz", "mr", seed=1)
    whole = head.read_bytes()
    head.write_bytes(whole[:300])
    out.mkdir()
    (out / "head_synthetic_ct.nii.gz").write_bytes(b"the user's")
    assert runner.invoke(app, _args(src, out, model, "--overwrite")).exit_code == 1
    assert _rows(out)["head.nii.gz"]["output"] == ""
    head.write_bytes(whole)
    result = runner.invoke(app, _args(src, out, model))
    assert result.exit_code == 1 and "exists; pass --overwrite" in _rows(out)["head.nii.gz"]["message"]
    assert (out / "head_synthetic_ct.nii.gz").read_bytes() == b"the user's"

    # Done as DICOM, then refused while the user's note lies in its folder: the row keeps its
    # output's name, and once the note is gone the series is translated again onto it.
    write_series(src / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    (out / "head_synthetic_ct.nii.gz").unlink()
    assert runner.invoke(app, _args(src, out, model)).exit_code == 0
    (t1,) = [r for r in _rows(out).values() if r["input"] == "t1"]
    (out / t1["output"] / "notes.txt").write_text("mine")
    for f in (src / "t1").iterdir():
        os.utime(f)  # touched: to be translated again
    assert runner.invoke(app, _args(src, out, model)).exit_code == 1
    assert _rows(out)[t1["id"]]["status"] == "failed" and _rows(out)[t1["id"]]["output"] == t1["output"]
    # From a hunt: the message named the output with OUT_DIR as typed (so the same tree gave other
    # text from another folder); it names it relative to OUT_DIR, as the output column does.
    assert _rows(out)[t1["id"]]["message"].startswith(f"{t1['output']}: is a folder holding 'notes.txt'")
    (out / t1["output"] / "notes.txt").unlink()
    assert runner.invoke(app, _args(src, out, model)).exit_code == 0
    assert _rows(out)[t1["id"]]["status"] == "done"


def test_a_row_never_claims_a_file_outside_the_output_folder(tmp_path: Path, model: Path) -> None:
    from tests.test_prepare import write_head

    src, out = tmp_path / "in", tmp_path / "out"
    head = write_head(src / "head.nii.gz", "mr", seed=1)
    head.write_bytes(head.read_bytes()[:300])
    assert runner.invoke(app, _args(src, out, model)).exit_code == 1
    (tmp_path / "elsewhere.txt").write_text("not mrct's")
    for claimed in ("../elsewhere.txt", str(tmp_path / "elsewhere.txt")):
        content = json.loads((out / "manifest.json").read_text())
        content["series"][0]["output"] = claimed  # a damaged or hand-edited manifest
        (out / "manifest.json").write_text(json.dumps(content))
        assert runner.invoke(app, _args(src, out, model)).exit_code == 1
        assert _rows(out)["head.nii.gz"]["output"] == ""


def test_an_unwritable_output_folder_fails_the_series_before_it_is_translated(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a hunt: a series whose output folder could not be written failed only when written,
    after its whole translation. (Root writes anywhere, so os.access is stood in for.)"""
    from mrct import batch_plan, inference
    from tests.test_prepare import write_head

    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "p" / "head.nii.gz", "mr", seed=1)
    (out / "p").mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(batch_plan.os, "access", lambda p, mode: Path(p) != out / "p" and real(p, mode))
    ran = []
    monkeypatch.setattr(inference.Translator, "run", lambda self, *a: ran.append(a))
    assert runner.invoke(app, _args(src, out, model)).exit_code == 1
    row = _rows(out)["p/head.nii.gz"]
    assert (row["status"], row["message"]) == ("failed", "p: output folder is not writable") and ran == []


def test_a_skipped_row_of_a_whole_zip_is_not_moved_onto_a_series_found_in_it(tmp_path: Path) -> None:
    """Rows ``the.zip`` of a zip of one series (written before mrct listed zips) move onto the
    series' id, to keep their output. From review: the skipped row of a zip then empty (no output
    to keep) moved too, and its series stayed skipped as "a zip holding no image files"."""
    from mrct.batch_plan import adopt_legacy_zip_rows

    write_series(tmp_path / "t1", modality="MR", shape=(48, 48, 8))
    src = tmp_path / "in"
    src.mkdir()
    _zip(tmp_path / "t1", src / "a.zip")
    found = discover(src)
    (series,) = found
    for status, moved in (("skipped", False), ("done", True)):
        previous = {"a.zip": {"id": "a.zip", "status": status, "output": "a_synthetic_ct"}}
        adopt_legacy_zip_rows(previous, found, set())
        assert (series.id in previous) is moved and ("a.zip" in previous) is not moved
