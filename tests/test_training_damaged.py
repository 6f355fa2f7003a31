"""A prepared set or run folder damaged by hand, by a disk or by another mrct, and networks too
large for the machine: each is one error naming the file or key, never exit 70 (from a hunt)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import ConfigValueError, OutputExistsError, ReadError
from mrct.models import load_package
from mrct.prepare_manifest import load_manifest
from mrct.training import checkpoint
from mrct.training.config import DataConfig
from mrct.training.data import PreparedSet, UnpairedBatches
from mrct.training.run import train_run
from mrct.training.sizes import build_networks
from tests.test_training import TINY_YAML, prepared, tiny

__all__ = ["prepared"]  # the fixture, shared with tests/test_training.py
runner = CliRunner()


def _edited(prepared: Path, tmp_path: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _first_ok(m: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in m["scans"] if e["status"] == "ok")


EDITS: dict[str, Callable[[dict[str, Any]], object]] = {
    "grid depth a word": lambda m: m["config"]["grid"].__setitem__("depth", "sixteen"),
    "crop gone": lambda m: [e.pop("crop", None) for e in m["scans"]],
    "crop of no height": lambda m: _first_ok(m)["crop"].__setitem__(
        "inferior_mm", _first_ok(m)["crop"]["superior_mm"]
    ),
    "scan not a record": lambda m: m["scans"].__setitem__(0, {"foo": 1}),
    "id a number": lambda m: m["scans"][0].__setitem__("id", 7),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_hand_edited_manifest_is_one_error_naming_it(prepared: Path, tmp_path: Path, edit: str) -> None:
    """It was "unexpected TypeError/KeyError/ValueError", exit 70, in train and in a prepare re-run."""
    copy = _edited(prepared, tmp_path, EDITS[edit])
    manifest = copy / "manifest.json"
    with pytest.raises(ReadError, match="not a readable prepared-set manifest") as caught:
        PreparedSet.open(copy)
    assert Path(caught.value.path) == manifest
    config = json.loads(manifest.read_text())["config"]
    with pytest.raises(ReadError, match="not a readable prepared-set manifest"):
        load_manifest(manifest, config)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    result = runner.invoke(
        app, ["train", "-c", str(tmp_path / "tiny.yaml"), "--data", str(copy), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1 and str(manifest) in result.stderr


def test_a_manifest_of_another_version_is_refused(prepared: Path, tmp_path: Path) -> None:
    """Version 99 trained without a word, and a prepare re-run rewrote it as version 1."""
    copy = _edited(prepared, tmp_path, lambda m: m.update(version=99, mrct_version="9.0.0"))
    with pytest.raises(ReadError, match=r"version 99 \(mrct 9.0.0\); this mrct reads version 1"):
        PreparedSet.open(copy)
    config = json.loads((copy / "manifest.json").read_text())["config"]
    with pytest.raises(ReadError, match="version 99"):
        load_manifest(copy / "manifest.json", config)


def test_a_prepare_rerun_with_another_seed_or_hold_out_is_refused(prepared: Path) -> None:
    """Another --seed (or forgetting it) split the whole set anew, moving test scans into training."""
    manifest = prepared / "manifest.json"
    record = json.loads(manifest.read_text())
    config, seed = record["config"], record["seed"]
    assert load_manifest(manifest, config, seed)["seed"] == seed
    with pytest.raises(
        OutputExistsError, match=rf"split with --seed {seed} and no --hold-out-from; give the same"
    ):
        load_manifest(manifest, config, seed + 5)
    # From a hunt: it said "split with --seed 0; give the same" to a run given --seed 0.
    with pytest.raises(OutputExistsError, match=rf"split with --seed {seed} and no --hold-out-from;"):
        load_manifest(manifest, config, seed, hold_out_from="mr*")


def test_nan_in_a_prepared_array_is_a_read_error_naming_it(prepared: Path, tmp_path: Path) -> None:
    """The run "diverged" and the message blamed the learning rate."""
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    data = PreparedSet.open(copy)
    for scan in data.scans["mr"]:
        array = np.load(scan.image)
        array[:] = np.nan
        np.save(scan.image, array)
    batch = UnpairedBatches(data, DataConfig(), seed=0)[0]
    assert "NaN" in batch["error"] and batch["path"] in {str(s.image) for s in data.scans["mr"]}


def test_networks_too_large_for_memory_are_a_config_error() -> None:
    """``ngf: 100000`` was "unexpected RuntimeError: [enforce fail at alloc_cpu.cpp:127] ...", exit 70."""
    config = tiny(model={"generator": {"ngf": 100000, "n_residual_blocks": 1}})
    with pytest.raises(
        ConfigValueError, match=r"do not fit in CPU memory \(one block of .* GiB\); lower model.generator.ngf"
    ):
        build_networks(config, torch.device("cpu"))


def test_a_run_without_data_json_exports_as_it_resumes(prepared: Path, tmp_path: Path) -> None:
    """Resume accepts a run whose data.json is lost (with a warning); export refused it, exit 3."""
    train_run(
        tiny(optim={"iterations": 2, "decay_iterations": 0}), prepared, tmp_path / "run", progress=False
    )
    (tmp_path / "run" / "data.json").unlink()
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "no data.json" in result.stderr
    assert load_package(out).manifest["training"]["data"] == {}


def test_a_checkpoint_that_fails_part_way_leaves_no_temporary(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a full disk, the half-written .tmp-iter_* stayed, holding its space, until that very
    iteration was saved again; one a killed run left goes when the next checkpoint starts."""
    from mrct.errors import WriteError

    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-iter_0000001").mkdir(parents=True)  # a killed run's
    real = checkpoint.save_tensors

    def full_disk(state: Any, target: Path, metadata: Any = None) -> None:
        if target.name == "optimizers.safetensors":
            raise OSError(28, "No space left on device", str(target))
        real(state, target, metadata)

    monkeypatch.setattr(checkpoint, "save_tensors", full_disk)
    with pytest.raises(WriteError, match="No space left on device"):
        train_run(tiny(), prepared, run, progress=False, until=3, overwrite=True)
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_export_takes_latest_and_until_below_the_run_says_so(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From a CLI walk: `export --checkpoint latest` was refused beside checkpoints/latest (the
    pointer file), and `train --resume --until 1` on a run at iteration 2 said "trained to
    iteration 2" and nothing else."""
    import logging

    config = tiny(optim={"iterations": 2, "decay_iterations": 0})
    train_run(config, prepared, tmp_path / "run", progress=False)
    with caplog.at_level(logging.WARNING):
        again = train_run(config, prepared, tmp_path / "run", resume=True, until=1, progress=False)
    assert again.iteration == 2
    assert any(
        "--until 1 is below the run's iteration 2; nothing to train" in r.getMessage() for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # from a hunt: capped without a word
        train_run(config, prepared, tmp_path / "run", resume=True, until=9, progress=False)
    assert "--until 9 is past the config's optim.iterations (2): it stops there" in caplog.text
    result = runner.invoke(
        app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "pkg"), "--checkpoint", "latest"]
    )
    assert result.exit_code == 0, result.output
    assert load_package(tmp_path / "pkg").manifest["training"]["iterations"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="says what a machine without a GPU says")
def test_device_cuda_without_a_gpu_is_named_as_given() -> None:
    """From a CLI walk: `train --device cuda` said "--device cuda:0: no CUDA device is available"."""
    from mrct.errors import ConfigError
    from mrct.training.distributed import DistContext
    from mrct.training.run import resolve_device

    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device is available$"):
        resolve_device("cuda", DistContext.from_environment({}))
