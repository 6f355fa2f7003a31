"""`mrct prepare`: a training set from folders of synthetic heads, on a small model grid."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mrct.cli import app, expand_prepare_args, main
from mrct.config import load_yaml
from mrct.errors import InputNotFoundError, OutputExistsError
from mrct.io.discover import find_scans
from mrct.prepare import collect_scans, prepare_dataset
from mrct.prepare_manifest import split_ids
from mrct.preprocessing.config import PreprocessConfig
from mrct.preprocessing.crop import CropRequest
from mrct.preprocessing.record import PreprocessRecord

runner = CliRunner()
SMALL_YAML = "preprocessing:\n  grid: {depth: 8, height: 48, width: 48, inplane_mm: 4.0}\n"
CROP = CropRequest.millimetres(40, -40)
OLD = 1_000_000_000  # an mtime long past, to see whether a file is rewritten


def write_head(path: Path, modality: str, semi_axes=(70.0, 85.0, 80.0), seed: int = 0) -> Path:
    """An ellipsoid of tissue in air, 100 x 120 x 100 voxels of 2 mm, centred on the RAS origin."""
    shape = (100, 120, 100)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1)  # voxel centre (shape - 1) / 2 at 0 mm
    x, y, z = (np.indices(shape, dtype=np.float32) - ((np.array(shape) - 1) / 2)[:, None, None, None]) * 2
    inside = (x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 + (z / semi_axes[2]) ** 2 <= 1
    noise = np.random.default_rng(seed).normal(0, 5, shape).astype(np.float32)
    if modality == "ct":
        data = np.where(inside, 40 + noise, -1000).astype(np.int16)
    else:
        data = np.where(inside, 500 + noise * 4 + 0.5 * z, 5 + np.abs(noise)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mr/ with three heads (one in a subfolder), ct/ with two, and a small grid config."""
    root = tmp_path_factory.mktemp("heads")
    write_head(root / "mr" / "sub-01_T1w.nii.gz", "mr", seed=1)
    write_head(root / "mr" / "sub-02_T1w.nii.gz", "mr", (66.0, 80.0, 78.0), seed=2)
    write_head(root / "mr" / "site b" / "sub-03_T1w.nii", "mr", (72.0, 88.0, 82.0), seed=3)
    write_head(root / "ct" / "ct-a.nii.gz", "ct", seed=4)
    write_head(root / "ct" / "ct-b.nii.gz", "ct", (68.0, 84.0, 79.0), seed=5)
    (root / "small.yaml").write_text(SMALL_YAML)
    return root


@pytest.fixture(scope="module")
def config(data: Path) -> PreprocessConfig:
    return load_yaml(PreprocessConfig, data / "small.yaml", "preprocessing")


@pytest.fixture(scope="module")
def prepared(data: Path, config: PreprocessConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_dataset([data / "mr"], [data / "ct"], out, config=config, crop=CROP, progress=False)
    assert (summary.ready, summary.failed, summary.skipped) == (5, 0, 0)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_layout_and_manifest(prepared: Path, data: Path) -> None:
    m = manifest(prepared)
    assert m["mrct_version"] and m["created"] and m["seed"] == 0
    assert m["config"]["grid"] == {"depth": 8, "height": 48, "width": 48, "inplane_mm": 4.0}
    ids = [f"{e['domain']}/{e['id']}" for e in m["scans"]]
    assert ids == ["ct/ct-a", "ct/ct-b", "mr/sub-01_T1w", "mr/sub-02_T1w", "mr/sub-03_T1w"]
    for e in m["scans"]:
        d, i = e["domain"], e["id"]
        assert e["status"] == "ok" and "error" not in e
        rel = {"image": f"{d}/{i}.npy", "mask": f"{d}/{i}_mask.npy", "record": f"{d}/{i}.json"}
        assert e["files"] == {**rel, "qc": f"qc/{d}/{i}.png"}
        image = np.load(prepared / e["files"]["image"])
        mask = np.load(prepared / e["files"]["mask"])
        assert image.dtype == np.float32 and image.shape == (8, 48, 48) == tuple(e["shape"])
        assert image.min() >= -1 and image.max() <= 1 and image.max() > -0.9
        assert mask.dtype == np.uint8 and mask.shape == image.shape and 0 < mask.mean() < 1
        assert e["checksum"] == sha256(prepared / e["files"]["image"])
        assert e["source_checksum"] == sha256(Path(e["source"]))
        assert Path(e["source"]).is_relative_to(data / d)
        record = PreprocessRecord.from_json((prepared / e["files"]["record"]).read_text())
        assert record.modality == d.upper() and tuple(record.grid_shape) == (8, 48, 48)
        assert e["crop"]["superior_mm"] == 40 and e["crop"]["inferior_mm"] == -40
        assert e["crop"]["source"] == "crop-mm"
        assert e["intensity"]["kind"] == ("mr_percentile" if d == "mr" else "ct_linear")
        if d == "mr":
            assert e["intensity"]["stats"]
        png = Image.open(prepared / e["files"]["qc"])
        assert png.mode == "RGB" and png.size[0] > 48
    assert not list(prepared.rglob("*.mrct-tmp-*"))  # nothing half-written left behind
    assert m["split"] == {
        d: split_ids([e["id"] for e in m["scans"] if e["domain"] == d], 0) for d in ("mr", "ct")
    }
    assert (len(m["split"]["mr"]["train"]), len(m["split"]["mr"]["test"])) == (2, 1)
    assert (len(m["split"]["ct"]["train"]), len(m["split"]["ct"]["test"])) == (1, 1)


@pytest.mark.parametrize(("n", "n_train"), [(1, 1), (2, 1), (3, 2), (5, 4), (10, 7), (20, 14), (51, 36)])
def test_split_is_70_30_and_seeded(n: int, n_train: int) -> None:
    ids = [f"case{k:03d}" for k in range(n)]
    split = split_ids(reversed(ids), seed=7)
    assert len(split["train"]) == n_train and sorted(split["train"] + split["test"]) == ids
    assert split_ids(ids, seed=7) == split  # input order does not matter, the seed does
    if n >= 10:
        assert split_ids(ids, seed=8) != split


def test_hold_out_from_draws_the_test_split_from_matching_ids_only() -> None:
    ids = [f"IXI{k:03d}" for k in range(10)] + ["mr_philips_mprage", "mr_siemens_flash"]
    split = split_ids(ids, seed=7, hold_out_from="IXI*")
    assert split["test"] == split_ids(ids[:10], seed=7)["test"]
    assert {"mr_philips_mprage", "mr_siemens_flash"} <= set(split["train"])
    assert sorted(split["train"] + split["test"]) == sorted(ids) and len(split["test"]) == 3


def test_adding_scans_never_moves_a_placed_scan_between_train_and_test() -> None:
    """A set grown by a re-run keeps every earlier scan on its side (a model trained on the first
    split must not be evaluated on a scan that moved into its training data); only new scans are
    split. A different seed or pattern asks for a new split."""
    from mrct.prepare_manifest import keep_split

    first = split_ids([f"IXI{k:03d}" for k in range(10)], seed=0, hold_out_from="IXI*")
    grown = [f"IXI{k:03d}" for k in range(14)] + ["mr_philips_mprage"]
    kept = keep_split(grown, 0, "IXI*", first)
    assert set(first["test"]) <= set(kept["test"]) and set(first["train"]) <= set(kept["train"])
    assert sorted(kept["train"] + kept["test"]) == sorted(grown) and "mr_philips_mprage" in kept["train"]
    assert set(kept["test"]) - set(first["test"]) <= {f"IXI{k:03d}" for k in range(10, 14)}
    assert kept != split_ids(grown, seed=0, hold_out_from="IXI*")  # a fresh split would move some
    dropped = keep_split([f"IXI{k:03d}" for k in range(5)], 0, "IXI*", first)  # scans removed
    assert sorted(dropped["train"] + dropped["test"]) == [f"IXI{k:03d}" for k in range(5)]


def test_resume_skips_finished_and_retries_failed(
    data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.parent.mkdir()
    broken.write_text("not a NIfTI file\n")
    mr = [data / "mr" / "sub-01_T1w.nii.gz", broken]
    out = tmp_path / "out"
    first = prepare_dataset(mr, [data / "ct" / "ct-a.nii.gz"], out, config=config, crop=CROP, progress=False)
    assert (first.counts["mr"].ok, first.counts["mr"].failed, first.counts["ct"].ok) == (1, 1, 1)
    entry = {e["id"]: e for e in manifest(out)["scans"]}["broken"]
    assert entry["status"] == "failed" and "broken.nii.gz" in entry["error"] and "\n" not in entry["error"]
    assert manifest(out)["split"]["mr"] == {"train": ["sub-01_T1w"], "test": []}
    records = ("manifest.json", ".mrct-prepare.lock")  # rewritten by every run
    done = [p for p in out.rglob("*") if p.is_file() and p.name not in records]
    for p in done:
        os.utime(p, (OLD, OLD))
    write_head(broken, "mr", seed=9)  # fixed: retried on the next run
    second = prepare_dataset(mr, [data / "ct" / "ct-a.nii.gz"], out, config=config, crop=CROP, progress=False)
    assert (second.counts["mr"].ok, second.counts["mr"].skipped, second.counts["ct"].skipped) == (1, 1, 1)
    assert all(p.stat().st_mtime == OLD for p in done)  # finished scans were not rewritten
    assert all(e["status"] == "ok" for e in manifest(out)["scans"])
    # A damaged output is noticed through its checksum and prepared again.
    image = out / "ct" / "ct-a.npy"
    image.write_bytes(image.read_bytes()[:-4] + b"\0\0\0\0")
    third = prepare_dataset(mr, [data / "ct" / "ct-a.nii.gz"], out, config=config, crop=CROP, progress=False)
    assert (third.counts["ct"].ok, third.counts["mr"].skipped) == (1, 2)
    assert sha256(image) == {e["id"]: e for e in manifest(out)["scans"]}["ct-a"]["checksum"]
    # Another grid in the same folder would mix shapes: refused.
    with pytest.raises(OutputExistsError, match="another preprocessing config"):
        prepare_dataset(mr, [], out, crop=CROP, progress=False)


def test_cli_corrupt_input_fails_alone(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("this is text, not an image\n")
    out = tmp_path / "out"
    args = ["prepare", "--mr", str(data / "mr" / "sub-02_T1w.nii.gz"), str(bad), "--ct", str(data / "ct")]
    args += ["-o", str(out), "--config", str(data / "small.yaml"), "--crop-mm", "40,-40", "--quiet"]
    result = runner.invoke(app, expand_prepare_args(args))
    assert result.exit_code == 1, result.output
    assert "prepared 3 scans (mr 1, ct 2), 1 failed" in result.stdout
    assert "error: 1 scan failed;" in result.stderr  # singular, not "1 scans"
    status = {e["id"]: e["status"] for e in manifest(out)["scans"]}
    assert status == {"sub-02_T1w": "ok", "bad": "failed", "ct-a": "ok", "ct-b": "ok"}


def test_cli_exit_codes_without_scans(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["prepare", "--mr", str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'empty'}: is empty" in result.stderr
    result = runner.invoke(app, ["prepare", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no inputs: give --mr and --ct" in result.stderr
    result = runner.invoke(app, ["prepare", "--ct", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    with pytest.raises(InputNotFoundError):
        prepare_dataset([], [], tmp_path / "out", progress=False)


def test_modality_mismatch_fails_with_a_clear_message(
    data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    from tests.dicom_factory import write_series

    write_series(tmp_path / "dicom_ct", modality="CT", shape=(40, 48, 12))
    mr = [data / "ct" / "ct-a.nii.gz", tmp_path / "dicom_ct"]
    summary = prepare_dataset(mr, [], tmp_path / "out", config=config, crop=CROP, progress=False)
    assert summary.counts["mr"].failed == 2
    errors = {e["id"]: e["error"] for e in manifest(tmp_path / "out")["scans"]}
    assert "the intensities look like CT" in errors["ct-a"] and "--mr" in errors["ct-a"]
    assert "the header says CT but it was given with --mr" in errors["dicom_ct"]


def test_every_readable_scan_gets_a_qc_picture(data: Path, config: PreprocessConfig, tmp_path: Path) -> None:
    """A scan that was read but failed keeps a picture with the reason; an unreadable one has none."""
    broken = tmp_path / "broken.nii.gz"
    broken.write_text("not a NIfTI file\n")
    mr = [data / "ct" / "ct-a.nii.gz", broken]  # a CT given as MR: read, then refused
    out = tmp_path / "out"
    summary = prepare_dataset(mr, [], out, config=config, crop=CROP, progress=False)
    assert summary.counts["mr"].failed == 2
    entries = {e["id"]: e for e in manifest(out)["scans"]}
    assert entries["ct-a"]["status"] == "failed" and entries["ct-a"]["files"] == {"qc": "qc/mr/ct-a.png"}
    picture = np.asarray(Image.open(out / "qc" / "mr" / "ct-a.png"))
    red = (picture[..., 0] > 200) & (picture[..., 1] < 80) & (picture[..., 2] < 80)
    assert red.sum() > 20  # the "FAILED: ..." line
    assert "files" not in entries["broken"] and not (out / "qc" / "mr" / "broken.png").exists()


def test_a_refused_automatic_slab_is_drawn(
    data: Path, config: PreprocessConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The levels a refusal was about are drawn on the failed scan's picture, with the reason."""
    from mrct import qc
    from mrct.preprocessing import localise, slab_checks
    from mrct.preprocessing.crop import SlabBounds

    def locate(self: object, work: object) -> slab_checks.Localisation:
        return slab_checks.Localisation(SlabBounds(60.0, -250.0, "auto", 1.0), {}, -0.5, 0.0, (-100.0, 100.0))

    monkeypatch.setattr(localise.Localiser, "__init__", lambda self: None)
    monkeypatch.setattr(localise.Localiser, "locate", locate)
    drawn: list[tuple] = []
    real = qc.slab_qc_image
    monkeypatch.setattr(qc, "slab_qc_image", lambda *a, **k: drawn.append((a[1:], k)) or real(*a, **k))
    out = tmp_path / "out"
    prepare_dataset([data / "mr" / "sub-01_T1w.nii.gz"], [], out, config=config, progress=False)
    (entry,) = manifest(out)["scans"]
    assert entry["status"] == "failed" and "150 mm below the field of view" in entry["error"]
    assert "--crop-mm" in entry["error"] and (out / entry["files"]["qc"]).is_file()
    ((levels, kwargs),) = drawn
    assert levels == (60.0, -250.0) and kwargs["failure"] == entry["error"]


def test_inputs_expand_recursively_with_readable_unique_ids(tmp_path: Path, two_series_folder) -> None:
    folder, _, _ = two_series_folder  # one folder, CT series 2 and MR series 3
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "head.nii.gz").write_bytes(b"x")
    (tmp_path / "a" / ".hidden.nii.gz").write_bytes(b"x")
    found = find_scans([tmp_path / "a", tmp_path / "b", folder])
    assert [(f.path.name, f.name) for f in found] == [
        ("head.nii.gz", "head"),
        ("head.nii.gz", "head"),
        ("study", "study_s2"),
        ("study", "study_s3"),
    ]
    assert all(f.series for f in found[2:]) and found[2].series != found[3].series
    scans = collect_scans([tmp_path / "a", tmp_path / "b", folder], [tmp_path / "a"])
    ids = [(s.domain, s.id) for s in scans]
    assert ids[0][1].startswith("head-") and ids[1][1].startswith("head-") and ids[0] != ids[1]
    assert ids[2:] == [("mr", "study_s2"), ("mr", "study_s3"), ("ct", "head")]  # no clash across domains
    assert collect_scans([tmp_path / "a", tmp_path / "b", folder], []) == scans[:4]  # deterministic


def test_workers_give_the_same_result(
    prepared: Path, data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    summary = prepare_dataset(
        [data / "mr"], [data / "ct"], tmp_path, config=config, crop=CROP, workers=2, progress=False
    )
    assert (summary.ready, summary.failed) == (5, 0)

    def essentials(out: Path) -> list[tuple]:
        return [(e["id"], e["checksum"], e["mask_checksum"], e["crop"]) for e in manifest(out)["scans"]]

    assert essentials(tmp_path) == essentials(prepared)
    assert manifest(tmp_path)["split"] == manifest(prepared)["split"]


def test_argv_rewriting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert expand_prepare_args(["prepare", "--mr", "a", "b", "--ct", "c", "-o", "x"]) == [
        "prepare",
        "--mr",
        "a",
        "--mr",
        "b",
        "--ct",
        "c",
        "-o",
        "x",
    ]
    assert expand_prepare_args(["-v", "prepare", "-o", "x", "--ct", "c", "d", "--quiet"]) == [
        "-v",
        "prepare",
        "-o",
        "x",
        "--ct",
        "c",
        "--ct",
        "d",
        "--quiet",
    ]
    assert expand_prepare_args(["prepare", "--mr", "--ct", "c"]) == ["prepare", "--mr", "--ct", "c"]
    assert expand_prepare_args(["info", "--mr", "a", "b"]) == ["info", "--mr", "a", "b"]
    # Through main(), as the installed command runs it: both paths reach the command.
    for n in (1, 2):
        (tmp_path / f"e{n}").mkdir()
        (tmp_path / f"e{n}" / f"x{n}.nii.gz").write_text(f"not an image ({n})")
    argv = ["mrct", "prepare", "--mr", str(tmp_path / "e1"), str(tmp_path / "e2"), "-o", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    # main() installs the command's signal handlers: this test process gets its own back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert exc.value.code == 1  # both scans were tried (and failed)
    assert [e["id"] for e in manifest(tmp_path / "o")["scans"]] == ["x1", "x2"]


@pytest.mark.realdata
def test_real_scans_with_automatic_crop(shared_data: Path, tmp_path: Path) -> None:
    mr = sorted((shared_data / "mr" / "ixi_t1_2mm").glob("*.nii.gz"))[:2]
    ct = [shared_data / "ct" / "unc_cthead_cadaver_hu.nii.gz"]
    summary = prepare_dataset(mr, ct, tmp_path, workers=1, progress=False)
    m = manifest(tmp_path)
    assert [e["status"] for e in m["scans"]] == ["ok"] * 3, [e.get("error") for e in m["scans"]]
    assert (summary.counts["mr"].ok, summary.counts["ct"].ok) == (2, 1)
    for e in m["scans"]:
        assert e["crop"]["source"] == "auto" and e["shape"] == [30, 256, 256]
        assert 80 <= e["crop"]["superior_mm"] - e["crop"]["inferior_mm"] <= 160
        assert (tmp_path / e["files"]["qc"]).is_file()


def test_manifest_sources_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given as typed (relative), the sources are stored absolute: the manifest is read later
    from other working directories (evaluation, a re-run)."""
    write_head(tmp_path / "in" / "head.nii.gz", "mr")
    monkeypatch.chdir(tmp_path)
    args = ["prepare", "--mr", "in", "-o", "out", "--crop-mm", "40,-40", "--quiet"]
    (tmp_path / "small.yaml").write_text(SMALL_YAML)
    result = runner.invoke(app, [*args, "--config", "small.yaml"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["scans"]
    assert entry["source"] == str(tmp_path / "in" / "head.nii.gz")


def test_a_run_killed_part_way_does_not_fix_the_split(tmp_path: Path) -> None:
    """The manifest written after each scan split the scans done so far among themselves, and the
    resumed run kept that: which scans were held out depended on when prepare was killed."""
    import json

    from mrct.prepare_manifest import write_manifest

    path = tmp_path / "manifest.json"
    ids = [f"IXI{n:03d}" for n in range(10)]

    def entries(done: list[str]) -> dict:
        return {("mr", i): {"domain": "mr", "id": i, "status": "ok"} for i in done}

    def run(done: list[str], earlier: dict, complete: bool) -> dict:
        write_manifest(path, "t", 0, {}, entries(done), None, earlier, complete=complete)
        return json.loads(path.read_text())

    whole = run(ids, {}, complete=True)["split"]
    partial = run(ids[:4], {}, complete=False)  # killed after 4 scans
    assert partial["complete"] is False
    resumed = run(ids, partial, complete=True)
    assert resumed["split"] == whole and resumed["complete"] is True
    # A complete run's split still binds: scans added later are split among themselves.
    grown = run([*ids, "IXI100", "IXI101", "IXI102"], resumed, complete=True)["split"]["mr"]
    assert set(whole["mr"]["test"]) <= set(grown["test"]) and set(whole["mr"]["train"]) <= set(grown["train"])
    # ... also when the run adding them is itself killed and resumed.
    killed = run([*ids, "IXI100"], resumed, complete=False)
    again = run([*ids, "IXI100", "IXI101", "IXI102"], killed, complete=True)["split"]["mr"]
    assert again == grown
    # A test scan that fails in one run goes back to test when repaired (it came back in training).
    held = whole["mr"]["test"][0]
    failing = run([i for i in ids if i != held], resumed, complete=True)
    assert held not in failing["split"]["mr"]["test"] and held in failing["placed"]["mr"]["test"]
    assert held in run(ids, failing, complete=True)["split"]["mr"]["test"]


def test_a_scan_keeps_its_id_and_is_prepared_once(
    data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    """Found by a hunt on messy real inputs: a re-run that added a same-named scan gave the first
    one a second id; a new folder with an old name took over that scan's files and side; a file
    given through a link, as a/../a or as a copy was prepared once per spelling (on both sides of
    the split, possibly); moving the data folder doubled the set; a 247-byte name stopped the run."""
    import shutil

    src, ct, out = tmp_path / "in", [data / "ct" / "ct-a.nii.gz"], tmp_path / "out"
    for folder, head in (("a", "sub-01_T1w.nii.gz"), ("b", "sub-02_T1w.nii.gz")):
        (src / folder).mkdir(parents=True)
        shutil.copy(data / "mr" / head, src / folder / "scan.nii.gz")

    def ids(*inputs: Path) -> list[tuple[str, str]]:
        prepare_dataset(list(inputs), ct, out, config=config, crop=CROP, progress=False)
        return sorted(
            (e["id"], Path(e["source"]).parent.name) for e in manifest(out)["scans"] if e["domain"] == "mr"
        )

    assert ids(src / "a") == [("scan", "a")]
    both = ids(src / "a", src / "b")
    assert ("scan", "a") in both and len(both) == 2  # the first keeps its id; b's gets a suffix
    assert ids(src / "b") == both  # b given alone keeps its own id; a's files and side untouched
    (src / "link.nii.gz").symlink_to(src / "a" / "scan.nii.gz")
    shutil.copy(src / "a" / "scan.nii.gz", src / "copy.nii.gz")
    spellings = (src / "link.nii.gz", src / "a" / ".." / "a" / "scan.nii.gz", src / "copy.nii.gz")
    assert ids(src / "a", src / "b", *spellings) == both  # one scan, however it is given
    (src / "link.nii.gz").unlink()
    (src / "copy.nii.gz").unlink()
    shutil.move(src, tmp_path / "moved")
    moved = ids(tmp_path / "moved" / "a", tmp_path / "moved" / "b")
    assert [i for i, _ in moved] == [i for i, _ in both]  # the same scans, adopted, not doubled
    long = tmp_path / ("x" * 240 + ".nii")
    shutil.copy(data / "mr" / "site b" / "sub-03_T1w.nii", long)
    assert prepare_dataset([long], ct, out, config=config, crop=CROP, progress=False).counts["mr"].ok == 1


def test_an_output_that_is_an_input_a_file_or_a_foreign_folder_is_refused(data: Path, tmp_path: Path) -> None:
    """-o at the MR folder wrote mr/, ct/, qc/ into it (exit 0); a file gave exit 5; a folder
    with its own qc/ got the outputs mixed in."""
    mr, ct = [data / "mr"], [data / "ct" / "ct-a.nii.gz"]
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine" / "qc").mkdir(parents=True)
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "manifest.json").write_text('{"format": "mrct-batch", "series": []}')
    for out, message in (
        (data / "mr", "is, or writes over, the input"),
        (data, "is, or writes over, the input"),  # data/mr would be OUT/mr
        (tmp_path / "notes.txt", "is not a folder"),
        (tmp_path / "mine", "holds qc/ but no manifest.json"),
        (tmp_path / "batch", "holds the manifest of a mrct-batch"),  # said "another preprocessing config"
    ):
        with pytest.raises(OutputExistsError, match=message) as caught:
            prepare_dataset(mr, ct, out, crop=CROP, progress=False)
        assert caught.value.exit_code == 4
    assert sorted(p.name for p in (data / "mr").iterdir()) == [
        "site b",
        "sub-01_T1w.nii.gz",
        "sub-02_T1w.nii.gz",
    ]


def test_one_prepare_per_folder_and_a_killed_runs_leftovers_go(
    data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    """Two prepares into one folder each rewrote the manifest without the other's scans (both
    exit 0); a run killed with SIGKILL left hidden temporary files that no later run removed."""
    from mrct.errors import OutputBusyError
    from mrct.folder_locks import folder_lock
    from mrct.prepare import LOCK_NAME

    out = tmp_path / "out"
    mr, ct = [data / "mr" / "sub-01_T1w.nii.gz"], [data / "ct" / "ct-a.nii.gz"]
    prepare_dataset(mr, ct, out, config=config, crop=CROP, progress=False)
    with (
        folder_lock(out, LOCK_NAME, "mrct prepare"),
        pytest.raises(OutputBusyError, match="in use by another mrct prepare") as busy,
    ):
        prepare_dataset(mr, ct, out, config=config, crop=CROP, progress=False)
    assert busy.value.exit_code == 9
    leftover = out / "qc" / "mr" / ".sub-01_T1w.mrct-tmp-abcd1234.png"
    leftover.write_bytes(b"half a picture")
    prepare_dataset(mr, ct, out, config=config, crop=CROP, progress=False)
    assert not leftover.exists()


def test_a_slab_failure_names_the_scan(data: Path, config: PreprocessConfig, tmp_path: Path) -> None:
    """Read failures named the file, crop failures did not ("the slab misses the scan")."""
    mr = data / "mr" / "sub-01_T1w.nii.gz"
    far = CropRequest.millimetres(400, 300)  # above any head
    ct = data / "ct" / "ct-a.nii.gz"
    prepare_dataset([mr], [ct], tmp_path / "out", config=config, crop=far, progress=False)
    errors = sorted(e["error"] for e in manifest(tmp_path / "out")["scans"])
    assert [e.split(": ")[0] for e in errors] == sorted([str(ct), str(mr)]), errors


def test_a_hold_out_pattern_matching_nothing_is_said(
    data: Path, config: PreprocessConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mr, ct = [data / "mr" / "sub-01_T1w.nii.gz"], [data / "ct" / "ct-a.nii.gz"]
    prepare_dataset(mr, ct, tmp_path / "o", config=config, crop=CROP, progress=False, hold_out_from="SUB*")
    assert "--hold-out-from 'SUB*' matches no scan id (case matters)" in caplog.text


def test_copies_and_renamed_files_are_judged_by_content(
    data: Path, config: PreprocessConfig, tmp_path: Path
) -> None:
    """From review: a copy of a scan whose earlier entry failed was prepared twice; a backup of a
    scan fixed in place was dropped as "the same image"; files renamed round held one image twice."""
    import shutil

    ct, out, src = [data / "ct" / "ct-a.nii.gz"], tmp_path / "out", tmp_path / "in"
    heads = [data / "mr" / "sub-01_T1w.nii.gz", data / "mr" / "sub-02_T1w.nii.gz"]

    def run(*names: str) -> dict[str, str]:
        prepare_dataset([src / n for n in names], ct, out, config=config, crop=CROP, progress=False)
        m = manifest(out)
        return {
            e["id"]: e["source_checksum"] for e in m["scans"] if e["domain"] == "mr" and e["status"] == "ok"
        }

    src.mkdir()
    (src / "x.nii.gz").write_text("broken")
    run("x.nii.gz")  # fails
    shutil.copy(heads[0], src / "x.nii.gz")
    shutil.copy(heads[0], src / "y.nii.gz")
    assert list(run("x.nii.gz", "y.nii.gz")) == ["x"]  # one image, once
    (src / "backup").mkdir()
    shutil.copy(src / "x.nii.gz", src / "backup" / "x_orig.nii.gz")
    shutil.copy(heads[1], src / "x.nii.gz")  # x fixed in place; the backup keeps the old image
    assert sorted(run("x.nii.gz", "backup/x_orig.nii.gz")) == ["x", "x_orig"]
    (src / "x.nii.gz").rename(src / "c.nii.gz")
    (src / "backup" / "x_orig.nii.gz").rename(src / "x.nii.gz")  # renamed round
    ok = run("c.nii.gz", "x.nii.gz")
    assert len(ok) == len(set(ok.values())) == 2, ok  # no image twice


def test_a_worker_sees_its_main_process_gone() -> None:
    """The worker's watchdog asked only whether the main PID existed: a new process that took the
    PID over kept the orphaned workers (and their gigabytes) alive. Losing the parent counts too."""
    import subprocess

    from mrct.prepare import _orphaned

    assert not _orphaned(os.getpid(), os.getppid())
    assert _orphaned(os.getpid(), os.getppid() + 1)  # re-parented: the main process is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _orphaned(gone.pid, os.getppid())


def test_an_input_folder_without_scans_is_an_error_and_a_file_given_twice_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From a hunt: an empty --mr folder (a mistyped path) prepared a set without MRs, exit 0; the
    README says an empty folder is exit 2. A file given again through a link, or by another
    spelling, was prepared once without the warning a copy of it gets."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match=r"empty: is empty"):
        find_scans([tmp_path / "empty"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("scans come later")
    with pytest.raises(InputNotFoundError, match=r"notes: holds no scans \(NIfTI, NRRD, MHA, zip or DICOM"):
        find_scans([tmp_path / "notes"])
    head = write_head(tmp_path / "mr" / "head.nii.gz", "mr", seed=1)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "again.nii.gz").symlink_to(head)
    found = find_scans([tmp_path / "mr", tmp_path / "links", head])
    assert [s.path for s in found] == [tmp_path / "links" / "again.nii.gz"]  # the first by path
    assert caplog.text.count("given again; prepared once") == 2
    assert f"{head}: the same file as {tmp_path / 'links' / 'again.nii.gz'}, given again" in caplog.text
