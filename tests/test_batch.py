"""`mrct batch`: a folder tree in, a mirrored tree out, a manifest, resumption and shards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from mrct import api
from mrct.batch import discover, name_outputs, parse_shard
from mrct.cli import app
from mrct.errors import MrctError
from mrct.io import OutputFormat, read_volume
from mrct.io.discover import find_scans
from mrct.volume import Modality
from tests.dicom_factory import write_enhanced_mr, write_series
from tests.external_tools import require
from tests.model_fixtures import write_tiny_model
from tests.test_prepare import write_head

runner = CliRunner()
CROP = ["--crop-mm", "40,-40"]
PATIENT = ("Synthetic^Phantom", "Phantom", "SYN001")  # what tests/dicom_factory.py writes


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MR series (DICOM, NIfTI), a CT series, a note and a truncated NIfTI."""
    root = tmp_path_factory.mktemp("in")
    write_series(root / "p01" / "study" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    write_series(root / "p01" / "study" / "ct", modality="CT", shape=(40, 48, 12))
    head = write_head(root / "p02" / "head.nii.gz", "mr", seed=1)
    (root / "p02" / "notes.txt").write_text("acquired on a Tuesday\n")
    (root / "p03").mkdir()
    (root / "p03" / "broken.nii.gz").write_bytes(head.read_bytes()[:300])
    return root


def _batch(src: Path, out: Path, model: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app, ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), *CROP, "-q", *extra]
    )


def _manifest(out: Path, name: str = "manifest") -> tuple[dict, list[dict[str, str]]]:
    content = json.loads((out / f"{name}.json").read_text())
    with open(out / f"{name}.csv", newline="") as fh:
        return content, list(csv.DictReader(fh))


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_batch_translates_skips_and_records(tmp_path: Path, tree: Path, model: Path) -> None:
    out = tmp_path / "out"
    result = _batch(tree, out, model)
    assert result.exit_code == 1, result.output
    manifest_path = out / "manifest.json"
    assert result.stdout.strip() == f"2 done, 2 skipped, 1 failed; manifest {manifest_path}"
    assert result.stderr.count("\n") == 1 and "1 series failed" in result.stderr

    content, rows = _manifest(out)
    status = {r["input"]: r["status"] for r in content["series"]}
    assert status == {
        "p01/study/t1": "done",
        "p01/study/ct": "skipped",
        "p02/head.nii.gz": "done",
        "p02/notes.txt": "skipped",
        "p03/broken.nii.gz": "failed",
    }
    # CSV = JSON, but for the JSON's stamp of the input files and a done row's slab (for resumes)
    assert [
        {k: str(v) for k, v in r.items() if k not in ("stamp", "slab")} for r in content["series"]
    ] == rows
    assert all(len(r["stamp"]) == 16 for r in content["series"])
    by_input = {r["input"]: r for r in content["series"]}
    assert "already CT" in by_input["p01/study/ct"]["message"]
    assert by_input["p03/broken.nii.gz"]["message"].startswith("p03/broken.nii.gz: ")  # relative paths
    assert by_input["p01/study/t1"]["series_uid"] and by_input["p01/study/t1"]["modality"] == "MR"
    assert content["counts"] == {"done": 2, "skipped": 2, "failed": 1, "pending": 0}
    assert by_input["p02/head.nii.gz"]["message"] == ""  # the slab lies inside the scan

    # The output tree mirrors the input's; DICOM stays DICOM, NIfTI stays NIfTI, on the input grid.
    assert by_input["p01/study/t1"]["output"] == "p01/study/t1_synthetic_ct"
    assert read_volume(out / "p01/study/t1_synthetic_ct").modality is Modality.CT
    assert by_input["p02/head.nii.gz"]["output"] == "p02/head_synthetic_ct.nii.gz"
    for src in ("p01/study/t1", "p02/head.nii.gz"):
        source, synthetic = read_volume(tree / src), read_volume(out / by_input[src]["output"])
        assert synthetic.shape == source.shape and synthetic.array.dtype == np.int16  # HU
        np.testing.assert_allclose(synthetic.affine, source.affine, atol=1e-4)

    text = (out / "manifest.json").read_text() + (out / "manifest.csv").read_text()
    assert not any(p in text for p in PATIENT)
    assert str(tree) not in text  # no absolute paths either
    assert not [p for p in out.rglob("*") if ".mrct-tmp-" in p.name or ".mrct-old-" in p.name]

    # A re-run keeps what is done (outputs untouched) and only retries the failure.
    before = _mtimes(out / "p01") | _mtimes(out / "p02")
    again = _batch(tree, out, model)
    assert again.exit_code == 1
    assert again.stdout.startswith("2 done (2 by an earlier run), 2 skipped, 1 failed")
    assert _mtimes(out / "p01") | _mtimes(out / "p02") == before
    assert {r["input"]: r["status"] for r in _manifest(out)[0]["series"]} == status

    # Without the broken file nothing is left to do, and the exit code is 0.
    fixed = tmp_path / "fixed"
    shutil.copytree(tree, fixed)
    (fixed / "p03" / "broken.nii.gz").unlink()
    shutil.copytree(out, tmp_path / "out2")
    done = _batch(fixed, tmp_path / "out2", model)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("nothing left to do: 2 done (2 by an earlier run), 2 skipped, 0 failed")

    # --to mr into the same folder is refused (its manifest is a batch to CT).
    other = runner.invoke(app, ["batch", str(tree), "-o", str(out), "--to", "mr", "--model", str(model)])
    assert other.exit_code == 4 and "--to CT" in other.stderr


def test_an_interrupted_run_resumes(
    tmp_path: Path, tree: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mrct.inference import Translator

    real, calls = Translator.run, []  # the model's forward, in batch's main thread

    def interrupted_on_the_second(self: Translator, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    out, options = tmp_path / "out", {"model": model, "crop_mm": "40,-40", "progress": False}
    monkeypatch.setattr(Translator, "run", interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        api.batch(tree, out, to="ct", **options)  # type: ignore[arg-type]
    rows = {r["input"]: r for r in _manifest(out)[0]["series"]}  # readable, consistent
    assert rows["p01/study/t1"]["status"] == "done" and rows["p02/head.nii.gz"]["status"] == "failed"
    assert rows["p02/head.nii.gz"]["message"].startswith("interrupted before it finished")
    assert (
        rows["p02/head.nii.gz"]["output"] == "p02/head_synthetic_ct.nii.gz"
    )  # may be replaced by the resume
    assert not (out / "p02").exists()  # nothing half-written
    assert not [p for p in out.rglob("*") if ".mrct-tmp-" in p.name]

    monkeypatch.undo()
    before = _mtimes(out / "p01")
    summary = api.batch(tree, out, to="ct", **options)  # type: ignore[arg-type]
    assert summary.earlier == 1 and summary.attempted == 2 and _mtimes(out / "p01") == before
    assert {r["input"]: r["status"] for r in summary.rows}["p02/head.nii.gz"] == "done"


def test_shards_partition_the_series(tmp_path: Path, tree: Path, model: Path) -> None:
    out = tmp_path / "out"
    ids = []
    for k in (1, 2):  # shards share the output folder; each has its own manifest
        options = {"model": "tiny", "search_dirs": [model.parent], "crop_mm": "40,-40", "workers": 2}
        summary = api.batch(tree, out, to="ct", shard=f"{k}/2", progress=False, **options)  # type: ignore[arg-type]
        assert summary.manifest == out / f"manifest-shard{k}of2.json"
        ids.append({r["id"] for r in _manifest(out, summary.manifest.stem)[1]})
    everything = {s.id for s in discover(tree)}
    assert ids[0] | ids[1] == everything and not ids[0] & ids[1]
    assert (out / "p01/study/t1_synthetic_ct").is_dir() and (out / "p02/head_synthetic_ct.nii.gz").is_file()
    # A whole run afterwards (the job array done) counts the shards' outputs as done.
    whole = api.batch(tree, out, to="ct", progress=False, **options)  # type: ignore[arg-type]
    assert whole.earlier == whole.count("done") > 0 and whole.attempted == whole.count("failed")  # retried
    assert {r["id"] for r in _manifest(out)[1]} == everything

    bad = runner.invoke(app, ["batch", str(tree), "-o", str(out), "--to", "ct", "--shard", "3/2"])
    assert bad.exit_code == 1 and "--shard must be K/N" in bad.stderr and bad.stderr.count("\n") == 1
    for text in ("0/2", "2", "a/b", "1/2/3"):
        with pytest.raises(MrctError):
            parse_shard(text)
    assert parse_shard("2/2") == (2, 2)


def test_shards_and_whole_runs_count_each_others_work(tmp_path: Path, tree: Path, model: Path) -> None:
    """From a hunt: a whole run interrupted at once, then shards that finished everything, then a
    whole run: its old failed rows overrode the shards' done ones and every series failed on "exists;
    pass --overwrite". A shard into a folder a whole run completed failed the same way."""
    from mrct.inference import Translator

    out = tmp_path / "out"
    options = {"model": "tiny", "search_dirs": [model.parent], "crop_mm": "40,-40", "progress": False}

    def stop(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Translator, "run", stop)
        with pytest.raises(KeyboardInterrupt):
            api.batch(tree, out, to="ct", **options)  # type: ignore[arg-type]
    shards = [api.batch(tree, out, to="ct", shard=f"{k}/2", **options) for k in (1, 2)]  # type: ignore[arg-type]
    done = sum(s.count("done") for s in shards)
    whole = api.batch(tree, out, to="ct", **options)  # type: ignore[arg-type]
    assert whole.count("done") == whole.earlier == done == 2
    assert not [r for r in whole.rows if "exists" in r["message"]], whole.rows
    again = api.batch(tree, out, to="ct", shard="1/3", **options)  # type: ignore[arg-type]
    assert again.count("done") == again.earlier and not [r for r in again.rows if "exists" in r["message"]]


def test_a_replaced_input_is_translated_again(tmp_path: Path, model: Path) -> None:
    """From a hunt: a scan replaced at the same path by another subject's kept the first one's
    synthetic CT on every resume, and a CT replaced by an MR stayed skipped for good."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a.nii.gz", "mr", seed=1)
    write_head(src / "b.nii.gz", "ct", seed=1)
    assert _batch(src, out, model).exit_code == 0
    first = (out / "a_synthetic_ct.nii.gz").read_bytes()
    assert {r["input"]: r["status"] for r in _manifest(out)[1]} == {"a.nii.gz": "done", "b.nii.gz": "skipped"}
    write_head(src / "a.nii.gz", "mr", semi_axes=(60.0, 75.0, 70.0), seed=2)
    write_head(src / "b.nii.gz", "mr", seed=3)
    again = _batch(src, out, model)
    assert again.exit_code == 0, again.output
    assert {r["input"]: r["status"] for r in _manifest(out)[1]} == {"a.nii.gz": "done", "b.nii.gz": "done"}
    assert (out / "a_synthetic_ct.nii.gz").read_bytes() != first
    assert "nothing left to do" in _batch(src, out, model).stdout


def test_a_rerun_with_another_slab_retries_the_failed_and_says_what_it_keeps(
    tmp_path: Path, model: Path
) -> None:
    """From a CLI walk: a re-run with another slab said "nothing left to do" and nothing of the
    slab done rows were made with. They are kept (the slab a failed series' message advises is
    how it is retried, review), each done row records its slab, and the run says what it kept;
    the same levels from a markups file are the same slab; --overwrite translates again."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a.nii.gz", "mr", seed=1)
    far = nib.load(write_head(tmp_path / "far.nii.gz", "mr", seed=2))
    shifted = far.affine.copy()
    shifted[2, 3] += 500  # the slab at 40..-40 mm misses it
    nib.save(nib.Nifti1Image(np.asarray(far.dataobj), shifted), src / "b.nii.gz")
    assert _batch(src, out, model).exit_code == 1  # CROP: --crop-mm 40,-40
    first = (out / "a_synthetic_ct.nii.gz").read_bytes()
    rows = {r["input"]: r for r in json.loads((out / "manifest.json").read_text())["series"]}
    assert rows["a.nii.gz"]["slab"] == {"mode": "levels", "superior_mm": 40.0, "inferior_mm": -40.0}
    assert rows["b.nii.gz"]["status"] == "failed" and "misses the scan" in rows["b.nii.gz"]["message"]
    retry = ["batch", str(src), "-o", str(out), "--to", "ct", "--model", str(model), "--crop-mm", "540,460"]
    result = runner.invoke(app, retry)
    assert result.exit_code == 0, result.output
    assert {r["input"]: r["status"] for r in _manifest(out)[1]} == {"a.nii.gz": "done", "b.nii.gz": "done"}
    assert (out / "a_synthetic_ct.nii.gz").read_bytes() == first
    kept = (
        f"WARNING: {out}: 1 series done by an earlier run with another slab are kept (--overwrite "
        "translates them again with this one)"
    )
    assert kept in result.stderr.splitlines(), result.stderr
    markups = tmp_path / "slab.json"
    points = [{"label": "brow", "position": [0, 0, 540]}, {"label": "jaw", "position": [0, 0, 460]}]
    markups.write_text(
        json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": points}]})
    )
    same = runner.invoke(app, [*retry[:-2], "--crop-markups", str(markups)])
    assert same.exit_code == 0 and "nothing left to do" in same.stdout, same.output
    assert kept in same.stderr.splitlines()
    assert _batch(src, out, model, "--overwrite").exit_code == 1  # b misses 40..-40 again
    assert (out / "a_synthetic_ct.nii.gz").read_bytes() == first


def test_a_new_series_failing_from_its_headers_is_not_nothing_left_to_do(tmp_path: Path, model: Path) -> None:
    """From a walkthrough: a series added with a slice cut short fails from its headers alone (never
    read), and the re-run said "nothing left to do: 1 done (1 by an earlier run), 0 skipped, 1 failed"."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a.nii.gz", "mr", seed=1)
    assert _batch(src, out, model).exit_code == 0
    write_series(src / "b", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    cut = sorted((src / "b").iterdir())[5]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    again = _batch(src, out, model)
    assert again.exit_code == 1 and "1 failed" in again.stdout, again.output
    assert not again.stdout.startswith("nothing left to do"), again.stdout


def test_a_first_run_that_only_skips_is_not_nothing_left_to_do(tmp_path: Path, model: Path) -> None:
    """From a hunt: a first run over a folder holding only a DICOM CT (skipped by its header) said
    "nothing left to do: 0 done, 1 skipped"; only a re-run has nothing left."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_series(src / "ct", modality="CT", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    first = _batch(src, out, model)
    assert first.exit_code == 0 and first.stdout.startswith("0 done, 1 skipped, 0 failed"), first.output
    assert _batch(src, out, model).stdout.startswith("nothing left to do: 0 done, 1 skipped")


def test_a_stale_done_row_of_another_run_does_not_undo_a_later_skip(tmp_path: Path, model: Path) -> None:
    """From review: a shard translated an MR; it was replaced by a CT, which a whole run skipped;
    every later whole run took the shard's old done row over its own newer skip and read it again."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_head(src / "a.nii.gz", "mr", seed=1)
    assert _batch(src, out, model, "--shard", "1/1").exit_code == 0
    write_head(src / "a.nii.gz", "ct", seed=2)
    assert _batch(src, out, model).exit_code == 0
    assert [r["status"] for r in _manifest(out)[1]] == ["skipped"]
    settled = _batch(src, out, model)
    assert "nothing left to do: 0 done, 1 skipped" in settled.stdout, settled.output


def test_an_input_replaced_while_it_is_translated_or_behind_a_detached_header_is_done_again(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From review: the stamp was taken when the row was recorded, after the write, so a file
    replaced while its series ran was taken as done; a .mhd's stamp ignored its .raw data."""
    import SimpleITK as sitk

    import mrct.batch

    src, out = tmp_path / "in", tmp_path / "out"
    head = write_head(src / "a.nii.gz", "mr", seed=1)
    real = mrct.batch._write

    def write_then_replace(*args: object) -> float:
        seconds = real(*args)  # type: ignore[arg-type]
        write_head(head, "mr", semi_axes=(60.0, 75.0, 70.0), seed=3)  # arrives while the run is busy
        return seconds

    monkeypatch.setattr(mrct.batch, "_write", write_then_replace)
    assert _batch(src, out, model).exit_code == 0
    monkeypatch.undo()
    assert "nothing left to do" not in _batch(src, out, model).stdout  # translated again

    image = sitk.ReadImage(str(head))
    head.unlink()
    sitk.WriteImage(image, str(src / "b.mhd"))  # b.mhd + b.raw
    assert _batch(src, out, model).exit_code == 0
    raw = src / "b.raw"
    raw.write_bytes(bytes(reversed(raw.read_bytes())))  # same size, other voxels
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert "nothing left to do" not in _batch(src, out, model).stdout


def test_ctrl_c_while_a_write_is_awaited_keeps_that_series(
    tmp_path: Path, tree: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a hunt: a Ctrl-C that reached the main thread while it waited for a write took that
    series off the queue unrecorded ("failed", no output), though its output was complete; every
    later run then refused the output as someone else's."""
    import os
    import signal

    import mrct.batch

    real, calls = mrct.batch._write, []

    def write_then_ctrl_c(*args: object) -> float:
        seconds = real(*args)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 2:  # the last write, which the main thread waits for: Ctrl-C reaches it there
            os.kill(os.getpid(), signal.SIGINT)
        return seconds

    monkeypatch.setattr(mrct.batch, "_write", write_then_ctrl_c)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        api.batch(tree, out, to="ct", model=model, crop_mm="40,-40", progress=False)
    rows = {r["input"]: r for r in _manifest(out)[0]["series"]}
    written = [r for r in rows.values() if r["output"] and (out / r["output"]).exists()]
    assert written and all(r["status"] == "done" for r in written), rows
    monkeypatch.undo()
    resumed = _batch(tree, out, model)
    assert not [r for r in _manifest(out)[1] if "exists" in r["message"]], resumed.output


def test_a_second_ctrl_c_during_the_clean_up_stops_at_once(tmp_path: Path) -> None:
    """From a hunt: a second Ctrl-C while a batch finished its writes aborted the process
    (SIGABRT in native threads, exit 134 and a core dump) instead of exiting 130."""
    script = (
        "import os, signal, time\n"
        "from mrct.cli import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    time.sleep(1.2); os.kill(os.getpid(), signal.SIGINT); time.sleep(30)  # clean-up, stopped\n"
        "print('not reached')\n"
    )
    import sys

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert proc.stderr == "error: interrupted again; stopped at once (the next run removes temporary files)\n"
    # From review: a second SIGTERM raised again inside the clean-up and printed its line twice.
    twice = script.replace("SIGINT", "SIGTERM").replace("except KeyboardInterrupt", "except SystemExit")
    proc = subprocess.run([sys.executable, "-c", twice], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and "not reached" not in proc.stdout
    assert proc.stderr.splitlines() == [
        "error: terminated (SIGTERM); unfinished outputs are removed",
        "error: interrupted again; stopped at once (the next run removes temporary files)",
    ]


def test_a_signal_sent_twice_at_once_is_one_request(tmp_path: Path) -> None:
    """From a hunt: GNU ``timeout`` sends its signal to mrct and again to mrct's process group; when
    the first was handled in between, the second stopped the batch at once, its rows left pending
    (1 run in 8 of ``timeout -s INT 9 mrct batch``). A second signal within a second is the same."""
    import sys

    script = (
        "import os, signal, time\n"
        "from mrct.cli import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
        "except SystemExit:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)  # the clean-up, not stopped\n"
        "    print('cleaned up'); raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and proc.stdout == "cleaned up\n"
    assert proc.stderr == "error: terminated (SIGTERM); unfinished outputs are removed\n"


def test_sigterm_under_a_progress_bar_is_its_own_last_line() -> None:
    """``kill`` during ``mrct batch``: the line was glued to the bar (``1/3 [00:09<00:18]error:
    terminated``); with the bar ended first, closing it while unwinding drew it again below."""
    script = (
        "import os, signal, sys, time\n"
        "from tqdm import tqdm\n"
        "from mrct.cli import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "with tqdm(total=3, file=sys.stderr, unit='series', mininterval=0) as bar:\n"
        "    bar.update()\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
        "    finally:\n"
        "        if AGAIN: time.sleep(1.2); os.kill(os.getpid(), signal.SIGINT); time.sleep(30)  # clean-up\n"
    )
    import sys

    proc = subprocess.run([sys.executable, "-c", "AGAIN = 0\n" + script], capture_output=True, text=True)
    assert proc.returncode == 143
    *bar, last = proc.stderr.split("\n")[:-1]
    assert last == "error: terminated (SIGTERM); unfinished outputs are removed", proc.stderr
    assert "1/3" in bar[-1] and proc.stderr.endswith("removed\n"), proc.stderr
    # From review: the bar, disabled but still listed, put a blank line before a second signal's.
    proc = subprocess.run([sys.executable, "-c", "AGAIN = 1\n" + script], capture_output=True, text=True)
    assert proc.returncode == 130
    assert proc.stderr.split("\n")[-3:] == [
        "error: terminated (SIGTERM); unfinished outputs are removed",
        "error: interrupted again; stopped at once (the next run removes temporary files)",
        "",
    ], proc.stderr


def _set(files: tuple[Path, ...], **values: object) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_one_uid_is_split_like_dcm2niix(tmp_path: Path) -> None:
    """Echoes and repeated acquisitions are split; per-slice acquisition numbers (sequential CT) are not."""
    folder = tmp_path / "in" / "study"
    first = write_series(folder, modality="MR", shape=(8, 8, 5), series_number=4)
    second = write_series(
        folder, modality="MR", shape=(8, 8, 5), series_number=4, series_uid=first.series_uid
    )
    _set(second.files, EchoNumbers=2)
    third = write_series(folder, modality="MR", shape=(8, 8, 5), series_number=4, series_uid=first.series_uid)
    _set(third.files, EchoNumbers=2, AcquisitionNumber=2)
    ct = write_series(tmp_path / "in" / "ct", modality="CT", shape=(8, 8, 6), series_number=2)
    for n, f in enumerate(ct.files):
        _set((f,), AcquisitionNumber=n + 1)
    (tmp_path / "in" / "cut.dcm").write_bytes(ct.files[0].read_bytes()[:700])  # a failed row
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")  # not DICOM at all: a skipped row

    found = name_outputs(discover(tmp_path / "in"), Modality.CT, OutputFormat.NIFTI)
    outputs = sorted(s.output for s in found if s.output)
    assert outputs == [
        "ct_synthetic_ct.nii.gz",
        "study_s4_e1_synthetic_ct.nii.gz",
        "study_s4_e2_a1_synthetic_ct.nii.gz",
        "study_s4_e2_a2_synthetic_ct.nii.gz",
    ]
    stacks = {s.output: s.stack for s in found if s.stack}
    assert [len(stacks[o].files) for o in outputs] == [6, 5, 5, 5]  # type: ignore[union-attr]
    assert [s.error for s in found if s.input == "cut.dcm"] == ["incomplete DICOM image file (truncated?)"]
    assert [s.skip for s in found if s.input == "empty.dcm"] == [
        "not an image file (DICOM, NIfTI, NRRD, MHA or zip)"
    ]
    # The single-series reader splits the same way (it refused "slices share a position"), and
    # --series names the parts as batch does; the plain UID asks for a choice.
    uid = first.series_uid
    assert read_volume(folder, series=f"{uid}#e2_a2").shape == (8, 8, 5)
    from mrct.io.dicom_split import split_series

    def echo(time: str) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        ds.EchoTime = time  # no EchoNumbers: the time says which echo
        return ds

    members = [(tmp_path / f"{n}", echo(t)) for n, t in enumerate(["4.6", "4.60", "10", "2.0"])]
    assert [(part, len(group)) for part, group in split_series(members)] == [
        ("e2", 1),
        ("e4.6", 2),
        ("e10", 1),
    ]
    with pytest.raises(MrctError, match=r"series '[0-9.]+' holds 3 stacks, choose one with --series"):
        read_volume(folder, series=uid)


def test_an_enhanced_file_and_classic_slices_of_one_uid_are_two_volumes(tmp_path: Path) -> None:
    """A scanner's enhanced multi-frame export beside its classic one, under one SeriesInstanceUID:
    dcm2niix converts two volumes; mrct read both as one series and refused 24 slices on 12
    positions ("several volumes")."""
    folder = tmp_path / "in" / "t1"
    classic = write_series(folder, modality="MR", shape=(40, 48, 12), series_number=7)
    enhanced = write_enhanced_mr(folder / "enhanced.dcm", shape=(40, 48, 12))
    _set(enhanced.files, SeriesInstanceUID=classic.series_uid, SeriesNumber=7)

    found = [s for s in discover(tmp_path / "in") if s.stack]
    assert [(s.part, len(s.stack.files)) for s in found] == [("1", 12), ("2", 1)]  # type: ignore[union-attr]
    uid = classic.series_uid
    one, two = (read_volume(folder, series=f"{uid}#{part}") for part in ("1", "2"))
    assert one.shape == two.shape == (48, 40, 12)
    np.testing.assert_allclose(one.affine, two.affine, atol=1e-4)
    # Judged by structure, not frame count: a classic slice claiming two frames is not split off
    # (it would be skipped as a 1-file "localiser", the series translated a slice short).
    stray = write_series(tmp_path / "in2" / "t1", modality="MR", shape=(40, 48, 12))
    _set(stray.files[-1:], NumberOfFrames=2)
    assert [len(s.stack.files) for s in discover(tmp_path / "in2") if s.stack] == [12]  # type: ignore[union-attr]
    require("dcm2niix")
    cmd = ["dcm2niix", "-b", "n", "-o", str(tmp_path), "-f", "%j", str(folder)]
    log = subprocess.run(cmd, capture_output=True, text=True)
    assert log.returncode == 0 and len(list(tmp_path.glob("*.nii"))) == 2, log.stdout


@pytest.mark.parametrize("marked_by", ["ImageType", "GE private ImageType"])
def test_magnitude_and_phase_in_one_series_are_two_stacks_and_the_phase_is_not_translated(
    tmp_path: Path, marked_by: str, model: Path
) -> None:
    """From a hunt: Philips and GE store phase images in the magnitude's series, at the same
    positions; mrct refused the series ("slices share positions"), info and batch alike, where
    dcm2niix writes the magnitude and a "_ph" volume. A phase series of its own (Siemens) was
    translated to CT in a batch: noise, recorded as done."""
    folder = tmp_path / "in" / "swi"
    mag = write_series(folder, modality="MR", shape=(40, 48, 12), series_number=5)
    phase = write_series(
        folder, modality="MR", shape=(40, 48, 12), series_number=5, series_uid=mag.series_uid
    )
    _set(mag.files, ImageType=["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"])
    if marked_by == "ImageType":
        _set(phase.files, ImageType=["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"])
    else:
        for f in phase.files:
            ds = pydicom.dcmread(f)
            ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
            ds.add_new(0x0043102F, "SS", 1)
            ds.save_as(f)
    alone = write_series(tmp_path / "in" / "pha", modality="MR", shape=(40, 48, 12), series_number=6)
    _set(alone.files, ImageType=["ORIGINAL", "PRIMARY", "P", "ND"])

    found = [s for s in discover(tmp_path / "in") if s.stack]
    assert sorted((s.input, s.part, len(s.stack.files), s.skip) for s in found) == [  # type: ignore[union-attr]
        ("pha", "", 12, "a phase image (by its header); only magnitude images are translated"),
        ("swi", "", 12, None),  # the magnitude keeps the series' own name
        ("swi", "ph", 12, "a phase image (by its header); only magnitude images are translated"),
    ]
    uid = mag.series_uid
    (tmp_path / "mag").mkdir()
    for f in mag.files:
        shutil.copy(f, tmp_path / "mag" / f.name)
    np.testing.assert_array_equal(read_volume(folder, series=uid).array, read_volume(tmp_path / "mag").array)
    with pytest.raises(MrctError, match="2 series found, choose one"):
        read_volume(folder)
    import mrct
    from mrct.errors import ModalityError

    with pytest.raises(ModalityError, match=r"a phase image .*only magnitude images are translated"):
        mrct.translate(alone.folder, to="ct", model=model)  # as batch skips it
    with pytest.raises(ModalityError, match=r"a phase image"):
        mrct.translate(folder, to="ct", model=model, series=f"{uid}#ph")
    # From review: prepare took the phase stack as a training MR; it skips it as batch does.
    assert [f.series for f in find_scans([tmp_path / "in"])] == [uid]
    # Only an MR's: ImageType ...\AXIAL\R of a CT, or a private element of another maker, is none.
    from mrct.io.dicom_split import complex_part

    ct = pydicom.Dataset()
    ct.Modality, ct.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL", "R"]
    other = pydicom.Dataset()
    other.Modality = "MR"
    other.add_new(0x00430010, "LO", "ACME_PRIVATE")
    other.add_new(0x0043102F, "SS", 1)
    assert complex_part(ct) == complex_part(other) == ""


def test_a_phase_arriving_after_its_magnitude_leaves_the_done_series_as_it_was(
    tmp_path: Path, model: Path
) -> None:
    """From a batch hunt: phase images of the series (from a PACS, later) renamed the done
    magnitude to UID#mag: it was translated again into T1_2_synthetic_ct, its row listed as
    absent. The magnitude keeps its name; the phase is one new skipped row."""
    src, out = tmp_path / "in", tmp_path / "out"
    mag = write_series(src / "study" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    assert _batch(src, out, model).exit_code == 0
    before = _mtimes(out / "study")
    phase = write_series(
        src / "study" / "t1",
        modality="MR",
        shape=(48, 48, 36),
        pixel_spacing=(4.0, 4.0),
        series_uid=mag.series_uid,
    )
    _set(phase.files, ImageType=["ORIGINAL", "PRIMARY", "P", "ND"])
    again = _batch(src, out, model)
    assert again.exit_code == 0 and "nothing left to do" in again.stdout, again.output
    content, rows = _manifest(out)
    assert [(r["id"].split("#", 1)[1], r["output"], r["status"]) for r in rows] == [
        (mag.series_uid, "study/t1_synthetic_ct", "done"),
        (f"{mag.series_uid}#ph", "", "skipped"),
    ]
    assert content["absent"] == [] and _mtimes(out / "study") == before


def test_a_copy_added_elsewhere_leaves_the_done_series_where_it_was(tmp_path: Path, model: Path) -> None:
    """From a batch hunt: a copy of a done study added in a folder that sorts first (copy_a beside
    copy_b) moved the series there: translated again into a second output, its row "absent"."""
    src, out = tmp_path / "in", tmp_path / "out"
    first = write_series(
        src / "pat" / "copy_b" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0)
    )
    assert _batch(src, out, model).exit_code == 0
    before = _mtimes(out / "pat")
    shutil.copytree(first.folder, src / "pat" / "copy_a" / "t1")
    again = _batch(src, out, model)
    assert again.exit_code == 0 and "nothing left to do" in again.stdout, again.output
    content, rows = _manifest(out)
    assert [(r["input"], r["output"], r["status"]) for r in rows] == [
        ("pat/copy_b/t1", "pat/copy_b/t1_synthetic_ct", "done")
    ]
    assert content["absent"] == [] and _mtimes(out / "pat") == before


def test_a_truncated_lone_slice_fails_whatever_its_modality(tmp_path: Path, model: Path) -> None:
    """A file cut inside its pixel data is a failed row, as dcm2niix reports it ("File not large
    enough to store image data", a non-zero exit); random bytes stay a skipped non-image, as
    dcm2niix ignores them. A one-slice stack is never read, so the headers must tell."""
    src = write_series(tmp_path / "src", modality="CT", shape=(8, 8, 6))
    tree = tmp_path / "in"
    (tree / "lone").mkdir(parents=True)
    whole = src.files[0].read_bytes()
    (tree / "lone" / "cut.dcm").write_bytes(whole[:-50])
    (tree / "lone" / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    write_series(tree / "mr", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))

    out = tmp_path / "out"
    result = _batch(tree, out, model)
    assert result.exit_code == 1, result.output
    rows = {r["input"]: r for r in _manifest(out)[1]}
    assert rows["mr"]["status"] == "done"
    assert rows["lone/noise.dcm"]["status"] == "skipped"
    cut = rows["lone/cut.dcm"]  # a CT under --to ct, but damaged: failed, not "already CT"
    assert cut["status"] == "failed"
    assert cut["message"] == (
        f"lone/cut.dcm: truncated DICOM image file ({len(whole) - 50} bytes; its pixel data end at byte "
        f"{len(whole)})"
    )

    require("dcm2niix")
    conv = tmp_path / "dcm2niix"
    conv.mkdir()
    proc = subprocess.run(["dcm2niix", "-o", str(conv), str(tree / "lone")], capture_output=True, text=True)
    assert proc.returncode != 0 and "cut.dcm" in proc.stdout + proc.stderr


def test_an_image_cut_before_its_pixel_data_fails(tmp_path: Path, model: Path) -> None:
    """A CT image file whose copy stopped just before its pixel data: the header is whole, so
    it groups as a one-image stack, but it is damaged, not a localiser: a failed row."""
    src = write_series(tmp_path / "src", modality="CT", shape=(8, 8, 6))
    pixels = pydicom.dcmread(src.files[0], defer_size=10).get_item(0x7FE00010, keep_deferred=True)
    tree = tmp_path / "in"
    (tree / "lone").mkdir(parents=True)
    (tree / "lone" / "headonly.dcm").write_bytes(src.files[0].read_bytes()[: pixels.value_tell - 12])
    write_series(tree / "mr", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    out = tmp_path / "out"
    result = _batch(tree, out, model)
    assert result.exit_code == 1, result.output
    rows = {r["input"]: r for r in _manifest(out)[1]}
    assert rows["mr"]["status"] == "done"
    row = next(r for k, r in rows.items() if k.startswith("lone"))
    assert row["status"] == "failed"
    assert row["message"] == "lone/headonly.dcm: DICOM file has no pixel data (truncated, or not an image)"


def test_damage_fails_a_series_of_either_modality_and_a_short_cut_fails_its_folders_series(
    tmp_path: Path, model: Path
) -> None:
    """A CT series (the other side of --to ct, never read) with a slice cut short is a failed row;
    an MR image cut before its header names its series fails the series in its folder (read
    without it, the grid would lose a slice); "DICM" followed by garbage is unreadable, not a
    non-image."""
    tree = tmp_path / "in"
    ct = write_series(tree / "ct", modality="CT", shape=(16, 16, 24))
    whole = ct.files[3].read_bytes()
    ct.files[3].write_bytes(whole[: len(whole) // 2])
    mr = write_series(tree / "mr", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    mr.files[-1].write_bytes(mr.files[-1].read_bytes()[:300])  # the preamble and little more
    (tree / "junk").mkdir()
    (tree / "junk" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(1).bytes(900))
    out = tmp_path / "out"
    result = _batch(tree, out, model)
    assert result.exit_code == 1, result.output
    rows = _manifest(out)[1]
    by_input: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_input.setdefault(r["input"], []).append(r)
    (ct_row,) = by_input["ct"]
    assert ct_row["status"] == "failed" and "truncated" in ct_row["message"]
    (mr_row,) = by_input["mr"]
    assert mr_row["status"] == "failed" and "in this series' folder (one of its slices?)" in mr_row["message"]
    assert not (out / "mr_synthetic_ct").exists()
    (junk,) = by_input["junk/x.dcm"]
    assert junk["status"] == "failed" and junk["message"].startswith("unreadable DICOM file")


def test_a_manifest_without_a_model_is_a_one_line_error(tmp_path: Path, tree: Path, model: Path) -> None:
    """A hand-edited manifest with ``"model": null`` is refused as unreadable, not a crash."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps({"format": "mrct-batch", "to": "CT", "model": None, "series": []})
    )
    result = _batch(tree, out, model)
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {out / 'manifest.json'}: not a readable batch manifest (no model recorded); "
        "use a new output folder"
    )


def test_ctrl_c_says_how_to_resume(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "batch", interrupted)
    result = runner.invoke(app, ["batch", str(tree), "-o", str(tmp_path / "out"), "--to", "ct"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "run the same command again to resume" in result.output


def test_copies_of_a_series_count_once_and_a_cut_copy_fails_alone(tmp_path: Path, model: Path) -> None:
    """A series copied twice into a tree is one series, as dcm2niix removes duplicate images
    (same SOPInstanceUID: "DUPLICATES REMOVED"); a copy of one of its files cut short is a failed
    row of its own, and the series is still read, from the whole copies."""
    tree = tmp_path / "in"
    src = write_series(tree / "a" / "mr", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    shutil.copytree(tree / "a" / "mr", tree / "b" / "mr")
    whole = src.files[3].read_bytes()
    (tree / "cut.dcm").write_bytes(whole[:-50])

    out = tmp_path / "out"
    result = _batch(tree, out, model)
    assert result.exit_code == 1, result.output  # the cut file failed
    rows = _manifest(out)[1]
    assert [(r["input"], r["status"]) for r in rows] == [("a/mr", "done"), ("cut.dcm", "failed")]
    assert rows[1]["message"] == (
        f"cut.dcm: truncated DICOM image file ({len(whole) - 50} bytes; its pixel data end at byte "
        f"{len(whole)}); its series was read from a whole copy of this image"
    )
    alone = read_volume(tree / "a" / "mr")
    assert read_volume(tree).shape == alone.shape  # read_volume counts each image once too
    translated = read_volume(out / rows[0]["output"])
    assert translated.shape == alone.shape
    np.testing.assert_allclose(translated.affine, alone.affine, atol=1e-4)

    require("dcm2niix")
    conv = tmp_path / "dcm2niix"
    conv.mkdir()
    shutil.copytree(tree / "a", tmp_path / "copies" / "a")
    shutil.copytree(tree / "b", tmp_path / "copies" / "b")
    proc = subprocess.run(
        ["dcm2niix", "-o", str(conv), str(tmp_path / "copies")], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "DUPLICATES REMOVED" in proc.stdout, proc.stdout
    converted = [read_volume(f) for f in conv.glob("*.nii")]
    assert [v.shape for v in converted] == [alone.shape]


def test_a_done_row_notes_a_slab_partly_outside_the_scan(tmp_path: Path, model: Path) -> None:
    """What mrct translate warns about is kept in the manifest for a batch run overnight."""
    from mrct.preprocessing.grid import world_extent

    head = write_head(tmp_path / "in" / "head.nii.gz", "mr", seed=1)
    volume = read_volume(head)
    top = float(world_extent(volume.shape, volume.affine)[1][2])
    out = tmp_path / "out"
    levels = f"{top + 8:g},{top - 60:g}"
    args = ["batch", str(tmp_path / "in"), "-o", str(out), "--to", "ct", "--model", str(model), "-q"]
    result = runner.invoke(app, [*args, "--crop-mm", levels])
    assert result.exit_code == 0, result.output
    (row,) = _manifest(out)[0]["series"]
    assert row["status"] == "done"
    assert row["message"] == "8.0 mm of the brow-to-jaw slab lies outside the scan"


def test_the_output_folder_may_hold_the_input_but_not_be_it(tmp_path: Path, model: Path) -> None:
    """``-o`` the parent of IN translates IN's series (it was walked, not left out as output);
    ``-o IN`` is refused before anything is written into IN."""
    src = tmp_path / "in"
    write_series(src / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    before = sorted(src.rglob("*"))
    same = _batch(src, src, model)
    assert same.exit_code == 4 and "is the input folder" in same.stderr and same.stderr.count("\n") == 1
    assert sorted(src.rglob("*")) == before

    outer = _batch(src, tmp_path, model)
    assert outer.exit_code == 0, outer.output
    assert outer.stdout.startswith("1 done, 0 skipped, 0 failed")
    assert (tmp_path / "t1_synthetic_ct" / "IM_0001.dcm").exists() and sorted(src.rglob("*")) == before
    again = _batch(src, tmp_path, model)
    assert again.exit_code == 0 and again.stdout.startswith(
        "nothing left to do: 1 done (1 by an earlier run)"
    )

    # OUT inside IN is left out of the walk: its outputs are not taken for outputs inside IN.
    inner = _batch(src, src / "out", model)
    assert inner.exit_code == 0 and inner.stdout.startswith("1 done, 0 skipped, 0 failed"), inner.output
    assert (src / "out" / "t1_synthetic_ct" / "IM_0001.dcm").exists()
    again = _batch(src, src / "out", model)
    assert again.exit_code == 0 and "1 done (1 by an earlier run)" in again.stdout


def test_an_existing_folder_of_inputs_inside_in_is_refused_as_out(tmp_path: Path, model: Path) -> None:
    """From a hunt: OUT inside IN is left out of the walk, so ``-o IN/p01`` silently dropped the
    series under p01, and ``-o IN/p01/t1`` wrote the manifest among that series' slices. An
    existing folder inside IN is taken as OUT only when empty or made by a batch."""
    src = tmp_path / "in"
    write_series(src / "p01" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    for out in (src / "p01", src / "p01" / "t1"):
        refused = _batch(src, out, model)
        assert refused.exit_code == 4 and refused.stderr.count("\n") == 1, refused.output
        assert "lies inside the input folder and holds files no batch wrote" in refused.stderr
        assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    elsewhere = tmp_path / "elsewhere"  # a folder linked into IN is walked: its series too
    write_series(elsewhere / "t2", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    linked = _batch(src, src / "linked", model)
    assert linked.exit_code == 4 and "holds files no batch wrote" in linked.stderr, linked.output
    (src / "linked").unlink()
    (src / "out").mkdir()
    (src / "out" / ".DS_Store").write_bytes(b"")  # empty but for desktop litter: taken
    made = _batch(src, src / "out", model)
    assert made.exit_code == 0 and made.stdout.startswith("1 done"), made.output


def test_a_batch_never_writes_into_its_input_or_replaces_a_users_folder(tmp_path: Path, model: Path) -> None:
    """OUT holding IN could mirror a series into IN (IN = OUT/in with a folder in/in); an output
    folder holding the user's files is kept even with --overwrite. Both are failed rows, found
    before any translation, and nothing under IN changes."""
    src = tmp_path / "in"
    write_series(src / "in" / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    write_series(src / "t2", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    mine = tmp_path / "t2_synthetic_ct"
    mine.mkdir()
    (mine / "plan.txt").write_text("mine\n")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    result = _batch(src, tmp_path, model, "--overwrite")
    assert result.exit_code == 1 and "0 done, 0 skipped, 2 failed" in result.stdout, result.output
    rows = {r["input"]: r for r in _manifest(tmp_path)[0]["series"]}
    assert rows["in/t1"]["status"] == "failed" and "inside the input folder" in rows["in/t1"]["message"]
    assert rows["t2"]["status"] == "failed" and "'plan.txt'" in rows["t2"]["message"]
    assert rows["t2"]["seconds"] == 0.0  # refused before the model ran
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    assert [p.name for p in mine.iterdir()] == ["plan.txt"]


def test_a_folder_name_that_is_not_utf8_is_translated_and_recorded(tmp_path: Path, model: Path) -> None:
    """Old CDs and archives carry Latin-1 names; the CSV manifest once failed to encode them (exit 70)."""
    import os

    src = tmp_path / "in"
    name = os.fsdecode(b"pat\xe9ient")  # not UTF-8: Python names the byte with a surrogate
    try:
        write_series(src / name / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    result = _batch(src, out, model)
    assert result.exit_code == 0 and result.stdout.startswith("1 done"), result.output
    csv_text = (out / "manifest.csv").read_bytes().decode("utf-8")  # valid UTF-8
    assert "pat\\xe9ient/t1" in csv_text
    assert _manifest(out)[0]["series"][0]["input"] == f"{name}/t1"  # the JSON keeps the exact name
    assert read_volume(out / _manifest(out)[0]["series"][0]["output"]).modality is Modality.CT
    again = _batch(src, out, model)
    assert again.exit_code == 0 and "1 done (1 by an earlier run)" in again.stdout


def test_long_names_and_earlier_outputs_in_the_input(tmp_path: Path, tree: Path, model: Path) -> None:
    """A 247-byte file name gets an output name that fits (it used to abort the whole batch);
    an earlier run's outputs copied into the input tree, NIfTI by name and DICOM by their
    "mrct synthetic" SeriesDescription, are skipped, not translated again."""
    first = tmp_path / "first"
    assert _batch(tree, first, model).exit_code == 1  # the tree holds a broken file
    src = tmp_path / "in"
    shutil.copytree(tree / "p01", src / "p01")
    shutil.copy(tree / "p02" / "head.nii.gz", src / ("a" * 240 + ".nii.gz"))
    shutil.copytree(first / "p02", src / "earlier" / "p02")  # head_synthetic_ct.nii.gz
    shutil.copytree(first / "p01" / "study" / "t1_synthetic_ct", src / "earlier" / "t1_synthetic_ct")
    # An output given a name of the user's (translate -o sct.nii.gz) is known by its descrip.
    shutil.copy(first / "p02" / "head_synthetic_ct.nii.gz", src / "earlier" / "sct.nii.gz")

    out = tmp_path / "out"
    result = _batch(src, out, model)
    assert result.exit_code == 0, result.output
    rows = {r["input"]: r for r in _manifest(out)[1]}
    long_row = rows["a" * 240 + ".nii.gz"]
    assert long_row["status"] == "done" and len(long_row["output"].encode()) <= 200
    assert read_volume(out / long_row["output"]).array.dtype == np.int16  # HU
    for earlier in ("earlier/p02/head_synthetic_ct.nii.gz", "earlier/t1_synthetic_ct", "earlier/sct.nii.gz"):
        assert rows[earlier]["status"] == "skipped", rows[earlier]
        assert rows[earlier]["message"].startswith("an mrct synthetic image (an earlier output)")
    assert not (out / "earlier").exists()


def test_a_series_added_before_a_resume_does_not_rename_earlier_outputs(tmp_path: Path, model: Path) -> None:
    """A folder with one series names its output after the folder; once a second series is
    added, fresh names would carry _s<N>. The series done by the first run keeps its output."""
    src = tmp_path / "in"
    write_series(src / "study", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0), series_number=3)
    out = tmp_path / "out"
    assert _batch(src, out, model).exit_code == 0
    assert [r["output"] for r in _manifest(out)[1]] == ["study_synthetic_ct"]
    write_series(src / "study", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0), series_number=5)
    result = _batch(src, out, model)
    assert result.exit_code == 0, result.output
    rows = _manifest(out)[1]
    assert sorted(r["output"] for r in rows) == ["study_s5_synthetic_ct", "study_synthetic_ct"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("manifest", "."))) == [
        "study_s5_synthetic_ct",
        "study_synthetic_ct",
    ]


def test_manifest_messages_cut_the_input_folder_only_where_a_path_starts(tmp_path: Path) -> None:
    """An input folder given relatively ("in") must not be cut out of the middle of another
    path in a message ("/work/main/in/..."), only where a path starts."""
    from mrct.batch_folder import Manifest
    from mrct.batch_series import Series

    manifest = Manifest(tmp_path / "manifest.json", {"to": "CT"}, False, Path("in"))
    s = Series("p01#1", "p01", Path("in/p01"))
    manifest.set(s, "failed", message="in/p01/a.dcm: cut short; a copy is at /work/main/in/p01/a.dcm")
    assert manifest.rows["p01#1"]["message"] == "p01/a.dcm: cut short; a copy is at /work/main/in/p01/a.dcm"


@pytest.mark.parametrize("shards", [1, 2])
def test_an_output_inside_another_series_dicom_output_fails_alone(
    tmp_path: Path, model: Path, shards: int
) -> None:
    """IN/study/*.dcm writes the folder OUT/study_synthetic_ct/; a scan in an input folder that
    happens to be named study_synthetic_ct would be written inside it (and read back as part of
    that series): it fails with a message, the DICOM series is translated. Shards, which each
    translate a part, see the clash too."""
    src = tmp_path / "in"
    write_series(src / "study", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    write_head(src / "study_synthetic_ct" / "head.nii.gz", "mr", seed=1)
    out = tmp_path / "out"
    rows, codes = {}, []
    for k in range(1, shards + 1):
        result = _batch(src, out, model, *(["--shard", f"{k}/{shards}"] if shards > 1 else []))
        name = f"manifest-shard{k}of{shards}" if shards > 1 else "manifest"
        rows |= {r["input"]: r for r in _manifest(out, name)[1]}
        codes.append(result.exit_code)
    assert sorted(codes) == [0] * (shards - 1) + [1], codes
    assert rows["study"]["status"] == "done"
    nested = rows["study_synthetic_ct/head.nii.gz"]
    assert nested["status"] == "failed"
    assert nested["message"].startswith("its output would lie inside the DICOM output study_synthetic_ct")
    assert sorted(p.name for p in (out / "study_synthetic_ct").iterdir()) == sorted(
        p.name for p in (out / "study_synthetic_ct").glob("*.dcm")
    )


def test_a_done_row_without_an_output_does_not_crash_a_resume(tmp_path: Path, model: Path) -> None:
    """A damaged manifest whose done row lost its output (null) is not a crash (exit 70): the
    series' output is there and not recorded as ours, so it fails with "exists"."""
    src = tmp_path / "in"
    write_series(src / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    out = tmp_path / "out"
    assert _batch(src, out, model).exit_code == 0
    content = json.loads((out / "manifest.json").read_text())
    content["series"][0]["output"] = None
    (out / "manifest.json").write_text(json.dumps(content))
    result = _batch(src, out, model)
    assert result.exit_code == 1, result.output
    assert "t1_synthetic_ct exists; pass --overwrite" in _manifest(out)[1][0]["message"]


def test_an_empty_or_missing_input_is_not_found_and_leaves_no_output(tmp_path: Path, model: Path) -> None:
    (tmp_path / "empty" / "patient" / "study").mkdir(parents=True)  # folders, no files
    result = _batch(tmp_path / "empty", tmp_path / "out", model)
    assert result.exit_code == 2, result.output
    assert "no DICOM series or NIfTI/NRRD/MHA scans in this folder or below" in result.stderr
    assert not (tmp_path / "out").exists()  # made for the run, removed when it failed at once
    missing = _batch(tmp_path / "nope", tmp_path / "out", model)
    assert missing.exit_code == 2 and "nope: no such folder" in missing.stderr
    (tmp_path / "kept").mkdir()
    assert _batch(tmp_path / "empty", tmp_path / "kept", model).exit_code == 2
    assert (tmp_path / "kept").is_dir()  # the user's folder stays
    # A shard leaves the folder: another shard may be holding its locks there.
    assert _batch(tmp_path / "empty", tmp_path / "shards", model, "--shard", "1/2").exit_code == 2
    assert (tmp_path / "shards").is_dir()


def test_a_series_that_grew_since_its_output_is_translated_again(tmp_path: Path, model: Path) -> None:
    """A series still arriving from a PACS when the batch ran: the resume sees more files than
    its done row was made from and translates it again, onto the whole grid."""
    tree, parked = tmp_path / "in", tmp_path / "parked"
    mr = write_series(tree / "mr", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    parked.mkdir()
    last = mr.files[-1]
    shutil.move(last, parked / last.name)  # the last slice has not arrived yet
    out = tmp_path / "out"
    assert _batch(tree, out, model, "--format", "nifti").exit_code == 0
    assert read_volume(out / "mr_synthetic_ct.nii.gz").shape[2] == 35
    shutil.move(parked / last.name, last)
    again = _batch(tree, out, model, "--format", "nifti")
    assert again.exit_code == 0, again.output
    assert read_volume(out / "mr_synthetic_ct.nii.gz").shape[2] == 36
    (row,) = _manifest(out)[1]
    assert row["status"] == "done"
    assert json.loads((out / "manifest.json").read_text())["series"][0]["files"] == 36
    settled = _batch(tree, out, model, "--format", "nifti")
    assert "nothing left to do: 1 done (1 by an earlier run)" in settled.stdout


def _rewrite(files: tuple[Path, ...], edit, **save) -> None:  # type: ignore[no-untyped-def]
    for f in files:
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f, **save)


def test_header_variants_that_readers_accept_are_translated_one_bad_value_fails_alone(
    tmp_path: Path, model: Path
) -> None:
    """Found by a hunt over PACS-style variants of real series: each crashed the batch or failed
    a series that mrct translate and dcm2niix read."""
    src = tmp_path / "in"
    mr = {"modality": "MR", "shape": (48, 48, 36), "pixel_spacing": (4.0, 4.0)}
    deflated = write_series(src / "deflated", **mr)  # was "truncated": the inflated offset vs the file size

    def deflate(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian

    _rewrite(deflated.files, deflate, enforce_file_format=True)
    no_uid = write_series(src / "no_uid", **mr)  # was one "incomplete" row per file
    _rewrite(no_uid.files, lambda ds: ds.pop("SeriesInstanceUID"))
    other = write_series(src / "no_uid_2", **{**mr, "centre": (40.0, 0.0, 0.0)})  # never merged with it
    _rewrite(other.files, lambda ds: ds.pop("SeriesInstanceUID"))
    no_modality = write_series(src / "no_modality", **mr)  # was skipped: "cannot tell CT from MR"
    _rewrite(no_modality.files, lambda ds: ds.pop("Modality"))
    frames = write_series(src / "frames", **mr)  # was exit 70 and no manifest: int('abc')
    _rewrite(frames.files[:1], lambda ds: setattr(ds, "NumberOfFrames", 1))
    one = frames.files[0].read_bytes()
    element = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, 2 bytes, explicit VR little endian
    assert one.count(element + b"1 ") == 1
    frames.files[0].write_bytes(one.replace(element + b"1 ", element + b"ab"))
    result = _batch(src, tmp_path / "out", model)
    _, rows = _manifest(tmp_path / "out")
    status = {r["input"]: r["status"] for r in rows}
    assert status == {
        "deflated": "done",
        "no_uid": "done",
        "no_uid_2": "done",
        "no_modality": "done",
        "frames": "failed",
    }, rows
    two = read_volume(src / "no_uid_2")  # the reader groups them by folder too
    assert two.shape == read_volume(src / "no_uid").shape
    from mrct.io.dicom_scan import find_series

    assert sorted(len(s.files) for s in find_series(src)) == sorted([36, 36, 36, 36, 36])

    uidless = [f for f in find_scans([src]) if f.path.name.startswith("no_uid")]
    assert len(uidless) == 2  # what prepare finds, and reads by (path, series): it could not
    assert all(read_volume(f.path, series=f.series).shape == two.shape for f in uidless)
    assert result.exit_code == 1, result.output
    assert {r["modality"] for r in rows if r["status"] == "done"} == {"MR"}


def test_an_output_that_is_a_file_is_exit_4(tmp_path: Path, tree: Path, model: Path) -> None:
    """As convert, export and prepare say it; batch said "cannot create the output folder", exit 5."""
    (tmp_path / "afile").write_text("mine")
    result = _batch(tree, tmp_path / "afile", model)
    assert result.exit_code == 4 and "is not a folder; mrct batch writes a folder here" in result.stderr
    assert (tmp_path / "afile").read_text() == "mine"


def test_output_names_keep_letters_of_any_script_and_dotted_uid_names(tmp_path: Path) -> None:
    """患者/头部.nii.gz and 病人/头部.nii.gz both became scan/scan…: two patients in one folder;
    Müller lost its ü; a file named by its UID lost its last part (translate's default too)."""
    for folder in (
        "患者",
        "病人",
        "Kopf_Mu\u0308ller",
        "राम",
        "रीमा",
    ):  # Müller decomposed (NFD), as macOS writes it
        write_head(tmp_path / "in" / folder / "头部.nii.gz", "mr", seed=1)
    write_enhanced_mr(tmp_path / "in" / "uids" / "1.2.826.0.1.3680043.8.498.111")
    found = name_outputs(discover(tmp_path / "in"), Modality.CT, OutputFormat.NIFTI)
    assert sorted(s.output for s in found if s.output) == [
        "Kopf_M\u00fcller/头部_synthetic_ct.nii.gz",  # composed: one name however it was typed
        "uids/1.2.826.0.1.3680043.8.498.111_synthetic_ct.nii.gz",
        "राम/头部_synthetic_ct.nii.gz",  # vowel signs are marks: kept, or राम and रीमा merge
        "रीमा/头部_synthetic_ct.nii.gz",
        "患者/头部_synthetic_ct.nii.gz",
        "病人/头部_synthetic_ct.nii.gz",
    ]
    from mrct.translation import default_output

    for name in ("1.2.826.0.1.3680043.8.498.111", "IM_0001.dcm", "scan.nii.gz", "scan.v2.nrrd"):
        (tmp_path / name).write_bytes(b"x")
        stem = {"IM_0001.dcm": "IM_0001", "scan.nii.gz": "scan", "scan.v2.nrrd": "scan.v2"}.get(name, name)
        assert default_output(tmp_path / name, Modality.CT, OutputFormat.NIFTI) == (
            tmp_path / f"{stem}_synthetic_ct.nii.gz"
        )
