"""`mrct batch` killed with SIGKILL at random points and resumed; the output folder's lock; the
clean-up of what killed runs leave behind (mrct/batch_folder.py)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from typer.testing import CliRunner

from mrct.batch import discover
from mrct.batch_folder import LEFTOVER, LOCK_NAME, Manifest, hold, sweep
from mrct.cli import app
from mrct.errors import OutputBusyError, OutputExistsError
from tests.dicom_factory import write_series
from tests.model_fixtures import write_tiny_model
from tests.test_prepare import write_head

runner = CliRunner()
CROP = ["--crop-mm", "40,-40"]
SLICES = {"p01/t1": 24, "p02/t1": 22}  # DICOM MR series and their slice counts
HEAD = "p03/head.nii.gz"
SEED = 20240601


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("in")
    for folder, n in SLICES.items():
        write_series(
            root / folder, modality="MR", shape=(48, 48, n), pixel_spacing=(4.0, 4.0), slice_spacing=4.0
        )
    write_head(root / HEAD, "mr", seed=1)
    return root


def _cmd(tree: Path, out: Path, model: Path, *extra: str) -> list[str]:
    batch = ["batch", str(tree), "-o", str(out), "--to", "ct", "--model", str(model), *CROP, "-q"]
    return [sys.executable, "-m", "mrct", *batch, *extra]


def _leftovers(out: Path) -> list[str]:
    """Anything named like a temporary of mrct.io.atomic (more loosely than the sweep's pattern)."""
    names = [
        p
        for p in out.rglob("*")
        if LEFTOVER.match(p.name) or ".mrct-tmp-" in p.name or ".mrct-old-" in p.name
    ]
    return sorted(str(p.relative_to(out)) for p in names)


def _holds_lock(out: Path, proc: subprocess.Popen[str]) -> bool:
    lock = out / LOCK_NAME
    return lock.exists() and f'"pid": {proc.pid},' in lock.read_text()


def _wait(condition, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _outputs(out: Path, tree: Path) -> dict[str, str]:
    """Every output present under its final name, checked complete: ``{name: problem or ''}``."""
    found = {}
    for folder, n in SLICES.items():
        dst = out / f"{folder}_synthetic_ct"
        if dst.exists():
            files = sorted(dst.iterdir())
            ok = len(files) == n and all(pydicom.dcmread(f).pixel_array.shape == (48, 48) for f in files)
            found[str(dst.relative_to(out))] = "" if ok else f"{len(files)} files"
    head = out / HEAD.replace(".nii.gz", "_synthetic_ct.nii.gz")
    if head.exists():
        data = nib.load(head).get_fdata()  # reads every byte: a truncated file raises
        found[str(head.relative_to(out))] = (
            "" if data.shape == nib.load(tree / HEAD).shape else f"shape {data.shape}"
        )
    return found


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _done(manifest: Path) -> int:
    return int(json.loads(manifest.read_text())["counts"]["done"]) if manifest.exists() else 0


def test_killed_runs_resume_to_complete_outputs(tmp_path: Path, tree: Path, model: Path) -> None:
    """SIGKILL (1) once the first DICOM output is being written, (2) a seeded random time after a
    run has planned its work (reading or translating the first series), (3) a seeded random time
    after a series is done (reading, translating and writing in threads). A run started while
    another holds the folder is refused at once; the run after the kills finishes and cleans up."""
    out, rng = tmp_path / "out", random.Random(SEED)
    manifest, left_behind, refused, holder = out / "manifest.json", [], None, 0
    for n, kill in enumerate(("mid-write", "after planning", "after a series")):
        before = _mtime(manifest)
        cmd = _cmd(tree, out, model, "--workers", str(1 + n % 2))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill == "mid-write":  # a DICOM output's temporary folder: written slice by slice
            _wait(lambda: any("_synthetic_ct.mrct-tmp-" in p.name for p in out.glob("p0*/*")), proc)
        elif kill == "after planning":
            _wait(lambda p=proc: _holds_lock(out, p), proc)  # type: ignore[misc]
            refused, holder = subprocess.run(_cmd(tree, out, model), capture_output=True, text=True), proc.pid
            _wait(lambda b=before: _mtime(manifest) != b, proc)  # type: ignore[misc]
            time.sleep(rng.uniform(0.0, 3.0))
        else:
            _wait(lambda: _done(manifest) >= 1, proc)
            time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()  # SIGKILL: no clean-up of any kind; the kernel drops its lock
        proc.communicate(timeout=60)
        assert all(problem == "" for problem in _outputs(out, tree).values())  # never a partial one
        rows = json.loads(manifest.read_text())["series"]  # whole, never half-written
        assert all((out / r["output"]).exists() for r in rows if r["status"] == "done")
        left_behind += _leftovers(out)
    assert any("_synthetic_ct.mrct-tmp-" in name for name in left_behind)  # the mid-write kill's
    assert refused is not None and refused.returncode == 9 and refused.stderr.count("\n") == 1
    assert f"{out}: in use by another mrct batch (pid {holder} on " in refused.stderr

    final = subprocess.run(_cmd(tree, out, model), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "by an earlier run" in final.stdout  # the series done before the last kill were kept
    expected = [f"{folder}_synthetic_ct" for folder in SLICES] + [HEAD.replace(".nii", "_synthetic_ct.nii")]
    assert _outputs(out, tree) == dict.fromkeys(expected, "")
    assert _leftovers(out) == []
    content = json.loads((out / "manifest.json").read_text())
    with open(out / "manifest.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
        assert [
            {k: str(v) for k, v in r.items() if k not in ("stamp", "slab")} for r in content["series"]
        ] == csv_rows
    assert sorted(r["id"] for r in content["series"]) == sorted(s.id for s in discover(tree))
    assert {r["status"] for r in content["series"]} == {"done"} and content["counts"]["done"] == 3
    assert content["counts"]["pending"] == 0


def test_lock_rules(tmp_path: Path, tree: Path, model: Path) -> None:
    """One unsharded run, or shards side by side, never the same shard twice; a lock file left
    by a dead process blocks nothing (the kernel releases flock locks)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 999999, "host": "gone", "since": "yesterday"}\n')  # stale
    with hold(out, None):
        assert f'"pid": {os.getpid()},' in (out / LOCK_NAME).read_text()
        busy = runner.invoke(app, ["batch", str(tree), "-o", str(out), "--to", "ct", "--model", str(model)])
        assert busy.exit_code == 9 and busy.stderr.count("\n") == 1
        assert f"{out}: in use by another mrct batch (pid {os.getpid()} on " in busy.stderr
        with pytest.raises(OutputBusyError), hold(out, (1, 2)):
            pass
    assert (out / LOCK_NAME).read_text() == ""  # released: names nobody
    with hold(out, (1, 2)), hold(out, (2, 2)):
        with pytest.raises(OutputBusyError, match="shard 1/2"), hold(out, (1, 2)):
            pass
        with pytest.raises(OutputBusyError, match=r"shard 1/2: pid \d+"), hold(out, None):
            pass
    with hold(out, None):
        pass


def test_sweep_removes_only_mrct_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    made = [
        "p01/.t1_synthetic_ct.mrct-tmp-ab_c1234/IM_0001.dcm",  # a DICOM series being written
        "p01/.t2_synthetic_ct.mrct-old-zz99zz99/IM_0001.dcm",  # an overwritten one, moved aside
        "p02/.head_synthetic_ct.mrct-tmp-k2j3h4g5.nii.gz",
        ".manifest.mrct-tmp-q1w2e3r4.json",
    ]
    kept = [
        "p01/t1_synthetic_ct/IM_0001.dcm",
        "p02/head.mrct-tmp-k2j3h4g5.nii.gz",  # not hidden: not ours
        "p02/.head.mrct-tmp-short.nii.gz",  # not tempfile's 8 characters
        "in/.scan.mrct-tmp-abcdefgh.nii.gz",  # under an input folder inside OUT
        ".mrct-batch.lock",
    ]
    for name in made + kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    near = [out / "p02" / "head_synthetic_ct.nii.gz", out / "manifest.json"]  # a shard's own
    assert sweep(out, near) == 2
    assert (out / made[0]).exists() and not (out / made[2]).exists() and not (out / made[3]).exists()
    assert sweep(out, exclude=[out / "in"]) == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(kept)


def test_a_folder_is_continued_only_with_the_same_settings(tmp_path: Path) -> None:
    """Resuming into a folder made with another model, the other --anonymize or another --format
    would mix outputs (from a hunt: after --format nrrd the NIfTI outputs were left unlisted, and
    a run without --format again failed on each of them, 'exists; pass --overwrite')."""
    header = {
        "format": "mrct-batch",
        "to": "CT",
        "model": {"checksum": "abc"},
        "anonymize": False,
        "output_format": "input",
    }
    Manifest(tmp_path / "manifest.json", header, False, tmp_path).write()
    Manifest(tmp_path / "manifest.json", header, False, tmp_path)  # the same: fine
    for change, message in (
        ({"anonymize": True}, "made without --anonymize"),
        ({"model": {"checksum": "def"}}, "another model"),
        ({"output_format": "nrrd"}, r"made with no --format \(each input's own format\); use it again"),
    ):
        with pytest.raises(OutputExistsError, match=message):
            Manifest(tmp_path / "manifest.json", {**header, **change}, False, tmp_path)
        Manifest(tmp_path / "manifest.json", {**header, **change}, True, tmp_path)  # --overwrite redoes all
    with pytest.raises(OutputExistsError, match="--to CT"):
        Manifest(tmp_path / "manifest.json", {**header, "to": "MR"}, True, tmp_path)
    Manifest(tmp_path / "manifest.json", {**header, "output_format": "nrrd"}, True, tmp_path).write()
    with pytest.raises(OutputExistsError, match="made with --format nrrd"):
        Manifest(tmp_path / "manifest.json", {**header, "output_format": "nifti"}, False, tmp_path)
    # From review: a shard's own manifest is new, so only the others' say the folder's format.
    with pytest.raises(OutputExistsError, match=r"manifest\.json was made with --format nrrd; use it again"):
        Manifest(tmp_path / "manifest-shard1of2.json", {**header, "output_format": "nifti"}, False, tmp_path)
    # A manifest written before the format was recorded matches any.
    legacy = {k: v for k, v in header.items() if k != "output_format"}
    Manifest(tmp_path / "manifest.json", legacy, True, tmp_path).write()
    Manifest(tmp_path / "manifest.json", {**header, "output_format": "dicom"}, False, tmp_path)


def test_manifests_of_other_runs_merge_by_time_and_damage_is_skipped(tmp_path: Path) -> None:
    """From review: a row without an id in a shard's manifest crashed every later run (exit 70);
    on equal times another manifest's stale done row beat this one's newer skip."""
    header = {"to": "CT", "anonymize": False, "model": {"name": "m", "checksum": "c"}}

    def write(name: str, rows: list[object], ns: int) -> None:
        path = tmp_path / name
        path.write_text(json.dumps({**header, "series": rows}))
        os.utime(path, ns=(ns, ns))

    write("manifest.json", [{"id": "a", "status": "skipped", "output": ""}], 10**18)
    write("manifest-shard1of1.json", [{"id": "a", "status": "done", "output": "a_ct.nii.gz"}], 10**18)
    write("manifest-shard1of2.json", [{"status": "done"}, {"id": ["x"], "output": "y"}], 10**18 - 1)
    manifest = Manifest(tmp_path / "manifest.json", header, False, tmp_path)
    assert manifest.previous == {"a": {"id": "a", "status": "skipped", "output": ""}}  # its own, on a tie
    os.utime(tmp_path / "manifest-shard1of1.json", ns=(10**18 + 1, 10**18 + 1))
    assert Manifest(tmp_path / "manifest.json", header, False, tmp_path).previous["a"]["status"] == "done"


@pytest.mark.parametrize("spelling", ["data file", "datafile"])
def test_the_stamp_of_a_detached_nrrd_covers_its_data_file(tmp_path: Path, spelling: str) -> None:
    from mrct.batch_folder import input_stamp
    from mrct.batch_series import Series

    (tmp_path / "x.raw").write_bytes(bytes(8))
    header = tmp_path / "x.nhdr"
    header.write_text(
        f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n{spelling}: x.raw\n"
    )
    series = Series(id="x.nhdr", input="x.nhdr", path=header)
    before = input_stamp(series)
    (tmp_path / "x.raw").write_bytes(bytes([1] * 8))
    os.utime(tmp_path / "x.raw", ns=(1, 1))
    assert input_stamp(series) != before
