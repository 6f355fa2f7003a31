"""pipelines/reproduce_mnist.py and pipelines/compare_heads_flicker.py: their pieces on tiny
arrays (the trainings they run are exercised by tests/test_training.py)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from PIL import Image

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist() -> ModuleType:
    return _load("reproduce_mnist")


@pytest.fixture(scope="module")
def heads() -> ModuleType:
    return _load("compare_heads_flicker")


@pytest.mark.parametrize(
    ("method", "batch"),
    [
        ("mnist_3d", 1),
        ("mnist_2d_random", 16),
        ("mnist_2d_sequential", 16),
        ("mnist_2d_sequential_const", 16),
    ],
)
def test_scaled_config_changes_only_the_scale(
    mnist: ModuleType, tmp_path: Path, method: str, batch: int
) -> None:
    from mrct.training.config import load_train_config

    original = yaml.safe_load((CONFIGS / f"{method}.yaml").read_text())
    cfg = mnist.scaled_config(CONFIGS / f"{method}.yaml", depth=16, size=28, iterations=600)
    assert cfg["preprocessing"]["grid"] == {"depth": 16, "height": 28, "width": 28, "inplane_mm": 1.0}
    assert (cfg["optim"]["iterations"], cfg["optim"]["decay_iterations"]) == (600, 300)
    assert cfg["data"]["batch_size"] == batch
    assert cfg["model"] == original["model"] and cfg["loss"] == original["loss"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_train_config(path).optim.iterations == 600  # still a valid config


def _write_csv(path: Path, l2: list[float]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "l2", "flicker", "flicker_gt", "flicker_ratio"])
        for n, v in enumerate(l2):
            w.writerow([f"{n:04d}", v, 0.1, 0.1, 1.0])


def test_summary_table_and_docs_block(mnist: ModuleType, tmp_path: Path) -> None:
    for method in ("input", "mnist_3d"):
        for direction in mnist.DIRECTIONS:
            _write_csv(
                tmp_path / f"{method}_{direction}.csv", [10.0, 20.0] if method == "mnist_3d" else [50.0]
            )
    summary = mnist.summarise(tmp_path, ["input", "mnist_3d"])
    assert summary["mnist_3d"]["mr_to_ct"]["l2"]["mean"] == 15.0
    assert summary["mnist_3d"]["mr_to_ct"]["l2"]["sd"] == pytest.approx(np.std([10, 20], ddof=1))
    text = mnist.table(summary, "tiny")
    assert "| 3D CycleGAN | 15.00 ± 7.07 | 27.21 |" in text
    assert "| input unchanged | 50.00 ± 0.00 | – |" in text
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- mnist-table -->\nold\n<!-- /mnist-table -->\nafter\n")
    mnist.put_between_markers(doc, text)
    new = doc.read_text()
    assert "old" not in new and new.startswith("before\n") and new.endswith("after\n") and text in new


def test_mnist_figure(mnist: ModuleType, tmp_path: Path) -> None:
    ids = ["0001", "0002"]
    rng = np.random.default_rng(0)
    folders = [
        tmp_path / "data" / "mr",
        tmp_path / "data" / "ct",
        tmp_path / "pred" / "mnist_3d" / "mr_to_ct",
    ]
    for folder in folders:
        folder.mkdir(parents=True)
        for i in ids:
            np.save(folder / f"{i}.npy", rng.uniform(-1, 1, (6, 8, 8)).astype(np.float32))
    mnist.figure(tmp_path / "data", tmp_path / "pred", ["mnist_3d"], ids, tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as image:
        assert image.size[1] > 3 * 8 * 10  # three rows of 8 px tiles drawn 10x


def test_heads_flicker_pieces(heads: ModuleType, tmp_path: Path) -> None:
    assert heads.to_hu(np.array([-1.0, 1.0])).tolist() == [-1024.0, 3071.0]
    from mrct.preprocessing.intensity import ct_map

    values = np.linspace(-1, 1, 9)  # a soft_tissue model's HU were computed with the linear map
    assert heads.to_hu(values, "soft_tissue") == pytest.approx(
        ct_map("soft_tissue").inverse(values), abs=1e-3
    )
    assert not np.allclose(heads.to_hu(values, "soft_tissue"), heads.to_hu(values))
    mask = np.ones((6, 4, 4), dtype=bool)
    ramp = np.linspace(-1, 1, 6)[:, None, None] * np.ones((6, 4, 4))
    zigzag = ramp + 0.1 * (-1.0) ** np.arange(6)[:, None, None]
    smooth, flickery = (
        heads.model_grid_flicker(ramp, mask, ramp),
        heads.model_grid_flicker(ramp, mask, zigzag),
    )
    assert smooth["flicker_hu_model_grid"] == pytest.approx(0.0, abs=1e-6)
    assert smooth["flicker_vs_inplane_model_grid"] == float("inf")  # flat in-plane: no roughness
    assert flickery["flicker_hu_model_grid"] == pytest.approx(0.4 * 4095 / 2)
    picture = heads.sagittal(ramp, 3.6, (-1.0, 1.0))
    assert picture.shape == (6 * 4, 4) and picture[0, 0] == 255 and picture[-1, 0] == 0  # superior up
    rows = [
        {
            "case": c,
            "model": m,
            "flicker_hu_model_grid": f,
            "flicker_vs_mr_model_grid": 1.0,
            "flicker_vs_inplane_model_grid": 1.0,
            "sd_hu_model_grid": 100.0,
            "flicker_hu_input_grid": f,
        }
        for c, pairs in (("a", (("3d", 10.0), ("2d", 30.0))), ("b", (("3d", 20.0), ("2d", 40.0))))
        for m, f in pairs
    ]
    text = heads.table(rows, {"3d": "3D", "2d": "2D"})
    assert "| 3D | 2 | 15 ± 7 | 1.00 ± 0.00 | 1.00 ± 0.00 | 100 ± 0 | 15 ± 7 |" in text
    assert "2D flickers 2.50x as much as 3D" in text
    heads.figure([[("MR", picture), ("sCT", picture)]], tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
