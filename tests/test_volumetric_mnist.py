"""pipelines/volumetric_mnist.py: the paper's Volumetric MNIST as a prepared set, and its configs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mrct.config import to_dict
from mrct.errors import MrctError, ReadError
from mrct.preprocessing.config import GridConfig, PreprocessConfig
from mrct.training.config import load_train_config
from mrct.training.data import PreparedSet, UnpairedBatches

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipelines" / "volumetric_mnist.py"
MNIST_CONFIGS = ("mnist_3d", "mnist_2d_random", "mnist_2d_sequential", "mnist_2d_sequential_const")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("volumetric_mnist", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


vm = _load()


def _digits(n: int) -> np.ndarray:
    """``n`` synthetic 28 x 28 "digits": rings and bars of different sizes, strokes ~3 px wide."""
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        if i % 2:
            radius = 6 + i % 5
            ring = np.abs(np.hypot(yy - 14, xx - 14) - radius) < 1.6
            out[i][ring] = 255
        else:
            out[i, 5 : 23 - i % 4, 12 + i % 3 : 15 + i % 3] = 255
    return out


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, gz: bool = True) -> Path:
    header = (magic if magic is not None else 0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vmnist")
    idx = write_idx(tmp / "images-idx3-ubyte.gz", _digits(12))
    labels = write_idx(tmp / "labels-idx1-ubyte", np.arange(12) % 10, gz=False)
    vm.build(idx, tmp / "set", count=6, seed=3, labels=labels)
    return tmp / "set"


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _split_sizes(manifest: dict) -> dict[str, tuple[int, int]]:
    return {d: (len(s["train"]), len(s["test"])) for d, s in manifest["split"].items()}


def _areas(volume: np.ndarray) -> np.ndarray:
    """Stroke area per slice in pixels, edge pixels counted by their partial intensity."""
    return ((volume.astype(np.float64) + 1) / 2).sum(axis=(1, 2))


# ---------------------------------------------------------------- the prepared set


def test_volumes_and_manifest(built: Path) -> None:
    m = _manifest(built)
    assert m["format"] == "mrct-prepared-dataset" and m["version"] == 1
    grid = GridConfig(depth=30, height=84, width=84, inplane_mm=1.0)
    assert m["config"] == to_dict(PreprocessConfig(grid=grid))
    assert _split_sizes(m) == {"mr": (4, 2), "ct": (4, 2)}
    for entry in m["scans"]:
        volume = np.load(built / entry["files"]["image"])
        assert volume.shape == (30, 84, 84) and volume.dtype == np.float32
        assert volume.min() == -1.0 and volume.max() == 1.0
        assert entry["mnist"]["label"] == entry["mnist"]["index"] % 10


def test_stroke_rises_then_decays_in_spherical_and_the_reverse_in_sandglass(built: Path) -> None:
    for entry in _manifest(built)["scans"]:
        area = _areas(np.load(built / entry["files"]["image"]))
        middle, ends = area[14:16], area[[0, -1]]
        if entry["domain"] == "mr":  # A, spherical
            assert int(np.argmax(area)) in (14, 15) and middle.min() > 1.5 * ends.max()
            assert np.all(np.diff(area[:15]) >= 0) and np.all(np.diff(area[15:]) <= 0)
        else:  # B, sandglass
            assert int(np.argmin(area)) in (14, 15) and 1.5 * middle.max() < ends.min()
            assert np.all(np.diff(area[:15]) <= 0) and np.all(np.diff(area[15:]) >= 0)


def test_splits_are_independent_and_test_pairs_are_the_same_digit(built: Path) -> None:
    m = _manifest(built)
    split = m["split"]
    assert not set(split["mr"]["train"]) & set(split["ct"]["train"])  # no digit in both training sets
    pairs = json.loads((built / "pairs.json").read_text())["pairs"]
    assert sorted(p["mr"] for p in pairs) == split["mr"]["test"] == split["ct"]["test"]
    for p in pairs:
        assert not (p["mr"] in split["mr"]["train"] and p["ct"] in split["ct"]["train"])
        spherical = np.load(built / "mr" / f"{p['mr']}.npy")
        sandglass = np.load(built / "ct" / f"{p['ct']}.npy")
        # the eroded middle slice of the sandglass lies inside the dilated one of the spherical
        assert np.all(spherical[15][sandglass[15] > 0] > 0)
        assert _areas(spherical)[0] == pytest.approx(_areas(sandglass)[15], rel=0.1)  # ~same radius


def test_the_trainer_reads_it_with_every_mnist_config(built: Path) -> None:
    data = PreparedSet.open(built)
    assert {d: len(s) for d, s in data.scans.items()} == {"mr": 4, "ct": 4}
    assert all(s.spacing_mm == (1.0, 1.0, 1.0) for s in data.scans["mr"])
    assert {d: len(s) for d, s in PreparedSet.open(built, split="test").scans.items()} == {"mr": 2, "ct": 2}
    expected = {"volume": (1, 1, 30, 84, 84), "random": (30, 1, 84, 84), "sequential": (30, 1, 84, 84)}
    for name in MNIST_CONFIGS:
        config = load_train_config(ROOT / "configs" / f"{name}.yaml")
        data.check_preprocessing(config.preprocessing)
        batch = UnpairedBatches(data, config.data, seed=0)[0]
        assert tuple(batch["mr"].shape) == tuple(batch["ct"].shape) == expected[config.data.slices]


def test_same_seed_same_set_other_seed_other_split(tmp_path: Path) -> None:
    idx = write_idx(tmp_path / "images.idx", _digits(12), gz=False)  # not gzipped: also accepted
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        vm.build(idx, tmp_path / name, count=6, seed=seed)
    a, b, c = (_manifest(tmp_path / n) for n in "abc")
    assert a["scans"] == b["scans"] and a["split"] == b["split"]
    assert a["split"] != c["split"]


# ---------------------------------------------------------------- errors


def test_bad_magic_number_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels_as_images = write_idx(tmp_path / "labels.gz", np.arange(10), magic=0x00000801)
    expected = r"not an IDX image file: magic number 0x00000801, expected 0x00000803"
    with pytest.raises(ReadError, match=expected):
        vm.read_idx(labels_as_images, 3)
    not_idx = tmp_path / "picture.png"
    not_idx.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    proc = _script("--idx", not_idx, "-o", tmp_path / "out")
    assert proc.returncode == ReadError.exit_code
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "magic number 0x89504e47" in err and "\n" not in err


def _script(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_bad_arguments_are_one_line_before_anything_is_written(tmp_path: Path) -> None:
    """From a hunt: -o naming a file and --seed -1 ended in tracebacks; at --size 8 some digits
    vanish when binarised and the build stopped half-written with "empty digit"."""
    idx = write_idx(tmp_path / "images", _digits(12))
    (tmp_path / "afile").write_text("mine")
    for args, words in (
        (["-o", tmp_path / "afile"], "is a file, not a folder"),
        (["-o", tmp_path / "o", "--seed", "-1"], "--seed must be >= 0"),
        (["-o", tmp_path / "o", "--size", "8"], "--size must be >= 16"),
        (["-o", tmp_path / "o", "--size", "2000"], "grid 30 x 2000 x 2000 is too large"),  # was a traceback
    ):
        proc = _script("--idx", idx, "--count", 4, *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and words in proc.stderr and proc.stderr.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "o").exists()
    blank = np.zeros((12, 28, 28), np.uint8)
    blank[:, 10:18, 13:15] = 255
    blank[4] = 0  # chosen at any seed: --count 7 takes all 12 digits (2 test + 2 x 5 train)
    with pytest.raises(ReadError, match="digit #4 has no stroke at --size 28"):
        vm.build(write_idx(tmp_path / "blank", blank), tmp_path / "b", count=7, size=28)
    assert not (tmp_path / "b").exists()


def test_truncated_idx_and_too_many_digits(tmp_path: Path) -> None:
    idx = write_idx(tmp_path / "images", _digits(12), gz=False)
    idx.write_bytes(idx.read_bytes()[:-5])
    with pytest.raises(ReadError, match="need 9424 bytes"):
        vm.read_idx(idx, 3)
    good = write_idx(tmp_path / "good", _digits(12))
    with pytest.raises(MrctError, match=r"--count 8 needs 14 digits, the IDX file has 12 \(at most 7\)"):
        vm.build(good, tmp_path / "out", count=8)


def test_existing_set_needs_overwrite(built: Path, tmp_path: Path) -> None:
    idx = write_idx(tmp_path / "images", _digits(12))
    vm.build(idx, tmp_path / "set", count=4)
    with pytest.raises(MrctError, match="already holds a prepared set"):
        vm.build(idx, tmp_path / "set", count=4)
    vm.build(idx, tmp_path / "set", count=5, overwrite=True)
    assert len(_manifest(tmp_path / "set")["split"]["mr"]["test"]) == 1


# ---------------------------------------------------------------- configs (paper §5.2)


@pytest.mark.parametrize(
    ("three_d", "two_d"),
    [("mnist_3d", n) for n in MNIST_CONFIGS[1:]] + [("cpu_small", "heads_2d_random")],
)
def test_2d_baselines_have_the_3d_models_parameter_count(three_d: str, two_d: str) -> None:
    from mrct.networks import build_discriminator, build_generator, count_parameters

    a, b = (load_train_config(ROOT / "configs" / f"{n}.yaml") for n in (three_d, two_d))
    assert (a.model.generator.spatial_dims, b.model.generator.spatial_dims) == (3, 2)
    assert a.preprocessing == b.preprocessing
    for build, part in ((build_generator, "generator"), (build_discriminator, "discriminator")):
        n3, n2 = (count_parameters(build(getattr(c.model, part))) for c in (a, b))
        assert abs(n2 / n3 - 1) < 0.02, (part, n3, n2)


@pytest.mark.realdata
def test_real_mnist_test_set(shared_data: Path, tmp_path: Path) -> None:
    mnist = shared_data / "mnist"
    vm.main(
        [
            "--idx",
            str(mnist / "t10k-images-idx3-ubyte.gz"),
            "--labels",
            str(mnist / "t10k-labels-idx1-ubyte.gz"),
            "-o",
            str(tmp_path / "set"),
            "--count",
            "20",
        ]
    )
    m = _manifest(tmp_path / "set")
    assert _split_sizes(m) == {"mr": (14, 6), "ct": (14, 6)}
    assert not set(m["split"]["mr"]["train"]) & set(m["split"]["ct"]["train"])
    assert len(json.loads((tmp_path / "set" / "pairs.json").read_text())["pairs"]) == 6
    for entry in m["scans"]:
        volume = np.load(tmp_path / "set" / entry["files"]["image"])
        assert volume.shape == (30, 84, 84)
        assert (volume > 0).sum(axis=(1, 2)).min() > 0  # erosion never removes a digit
        area = _areas(volume)
        peak = int(np.argmax(area)) if entry["domain"] == "mr" else int(np.argmin(area))
        assert peak in (14, 15)
        assert 0 <= entry["mnist"]["label"] <= 9
    PreparedSet.open(tmp_path / "set").check_preprocessing(
        load_train_config(ROOT / "configs" / "mnist_3d.yaml").preprocessing
    )
