"""`mrct train`: the CycleGAN losses, one iteration, exact resume, Ctrl-C, TensorBoard, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mrct.cli import app
from mrct.config import from_mapping
from mrct.cyclegan import ImagePool, adversarial_loss, const_loss, cycle_loss
from mrct.errors import ConfigError, OutputExistsError, ReadError
from mrct.prepare import prepare_dataset
from mrct.preprocessing.config import PreprocessConfig
from mrct.training import checkpoint
from mrct.training.config import TrainConfig, load_train_config
from mrct.training.data import PreparedSet, UnpairedBatches
from mrct.training.run import train_run
from mrct.training.trainer import linear_decay
from tests.test_prepare import CROP, write_head

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
GRID = {"grid": {"depth": 8, "height": 48, "width": 48, "inplane_mm": 4.0}}
TINY = {
    "model": {"generator": {"ngf": 4, "n_residual_blocks": 1}, "discriminator": {"ndf": 4}},
    "optim": {"iterations": 6, "decay_iterations": 3},
    "data": {"workers": 0},
    "logging": {"log_every": 1, "checkpoint_every": 3, "preview_every": 3},
    "preprocessing": GRID,
}
TINY_YAML = """
model: {generator: {ngf: 4, n_residual_blocks: 1}, discriminator: {ndf: 4}}
optim: {iterations: 4, decay_iterations: 2}
data: {workers: 0}
logging: {log_every: 1, checkpoint_every: 2, preview_every: 2}
preprocessing: {grid: {depth: 8, height: 48, width: 48, inplane_mm: 4.0}}
"""


def tiny(**changes: dict) -> TrainConfig:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value}
    return from_mapping(TrainConfig, data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three MR and two CT synthetic heads on an 8 x 48 x 48 grid, through mrct prepare."""
    root = tmp_path_factory.mktemp("train-data")
    for i in range(3):
        write_head(root / "mr" / f"mr{i}.nii.gz", "mr", (66.0 + 3 * i, 82.0, 78.0), seed=i)
    for i in range(2):
        write_head(root / "ct" / f"ct{i}.nii.gz", "ct", (68.0 + 4 * i, 84.0, 79.0), seed=10 + i)
    config = from_mapping(PreprocessConfig, GRID)
    out = root / "prepared"
    summary = prepare_dataset([root / "mr"], [root / "ct"], out, config=config, crop=CROP, progress=False)
    assert summary.failed == 0
    return out


# ----------------------------------------------------------------------------- losses


def test_least_squares_and_log_likelihood_losses_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    assert adversarial_loss(logits, True, "least_squares").item() == pytest.approx((1 + 1 + 0 + 4) / 4)
    assert adversarial_loss(logits, False, "least_squares").item() == pytest.approx((0 + 4 + 1 + 1) / 4)
    p = torch.sigmoid(logits)
    assert adversarial_loss(logits, True, "log_likelihood").item() == pytest.approx(
        -torch.log(p).mean().item()
    )
    assert adversarial_loss(logits, False, "log_likelihood").item() == pytest.approx(
        -torch.log(1 - p).mean().item()
    )
    with pytest.raises(ValueError, match="unknown"):
        adversarial_loss(logits, True, "wasserstein")


def test_cycle_and_const_losses_by_hand() -> None:
    x = torch.zeros(1, 1, 3, 2, 2)
    y = x + 0.5
    assert cycle_loss(x, y).item() == pytest.approx(0.5)
    ramp = torch.arange(3.0).reshape(1, 1, 3, 1, 1).expand(1, 1, 3, 2, 2)  # +1 per slice
    # Eq. 2 is a sum over slices and voxels: 2 slice pairs x 4 voxels x 1^2 (it was a mean, 1.0,
    # which left "sequential + const" training as "sequential").
    assert const_loss(ramp).item() == pytest.approx(8.0)
    assert const_loss(torch.cat([ramp, 3 * ramp])).item() == pytest.approx((8.0 + 72.0) / 2)  # per volume
    slices = torch.arange(4.0).reshape(4, 1, 1, 1) * 2  # 2D: consecutive slices in the batch
    assert const_loss(slices).item() == pytest.approx(3 * 4.0)


def test_image_pool_fills_then_swaps_and_its_state_round_trips() -> None:
    pool = ImagePool(3, seed=1)
    for i in range(3):
        assert pool.query(torch.full((1, 1, 2), float(i)))[0, 0, 0].item() == i  # filling: returns the newest
    twin = ImagePool(3, seed=99)
    twin.load_state_dict({k: v.clone() for k, v in pool.state_dict().items()})
    outs = [pool.query(torch.full((1, 1, 2), 10.0 + i))[0, 0, 0].item() for i in range(20)]
    assert outs == [twin.query(torch.full((1, 1, 2), 10.0 + i))[0, 0, 0].item() for i in range(20)]
    assert any(o < 10 or o != 10 + i for i, o in enumerate(outs))  # sometimes an older image
    assert ImagePool(0, seed=0).query(torch.ones(2, 1, 2)).shape == (2, 1, 2)
    # From a hunt: a pool of over 1000 images came back in text order (image.1000 before image.101).
    big = ImagePool(1005, seed=0)
    for i in range(1005):
        big.query(torch.full((1, 1), float(i)))
    back = ImagePool(1005, seed=5)
    back.load_state_dict(big.state_dict())
    assert [im.item() for im in back.images] == list(range(1005))


def test_linear_decay_schedule() -> None:
    factor = linear_decay(tiny(optim={"iterations": 10, "decay_iterations": 4}))
    values = [factor(i) for i in range(10)]
    assert values[:6] == [1.0] * 6
    assert values[6:] == pytest.approx([0.8, 0.6, 0.4, 0.2])


# ----------------------------------------------------------------------------- configs


def test_shipped_configs_load_and_match_the_paper() -> None:
    paper = load_train_config(REPO / "configs" / "paper_3d.yaml")
    g = paper.model.generator
    assert (g.spatial_dims, g.ngf, g.n_residual_blocks) == (3, 64, 9)
    assert (paper.loss.cycle_weight, paper.data.batch_size, paper.optim.lr) == (10.0, 1, 2e-4)
    assert paper.preprocessing.grid.shape == (30, 256, 256)
    small = load_train_config(REPO / "configs" / "cpu_small.yaml")
    assert small.model.generator.ngf < 64


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("optim: {lr: fast}\n", "optim.lr: expected float"),
        ("model: {generator: {ngff: 8}}\n", "model.generator.ngff: unknown key"),
        ("loss: {adversarial: hinge}\n", "loss.adversarial: 'hinge' is not one of"),
        ("runtime: {amp: fp8}\n", "runtime.amp"),
        ("data: {slices: random}\n", "a 3D model needs data.slices: volume"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_train_config(path)


def test_cli_bad_config_is_one_line_and_exit_1(tmp_path: Path, prepared: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {itterations: 5}\n")
    result = runner.invoke(
        app, ["train", "-c", str(path), "--data", str(prepared), "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert "optim.itterations: unknown key" in result.stderr
    assert "Traceback" not in result.output


def test_preprocessing_must_match_the_prepared_set(tmp_path: Path, prepared: Path) -> None:
    config = from_mapping(TrainConfig, {**TINY, "preprocessing": {}})
    with pytest.raises(ConfigError, match="prepared with"):
        train_run(config, prepared, tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------- data


def test_batches_are_unpaired_deterministic_and_shaped(prepared: Path) -> None:
    data = PreparedSet.open(prepared)
    assert {d: len(s) for d, s in data.scans.items()} == {"mr": 2, "ct": 1}  # the 70 % train split
    batches = UnpairedBatches(data, tiny(data={"batch_size": 2}).data, seed=3)
    a, b = batches[5], batches[5]
    assert a["mr"].shape == (2, 1, 8, 48, 48) and a["ct"].dtype == torch.float32
    assert torch.equal(a["mr"], b["mr"]) and torch.equal(a["ct"], b["ct"])
    other_seed = UnpairedBatches(data, tiny(data={"batch_size": 2}).data, seed=4)
    assert any(not torch.equal(batches[i]["mr"], other_seed[i]["mr"]) for i in range(6))
    patch = UnpairedBatches(data, tiny(data={"patch": [8, 32, 24]}).data, seed=0)[0]
    assert patch["ct"].shape == (1, 1, 8, 32, 24)
    assert float(a["mr"].min()) >= -1 and float(a["mr"].max()) <= 1


def test_2d_baseline_batches(prepared: Path) -> None:
    data = PreparedSet.open(prepared)
    seq = from_mapping(
        TrainConfig,
        {
            **TINY,
            "model": {"generator": {"spatial_dims": 2, "ngf": 4}, "discriminator": {"spatial_dims": 2}},
            "data": {"slices": "sequential", "batch_size": 4},
        },
    )
    batch = UnpairedBatches(data, seq.data, seed=0)[0]
    assert batch["mr"].shape == (4, 1, 48, 48)
    # Four consecutive slices of one prepared volume, in order.
    volumes = [np.load(scan.image) for scan in data.scans["mr"]]
    slices = batch["mr"][:, 0].numpy()
    assert any(np.array_equal(v[s : s + 4], slices) for v in volumes for s in range(v.shape[0] - 3))
    model_2d = {"generator": {"spatial_dims": 2, "ngf": 4}, "discriminator": {"spatial_dims": 2}}
    random_2d = from_mapping(
        TrainConfig, {**TINY, "model": model_2d, "data": {"slices": "random", "batch_size": 3}}
    )
    random = UnpairedBatches(data, random_2d.data, seed=0)[0]
    assert random["ct"].shape == (3, 1, 48, 48)


# ----------------------------------------------------------------------------- training


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "networks.safetensors"))


def test_one_iteration_gives_finite_losses_and_changes_every_network(tmp_path: Path, prepared: Path) -> None:
    config = tiny(optim={"iterations": 1, "decay_iterations": 0})
    torch.manual_seed(config.seed)
    from mrct.cyclegan import Discriminators, Generators

    initial = {f"generators.{k}": v for k, v in Generators(config.model).state_dict().items()}
    initial.update({f"discriminators.{k}": v for k, v in Discriminators(config.model).state_dict().items()})
    result = train_run(config, prepared, tmp_path / "run", progress=False)
    assert result.iteration == 1 and len(result.losses) == 1
    assert all(np.isfinite(v) for v in result.losses[0].values())
    after = _weights(tmp_path / "run", "iter_0000001")
    assert set(after) == set(initial)
    for net in ("generators.mr_to_ct", "generators.ct_to_mr", "discriminators.d_ct", "discriminators.d_mr"):
        changed = [k for k in after if k.startswith(net) and not torch.equal(after[k], initial[k])]
        assert changed, f"{net} did not change"


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_resume_equals_the_uninterrupted_run(tmp_path: Path, prepared: Path, dropout: float) -> None:
    # Dropout draws on the global RNG, which iter(DataLoader) also drew its base seed from: a
    # resumed run's losses differed from iteration 4 on. Workers and augmentation too.
    model = {**TINY["model"], "generator": {**TINY["model"]["generator"], "dropout": dropout}}
    config = tiny(data={"workers": 1, "augment": {"enabled": True}}, model=model)
    whole = train_run(config, prepared, tmp_path / "whole", progress=False)
    first = train_run(config, prepared, tmp_path / "parts", progress=False, until=3)
    rest = train_run(config, prepared, tmp_path / "parts", resume=True, progress=False)
    assert (first.iteration, rest.iteration, whole.iteration) == (3, 6, 6)
    ours = [e["loss/generator/total"] for e in first.losses + rest.losses]
    assert ours == pytest.approx([e["loss/generator/total"] for e in whole.losses], rel=1e-5, abs=1e-6)
    a, b = _weights(tmp_path / "whole", "iter_0000006"), _weights(tmp_path / "parts", "iter_0000006")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    logged = [
        json.loads(line)["iteration"] for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()
    ]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_another_prepared_set(tmp_path: Path, prepared: Path) -> None:
    """It resumed silently on other scans, and the run's data.json (so its model card) still
    named the first set."""
    config = tiny()
    run = tmp_path / "run"
    train_run(config, prepared, run, progress=False, until=3)
    record = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({**record, "content_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="started on another prepared set"):
        train_run(config, prepared, run, resume=True, progress=False)
    # A run from before content_sha256 was recorded compares the manifest's bytes.
    legacy = {k: v for k, v in record.items() if k != "content_sha256"}
    (run / "data.json").write_text(json.dumps({**legacy, "manifest_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="started on another prepared set"):
        train_run(config, prepared, run, resume=True, progress=False)
    (run / "data.json").write_text(json.dumps(record))
    assert train_run(config, prepared, run, resume=True, progress=False).iteration == 6


def test_resume_survives_a_prepare_rerun_that_adds_nothing(tmp_path: Path, prepared: Path) -> None:
    """From a hunt: re-running mrct prepare with nothing new rewrites its manifest (its time, its
    settled split), and every run on the set was refused as 'started on another prepared set'."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    config = tiny()
    train_run(config, data, tmp_path / "run", progress=False, until=3)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.update(updated="2030-01-01T00:00:00Z", settled_split=manifest["split"])
    for entry in manifest["scans"]:
        entry["source"] = f"/elsewhere/{entry['id']}"  # the sources moved, the same scans
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert train_run(config, data, tmp_path / "run", resume=True, progress=False).iteration == 6
    manifest["scans"][0]["source_checksum"] = "0" * 64  # another scan under the same id
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="started on another prepared set"):
        train_run(config, data, tmp_path / "run", resume=True, progress=False)


def test_resume_survives_a_lost_pointer_a_deleted_checkpoint_and_a_torn_log(
    tmp_path: Path, prepared: Path
) -> None:
    # Before, a missing newest checkpoint (or a dangling "latest") made --resume wipe the run
    # and start at iteration 0, and a log line cut short by a hard kill stopped it (exit 70).
    config = tiny()
    run = tmp_path / "run"
    train_run(config, prepared, run, progress=False)  # checkpoints at 3 and 6
    shutil.rmtree(run / "checkpoints" / "iter_0000006")
    with (run / "log.jsonl").open("a") as f:
        f.write('{"iteration": 7, "los')
    again = train_run(config, prepared, run, resume=True, progress=False)
    assert again.iteration == 6 and len(again.losses) == 3  # iterations 4-6: resumed from 3
    assert (run / "checkpoints" / "iter_0000006").is_dir()
    logged = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]
    (run / "checkpoints" / "latest").unlink()
    done = train_run(config, prepared, run, resume=True, progress=False)
    assert (done.iteration, done.losses) == (6, [])  # found iter_0000006 without the pointer


def test_resume_passes_over_a_newest_checkpoint_cut_short_by_a_crash(
    tmp_path: Path, prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From a hunt: after a power cut, the renamed newest checkpoint held an empty file, and
    --resume stopped at it ("header too small") although an older one was whole. Checkpoint
    files are readable by the group, as the exported weights are (safetensors wrote 0600)."""
    import stat

    config = tiny()
    run = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        train_run(config, prepared, run, progress=False)  # checkpoints at 3 and 6
    finally:
        os.umask(old_umask)
    newest = run / "checkpoints" / "iter_0000006"
    assert {stat.S_IMODE(f.stat().st_mode) for f in newest.iterdir()} == {0o644}
    (newest / "networks.safetensors").write_bytes(b"")
    with caplog.at_level("WARNING"):
        again = train_run(config, prepared, run, resume=True, progress=False)
    assert again.iteration == 6 and len(again.losses) == 3  # iterations 4-6: resumed from 3
    assert "points at iter_0000006, which is missing or incomplete; using iter_0000003" in caplog.text
    cut = newest / "optimizers.safetensors"  # whole again after the rerun; now cut mid-tensor
    cut.write_bytes(cut.read_bytes()[:-10])
    assert checkpoint.latest(run).name == "iter_0000003"


def test_a_damaged_checkpoint_is_a_read_error(tmp_path: Path, prepared: Path) -> None:
    config = tiny(optim={"iterations": 3, "decay_iterations": 0})
    run = tmp_path / "run"
    train_run(config, prepared, run, progress=False)
    state_file = run / "checkpoints" / "iter_0000003" / "state.json"
    state = json.loads(state_file.read_text())
    del state["schedulers"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ReadError, match="not a readable checkpoint"):
        train_run(config, prepared, run, resume=True, progress=False)
    networks = run / "checkpoints" / "iter_0000003" / "networks.safetensors"
    networks.write_bytes(b"\xff" * 8 + networks.read_bytes()[8:])  # a header length far too large
    with pytest.raises(ReadError, match="not a readable checkpoint"):
        train_run(config, prepared, run, resume=True, progress=False)


def test_an_error_in_a_loader_worker_stops_the_workers(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the workers outlived the error and the exiting process waited on them forever.
    import multiprocessing

    def broken(*_: object) -> None:
        raise RuntimeError("a disk went away")

    monkeypatch.setattr(UnpairedBatches, "_sample", broken)  # the forked worker inherits it
    with pytest.raises(RuntimeError, match="a disk went away"):
        train_run(tiny(data={"workers": 1}), prepared, tmp_path / "run", progress=False)
    assert multiprocessing.active_children() == []


def test_a_patch_or_array_the_run_cannot_use_is_refused_before_the_folder_is_touched(
    tmp_path: Path, prepared: Path
) -> None:
    for data, message in (
        ({"patch": [3, 5, 7]}, "too small for the discriminator"),
        ({"patch": [8, 96, 48]}, "larger than the prepared grid"),
    ):
        with pytest.raises(ConfigError, match=message):
            train_run(tiny(data=data), prepared, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(prepared, damaged)
    first = sorted((damaged / "mr").glob("*.npy"))[0]
    np.save(first, np.zeros((4, 48, 48), np.float32))
    with pytest.raises(ReadError, match="not float32 \\[8, 48, 48\\]"):
        train_run(tiny(), damaged, tmp_path / "run", progress=False)


def test_a_run_resumes_on_another_machine_with_other_workers_and_logging(
    tmp_path: Path, prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From a hunt: any change refused a resume, even the loader workers (the batches do not
    depend on them) or gradient checkpointing to fit a smaller GPU, without naming the key."""
    run = tmp_path / "run"
    train_run(tiny(), prepared, run, until=3, progress=False)
    moved = tiny(data={"workers": 1}, logging={"log_every": 2}, runtime={"gradient_checkpointing": True})
    with caplog.at_level("WARNING"):
        assert train_run(moved, prepared, run, resume=True, progress=False).iteration == 6
    assert "data.workers 0 -> 1" in caplog.text and "logging.log_every 1 -> 2" in caplog.text
    assert "runtime.gradient_checkpointing False -> True" in caplog.text and "last bits" in caplog.text


def test_run_folder_refused_without_resume_or_overwrite(tmp_path: Path, prepared: Path) -> None:
    config = tiny(optim={"iterations": 1, "decay_iterations": 0})
    train_run(config, prepared, tmp_path / "run", progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_run(config, prepared, tmp_path / "run", progress=False)
    other = tiny(optim={"iterations": 2, "decay_iterations": 0})
    with pytest.raises(ConfigError, match=r"another config \(optim\.iterations 1 -> 2\)"):  # named
        train_run(other, prepared, tmp_path / "run", resume=True, progress=False)
    assert train_run(config, prepared, tmp_path / "run", overwrite=True, progress=False).iteration == 1
    # From a hunt: --overwrite deleted a user's config.json (taken for a run's) and their pictures
    # in previews/; a run folder inside the prepared set filled it with checkpoints and logs.
    (tmp_path / "run" / "previews").mkdir(exist_ok=True)
    (tmp_path / "run" / "previews" / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(
        OutputExistsError, match=r"holds previews/holiday\.jpg, which mrct train does not write"
    ):
        train_run(config, prepared, tmp_path / "run", overwrite=True, progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # --resume without a checkpoint starts again too
    with pytest.raises(OutputExistsError, match=r"holds previews/holiday\.jpg"):
        train_run(config, prepared, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "previews" / "holiday.jpg").read_bytes() == b"mine"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="holds no training run"):
        train_run(config, prepared, tmp_path / "mine", overwrite=True, progress=False)
    assert (tmp_path / "mine" / "config.json").read_text() == "{}"
    with pytest.raises(OutputExistsError, match="lies in the prepared set"):
        train_run(config, prepared, prepared / "run", progress=False)
    assert not (prepared / "run").exists()


def test_cli_train_writes_checkpoints_tensorboard_and_previews(tmp_path: Path, prepared: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    run = tmp_path / "run"
    args = ["train", "-c", str(tmp_path / "tiny.yaml"), "--data", str(prepared), "-o", str(run), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained to iteration 4" in result.stdout
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == ["iter_0000002", "iter_0000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000004"
    assert sorted(p.name for p in (run / "previews").glob("*.png")) == [
        "iter_0000002.png",
        "iter_0000004.png",
    ]
    assert list((run / "checkpoints").glob(".tmp-*")) == []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/generator/cycle_mr", "loss/discriminator/d_ct", "lr", "speed/iterations_per_s"} <= tags
    assert "memory/max_rss_gib" in tags
    assert [e.step for e in events.Scalars("loss/generator/total")] == [1, 2, 3, 4]
    # The rate each step used (iterations 4, the last 2 decaying), not the scheduler's next one.
    logged = [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    again = runner.invoke(app, args)
    assert again.exit_code == 4 and "--resume" in again.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path: Path, prepared: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text(
        TINY_YAML.replace("iterations: 4", "iterations: 400").replace(
            "checkpoint_every: 2", "checkpoint_every: 1000"
        )
    )
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mrct",
        "train",
        "-c",
        str(config),
        "--data",
        str(prepared),
        "-o",
        str(run),
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at iteration" in err and "--resume" in err and "Traceback" not in err
    state = json.loads(
        (
            run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "state.json"
        ).read_text()
    )
    assert 2 <= state["iteration"] < 400
    until = str(state["iteration"] + 1)
    resumed = subprocess.run(
        [*cmd, "--resume", "--until", until], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained to iteration {until}" in resumed.stdout


def test_sigterm_to_the_process_group_saves_a_checkpoint(tmp_path: Path, prepared: Path) -> None:
    """``timeout`` and batch schedulers signal the whole process group, data-loader workers included:
    the workers must leave the signal to the main process, which saves a checkpoint and exits 143."""
    config = tmp_path / "long.yaml"
    long = TINY_YAML.replace("iterations: 4", "iterations: 400").replace(
        "checkpoint_every: 2", "checkpoint_every: 1000"
    )
    config.write_text(long.replace("workers: 0", "workers: 1"))
    run = tmp_path / "run"
    train = ["train", "-c", str(config), "--data", str(prepared), "-o", str(run)]  # with its bar
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrct", *train],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as under timeout(1)
    )
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:  # workers running
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # as the README says (it was 130, Ctrl-C's code)
    assert "error: terminated (SIGTERM) at iteration" in err and "continue with --resume" in err
    assert "DataLoader worker" not in err and "Traceback" not in err
    assert (run / "checkpoints" / "latest").is_file()
    # From review: the warning was written after the bar, on its line ("2/400 [..]WARNING: stopping").
    (stopping,) = [line for line in err.split("\n") if "stopping: saving a checkpoint" in line]
    assert stopping.rsplit("\r", 1)[-1].startswith("WARNING: stopping"), err


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_second_stop_signal_ends_training_at_once_with_its_own_exit_code(
    sig: signal.Signals, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first signal asks for a checkpoint after this iteration; a second one stops at once. A
    second SIGTERM (a scheduler that loses patience) exited 130, "interrupted", as Ctrl-C does."""
    import typer

    from mrct.cli_options import fail
    from mrct.training.signals import StopFlag

    with StopFlag() as stop, pytest.raises(KeyboardInterrupt) as raised:
        signal.raise_signal(sig)
        assert stop.requested and stop.signum == sig
        signal.raise_signal(sig)  # at once: the same request (GNU timeout sends its signal twice)
        time.sleep(1.1)
        signal.raise_signal(sig)
    with pytest.raises(typer.Exit) as ended:
        fail(raised.value)
    assert ended.value.exit_code == code
    # Last: the first signal's warning comes before (through whatever logging handler is set up).
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {line}"


def _stop_signal_seen_by(rank: int, port: int, signals: list[int], seen: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    from mrct.training.distributed import DistContext

    group = DistContext(rank=rank, world_size=2, local_rank=rank)
    group.start("cpu")
    try:
        seen[rank] = group.max_each(rank, signals[rank])  # what each process learns of all
        assert group.any_each(rank == 1, False) == [True, False]
    finally:
        group.stop()


def test_a_stop_signal_to_one_process_of_torchrun_is_reported_as_that_signal() -> None:
    """A scheduler's SIGTERM that reached only one process stopped all of them, as it should, but
    rank 0, which reports, exited 130 (Ctrl-C's code) with "interrupted" instead of 143."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the two processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = mp.get_context("spawn").Manager().dict()
    mp.spawn(_stop_signal_seen_by, args=(port, [0, int(signal.SIGTERM)], seen), nprocs=2)
    assert dict(seen) == {0: [1, signal.SIGTERM], 1: [1, signal.SIGTERM]}


def test_ddp_two_processes_on_cpu(tmp_path: Path, prepared: Path) -> None:
    """torchrun with two gloo processes, resuming a one-process run (as when a run moves to a
    machine with more GPUs): both train, rank 0 writes, each rank's state is saved."""
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    run = tmp_path / "run"
    first = ["train", "-c", str(tmp_path / "tiny.yaml"), "--data", str(prepared), "-o", str(run)]
    assert runner.invoke(app, [*first, "-q", "--until", "2"]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mrct",
        "train",
        "-c",
        str(tmp_path / "tiny.yaml"),
        "--data",
        str(prepared),
        "-o",
        str(run),
        "-q",
        "--device",
        "cpu",
        "--resume",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming with 2 process(es) a 1-process run: not exact") == 1  # rank 0 only
    final = run / "checkpoints" / "iter_0000004"
    assert (final / "rank0.safetensors").is_file() and (final / "rank1.safetensors").is_file()
    assert json.loads((final / "state.json").read_text())["world_size"] == 2
    log = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]  # logged once (rank 0), not once per process


def test_export_writes_a_package_that_loads_and_translates(tmp_path: Path, prepared: Path) -> None:
    from mrct.models import load_package

    config = tiny(optim={"iterations": 2, "decay_iterations": 0})
    train_run(config, prepared, tmp_path / "run", progress=False)
    out = tmp_path / "models" / "tiny-head"
    result = runner.invoke(
        app, ["export", str(tmp_path / "run"), "-o", str(out), "--license", "CC-BY-SA-3.0"]
    )
    assert result.exit_code == 0, result.output
    package = load_package(out)
    assert package.name == "tiny-head" and package.manifest["license"] == "CC-BY-SA-3.0"
    assert package.manifest["training"]["iterations"] == 2
    assert package.manifest["intensity"]["ct"]["hu_range"] == [-1024, 3071]
    assert package.preprocessing == config.preprocessing
    saved = _weights(tmp_path / "run", "iter_0000002")
    for direction in ("mr_to_ct", "ct_to_mr"):
        net = package.load_generator(direction)
        for key, value in net.state_dict().items():
            assert torch.equal(value, saved[f"generators.{direction}.{key}"])
        with torch.inference_mode():
            assert net(torch.zeros(1, 1, 8, 48, 48)).shape == (1, 1, 8, 48, 48)
    assert "not for diagnosis" in (out / "README.md").read_text()
    again = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(out)])
    assert again.exit_code == 4
    missing = runner.invoke(app, ["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no config.json" in missing.stderr


@pytest.mark.parametrize(
    "runtime", [{"amp": "bf16"}, {"gradient_checkpointing": True, "channels_last": True}]
)
def test_runtime_options_train(tmp_path: Path, prepared: Path, runtime: dict) -> None:
    """bf16 autocast (on this CPU), gradient checkpointing and channels_last_3d all train."""
    config = tiny(optim={"iterations": 1, "decay_iterations": 0}, runtime=runtime)
    result = train_run(config, prepared, tmp_path / "run", progress=False)
    assert result.iteration == 1 and all(np.isfinite(v) for v in result.losses[0].values())


def test_fp16_needs_cuda(tmp_path: Path, prepared: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tiny(runtime={"amp": "fp16"})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train_run(config, prepared, tmp_path / "run", progress=False, device="cpu")


def test_a_run_folder_that_is_a_file_or_under_one_is_a_one_line_error(tmp_path: Path, prepared: Path) -> None:
    """-o naming a file was "unexpected FileExistsError", exit 70."""
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    (tmp_path / "afile").write_text("not a run")
    # A file where the run folder goes is exit 4, as for convert, export, prepare and batch.
    for run, message, code in (
        ("afile", "is a file, not a folder", 4),
        ("afile/run", "afile is not a folder", 5),
    ):
        args = [
            "train",
            "-c",
            str(tmp_path / "tiny.yaml"),
            "--data",
            str(prepared),
            "-o",
            str(tmp_path / run),
        ]
        result = runner.invoke(app, [*args, "-q"])
        assert result.exit_code == code, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert (tmp_path / "afile").read_text() == "not a run"


def test_a_diverged_run_stops_with_an_error_and_logs_null(tmp_path: Path, prepared: Path) -> None:
    """It ran on to "trained to iteration N" (exit 0) writing NaN weights, with bare NaN tokens
    (not JSON) in log.jsonl, and export then failed with a message about JSON."""
    from mrct.errors import DivergedError
    from mrct.training.logs import DIVERGED_AFTER

    config = tiny(optim={"iterations": 30, "decay_iterations": 0, "lr": 1e30})
    with pytest.raises(DivergedError, match="have not been finite since iteration") as caught:
        train_run(config, prepared, tmp_path / "run", progress=False)
    assert caught.value.exit_code == 1
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    entries = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in log.jsonl")) for line in lines]
    assert len(entries) < 30 and any(e["loss/generator/total"] is None for e in entries)
    assert len(entries) >= DIVERGED_AFTER
    # No checkpoint of NaN weights (every 3 iterations here; it became "latest", which --resume
    # and export take): the losses were not finite before the first was due, so none at all.
    first_bad = next(e["iteration"] for e in entries if e["loss/generator/total"] is None)
    assert first_bad <= 3 and not list((tmp_path / "run" / "checkpoints").glob("iter_*"))


def test_truncating_the_log_on_resume_never_loses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was rewritten in place: a kill during the rewrite left an empty log.jsonl."""
    from mrct.training import logs

    path = tmp_path / "log.jsonl"
    original = "".join(json.dumps({"iteration": i, "loss/x": 1.0}) + "\n" for i in range(1, 6))
    path.write_text(original)
    real_write = Path.write_text

    def dying_write(self: Path, text: str, **kwargs: Any) -> int:
        real_write(self, text[: len(text) // 2], **kwargs)
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(Path, "write_text", dying_write)
    with pytest.raises(KeyboardInterrupt):
        logs.truncate_log(path, 3)
    assert path.read_text() == original and [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
    monkeypatch.undo()
    logs.truncate_log(path, 3)
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_checkpoint_that_cannot_be_written_is_a_write_error(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or lost permission mid-run was "unexpected PermissionError", exit 70."""
    from mrct.errors import WriteError
    from mrct.training import checkpoint

    def refused(tmp: Path, *args: object) -> Path:
        raise PermissionError(1, "Operation not permitted", str(tmp / "networks.safetensors"))

    monkeypatch.setattr(checkpoint, "finish", refused)
    with pytest.raises(WriteError, match=r"networks.safetensors: cannot write the run's records") as caught:
        train_run(tiny(), prepared, tmp_path / "run", progress=False, until=3)
    assert caught.value.exit_code == 5


def test_a_prepared_array_damaged_mid_run_is_a_read_error_naming_it(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was "unexpected ValueError: Caught ValueError in DataLoader worker process 0" (exit
    70, multi-line, no file named)."""
    from mrct.errors import ReadError
    from mrct.training.config import DataConfig

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    data = PreparedSet.open(copy)
    victim = data.scans["mr"][0].image
    victim.write_bytes(victim.read_bytes()[:200])  # changed after the run checked it
    batches = UnpairedBatches(data, DataConfig(), seed=0)
    errors = [b for b in (batches[i] for i in range(20)) if "error" in b]
    assert errors and errors[0]["path"] == str(victim) and "prepare the set again" in errors[0]["error"]

    def fail_at_two(self: UnpairedBatches, iteration: int) -> dict:
        return (
            {"error": "prepared array unreadable (gone)", "path": "x.npy"}
            if iteration == 2
            else real(self, iteration)
        )

    real = UnpairedBatches.__getitem__
    monkeypatch.setattr(UnpairedBatches, "__getitem__", fail_at_two)  # forked workers inherit it
    with pytest.raises(ReadError, match=r"^x.npy: prepared array unreadable \(gone\)$"):
        train_run(tiny(data={"workers": 1}), prepared, tmp_path / "run", progress=False)


def test_a_run_folder_in_use_is_refused_and_a_damaged_one_named(tmp_path: Path, prepared: Path) -> None:
    """From a hunt: two mrct train on one folder both ran (36 log lines for 20 iterations; an
    --overwrite emptied the folder under the running job); a run folder whose config.json was
    lost failed with exit 70, 'unexpected FileNotFoundError'."""
    from mrct.errors import OutputBusyError
    from mrct.folder_locks import folder_lock
    from mrct.training.run import LOCK_NAME

    config, run = tiny(), tmp_path / "run"
    train_run(config, prepared, run, progress=False, until=2)
    with folder_lock(run, LOCK_NAME, "mrct train"):  # a run under way
        for flags in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(OutputBusyError, match=r"in use by another mrct train \(pid \d+"):
                train_run(config, prepared, run, progress=False, **flags)  # type: ignore[arg-type]
    assert train_run(config, prepared, run, resume=True, progress=False, until=3).iteration == 3
    assert (
        train_run(config, prepared, run, overwrite=True, progress=False, until=1).iteration == 1
    )  # lock kept
    (run / "config.json").unlink()
    with pytest.raises(ReadError, match=r"holds checkpoints but its config\.json is missing"):
        train_run(config, prepared, run, resume=True, progress=False)


def test_a_run_that_cannot_lock_a_folder_made_meanwhile_leaves_it_alone(
    tmp_path: Path, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From review: a run that saw no folder, while another made and locked it, failed to lock
    and then removed that run's lock file and folder (so a third run was let in)."""
    import contextlib

    from mrct.errors import OutputBusyError
    from mrct.folder_locks import folder_lock
    from mrct.training.run import LOCK_NAME

    run, other = tmp_path / "run", contextlib.ExitStack()
    real_mkdir = Path.mkdir

    def made_meanwhile(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == run and not run.exists():  # the other run makes and locks it first
            real_mkdir(self)
            other.enter_context(folder_lock(run, LOCK_NAME, "mrct train"))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", made_meanwhile)
    with other, pytest.raises(OutputBusyError, match="in use by another mrct train"):
        train_run(tiny(), prepared, run, progress=False)
    assert os.listdir(run) == [LOCK_NAME]


def test_a_refused_start_takes_its_lock_file_away(tmp_path: Path, prepared: Path) -> None:
    """From review: a run refused under its lock (a folder of the user's) left .mrct-train.lock
    there; one that made the folder and wrote no run removes the folder too."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        train_run(tiny(), prepared, mine, progress=False)
    assert os.listdir(mine) == ["config.json"]
    with pytest.raises(ConfigError, match="too small for the discriminator"):
        train_run(tiny(data={"patch": [3, 5, 7]}), prepared, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def _lock_refusal_seen_by(rank: int, port: int, run: Path, seen: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    from mrct.errors import OutputBusyError
    from mrct.training.distributed import DistContext
    from mrct.training.run import _run_lock

    group = DistContext(rank=rank, world_size=2, local_rank=rank)
    group.start("cpu")
    try:
        with _run_lock(run, group):
            seen[rank] = "ran"
    except OutputBusyError as err:
        seen[rank] = err.message
    finally:
        group.stop()


def test_every_process_of_torchrun_stops_when_the_folder_is_locked(tmp_path: Path) -> None:
    """From review: only rank 0 took the lock; when it was busy the others went on into the
    first collective and hung until torchrun killed the job."""
    import socket

    import torch.multiprocessing as mp

    from mrct.folder_locks import folder_lock
    from mrct.training.run import LOCK_NAME

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    run = tmp_path / "run"
    run.mkdir()
    seen = mp.get_context("spawn").Manager().dict()
    with folder_lock(run, LOCK_NAME, "mrct train"):
        mp.spawn(_lock_refusal_seen_by, args=(free_port(), run, seen), nprocs=2)
    assert seen[0].startswith("in use by another mrct train") and "could not lock" in seen[1]
    mp.spawn(_lock_refusal_seen_by, args=(free_port(), run, seen), nprocs=2)
    assert dict(seen) == {0: "ran", 1: "ran"}
