"""Python API arguments as researchers pass them: one path as text, numpy integers, enums, and
wrong types, which get a one-line ArgumentError rather than a TypeError from deep inside."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import mrct
from mrct import api
from mrct.api_args import ArgumentError
from mrct.errors import MrctError
from mrct.io import OutputFormat, limits
from tests.model_fixtures import write_tiny_model
from tests.test_prepare import SMALL_YAML, write_head


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heads")
    write_head(root / "mr" / "a.nii.gz", "mr", seed=1)
    write_head(root / "mr" / "b.nii.gz", "mr", (66.0, 80.0, 78.0), seed=2)
    write_head(root / "ct" / "c.nii.gz", "ct", seed=3)
    (root / "small.yaml").write_text(SMALL_YAML)
    return root


def test_prepare_takes_one_folder_as_text(tmp_path: Path, heads: Path) -> None:
    """A str was split into its letters: the first, "/", started a walk of the whole disk."""
    summary = api.prepare(
        str(heads / "mr"),
        heads / "ct",
        str(tmp_path / "prep"),
        config=heads / "small.yaml",
        crop_mm=(40, -40),
        seed=np.int64(3),
        progress=False,
    )
    assert (summary.ready, summary.failed) == (3, 0)
    with pytest.raises(ArgumentError, match="workers must be a whole number, got '2'"):
        api.prepare([heads / "mr"], [heads / "ct"], tmp_path / "p2", workers="2")  # type: ignore[arg-type]


def test_prepare_workers_keep_a_memory_limit_set_from_python(tmp_path: Path, heads: Path) -> None:
    """Workers read only MRCT_MAX_MEMORY: with two of them the limit set in Python was ignored."""

    def run(out: Path):  # type: ignore[no-untyped-def]
        mr, ct, small = heads / "mr", heads / "ct", heads / "small.yaml"
        return api.prepare(mr, ct, out, config=small, crop_mm=(40, -40), workers=2, progress=False)

    assert run(tmp_path / "free").ready == 3
    with limits.memory_limit("1M"):
        summary = run(tmp_path / "prep")
    assert summary.ready == 0 and summary.failed == 3
    manifest = summary.manifest.read_text()
    assert manifest.count("(raise it with mrct.io.limits.memory_limit)") == 3


def test_model_folders_given_as_one_path(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "models" / "tiny")
    for folder in (str(tmp_path / "models"), tmp_path / "models", [tmp_path / "models"]):
        assert [p.name for p in api.list_models(folder)] == ["tiny"]  # type: ignore[arg-type]
        assert api.model_info("tiny", folder).name == "tiny"  # type: ignore[arg-type]
    assert api.model_info("mrct-head-medium", []).name == "mrct-head-medium"  # empty: the default


def test_paths_and_formats_of_the_wrong_type(tmp_path: Path, heads: Path) -> None:
    """convert(src, None) wrote a DICOM series into ./None; a .txt output was a raw ValueError;
    OutputFormat.MHA was refused as 'outputformat.mha'; series=3 was an AttributeError."""
    src = heads / "mr" / "a.nii.gz"
    vol = mrct.read_volume(src)
    with pytest.raises(ArgumentError, match=r"dst must be a path \(str or pathlib.Path\), got None"):
        api.convert(src, None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="path must be a path"):
        mrct.write_volume(vol, None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="unknown output format"):
        mrct.write_volume(vol, tmp_path / "x.txt")
    with pytest.raises(ArgumentError, match=r"write_volume writes a mrct\.Volume, got ndarray"):
        mrct.write_volume(vol.array, tmp_path / "x.nii.gz")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="series must be text"):
        api.info(src, series=3)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="modality must be 'ct', 'mr' or None, got 'xx'"):
        mrct.read_volume(src, modality="xx")  # type: ignore[arg-type]
    assert mrct.read_volume(src, modality="ct").modality is mrct.Modality.CT  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="path must be a path"):
        api.info(None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"got a Volume$") as err:
        api.info(vol)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)  # not the Volume's repr, thousands of characters long
    with pytest.raises(MrctError, match="--shard must be K/N"):
        api.batch(heads, tmp_path / "b", shard=3)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="checkpoint"):
        api.export(tmp_path, tmp_path / "pkg", checkpoint=2000)  # type: ignore[arg-type]
    for option in ("report", "preview"):  # from review: "" named the current folder
        with pytest.raises(ArgumentError, match=f"{option} is empty"):
            api.translate_file(src, tmp_path / "o.nii.gz", **{option: ""})  # type: ignore[arg-type]
    assert not (Path.cwd() / "None").exists() and not list(tmp_path.iterdir())
    out = api.translate_file(
        src,
        tmp_path / "o.mha",
        output_format=OutputFormat.MHA,
        model=write_tiny_model(tmp_path / "m"),
        crop_mm="40,-40",
    )
    assert out.output == tmp_path / "o.mha" and mrct.read_volume(out.output).source.format == "metaimage"


def test_train_checks_until_before_starting_a_run(tmp_path: Path, heads: Path) -> None:
    """until="1" failed after config.json was written, and the retry was refused as a second run."""
    for until in ("1", 0):
        with pytest.raises(ArgumentError, match="until must be"):
            api.train(heads / "small.yaml", tmp_path / "prep", tmp_path / "run", until=until)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_reading_a_nifti_leaves_nibabels_logger_as_it_was(heads: Path) -> None:
    logger = logging.getLogger("nibabel.global")
    before = list(logger.handlers)
    mrct.read_volume(heads / "mr" / "a.nii.gz")
    assert logger.handlers == before and before  # nibabel 5.4's suppressor emptied it for good


def test_volumes_and_switches_built_by_hand_get_typed_errors(tmp_path: Path, heads: Path) -> None:
    """From a hunt: an affine whose last row was not 0 0 0 1 translated into a wrong image that was
    then written with the row reset; a float64 voxel beyond float32's range ended in a numpy
    ValueError; ``full_fov="no"`` ran the full field of view; ``model=""`` took the default and
    ``model=3`` raised a TypeError."""
    from mrct.errors import GeometryError, ReadError

    vol = mrct.read_volume(heads / "mr" / "a.nii.gz")
    for row in ([0, 0, 0, 2.0], [0.5, 0, 0, 1.0], [0, 0, 0, 0.0]):
        affine = vol.affine.copy()
        affine[3] = row
        with pytest.raises(GeometryError, match=r"transform's last row is .*, not 0 0 0 1"):
            mrct.translate(mrct.Volume(vol.array, affine))
    huge = vol.array.astype(np.float64)
    huge[0, 0, 0] = 1e39
    with pytest.raises(ReadError, match="beyond float32's range"):
        mrct.translate(mrct.Volume(huge, vol.affine))
    with pytest.raises(ArgumentError, match="full_fov must be True or False, got 'no'"):
        mrct.translate(vol, full_fov="no")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="overwrite must be True or False"):
        mrct.translate_file(heads / "mr" / "a.nii.gz", tmp_path / "o.nii.gz", overwrite=1)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="model is empty"):
        mrct.translate(vol, model="")
    with pytest.raises(ArgumentError, match="model must be a path"):
        mrct.translate(vol, model=3)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_a_read_only_array_translates_without_torchs_warning(tmp_path: Path, heads: Path) -> None:
    """From a hunt: a read-only array (or a memmap opened "r") made torch warn of undefined behaviour
    when mrct shared it without copying (once per process: hence a fresh one)."""
    import subprocess
    import sys

    model = write_tiny_model(tmp_path / "m")
    code = f"""
import warnings, numpy as np, mrct
vol = mrct.read_volume({str(heads / "mr" / "a.nii.gz")!r})
frozen = np.ascontiguousarray(vol.array, dtype=np.float32)  # shared as it is, not copied
frozen.setflags(write=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mrct.translate(mrct.Volume(frozen, vol.affine, vol.modality), model={str(model)!r}, crop_mm="40,-40")
print("\\n".join(str(w.message) for w in caught))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not writable" not in done.stdout + done.stderr


def test_errors_are_reachable_after_a_bare_import() -> None:
    import subprocess
    import sys

    code = "import mrct, sys; print(mrct.errors.MrctError.__name__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["MrctError", "False"]
