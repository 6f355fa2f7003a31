"""pipelines/pack_prepared.py and pipelines/train_within_budget.py: the pieces of a training
session on a lent GPU, on tiny files (the trainings they launch are tests/test_training.py's)."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mrct.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _prepared(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A prepared-set folder: MR a (train), MR b (test), CT c (train), CT d (failed)."""
    volumes = {}
    scans = []
    for domain, scan_id, status in (
        ("mr", "a", "ok"),
        ("mr", "b", "ok"),
        ("ct", "c", "ok"),
        ("ct", "d", "failed"),
    ):
        rel = f"{domain}/{scan_id}.npy"
        crop = {"superior_mm": 40.0, "inferior_mm": -40.0}
        scans.append(
            {"domain": domain, "id": scan_id, "status": status, "files": {"image": rel}, "crop": crop}
        )
        if status == "ok":
            volume = np.where(rng.random((4, 8, 8)) < 0.3, -1.0, rng.uniform(-1, 1, (4, 8, 8))).astype(
                np.float32
            )
            (root / domain).mkdir(parents=True, exist_ok=True)
            np.save(root / rel, volume)
            volumes[rel] = volume
    split = {"mr": {"train": ["a"], "test": ["b"]}, "ct": {"train": ["c", "d"], "test": []}}
    config = {"grid": {"depth": 4, "height": 8, "width": 8, "inplane_mm": 1.0}}
    manifest = {"format": "mrct-prepared-dataset", "config": config, "scans": scans, "split": split}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return volumes


def test_packed_training_split_unpacks_within_a_12_bit_step(tmp_path: Path) -> None:
    packer = _load("pack_prepared")
    volumes = _prepared(tmp_path / "prepared", np.random.default_rng(0))
    packer.pack(tmp_path / "prepared", tmp_path / "packed")
    packed = sorted(
        p.relative_to(tmp_path / "packed").as_posix() for p in (tmp_path / "packed").rglob("*.xz")
    )
    assert packed == ["ct/c.npy.u12.xz", "mr/a.npy.u12.xz"]  # the test split and failures stay here
    packer.unpack(tmp_path / "packed", tmp_path / "unpacked")
    for rel in ("mr/a.npy", "ct/c.npy"):
        back = np.load(tmp_path / "unpacked" / rel)
        assert back.dtype == np.float32 and back.shape == volumes[rel].shape
        assert np.abs(back - volumes[rel]).max() <= 1 / 4095 + 1e-6
        np.testing.assert_array_equal(back[volumes[rel] == -1], -1.0)  # background stays exact
    assert not (tmp_path / "unpacked" / "mr" / "b.npy").exists()
    # From a hunt: unpacking over the prepared set replaced its float32 volumes by 12-bit copies.
    from mrct.errors import OutputExistsError, ReadError

    before = (tmp_path / "prepared" / "mr" / "a.npy").read_bytes()
    with pytest.raises(OutputExistsError, match="already exists; unpack into a new folder"):
        packer.unpack(tmp_path / "packed", tmp_path / "prepared")
    assert (tmp_path / "prepared" / "mr" / "a.npy").read_bytes() == before
    (tmp_path / "packed" / "ct" / "c.npy.u12.xz").write_bytes(b"damaged")
    with pytest.raises(ReadError, match="not a packed volume"):
        packer.unpack(tmp_path / "packed", tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "prepared", "unpacked"]  # no leftovers


def test_budget_schedule_keeps_the_config_and_halves_into_decay(tmp_path: Path) -> None:
    budget = _load("train_within_budget")
    target = budget._scheduled(ROOT / "configs" / "head_small_crop.yaml", 4800, tmp_path / "run.yaml")
    scheduled, original = (
        load_train_config(target),
        load_train_config(ROOT / "configs" / "head_small_crop.yaml"),
    )
    assert (scheduled.optim.iterations, scheduled.optim.decay_iterations) == (4800, 2400)
    assert (scheduled.logging.checkpoint_every, scheduled.logging.keep_checkpoints) == (600, budget.KEEP)
    assert (scheduled.model, scheduled.data, scheduled.preprocessing) == (
        original.model,
        original.data,
        original.preprocessing,
    )


def test_pack_returns_generators_only_newest_first_within_file_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file, save_file

    budget = _load("train_within_budget")
    runs = []
    for name, size in (("small", 1000), ("large", 25_000)):
        run = tmp_path / "runs" / name
        for it in (100, 200, 300):
            ckpt = run / "checkpoints" / f"iter_{it:07d}"
            ckpt.mkdir(parents=True)
            weights = {
                "generators.mr_to_ct.w": np.full(size, it, np.float32),
                "discriminators.d_ct.w": np.ones(size, np.float32),
            }
            save_file(weights, str(ckpt / "networks.safetensors"))
            (ckpt / "state.json").write_text(json.dumps({"iteration": it}))
        (run / "config.json").write_text("{}")
        (run / "log.jsonl").write_text('{"iteration": 300}\n')
        runs.append(run)
    # A file holds one large checkpoint (or a dozen small ones); the total, about three large.
    one = len(budget._generators_only(runs[1] / "checkpoints" / "iter_0000300")) + 4096 + 100
    monkeypatch.setattr(budget, "FILE_LIMIT", one)
    monkeypatch.setattr(budget, "TOTAL_LIMIT", 3 * one)
    budget.pack(runs, tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        assert {"small/config.json", "small/log.jsonl", "large/config.json"} <= set(tar.getnames())
    archives = sorted((tmp_path / "out").glob("checkpoints-*.tar"))
    assert len(archives) == 3 and all(a.stat().st_size <= one + 10_240 for a in archives)
    names: list[str] = []
    for archive in archives:
        with tarfile.open(archive) as tar:
            names += tar.getnames()
            tar.extractall(tmp_path / "back", filter="data")
    packed = sorted(n.rsplit("/", 1)[0] for n in names if n.endswith("state.json"))
    # newest first, taking turns: every small one, and the large ones until the total is full
    assert packed == [f"large/checkpoints/iter_{i:07d}" for i in (200, 300)] + [
        f"small/checkpoints/iter_{i:07d}" for i in (100, 200, 300)
    ]
    for name in packed:
        back = load_file(str(tmp_path / "back" / name / "networks.safetensors"))
        assert list(back) == ["generators.mr_to_ct.w"]  # no discriminators
        assert back["generators.mr_to_ct.w"][0] == int(name[-7:])


def test_budget_rate_leaves_out_the_start_up_interval(tmp_path: Path) -> None:
    budget = _load("train_within_budget")
    rows = [{"iteration": 10, "speed/iterations_per_s": 0.2}]
    rows += [{"iteration": 10 * k, "speed/iterations_per_s": r} for k, r in ((2, 3.0), (3, 5.0), (4, 4.0))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert budget._rate(tmp_path) == 4.0


@pytest.mark.parametrize("name", ["head_small_crop", "head_small_full", "head_medium_full"])
def test_head_gpu_configs_remap_mr_contrast_on_the_bundled_grid(name: str) -> None:
    config = load_train_config(ROOT / "configs" / f"{name}.yaml")
    small = load_train_config(ROOT / "configs" / "cpu_small.yaml")
    assert config.data.augment.enabled and config.data.augment.remap_probability > 0
    assert config.preprocessing == small.preprocessing  # one prepared set serves them all
