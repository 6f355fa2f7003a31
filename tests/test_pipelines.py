"""pipelines/build_tcia_training_set.py: series selection on a TCIA-like tree, and a real prepare."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from tests.dicom_factory import write_series

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "build_tcia_training_set.py"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# (PatientID, PatientName) of the synthetic patients; the IDs also name their folders, as in TCIA.
PATIENTS = {
    "mr1": ("LGG-901", "Smithfield^Juniper"),
    "mr2": ("LGG-902", "Quenby^Marigold"),
    "ct1": ("HN-CHUM-901", "Oakhurst^Tamsin"),
    "ct2": ("HN-CHUM-902", "Pemberton^Ysolde"),
}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_tcia_training_set", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pipeline = _load()


def _series(
    folder: Path,
    patient: str,
    description: str,
    *,
    modality: str = "MR",
    slices: int = 24,
    number: int = 1,
    image_type: tuple[str, ...] = (),
) -> str:
    """A small series with the patient's identity and ``description``; returns its UID."""
    info = write_series(
        folder, modality="MR" if modality == "MR" else "CT", shape=(12, 12, slices), series_number=number
    )
    pid, name = PATIENTS[patient]
    for f in info.files:
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName, ds.SeriesDescription = pid, name, description
        if modality == "PT":
            ds.Modality, ds.SOPClassUID = "PT", UID(PET_STORAGE)
            ds.file_meta.MediaStorageSOPClassUID = UID(PET_STORAGE)
        if image_type:
            ds.ImageType = list(image_type)
        ds.save_as(f, enforce_file_format=True)
    return info.series_uid


def _rtstruct(path: Path, patient: str) -> None:
    """An RTSTRUCT-like object: no pixels, so not an image series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(RTSTRUCT_STORAGE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.PatientID, ds.PatientName = PATIENTS[patient]
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def tcia(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """Two collections in the NBIA "descriptive" layout; returns (mr root, ct root, uids by name)."""
    top = tmp_path_factory.mktemp("tcia")
    mr, ct = top / "LGG-1p19qDeletion", top / "Head-Neck-PET-CT"
    s1, s2 = mr / "LGG-901" / "07-01-2000-NA-MRI BRAIN-11111", mr / "LGG-902" / "01-09-2001-NA-MR HEAD-2222"
    c1, c2 = ct / "HN-CHUM-901" / "08-27-1885-PET-CT-77777", ct / "HN-CHUM-902" / "01-01-1890-CT-88888"
    uids = {
        "t1": _series(s1 / "3.000000-AX T1-22222", "mr1", "AX T1", number=3),
        "t1_post": _series(s1 / "4.000000-AX T1 POST GAD-33333", "mr1", "AX T1 POST GAD", number=4),
        "flair": _series(s1 / "5.000000-FLAIR-44444", "mr1", "FLAIR", number=5),
        "t1_sag": _series(s1 / "6.000000-SAG T1-55555", "mr1", "SAG T1", number=6, slices=20),
        "t1_se": _series(s2 / "7.000000-T1 SE-66666", "mr2", "T1 SE", number=7),
        "t1_tie": _series(s2 / "2.000000-T1 FFE-67676", "mr2", "T1 FFE", number=2),
        "ct": _series(c1 / "2.000000-CT IMAGES-12345", "ct1", "CT IMAGES", modality="CT", number=2),
        "scout": _series(
            c1 / "1.000000-Topogram-23456",
            "ct1",
            "Topogram 0.6 T20s",
            modality="CT",
            slices=2,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ),
        "pet": _series(c1 / "3.000000-PET AC-34567", "ct1", "PET AC", modality="PT", number=3),
        "ct_thin": _series(c2 / "4.000000-CT 2mm-45678", "ct2", "CT 2mm", modality="CT", slices=40, number=4),
        "ct_thick": _series(
            c2 / "2.000000-CT 5mm-56789", "ct2", "CT 5mm", modality="CT", slices=25, number=2
        ),
        "ct_few": _series(c2 / "5.000000-CT HEAD-67890", "ct2", "CT HEAD", modality="CT", slices=5, number=5),
    }
    _rtstruct(c1 / "1.000000-RTstruct-98765" / "1-1.dcm", "ct1")
    return mr, ct, uids


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "selection.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _identifiers() -> list[str]:
    return [v for pid, name in PATIENTS.values() for v in (pid, name, *name.split("^"))]


def _assert_no_identifiers(text: str, identifiers: list[str]) -> None:
    for ident in identifiers:
        assert ident.casefold() not in text.casefold(), f"a patient identifier leaked: {ident!r}"


def test_selection_on_a_tcia_like_tree(tcia: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    mr, ct, uid = tcia
    out = tmp_path / "out"
    # As a user runs it: a real subprocess (the script must import and run on its own).
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--mr-root",
        str(mr),
        "--ct-root",
        str(ct),
        "-o",
        str(out),
        "--dry-run",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {r["series_uid"]: r for r in _rows(out)}
    assert len(rows) == len(_rows(out)) and set(rows) == set(
        uid.values()
    )  # every image series is listed, RTSTRUCT is not
    status = {name: (rows[u]["status"], rows[u]["rule"]) for name, u in uid.items()}
    assert status == {
        "t1": ("chosen", ""),  # most slices of the patient's T1s
        "t1_post": ("skipped", "description"),  # post-contrast
        "flair": ("skipped", "description"),
        "t1_sag": ("skipped", "one-per-patient"),  # fewer slices
        "t1_tie": ("chosen", ""),  # as many slices as T1 SE, lower SeriesNumber
        "t1_se": ("skipped", "one-per-patient"),
        "ct": ("chosen", ""),
        "scout": ("skipped", "localiser"),
        "pet": ("skipped", "modality"),
        "ct_thin": ("chosen", ""),  # 40 slices beat 25
        "ct_thick": ("skipped", "one-per-patient"),
        "ct_few": ("skipped", "slices"),
    }
    t1 = rows[uid["t1"]]
    assert t1["path"] == "[patient]/07-01-2000-NA-MRI BRAIN-11111/3.000000-AX T1-22222"
    assert (t1["modality"], t1["description"], t1["slices"], t1["series_number"]) == (
        "MR",
        "AX T1",
        "24",
        "3",
    )
    assert re.fullmatch(r"AX_T1-[0-9a-f]{8}", t1["prepared_id"])
    assert rows[uid["pet"]]["prepared_id"] == ""
    assert "MR: 6 series found, 2 chosen, 4 skipped (description 2, one-per-patient 2)" in run.stdout
    assert "CT: 6 series found, 2 chosen, 4 skipped" in run.stdout
    assert "1 non-image files ignored" in run.stdout  # the RTSTRUCT
    assert not (out / "manifest.json").exists() and not (out / "series").exists()  # dry run
    text = (out / "selection.csv").read_text(encoding="utf-8") + run.stdout + run.stderr
    _assert_no_identifiers(text, _identifiers())


def test_without_one_per_patient_and_with_own_patterns(
    tcia: tuple[Path, Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mr, ct, uid = tcia
    args = ["--mr-root", str(mr), "--ct-root", str(ct), "-o", str(tmp_path), "--dry-run"]
    assert pipeline.main([*args, "--no-one-per-patient", "--ct-series-pattern", "2mm|images"]) == 0
    rows = {r["series_uid"]: r for r in _rows(tmp_path)}
    chosen = {name for name, u in uid.items() if rows[u]["status"] == "chosen"}
    assert chosen == {"t1", "t1_sag", "t1_se", "t1_tie", "ct", "ct_thin"}
    # A pattern that refuses everything: exit 1, and the summary says what the series were called.
    capsys.readouterr()
    assert pipeline.main([*args, "--mr-series-pattern", "^MPRAGE$"]) == 1
    printed = capsys.readouterr().out
    assert "no MR series chosen; descriptions refused by the pattern:" in printed
    assert "'AX T1 POST GAD' x1" in printed and "'FLAIR' x1" in printed
    _assert_no_identifiers(printed, _identifiers())


@pytest.mark.parametrize(
    ("description", "chosen"),
    [
        ("AX T1", True),
        ("T1 SE AX PRE", True),
        ("sT1W_3D_TFE", True),
        ("t1_fl2d_sag", True),
        ("ADNI_Sag3D MPRAGE", True),
        ("AX FSPGR 3D", True),
        ("AX T1 POST GAD", False),
        ("T1+C_AX", False),
        ("AX T1 C+", False),
        ("T1C", False),
        ("T1_Gd", False),
        ("T1 post-contrast", False),
        ("T1 FS ENHANCED", False),
        ("AX FSPGR 3D POST", False),
        ("FLAIR", False),
        ("AX T2 FSE", False),
        ("T12 test", False),
        ("", False),
    ],
)
def test_default_mr_pattern(description: str, chosen: bool) -> None:
    assert bool(re.search(pipeline.PATTERNS["mr"], description, re.IGNORECASE)) is chosen


@pytest.mark.parametrize(
    ("description", "chosen"),
    [
        ("CT IMAGES", True),
        ("", True),
        ("StandardFull", True),
        ("CT 3.75mm", True),
        ("Topogram", False),
        ("SCOUT", False),
        ("Localizer", False),
        ("Dose Report", False),
        ("MIP 10mm", False),
    ],
)
def test_default_ct_pattern(description: str, chosen: bool) -> None:
    assert bool(re.search(pipeline.PATTERNS["ct"], description, re.IGNORECASE)) is chosen


def test_redaction() -> None:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "AB", "Doe^Jane"
    ids = pipeline._identifiers(ds)
    assert (
        pipeline._redact("AB/x-ab-1/doe_jane/JANE", ids) == "[patient]/x-ab-1/[patient]_[patient]/[patient]"
    )


def _headers(folder: Path) -> Dataset:
    return pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)


@pytest.mark.realdata
@pytest.mark.slow  # 30-45 s on 2 cores: three automatic brow-to-jaw localisations
def test_real_dicom_series_are_selected_and_prepared(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_data / "dicom"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    headers = {p.name: _headers(p) for p in folders}
    out = tmp_path / "prepared"
    rc = pipeline.main(["--mr-root", str(root), "--ct-root", str(root), "-o", str(out)])
    printed = capsys.readouterr()
    rows = _rows(out)
    chosen = {(r["domain"], r["series_uid"]): r["prepared_id"] for r in rows if r["status"] == "chosen"}
    # Both MR series are T1 (MPRAGE, 2D FLASH) of different people; the CT is the only CT.
    uids = {name: str(ds.SeriesInstanceUID) for name, ds in headers.items()}
    assert set(chosen) == {(str(headers[n].Modality).lower(), u) for n, u in uids.items()}
    # Both roots are the same folder: each series is also listed, skipped, under the other domain.
    assert len(rows) == 2 * len(folders)
    assert sum(r["rule"] == "modality" for r in rows) == len(folders)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entries = {(e["domain"], e["id"]): e for e in manifest["scans"]}
    assert set(entries) == {(d, i) for (d, _), i in chosen.items()}
    for e in entries.values():
        assert Path(e["source"]).parent == out / "series" / e["domain"]
        assert (out / e["files"]["qc"]).is_file()  # ok or failed, the scan was read and drawn
        if e["status"] == "ok":
            assert all((out / f).is_file() for f in e["files"].values())
        else:  # a clearly reported failure: in the manifest and in the summary
            assert e["status"] == "failed" and e["error"]
            assert f"failed {e['domain']}/{e['id']}: " in printed.out
    n_failed = sum(e["status"] != "ok" for e in entries.values())
    assert rc == (1 if n_failed else 0)
    mprage = chosen[("mr", uids["mr_philips_elition_t1_mprage_sag3d"])]
    assert entries[("mr", mprage)]["status"] == "ok", entries[("mr", mprage)].get("error")
    identifiers = [str(v) for ds in headers.values() for v in (ds.PatientID, ds.PatientName) if str(v)]
    text = (out / "selection.csv").read_text(encoding="utf-8") + printed.out + printed.err
    _assert_no_identifiers(text + (out / "manifest.json").read_text(encoding="utf-8"), identifiers)


def test_prepare_runs_on_the_linked_series(
    tcia: tuple[Path, Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --dry-run: chosen series are linked under OUT/series and given to mrct prepare.

    The phantoms are not heads, so the automatic crop refuses them: failures must be reported.
    """
    mr, ct, _ = tcia
    rc = pipeline.main(["--mr-root", str(mr), "--ct-root", str(ct), "-o", str(tmp_path)])
    printed = capsys.readouterr()
    ids = {(r["domain"], r["prepared_id"]) for r in _rows(tmp_path) if r["status"] == "chosen"}
    for domain, i in ids:
        links = sorted((tmp_path / "series" / domain / i).iterdir())
        assert links and all(f.is_symlink() for f in links)
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    entries = {(e["domain"], e["id"]): e for e in manifest["scans"]}
    assert set(entries) == ids
    for (domain, i), e in entries.items():
        assert e["source"] == str(tmp_path / "series" / domain / i)
        if e["status"] != "ok":
            assert f"failed {domain}/{i}: {e['error']}" in printed.out
    assert rc == (1 if any(e["status"] != "ok" for e in entries.values()) else 0)
    text = json.dumps(manifest) + printed.out + printed.err
    _assert_no_identifiers(text, _identifiers())
