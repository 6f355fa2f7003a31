"""`mrct translate`: outputs on the input grid, DICOM on the source's frame, refusals, report, preview."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from mrct import api
from mrct.cli import app
from mrct.errors import MrctError, ReadError
from mrct.io import read_volume
from mrct.models import write_package
from mrct.networks import build_generator
from mrct.networks.config import GeneratorConfig
from mrct.preprocessing.config import GridConfig, PreprocessConfig
from mrct.volume import Modality, Volume
from tests.dicom_factory import write_series
from tests.external_tools import dciodvfy_errors, dcm2niix_read
from tests.test_prepare import write_head

runner = CliRunner()
CROP = ["--crop-mm", "40,-40"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-direction package on an 8 x 48 x 48 grid of 4 mm."""
    config = GeneratorConfig(ngf=2, n_residual_blocks=1)
    generators = {}
    for seed, direction in enumerate(("mr_to_ct", "ct_to_mr")):
        torch.manual_seed(seed)
        generators[direction] = build_generator(config).state_dict()
    out = tmp_path_factory.mktemp("models") / "tiny"
    return write_package(
        out,
        name="tiny",
        generators=generators,
        generator_config=config,
        preprocessing=PreprocessConfig(grid=GridConfig(depth=8, height=48, width=48, inplane_mm=4.0)),
        intensity={"ct": {"map": "linear", "hu_range": [-1024, 3071]}},
        training={},
        metrics={},
        license="test",
        description="untrained test model",
    )


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heads")
    write_head(root / "mr.nii.gz", "mr", seed=1)
    write_head(root / "ct.nii.gz", "ct", seed=2)
    return root


def _translate(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["translate", *args])


def test_nifti_mr_to_ct_lands_on_the_input_grid(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    src = tmp_path / "scan.nii.gz"
    src.write_bytes((heads / "mr.nii.gz").read_bytes())
    before = src.read_bytes()
    result = _translate(str(src), "--to", "ct", "--model", str(tiny_model), *CROP)
    assert result.exit_code == 0, result.output
    out = tmp_path / "scan_synthetic_ct.nii.gz"  # the default name, beside the input
    assert f"wrote {out}" in result.stdout
    assert src.read_bytes() == before  # the input is never modified
    image, source = nib.load(out), nib.load(src)
    assert np.array_equal(image.affine, source.affine) and image.shape == source.shape
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16 and data.min() >= -1024 and data.max() <= 3071
    s = (image.affine @ np.c_[np.indices(image.shape).reshape(3, -1).T, np.ones(data.size)].T)[2]
    outside = (s > 40) | (s < -40)
    assert (data.reshape(-1)[outside] == -1024).all()  # background outside the slab
    assert (data.reshape(-1)[~outside] > -1024).any()


def test_verbose_logs_the_stages(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    """From a CLI walk: the README says `mrct -v COMMAND` logs progress details; translate logged
    none."""
    out = tmp_path / "v.nii.gz"
    result = runner.invoke(
        app,
        [
            "-v",
            "translate",
            str(heads / "mr.nii.gz"),
            "--to",
            "ct",
            "-o",
            str(out),
            "--model",
            str(tiny_model),
            *CROP,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("INFO: ")]
    assert [line.split(" ")[1] for line in lines] == ["model", "read", "slab", "translated"], lines
    assert lines[2] == "INFO: slab 40.0 to -40.0 mm (crop-mm)" and "forward" in lines[3]


def test_mr_output_scale_and_api(heads: Path, tiny_model: Path) -> None:
    volume = read_volume(heads / "ct.nii.gz")
    out = api.translate(volume, to="mr", model=tiny_model, crop_mm="40,-40")
    assert out.modality is Modality.MR and out.array.dtype == np.float32
    assert out.array.min() >= 0 and out.array.max() <= 1000
    assert np.array_equal(out.affine, volume.affine) and out.shape == volume.shape


def test_api_refuses_bad_arguments_with_typed_errors(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    volume = read_volume(heads / "mr.nii.gz")
    holes = volume.array.astype(np.float32)
    holes[0, 0, :3] = [np.nan, np.inf, np.nan]
    with pytest.raises(ReadError, match=r"3 of \d+ voxels are NaN or infinite"):
        api.translate(volume.replace(array=holes), model=tiny_model)
    with pytest.raises(ReadError, match="a 3D volume is needed"):
        api.translate(volume.replace(array=volume.array[:, :, :1]), model=tiny_model)
    with pytest.raises(MrctError, match="to must be 'ct' or 'mr', got 'xyz'"):
        api.translate(heads / "mr.nii.gz", to="xyz", model=tiny_model)
    with pytest.raises(MrctError, match="output_format must be one of nifti, nrrd, mha, dicom"):
        api.translate_file(heads / "mr.nii.gz", tmp_path / "o.nii.gz", output_format="jpeg")
    assert not list(tmp_path.iterdir())


def test_full_fov_translates_beyond_the_slab(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    volume = read_volume(heads / "mr.nii.gz")
    slab = api.translate(volume, to="ct", model=tiny_model, crop_mm="20,-20")
    full = api.translate(volume, to="ct", model=tiny_model, crop_mm="20,-20", full_fov=True)
    head = (volume.array > 250).sum()
    assert (slab.array > -1024).sum() < 0.6 * head  # one 40 mm slab of a 170 mm head
    assert (full.array > -1024).sum() > 0.9 * head  # every slab of the field of view


def test_refuses_ct_to_ct_unless_forced(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    args = [
        str(heads / "ct.nii.gz"),
        "--to",
        "ct",
        "--model",
        str(tiny_model),
        *CROP,
        "-o",
        str(tmp_path / "o.nii.gz"),
    ]
    refused = _translate(*args)
    assert refused.exit_code == 8
    assert "CT already" in refused.stderr and "--force" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "o.nii.gz").exists()
    assert _translate(*args, "--force").exit_code == 0


def test_existing_output_needs_overwrite(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"keep me")
    args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(out)]
    result = _translate(*args)
    assert result.exit_code == 4 and out.read_bytes() == b"keep me"
    assert _translate(*args, "--overwrite").exit_code == 0
    assert nib.load(out).shape == (100, 120, 100)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--device", "cuda:3"], 1, "--device"),
        (["--device", "xpu"], 1, "--device xpu: not available"),  # was "unexpected RuntimeError", 70
        (["--device", "meta"], 1, "--device meta: not a device mrct computes on"),  # was 70
        (["--device", "CPU"], 1, "--device CPU: not a device (auto, cpu, cuda or cuda:N)"),
        (["--device", "cpu:1"], 1, "--device cpu:1: there is one CPU device (cpu)"),  # was accepted
        (["--crop-mm", "nan,1"], 1, "--crop-mm SUP,INF must be finite numbers"),
        (["--crop-mm", "10"], 1, "--crop-mm expects two numbers SUP,INF"),  # an option value: 1, not 6
        (["--crop-mm", "20,-95", "--no-crop"], 1, "give only one of --crop-mm"),
        (["--crop-markups", "nope.mrk.json"], 2, "nope.mrk.json: markups file not found"),
        (["--model", "./no/such/dir/"], 7, "no/such/dir: no such model folder"),
        (["--model", "no-such-model"], 7, "no-such-model"),
        (["--crop-mm", "400,300"], 6, "misses the scan"),
        (["--format", "dicom", "-o", "x.nii.gz"], 1, "does not match"),
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, heads: Path, tiny_model: Path, extra: list[str], code: int, message: str
) -> None:
    args = [str(heads / "mr.nii.gz"), "--to", "ct"]
    if "--model" not in extra:
        args += ["--model", str(tiny_model)]
    if not {"--crop-mm", "--crop-markups"} & set(extra):
        args += CROP
    result = _translate(*args, *[str(tmp_path / e) if e == "x.nii.gz" else e for e in extra])
    if extra == ["--device", "cuda:3"] and torch.cuda.device_count() > 3:
        pytest.skip("this machine has the device")
    if extra == ["--device", "xpu"] and torch.xpu.is_available():
        pytest.skip("this machine has the device")
    assert result.exit_code == code, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_tampered_model_is_refused(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    weights = bad / "generator_mr_to_ct.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = _translate(
        str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(bad), *CROP, "-o", str(tmp_path / "o.nii")
    )
    assert result.exit_code == 7 and "sha256" in result.stderr.lower()


def test_report_and_preview(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    report, preview = tmp_path / "run.json", tmp_path / "p.png"
    args = [
        str(heads / "mr.nii.gz"),
        "--to",
        "ct",
        "--model",
        str(tiny_model),
        *CROP,
        "-o",
        str(tmp_path / "o.nrrd"),
    ]
    result = _translate(*args, "--report", str(report), "--preview", str(preview), "-q")
    assert result.exit_code == 0 and result.stdout == ""
    content = json.loads(report.read_text())
    assert content["model"]["name"] == "tiny" and len(content["model"]["checksum"]) == 64
    assert content["slabs"][0] == {
        "superior_mm": 40.0,
        "inferior_mm": -40.0,
        "source": "crop-mm",
        "outside_fov_mm": 0.0,
    }
    assert {"read", "preprocess", "forward", "invert", "write", "total"} <= set(content["timings_s"])
    assert len(content["input"]["sha256"]) == 64 and content["device"] == "cpu"
    assert content["output"]["format"] == "nrrd" and (tmp_path / "o.nrrd").is_file()
    from PIL import Image

    picture = Image.open(preview)
    assert picture.size[0] > 100
    # From a hunt: the preview said nowhere which row was synthetic; a panel cut from it looked
    # like a real CT. The file says so in its Description, and a caption names the rows.
    assert picture.info["Description"] == "mrct synthetic CT – not for diagnosis"
    caption = np.asarray(picture.convert("L"))[-12:]
    assert caption.max() > 128  # text below the two rows of planes


def test_a_slab_partly_outside_the_scan_is_warned_about_and_reported(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """As with a chin below the field of view: the part outside is background to the model,
    so the user is told how much, on stderr and in the report (and not told when none is)."""
    from mrct.preprocessing.grid import world_extent

    volume = read_volume(heads / "mr.nii.gz")
    top = float(world_extent(volume.shape, volume.affine)[1][2])
    report = tmp_path / "run.json"
    levels = f"{top + 12:g},{top - 60:g}"
    out = tmp_path / "o.nii.gz"
    args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), "-o", str(out)]
    result = _translate(*args, "--crop-mm", levels, "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "12.0 mm of the brow-to-jaw slab lies outside the scan" in result.stderr
    assert "(see outside_fov_mm in the report)" in result.stderr
    assert json.loads(report.read_text())["slabs"][0]["outside_fov_mm"] == 12.0
    unreported = _translate(*args, "--crop-mm", levels, "--overwrite")  # no report to point to
    assert "lies outside the scan" in unreported.stderr and "report" not in unreported.stderr
    inside = _translate(*args, *CROP, "--overwrite")
    assert inside.exit_code == 0 and "outside the scan" not in inside.stderr


def test_preview_planes_pass_through_the_translated_slab(
    tmp_path: Path, heads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bounding-box centre of a head MR often lies above the slab; the preview moves to it."""
    from mrct import qc
    from mrct.translation import write_preview

    volume = read_volume(heads / "mr.nii.gz")
    centres: list[np.ndarray] = []

    def mosaic(vol: object, centre: np.ndarray, px: float) -> np.ndarray:
        centres.append(np.array(centre))
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(qc, "three_plane_mosaic", mosaic)
    slab = {"superior_mm": 30.0, "inferior_mm": -50.0, "source": "crop-mm"}
    write_preview(volume, volume, tmp_path / "p.png", overwrite=False, slabs=[slab])
    box = qc.world_centre(volume)
    assert len(centres) == 2 and all(c[2] == -10.0 for c in centres)  # the middle of the slab in S
    np.testing.assert_array_equal(centres[0][:2], box[:2])  # R and A stay the box centre's


@pytest.mark.tools
def test_dicom_in_dicom_out_shares_the_frame_of_reference(tmp_path: Path, tiny_model: Path) -> None:
    write_series(
        tmp_path / "study" / "t1",
        modality="MR",
        shape=(64, 64, 40),
        pixel_spacing=(3.0, 3.0),
        slice_spacing=2.5,
        centre=(0.0, 0.0, 10.0),
        patient_position="HFP",
    )
    result = _translate(
        str(tmp_path / "study" / "t1"), "--to", "ct", "--model", str(tiny_model), "--crop-mm", "40,-20"
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "study" / "t1_synthetic_ct"  # a sibling folder
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 40
    src = pydicom.dcmread(next(iter(sorted((tmp_path / "study" / "t1").iterdir()))), stop_before_pixels=True)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "CT" and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert "synthetic CT" in ds.SeriesDescription and "not for diagnosis" in ds.SeriesDescription
    assert "DERIVED" in ds.ImageType and "not for diagnosis" in ds.DerivationDescription
    assert dciodvfy_errors(files[0]) == []
    _, ours = dcm2niix_read(out, tmp_path / "d2n-out")
    _, theirs = dcm2niix_read(tmp_path / "study" / "t1", tmp_path / "d2n-in")
    assert np.allclose(ours, theirs, atol=1e-3)


def test_a_series_missing_a_slice_translates_with_allow_gaps(tmp_path: Path, tiny_model: Path) -> None:
    """The missing-slice error names --allow-gaps; translate (and info, locate) accept it."""
    write_series(
        tmp_path / "t1",
        modality="MR",
        shape=(64, 64, 40),
        pixel_spacing=(3.0, 3.0),
        slice_spacing=2.5,
        centre=(0.0, 0.0, 10.0),
        omit=(20,),
    )
    args = [str(tmp_path / "t1"), "--to", "ct", "--model", str(tiny_model), "--crop-mm", "40,-20"]
    refused = _translate(*args)
    assert refused.exit_code == 3 and "pass --allow-gaps" in refused.stderr
    report = tmp_path / "run.json"
    result = _translate(*args, "--allow-gaps", "--report", str(report))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "t1_synthetic_ct").glob("*.dcm"))) == 40  # the gap filled
    assert json.loads(report.read_text())["input"]["allow_gaps"] is True
    info = runner.invoke(app, ["info", str(tmp_path / "t1"), "--allow-gaps", "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["shape"][2] == 40
    assert "--allow-gaps" in runner.invoke(app, ["locate", "--help"]).stdout


def test_a_sheared_nifti_keeps_its_qform_and_other_formats_are_refused_early(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """A gantry tilt kept as shear (dcm2niix's plain output): the sform holds the shear, the qform
    cannot, and ITK-based tools (3D Slicer) read the qform, so the output keeps the input's."""
    src = nib.load(heads / "ct.nii.gz")
    sform = src.affine.copy()
    sform[1, 2] = 2.0 * np.tan(np.radians(15))  # y moves with the slice index: a 15 degree tilt
    qform = src.affine.copy()  # what dcm2niix puts there: the untilted grid
    tilted = nib.Nifti1Image(np.asanyarray(src.dataobj), sform)
    tilted.set_qform(qform, code=1)
    tilted.set_sform(sform, code=1)
    nib.save(tilted, tmp_path / "tilted.nii.gz")
    args = [str(tmp_path / "tilted.nii.gz"), "--to", "mr", "--model", str(tiny_model), "--crop-mm", "40,-40"]
    result = _translate(*args, "-o", str(tmp_path / "out.nii.gz"))
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(out.get_sform(), sform, atol=1e-5)
    np.testing.assert_allclose(out.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms(), src.header.get_zooms(), atol=1e-6)
    for name in ("out.nrrd", "out/"):
        refused = _translate(*args, "-o", str(tmp_path / name))
        assert refused.exit_code == 1 and "grid is sheared" in refused.stderr, refused.output
        assert "write NIfTI" in refused.stderr and not (tmp_path / name).exists()
    batch_in = tmp_path / "in"
    batch_in.mkdir()
    (tmp_path / "tilted.nii.gz").rename(batch_in / "tilted.nii.gz")
    run = CliRunner().invoke(
        app,
        [
            "batch",
            str(batch_in),
            "-o",
            str(tmp_path / "b"),
            "--to",
            "mr",
            "--format",
            "nrrd",
            "--model",
            str(tiny_model),
        ],
    )
    rows = json.loads((tmp_path / "b" / "manifest.json").read_text())["series"]
    assert run.exit_code != 0 and [r["status"] for r in rows] == ["failed"], run.output
    assert "grid is sheared" in rows[0]["message"] and "use --format nifti" in rows[0]["message"], rows[0]


def test_converting_a_synthetic_image_keeps_it_labelled(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """mrct convert on mrct's own output (to DICOM, back to NIfTI, through --anonymize, to NRRD):
    every result still says synthetic and not for diagnosis, and batch still knows it as ours."""
    from mrct.labels import series_description

    sct = tmp_path / "sct.nii.gz"
    assert (
        _translate(
            str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(sct)
        ).exit_code
        == 0
    )
    label = series_description(Modality.CT)
    steps = [(sct, "dcm/"), (tmp_path / "dcm", "anon/"), (tmp_path / "anon", "back.nii.gz"), (sct, "s.nrrd")]
    for src, dst in steps:
        extra = ["--anonymize"] if dst == "anon/" else []
        result = runner.invoke(app, ["convert", str(src), str(tmp_path / dst), *extra])
        assert result.exit_code == 0, result.output
    for folder in ("dcm", "anon"):
        ds = pydicom.dcmread(next((tmp_path / folder).glob("*.dcm")), stop_before_pixels=True)
        assert ds.SeriesDescription == label and "not for diagnosis" in ds.DerivationDescription
        assert ds.Modality == "CT"  # from the label, not guessed from the intensities
    descrip = bytes(nib.load(tmp_path / "back.nii.gz").header["descrip"]).decode()
    assert descrip.startswith("mrct synthetic CT") and "not for diagnosis" in descrip
    assert "mrct synthetic CT" in (tmp_path / "s.nrrd").read_bytes()[:2000].decode("latin-1")


def test_the_report_hashes_the_series_read_and_stays_out_of_the_input(
    tmp_path: Path, tiny_model: Path
) -> None:
    """With --series in a folder of two series, the report's checksum and file count are those
    of the series translated; a report, preview or output inside the input folder is refused."""
    import hashlib

    folder = tmp_path / "study"
    mr = write_series(folder, modality="MR", shape=(64, 64, 40), pixel_spacing=(3.0, 3.0), series_number=2)
    write_series(folder, modality="CT", shape=(32, 32, 10), series_number=3)
    args = [
        str(folder),
        "--to",
        "ct",
        "--series",
        mr.series_uid,
        "--model",
        str(tiny_model),
        "--crop-mm",
        "40,-20",
    ]
    result = _translate(*args, "-o", str(tmp_path / "o.nii.gz"), "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())["input"]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(mr.files))).hexdigest()
    assert report["files"] == len(mr.files) == 40 and report["sha256"] == digest
    for option, name in (("--report", "r.json"), ("--preview", "p.png"), ("-o", "o.nii.gz")):
        extra = ["-o", str(tmp_path / "o2.nii.gz")] if option != "-o" else []
        refused = _translate(*args, *extra, option, str(folder / name))
        assert refused.exit_code == 4 and f"{option} inside the input folder" in refused.stderr
    assert not [p for p in folder.iterdir() if p.suffix in (".json", ".png", ".gz")]


def test_a_2d_baseline_translates_slice_by_slice(tmp_path: Path, heads: Path) -> None:
    """A frame-wise (2D) generator runs over the model grid's slices; the volume comes back whole."""
    config = GeneratorConfig(spatial_dims=2, ngf=2, n_residual_blocks=1)
    torch.manual_seed(0)
    weights = build_generator(config).state_dict()
    package = write_package(
        tmp_path / "tiny2d",
        name="tiny2d",
        generators={"mr_to_ct": weights},
        generator_config=config,
        preprocessing=PreprocessConfig(grid=GridConfig(depth=8, height=48, width=48, inplane_mm=4.0)),
        intensity={},
        training={},
        metrics={},
        license="test",
        description="untrained 2D test model",
    )
    volume = read_volume(heads / "mr.nii.gz")
    out = api.translate(volume, to="ct", model=package, crop_mm="40,-40")
    assert out.shape == volume.shape and np.array_equal(out.affine, volume.affine)
    assert (out.array > -1024).sum() > 1000


def test_the_bundled_model_verifies_and_has_both_directions() -> None:
    from mrct.inference import DEFAULT_MODEL, Translator

    translator = Translator.from_package(None, "cpu")
    assert translator.package.name == DEFAULT_MODEL
    assert set(translator.package.directions) == {"mr_to_ct", "ct_to_mr"}
    assert "not for clinical use" in (translator.package.path / "README.md").read_text()


@pytest.mark.realdata
def test_the_bundled_model_translates_a_held_out_ixi_head(shared_data: Path, tmp_path: Path) -> None:
    """The main job with no options: an IXI MR of the test split (never trained on)."""
    src = next((shared_data / "mr" / "ixi_t1_2mm").glob("IXI034*.nii.gz"))
    from mrct.metrics import synthetic_ct_checks

    out, report = tmp_path / "sct.nii.gz", tmp_path / "run.json"
    result = _translate(str(src), "--to", "ct", "-o", str(out), "--device", "cpu", "--report", str(report))
    assert result.exit_code == 0, result.output
    image, source = nib.load(out), nib.load(src)
    assert np.array_equal(image.affine, source.affine) and image.shape == source.shape
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16 and (data > -500).sum() > 100_000  # a head inside the slab
    slab = json.loads(report.read_text())["slabs"][0]
    checks = synthetic_ct_checks(read_volume(src), read_volume(out), slab["superior_mm"], slab["inferior_mm"])
    assert checks.passes(), checks.to_dict()  # the bar: Dice, air, head median HU, bone


@pytest.mark.realdata
@pytest.mark.tools
@pytest.mark.parametrize(
    "series", ["mr_philips_elition_t1_mprage_sag3d", "mr_siemens_prisma_t1_fl2d_sag_hfs"]
)
def test_the_bundled_model_on_real_dicom_mrs_meets_the_bar(
    shared_data: Path, tmp_path: Path, series: str
) -> None:
    """A real DICOM MR folder in, a DICOM sCT out on its frame of reference, valid for dciodvfy,
    on dcm2niix's grid of the source, and inside the quality bar. Both series were in the
    bundled model's training set, so this is no evidence for other scanners or sequences."""
    from mrct.io.orientation import closest_canonical
    from mrct.metrics import synthetic_ct_checks

    def canonical(volume: Volume) -> Volume:  # the same voxel grid in one axis order
        array, affine = closest_canonical(volume.array, volume.affine)
        return volume.replace(array=array, affine=affine)

    src, out, report = shared_data / "dicom" / series, tmp_path / "sct", tmp_path / "run.json"
    args = ("--to", "ct", "-o", str(out), "--format", "dicom", "--report", str(report), "--device", "cpu")
    result = _translate(str(src), *args)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    source = pydicom.dcmread(next(p for p in sorted(src.rglob("*")) if p.is_file()), stop_before_pixels=True)
    assert first.FrameOfReferenceUID == source.FrameOfReferenceUID and "synthetic" in first.SeriesDescription
    assert dciodvfy_errors(files[0]) == [] and dciodvfy_errors(files[-1]) == []
    # dcm2niix may traverse the two series in opposite slice orders: compare the voxel grids
    source_grid = closest_canonical(*dcm2niix_read(src, tmp_path / "d2n_src"))
    output_grid = closest_canonical(*dcm2niix_read(out, tmp_path / "d2n_out"))
    assert output_grid[0].shape == source_grid[0].shape
    np.testing.assert_allclose(output_grid[1], source_grid[1], atol=1e-3)
    mr, sct = canonical(read_volume(src)), canonical(read_volume(out))
    np.testing.assert_allclose(sct.affine, mr.affine, atol=1e-3)
    slab = json.loads(report.read_text())["slabs"][0]
    checks = synthetic_ct_checks(mr, sct, slab["superior_mm"], slab["inferior_mm"])
    assert checks.passes(), checks.to_dict()


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """A 4 x 4 rotation about RAS axis ``axis`` (0: L-R, pitch; 2: I-S, yaw)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [a for a in range(3) if a != axis]
    turn = np.eye(4)
    turn[[i, i, j, j], [i, j, i, j]] = c, -s, s, c
    return turn


@pytest.mark.realdata
@pytest.mark.parametrize("position", ["stored_slp", "pitched_20", "turned_25"])
def test_the_bundled_model_in_other_patient_positions(
    shared_data: Path, tmp_path: Path, position: str
) -> None:
    """The held-out IXI034 stored in another axis order, and its head pitched (chin down) or
    turned in the scanner (the same voxels under a rotated affine): the output lands on each
    input's own grid and meets the quality bar in each pose."""
    from mrct.metrics import synthetic_ct_checks

    source = nib.load(next((shared_data / "mr" / "ixi_t1_2mm").glob("IXI034*.nii.gz")))
    if position == "stored_slp":  # same anatomy and geometry, another voxel order
        now = nib.orientations.io_orientation(source.affine)
        image = source.as_reoriented(
            nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt("SLP"))
        )
    else:
        axis, degrees = (0, 20.0) if position == "pitched_20" else (2, -25.0)
        image = nib.Nifti1Image(np.asarray(source.dataobj), _rotation(axis, degrees) @ source.affine)
    src, out, report = tmp_path / "mr.nii.gz", tmp_path / "sct.nii.gz", tmp_path / "run.json"
    nib.save(image, src)
    result = _translate(str(src), "--to", "ct", "-o", str(out), "--device", "cpu", "--report", str(report))
    assert result.exit_code == 0, result.output
    written = nib.load(out)
    assert np.allclose(written.affine, image.affine, atol=1e-4) and written.shape == image.shape
    slab = json.loads(report.read_text())["slabs"][0]
    checks = synthetic_ct_checks(read_volume(src), read_volume(out), slab["superior_mm"], slab["inferior_mm"])
    assert checks.passes(), checks.to_dict()


def test_overwrite_never_deletes_the_input_or_a_users_folder(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """--overwrite replaces an earlier output only: not the input, a folder holding it, or a folder
    of other files (a mistaken ``-o ~/data``). Each is refused before any work, with exit code 4."""
    series = tmp_path / "study" / "t1"
    write_series(series, modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    nifti = tmp_path / "mr.nii.gz"
    nifti.write_bytes((heads / "mr.nii.gz").read_bytes())
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.txt").write_text("years of work\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        (nifti, nifti, "would replace the input"),
        (series, series, "would replace the input"),
        (series, tmp_path / "study", "holds the input"),
        (nifti, tmp_path, "holds the input"),
        (nifti, data, "'precious.txt'"),
    ]
    for src, dst, message in cases:
        args = [str(src), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(dst), "--overwrite"]
        result = _translate(*args)
        assert result.exit_code == 4 and message in result.stderr, (src, dst, result.output)
        assert result.stderr.count("\n") == 1 and str(dst) in result.stderr
    report = _translate(
        str(nifti), "--to", "ct", "--model", str(tiny_model), *CROP, "--report", str(nifti), "--overwrite"
    )
    assert report.exit_code == 4 and "would replace the input" in report.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    # An earlier mrct series (IM_0001.dcm ...) is replaced, and so is an empty folder.
    out = tmp_path / "sct"
    args = [str(series), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(out)]
    assert _translate(*args).exit_code == 0
    first = pydicom.dcmread(out / "IM_0001.dcm").SOPInstanceUID
    assert _translate(*args, "--overwrite").exit_code == 0
    assert pydicom.dcmread(out / "IM_0001.dcm").SOPInstanceUID != first
    (tmp_path / "empty").mkdir()
    assert _translate(*args[:-1], str(tmp_path / "empty"), "--overwrite").exit_code == 0

    # A series folder holds the series alone, so a report or preview goes beside it.
    inside = _translate(*args, "--overwrite", "--report", str(out / "run.json"))
    assert inside.exit_code == 1 and "--report inside the DICOM output folder" in inside.stderr
    assert not (out / "run.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "out.txt"], "unknown output format"),
        (["-o", "a: b.xyz"], "a: b.xyz: unknown output format"),  # the message keeps the path whole
        (["-o", "out.txt", "--format", "nifti"], "unknown output format"),
        (["-o", "out.mhd"], "single-file .nrrd or .mha"),
        (["--preview", "p.jpg"], "ending in .png"),
    ],
)
def test_a_bad_output_name_is_a_usage_error_before_any_work(
    tmp_path: Path,
    heads: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    """Not an internal error (exit 70) after the model ran: exit 1, one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    result = _translate(str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, *extra)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert result.stderr.count("\n") == 1 and "unexpected" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_dicom_folder_may_have_a_dotted_name(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    out = tmp_path / "sct.v2"
    args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP]
    assert _translate(*args, "-o", str(out), "--format", "dicom").exit_code == 0
    assert read_volume(out).modality is Modality.CT


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_every_format_labels_the_output_synthetic(
    tmp_path: Path, heads: Path, tiny_model: Path, suffix: str
) -> None:
    """Not only DICOM: NIfTI's descrip and NRRD/MHA's Description say what the image is."""
    import SimpleITK as sitk

    out = tmp_path / f"sct{suffix}"
    args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "-o", str(out)]
    assert _translate(*args).exit_code == 0
    if suffix == ".nii.gz":
        label = nib.load(out).header["descrip"].tobytes().rstrip(b"\0").decode("ascii")
    else:
        label = sitk.ReadImage(str(out)).GetMetaData("Description")
    assert label == "mrct synthetic CT - not for diagnosis"


def test_sigterm_while_writing_leaves_no_temporary_files(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """``kill``/``timeout``/a scheduler's SIGTERM half-way through a DICOM series: exit 143, and the
    hidden temporary folder is removed (Python's default would end the process on the spot)."""
    import subprocess
    import sys

    out = tmp_path / "out" / "sct"
    script = f"""
import os, signal, sys
from mrct.io import dicom_encode
from mrct import cli
encode, calls = dicom_encode.SeriesEncoder.encode, []
def dying(self, values):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return encode(self, values)
dicom_encode.SeriesEncoder.encode = dying
sys.argv = ["mrct", "translate", {str(heads / "mr.nii.gz")!r}, "--to", "ct", "--model", {str(tiny_model)!r},
            "--crop-mm", "40,-40", "-o", {str(out)!r}, "--format", "dicom"]
cli.main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr == "error: terminated (SIGTERM); unfinished outputs are removed\n"  # one line
    assert list((tmp_path / "out").iterdir()) == []  # neither the series nor its temporary folder


def test_each_chosen_series_gets_its_own_default_output(tmp_path: Path, tiny_model: Path) -> None:
    # Before, the default name ignored --series: the second series of a folder hit "output exists".
    study = tmp_path / "study"
    uids = ("1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102")
    for number, uid in enumerate(uids, start=1):
        write_series(
            study, modality="MR", shape=(48, 48, 24), pixel_spacing=(3.0, 3.0), slice_spacing=3.0,
            centre=(0.0, 0.0, 10.0), series_uid=uid, series_number=number,
        )  # fmt: skip
    for uid in uids:
        result = _translate(
            str(study), "--to", "ct", "--series", uid, "--model", str(tiny_model), "--crop-mm", "30,-20"
        )
        assert result.exit_code == 0, result.output
    for uid in uids:
        out = tmp_path / f"study_{uid}_synthetic_ct"
        series = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in out.glob("*.dcm")}
        assert len(series) == 1 and len(list(out.glob("*.dcm"))) == 24
    # A split series' key ("UID#2") becomes a filesystem-safe name.
    from mrct.io import OutputFormat
    from mrct.translation import default_output

    named = default_output(study, Modality.CT, OutputFormat.NIFTI, series="1.2.3#2")
    assert named == tmp_path / "study_1.2.3_2_synthetic_ct.nii.gz"


def test_a_long_input_name_gets_an_output_name_the_file_system_takes(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """A 247-byte file name (the limit is 255) plus "_synthetic_ct" and a temporary prefix would
    not fit: the default output keeps the name's start and adds a short hash of the whole."""
    src = tmp_path / ("é" * 120 + ".nii.gz")
    shutil.copy(heads / "mr.nii.gz", src)
    result = _translate(str(src), "--to", "ct", "--model", str(tiny_model), *CROP, "-q")
    assert result.exit_code == 0, result.output
    (out,) = [p for p in tmp_path.iterdir() if p != src]
    assert out.name.startswith("é" * 70) and out.name.endswith("_synthetic_ct.nii.gz")
    assert len(out.name.encode()) <= 200
    assert read_volume(out).array.dtype == np.int16  # HU


def test_an_unusable_output_report_or_preview_fails_before_any_work(
    tmp_path: Path, heads: Path, tiny_model: Path
) -> None:
    """Under /proc (writable by mode for root, yet nothing can be created), under a file, or a
    report that is a folder: one line, exit 4/5, checked before the model runs, so no main
    output is left behind by a run that fails (it used to be, or exit 70)."""
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    out = tmp_path / "out.nii.gz"
    cases = [
        (["-o", "/proc/out.nii.gz"], 5, "/proc/out.nii.gz: cannot write here"),
        (["-o", str(out), "--preview", "/proc/p.png"], 5, "/proc/p.png: cannot write here"),
        (["-o", str(out), "--report", str(tmp_path / "afile" / "r.json")], 5, "afile is not a folder"),
        (["-o", str(out), "--report", str(tmp_path / "folder"), "--overwrite"], 4, "--report needs a file"),
    ]
    for extra, code, message in cases:
        result = _translate(str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, *extra)
        assert result.exit_code == code, (extra, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not out.exists(), extra
    assert (tmp_path / "folder").is_dir() and not list((tmp_path / "folder").iterdir())
    # From a hunt: --report naming the output wrote the JSON over the synthetic image (exit 0).
    out.write_bytes(b"an earlier output")
    for extra, words in (
        (["-o", str(out), "--report", str(out)], "--report names the same file as -o"),
        (
            ["-o", str(out), "--report", str(tmp_path / "x.png"), "--preview", str(tmp_path / "x.png")],
            "--preview",
        ),
    ):
        args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "--overwrite"]
        result = _translate(*args, *extra)
        assert result.exit_code == 1 and words in result.stderr and result.stderr.count("\n") == 1, (
            result.stderr
        )
        assert out.read_bytes() == b"an earlier output" and not (tmp_path / "x.png").exists()


def test_translate_dot_in_a_dicom_folder_writes_beside_it(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a hunt: "mrct translate ." in a DICOM folder failed ("_synthetic_ct: -o inside the input
    folder")."""
    series = write_series(tmp_path / "t1", modality="MR", shape=(48, 48, 36), pixel_spacing=(4.0, 4.0))
    monkeypatch.chdir(series.files[0].parent)
    result = _translate(".", "--to", "ct", "--model", str(tiny_model), *CROP)
    assert result.exit_code == 0, result.output
    assert read_volume(tmp_path / "t1_synthetic_ct").modality is Modality.CT


def test_full_fov_report_names_the_tiles_as_tiles(tmp_path: Path, heads: Path, tiny_model: Path) -> None:
    """The slabs above and below the brow-to-jaw one are tiles, not levels the user gave."""
    report = tmp_path / "run.json"
    args = [str(heads / "mr.nii.gz"), "--to", "ct", "--model", str(tiny_model), *CROP, "--full-fov", "-q"]
    result = _translate(*args, "-o", str(tmp_path / "o.nii.gz"), "--report", str(report))
    assert result.exit_code == 0, result.output
    sources = [s["source"] for s in json.loads(report.read_text())["slabs"]]
    assert sources[0] == "crop-mm" and len(sources) > 1 and set(sources[1:]) == {"full-fov tile"}


def test_a_jaw_guessed_near_the_bottom_is_warned_about_and_reported(tmp_path: Path, tiny_model: Path) -> None:
    """The reference head with its chin cut off: translate warns, with the file's name, and the
    report's slab records it (review: only locate's warning was tested)."""
    from mrct.preprocessing.localise import load_reference

    folder = Path(__file__).parents[1] / "mrct/preprocessing/reference"
    head = read_volume(folder / "head_t1_template.nii.gz", modality=Modality.MR)
    menton = load_reference().landmarks_ras["menton"][2]
    k = int(np.ceil((menton + 12.0 - head.affine[2, 3]) / head.affine[2, 2]))  # RAS-aligned, S third
    affine = head.affine.copy()
    affine[2, 3] += k * affine[2, 2]
    scan = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(head.array[:, :, k:], affine), scan)
    report = tmp_path / "run.json"
    result = _translate(str(scan), "--to", "ct", "--model", str(tiny_model), "--report", str(report))
    assert result.exit_code == 0, result.output
    assert f"{scan}: no chin outline was found near the edge of the scan" in result.stderr
    assert json.loads(report.read_text())["slabs"][0]["jaw_guessed_near_edge"] is True
