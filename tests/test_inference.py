"""Translator stages (prepare / run / finish), the fast generator path and the precision option.

Timings live in benchmarks/run.py; these tests check equivalence and plumbing only.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import ConfigError
from mrct.inference import DIRECTION, Translator, output_map, scanner_units
from mrct.io import read_volume
from mrct.metrics import slab_voxels
from mrct.networks import build_generator
from mrct.networks.config import GeneratorConfig
from mrct.preprocessing.chain import invert
from mrct.preprocessing.crop import CropRequest
from mrct.runtime import FastResnet, inference_threads, resolve_precision, torch_threads
from mrct.volume import Modality, Volume
from tests.model_fixtures import write_tiny_model
from tests.phantoms import oblique_affine
from tests.test_prepare import write_head

CROP = CropRequest.millimetres(40, -40)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return read_volume(write_head(tmp_path_factory.mktemp("heads") / "mr.nii.gz", "mr", seed=1))


@pytest.fixture(scope="module")
def oblique_mr(mr: Volume) -> Volume:
    """The same head on an oblique, anisotropic grid (the inverse must follow the affine)."""
    affine = oblique_affine(spacing=(2.0, 2.2, 2.5), angles=(8.0, -12.0, 20.0), origin=(0.0, 0.0, 0.0))
    centre = (np.array(mr.shape) - 1) / 2
    affine[:3, 3] = -affine[:3, :3] @ centre
    return Volume(mr.array, affine, Modality.MR)


# ----------------------------------------------------------------------------- the fast generator


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (GeneratorConfig(ngf=2, n_residual_blocks=1), (8, 48, 48)),
        (GeneratorConfig(ngf=4, n_residual_blocks=2, padding="replicate", depth_stride=1), (7, 30, 33)),
        (GeneratorConfig(ngf=32, n_residual_blocks=1), (10, 20, 18)),
    ],
)
def test_fast_generator_computes_what_the_generator_computes(config: GeneratorConfig, shape: tuple) -> None:
    torch.manual_seed(0)
    generator = build_generator(config).eval()
    x = torch.rand(2, 1, *shape) * 2 - 1
    with torch.inference_mode():
        expected = generator(x)
        fp32 = FastResnet(generator, "fp32")(x)
        bf16 = FastResnet(generator, "bf16")(x)
        other_layout = FastResnet(generator, "fp32", channels_last=False)(x)
    assert fp32.shape == expected.shape == bf16.shape and fp32.dtype == torch.float32
    assert torch.allclose(fp32, expected, atol=5e-5)
    assert torch.allclose(other_layout, expected, atol=5e-5)
    assert (bf16 - expected).abs().max() < 0.15 and (bf16 - expected).abs().mean() < 0.02


# ----------------------------------------------------------------------------- stages


def test_prepare_run_finish_is_translate(tiny: Path, mr: Volume) -> None:
    translator = Translator.from_package(tiny, "cpu", precision="fp32")
    whole = translator.translate(mr, Modality.CT, CROP)
    prepared = translator.prepare(mr, Modality.CT, CROP)
    assert set(prepared.timings) == {"localise", "preprocess"}
    outputs = translator.run(prepared)
    assert len(outputs) == 1 and outputs[0].shape == prepared.slabs[0].image.shape
    staged = translator.finish(prepared, outputs)
    assert np.array_equal(staged.volume.array, whole.volume.array)
    assert staged.slabs == whole.slabs and set(staged.timings) == set(whole.timings)
    assert set(whole.timings) == {"localise", "preprocess", "forward", "invert"}
    # Another translator of the same package can finish what this one prepared (batch overlap).
    other = Translator.from_package(tiny, "cpu", precision="fp32")
    again = other.finish(prepared, other.run(prepared))
    assert np.array_equal(again.volume.array, whole.volume.array)


def test_full_fov_stages_tile_the_scan(tiny: Path, mr: Volume) -> None:
    translator = Translator.from_package(tiny, "cpu", precision="fp32")
    crop = CropRequest.millimetres(20, -20)
    whole = translator.translate(mr, Modality.CT, crop, full_fov=True)
    prepared = translator.prepare(mr, Modality.CT, crop, full_fov=True)
    assert len(prepared.slabs) == len(whole.slabs) > 1
    staged = translator.finish(prepared, translator.run(prepared))
    assert np.array_equal(staged.volume.array, whole.volume.array)


def test_full_fov_tiles_share_the_slab_scale_and_may_hold_no_head(tiny: Path, mr: Volume) -> None:
    """Air above the vertex (common in MR) gives tiles with no head: background, not an error
    about MR statistics; every tile uses the slab's MR scale, not statistics of its own."""
    air = np.full((mr.shape[0], mr.shape[1], 60), float(mr.array.min()), dtype=np.float32)
    tall = mr.replace(array=np.concatenate([mr.array.astype(np.float32), air], axis=2))
    translator = Translator.from_package(tiny, "cpu", precision="fp32")
    prepared = translator.prepare(tall, Modality.CT, CropRequest.millimetres(20, -20), full_fov=True)
    top = max(prepared.slabs, key=lambda slab: slab.record.slab.superior_mm)
    assert len(prepared.slabs) > 4 and not top.mask.any()  # air only
    scales = {tuple(slab.record.intensity.source) for slab in prepared.slabs}
    assert len(scales) == 1
    result = translator.finish(prepared, translator.run(prepared)).volume
    assert (result.array[:, :, -20:] == -1024).all()


def test_outputs_fill_the_slab_to_its_levels(tiny: Path, mr: Volume) -> None:
    """The model grid's edge slices reach the slab's levels: a uniform output comes back uniform
    over the whole slab, without fading towards background in the outer half slice."""
    translator = Translator.from_package(tiny, "cpu", precision="fp32")
    prepared = translator.prepare(mr, Modality.CT, CropRequest.millimetres(20, -20))
    grid_shape = prepared.slabs[0].image.shape
    result = translator.finish(prepared, [np.zeros(grid_shape, np.float32)]).volume
    # Voxels k = 40..59 have centres at S = -19..19 mm; model value 0 is one HU value inside the
    # head (its mask's edge blends with the background in plane, as it should).
    values, counts = np.unique(result.array[:, :, 50][result.array[:, :, 50] != -1024], return_counts=True)
    uniform = values[np.argmax(counts)]
    assert counts.max() > 1000
    middle = (result.array[:, :, 50] == uniform).sum()
    for k in (40, 59):  # the slab's edge slices, 1 mm inside its levels
        assert (result.array[:, :, k] == uniform).sum() > 0.8 * middle
    assert (result.array[:, :, [39, 60]] == -1024).all()


@pytest.mark.parametrize("to", [Modality.CT, Modality.MR])
def test_finish_equals_inverting_the_whole_grid(tiny: Path, oblique_mr: Volume, to: Modality) -> None:
    """finish() resamples only the box around the slab; the reference inverts onto every voxel."""
    translator = Translator.from_package(tiny, "cpu", precision="fp32")
    volume = oblique_mr if to is Modality.CT else oblique_mr.replace(modality=Modality.CT)
    prepared = translator.prepare(volume, to, CROP, force=True)
    (y,) = translator.run(prepared)
    result = translator.finish(prepared, [y]).volume
    pre = prepared.slabs[0]
    target = output_map(to, translator.package.preprocessing.intensity.ct_map)
    full = invert(pre.record, np.where(pre.mask, y, -1.0), intensity=target)
    slab = pre.record.slab
    full.array[~slab_voxels(volume, slab.superior_mm, slab.inferior_mm)] = target.background
    expected = scanner_units(full.array, to)
    assert result.array.dtype == expected.dtype and np.array_equal(result.affine, volume.affine)
    difference = np.abs(result.array.astype(np.float64) - expected.astype(np.float64))
    assert difference.max() <= (1.0 if to is Modality.CT else 0.01)  # float32 sampling coordinates
    assert (result.array != expected.flat[0]).sum() > 1000  # the slab holds a translated head


def test_translator_loads_each_generator_once(
    tiny: Path, mr: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    translator = Translator.from_package(tiny, "cpu")
    loads: list[str] = []
    real = translator.package.load_generator
    monkeypatch.setattr(
        translator.package.__class__,
        "load_generator",
        lambda self, direction, device="cpu": loads.append(direction) or real(direction, device),
    )
    for _ in range(2):
        translator.translate(mr, Modality.CT, CROP)
    assert loads == [DIRECTION[Modality.CT]]


# ----------------------------------------------------------------------------- precision and threads


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    monkeypatch.setattr("mrct.runtime.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16" and resolve_precision("auto", cuda) == "fp32"
    monkeypatch.setattr("mrct.runtime.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)


def test_translator_precision_option(tiny: Path, mr: Volume) -> None:
    fp32 = Translator.from_package(tiny, "cpu", precision="fp32")
    bf16 = Translator.from_package(tiny, "cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert Translator.from_package(tiny, "cpu").precision in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="--precision"):
        Translator.from_package(tiny, "cpu", precision="half")
    prepared = fp32.prepare(mr, Modality.CT, CROP)
    a, b = fp32.run(prepared)[0], bf16.run(prepared)[0]
    assert 0 < np.abs(a - b).max() < 0.1  # bf16 really ran, and stayed close


def test_the_report_records_the_threads_the_user_chose(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a docs walk: with OMP_NUM_THREADS set, the report said "threads": null."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # what torch started with
    src = write_head(tmp_path / "mr.nii.gz", "mr", seed=3)
    report = tmp_path / "report.json"
    args = ["translate", str(src), "--to", "ct", "--model", str(tiny), "--crop-mm", "40,-40"]
    result = CliRunner().invoke(app, [*args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["threads"] == torch.get_num_threads()


def test_cli_precision_reaches_the_report(tiny: Path, tmp_path: Path) -> None:
    src = write_head(tmp_path / "mr.nii.gz", "mr", seed=3)
    report = tmp_path / "report.json"
    args = ["translate", str(src), "--to", "ct", "--model", str(tiny), "--crop-mm", "40,-40"]
    result = CliRunner().invoke(app, [*args, "--precision", "fp32", "--report", str(report)])
    assert result.exit_code == 0, result.output
    content = json.loads(report.read_text())
    assert content["precision"] == "fp32" and content["threads"] in range(1, 1025)
    timings = content["timings_s"]
    stages = ["load_model", "read", "localise", "preprocess", "forward", "invert", "write", "checksum"]
    assert set(stages) | {"other", "total"} == set(timings)
    assert abs(sum(timings[k] for k in [*stages, "other"]) - timings["total"]) < 0.01
    assert nib.load(tmp_path / "mr_synthetic_ct.nii.gz").shape == nib.load(src).shape
    bad = CliRunner().invoke(app, [*args, "--precision", "fp16", "--overwrite"])
    assert bad.exit_code == 2 and "fp16" in bad.output


def test_threads_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert (inference_threads() or 0) >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert inference_threads() is None  # the user's choice stands
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_gpu_ordinal_the_machine_lacks_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:5 on a one-GPU machine once failed at the first tensor moved there (exit 70)."""
    from mrct.errors import ConfigError
    from mrct.runtime import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ConfigError, match=r"--device cuda:5: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"
    ):
        check_device(torch.device("cuda:5"), "cuda:5")
    check_device(torch.device("cuda:0"), "cuda:0")
    check_device(torch.device("cpu"), "cpu")
