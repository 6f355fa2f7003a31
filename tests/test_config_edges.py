"""Edges of the training and prepare configuration: seeds, non-finite numbers, file encodings and
shapes, reuse of prepared scans under another crop, and `mrct export`'s options and file modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrct.cli import app
from mrct.config import load_yaml
from mrct.errors import ConfigError
from mrct.prepare import prepare_dataset
from mrct.preprocessing.config import PreprocessConfig
from mrct.training.config import load_train_config
from mrct.training.run import train_run
from tests.test_prepare import CROP, SMALL_YAML, write_head
from tests.test_training import tiny

runner = CliRunner()


def one_line_error(result, exit_code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def config_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- seeds and numbers


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_seed_out_of_numpy_range_is_refused(tmp_path: Path, seed: str) -> None:
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 4294967295\]"):
        load_train_config(config_file(tmp_path, f"seed: {seed}\n"))


def test_seed_at_the_limits_loads(tmp_path: Path) -> None:
    assert load_train_config(config_file(tmp_path, "seed: 0\n")).seed == 0
    assert load_train_config(config_file(tmp_path, "seed: 4294967295\n")).seed == 2**32 - 1
    with pytest.raises(ConfigError, match="seed: expected int"):
        load_train_config(config_file(tmp_path, "seed: 1.5\n"))


def test_prepare_seed_out_of_range_is_a_one_line_error(tmp_path: Path) -> None:
    head = write_head(tmp_path / "mr" / "a.nii.gz", "mr")
    result = runner.invoke(app, ["prepare", "--mr", str(head), "-o", str(tmp_path / "out"), "--seed", "-1"])
    one_line_error(result, 1, "--seed must be an integer in [0, 4294967295]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("loss: {cycle_weight: .nan}\n", "loss: cycle_weight must be a finite number >= 0, got nan"),
        ("loss: {identity_weight: .inf}\n", "loss: identity_weight must be a finite number >= 0, got inf"),
        ("loss: {const_weight: -.inf}\n", "loss: const_weight must be a finite number >= 0, got -inf"),
        ("loss: {cycle_weight: -1}\n", "loss: cycle_weight must be a finite number >= 0, got -1.0"),
        ("optim: {lr: .nan}\n", "optim: lr must be a finite number > 0, got nan"),
        ("optim: {lr: .inf}\n", "optim: lr must be a finite number > 0, got inf"),
        ("optim: {lr: 0}\n", "optim: lr must be a finite number > 0, got 0.0"),
        ("optim: {lr: -2.0e-4}\n", "optim: lr must be a finite number > 0, got -0.0002"),
        ("optim: {beta1: .nan}\n", "optim: need beta1 and beta2 in [0, 1)"),
    ],
)
def test_non_finite_weights_and_rates_name_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_train_config(config_file(tmp_path, yaml_text))
    assert message in str(info.value)


def test_cli_train_with_a_nan_rate_is_a_one_line_error(tmp_path: Path) -> None:
    path = config_file(tmp_path, "optim: {lr: .nan}\n")
    result = runner.invoke(
        app, ["train", "-c", str(path), "--data", str(tmp_path), "-o", str(tmp_path / "r")]
    )
    one_line_error(result, 1, "optim: lr must be a finite number > 0", str(path))
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- the file itself


def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, b"name: caf\xe9\n")  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_train_config(path)
    assert info.value.path == str(path)
    train = runner.invoke(app, ["train", "-c", str(path), "--data", str(tmp_path), "-o", str(tmp_path / "r")])
    one_line_error(train, 1, str(path), "not UTF-8 text")
    prepare = runner.invoke(app, ["prepare", "--config", str(path), "-o", str(tmp_path / "out")])
    one_line_error(prepare, 1, str(path), "not UTF-8 text")


@pytest.mark.parametrize("text", ["- preprocessing\n- grid\n", "just a sentence\n", "42\n"])
def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = config_file(tmp_path, text)
    prepare = runner.invoke(app, ["prepare", "--config", str(path), "-o", str(tmp_path / "out")])
    one_line_error(prepare, 1, str(path), "expected a mapping")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(PreprocessConfig, path, "preprocessing")


def test_an_empty_config_still_means_the_defaults(tmp_path: Path) -> None:
    assert load_yaml(PreprocessConfig, config_file(tmp_path, ""), "preprocessing") == PreprocessConfig()


def test_an_empty_section_is_refused_and_a_yaml_error_gives_its_line(tmp_path: Path) -> None:
    """From a hunt: "model:" with its keys commented out (YAML null) trained the paper's
    64-filter, 9-block model without a word; a tab said only "while scanning for the next token"."""
    with pytest.raises(
        ConfigError, match=r"model: is empty; give its keys, or leave it out for the defaults"
    ):
        load_train_config(config_file(tmp_path, "model:\n#  ngf: 4\noptim: {lr: 0.001}\n"))
    with pytest.raises(ConfigError, match=r"line 2, column 1: found character '\\t' that cannot start"):
        load_train_config(config_file(tmp_path, "model:\n\tngf: 4\n"))


def test_exponent_numbers_are_floats_as_in_yaml_1_2(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 as a string; every other YAML tool reads it as a number.
    config = load_train_config(config_file(tmp_path, "optim: {lr: 1e-4}\nloss: {cycle_weight: 1E+1}\n"))
    assert (config.optim.lr, config.loss.cycle_weight) == (1e-4, 10.0)
    assert load_train_config(config_file(tmp_path, "name: '1e-4'\n")).name == "1e-4"


def test_yaml_1_1_number_and_boolean_quirks_are_gone(tmp_path: Path) -> None:
    """PyYAML read seed: 010 as octal 8, lr: 1:30 as sexagesimal 90.0, and yes/off as booleans."""
    assert load_train_config(config_file(tmp_path, "seed: 010\n")).seed == 10
    for text, key in (("optim: {lr: 1:30}\n", "lr"), ("runtime: {compile: yes}\n", "compile")):
        with pytest.raises(ConfigError, match=key):
            load_train_config(config_file(tmp_path, text))
    assert load_train_config(config_file(tmp_path, "runtime: {compile: true}\n")).runtime.compile is True


def test_merge_keys_still_load_and_an_unhashable_key_is_a_config_error(tmp_path: Path) -> None:
    text = "base: &b {lr: 1.0e-4, beta1: 0.9}\noptim: {<<: *b, lr: 3e-4}\n"
    with pytest.raises(ConfigError, match="base: unknown key"):  # loaded; only the key is unknown
        load_train_config(config_file(tmp_path, text))
    import yaml

    from mrct.config import _yaml_loader

    assert yaml.load(text, Loader=_yaml_loader())["optim"] == {"lr": 3e-4, "beta1": 0.9}
    with pytest.raises(ConfigError, match="not a readable YAML file"):
        load_train_config(config_file(tmp_path, "? [1, 2]\n: 3\n"))


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, "optim:\n  lr: 2.0e-4\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice in one mapping \(line 3\)") as info:
        load_train_config(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("optim: {iterations: -5}\n", "optim: iterations must be >= 1, got -5"),
        ("optim: {iterations: 10, decay_iterations: 11}\n", "decay_iterations must be within 0..iterations"),
        ("data: {batch_size: 0}\n", "data: batch_size must be >= 1, got 0"),
        ("data: {workers: -1}\n", "data: workers must be >= 0, got -1"),
        ("logging: {preview_every: 0}\n", "logging: preview_every must be >= 1, got 0"),
    ],
)
def test_range_errors_name_the_key_and_value(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_train_config(config_file(tmp_path, yaml_text))


def test_prepare_checks_the_whole_config_file(tmp_path: Path) -> None:
    # A misspelt section used to be skipped, leaving prepare on the default grid without a word.
    path = config_file(tmp_path, "preprocesing: {grid: {depth: 8}}\n")
    head = write_head(tmp_path / "mr" / "a.nii.gz", "mr")
    args = ["prepare", "--mr", str(head), "--config", str(path), "-o", str(tmp_path / "out")]
    one_line_error(runner.invoke(app, args), 1, str(path), "preprocesing: unknown key")
    assert not (tmp_path / "out").exists()


def test_a_missing_config_file_is_input_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    train = ["train", "-c", str(missing), "--data", str(tmp_path), "-o", str(tmp_path / "r")]
    one_line_error(runner.invoke(app, train), 2, str(missing), "config file not found")
    prepare = ["prepare", "--config", str(missing), "-o", str(tmp_path / "out")]
    one_line_error(runner.invoke(app, prepare), 2, str(missing), "config file not found")


# ----------------------------------------------------------------------------- prepare: crop changes


def test_prepare_again_with_another_crop_prepares_again(tmp_path: Path) -> None:
    head = write_head(tmp_path / "mr" / "a.nii.gz", "mr", seed=1)
    config = config_file(tmp_path, SMALL_YAML)
    out = tmp_path / "out"

    def run(*crop: str) -> str:
        args = ["prepare", "--mr", str(head), "-o", str(out), "--config", str(config), "-q", *crop]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.stdout

    def entry() -> dict:
        return json.loads((out / "manifest.json").read_text())["scans"][0]

    assert "earlier run" not in run("--crop-mm", "40,-40")
    assert entry()["crop"]["superior_mm"] == 40 and entry()["crop_request"]["mode"] == "mm"
    assert "1 from an earlier run" in run("--crop-mm", "40,-40")  # the same request: reused
    assert "earlier run" not in run("--crop-mm", "30,-40")  # another request: prepared again
    assert (entry()["crop"]["superior_mm"], entry()["crop"]["inferior_mm"]) == (30, -40)
    record = json.loads((out / "mr" / "a.json").read_text())
    assert record["slab"]["superior_mm"] == 30  # the files, not only the manifest
    assert "earlier run" not in run("--no-crop")
    assert entry()["crop"]["source"] == "full-fov" and entry()["crop_request"]["mode"] == "none"
    # A set prepared before requests were recorded: the slab's source tells only "no crop" apart.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["scans"][0]["crop_request"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert "1 from an earlier run" in run("--no-crop")
    assert entry()["crop_request"]["mode"] == "none"  # recorded now that it is known
    (out / "manifest.json").write_text(json.dumps(manifest))  # legacy again
    assert "earlier run" not in run("--crop-mm", "30,-40")
    assert entry()["crop"]["source"] == "crop-mm"


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-iteration tiny run on two synthetic heads per domain."""
    root = tmp_path_factory.mktemp("export-run")
    for i in range(2):
        write_head(root / "mr" / f"mr{i}.nii.gz", "mr", (66.0 + 3 * i, 82.0, 78.0), seed=i)
        write_head(root / "ct" / f"ct{i}.nii.gz", "ct", (68.0 + 4 * i, 84.0, 79.0), seed=10 + i)
    config = tiny(optim={"iterations": 1, "decay_iterations": 0})
    prepared = root / "prepared"
    summary = prepare_dataset(
        [root / "mr"], [root / "ct"], prepared, config=config.preprocessing, crop=CROP, progress=False
    )
    assert summary.failed == 0
    train_run(config, prepared, root / "run", progress=False)
    assert (root / "run" / "checkpoints" / "iter_0000001" / "networks.safetensors").is_file()
    return root / "run"


def test_export_refuses_a_checkpoint_outside_the_run(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "checkpoints" / "iter_0000001"
    shutil.copytree(run_dir / "checkpoints" / "iter_0000001", other)
    link = run_dir / "checkpoints" / "iter_9999999"
    link.symlink_to(other, target_is_directory=True)
    try:
        for given in (str(other), "../../other/checkpoints/iter_0000001", "iter_9999999", ".", ".."):
            out = tmp_path / "models" / "m"
            result = runner.invoke(app, ["export", str(run_dir), "-o", str(out), "--checkpoint", given])
            one_line_error(
                result, 1, f"error: {given}: --checkpoint must name a checkpoint folder of this run"
            )
            assert not out.exists()
    finally:
        link.unlink()
    inside = run_dir / "checkpoints" / "iter_0000001"
    for given in ("iter_0000001", str(inside.resolve())):  # a name, or a full path into the run
        out = tmp_path / "ok" / "m"
        result = runner.invoke(app, ["export", str(run_dir), "-o", str(out), "--checkpoint", given])
        assert result.exit_code == 0, result.output
        shutil.rmtree(out)
    missing = runner.invoke(app, ["export", str(run_dir), "-o", str(out), "--checkpoint", "iter_0000042"])
    assert missing.exit_code == 2 and "no such checkpoint" in missing.stderr


def test_exported_weights_get_the_mode_of_a_new_file(run_dir: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        result = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "m")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    weights = sorted((tmp_path / "m").glob("*.safetensors"))
    assert len(weights) == 2
    for path in [*weights, tmp_path / "m" / "model.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path  # 0666 less the umask, not 0600
    old = os.umask(0o022)
    try:
        again = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "m"), "--overwrite"])
    finally:
        os.umask(old)
    assert again.exit_code == 0, again.output
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").glob("*.safetensors")} == {0o644}


def test_export_with_a_bad_name_is_an_option_error(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "m"
    result = runner.invoke(app, ["export", str(run_dir), "-o", str(out), "--name", "my model/1"])
    one_line_error(result, 1, "--name 'my model/1': a model name must be letters, digits")
    assert not out.exists()
    spaced = tmp_path / "models" / "my model"
    result = runner.invoke(app, ["export", str(run_dir), "-o", str(spaced)])
    one_line_error(result, 1, "the output folder's name 'my model' (pass --name)")
    assert not spaced.exists()
    named = runner.invoke(app, ["export", str(run_dir), "-o", str(spaced), "--name", "my-model"])
    assert named.exit_code == 0, named.output
    assert json.loads((spaced / "model.json").read_text())["name"] == "my-model"


def test_a_latest_pointer_leading_outside_the_run_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-edited ``checkpoints/latest`` naming another run's checkpoint (``../..``, or an
    absolute path) must not make --resume or export read that run: the run's own newest
    complete checkpoint is used, with a warning."""
    from mrct.training import checkpoint

    def complete(path: Path) -> Path:
        import torch
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        (path / "state.json").write_text("{}")
        for name in ("networks.safetensors", "optimizers.safetensors"):  # whole files (checked)
            save_file({"x": torch.zeros(2)}, str(path / name))
        return path

    own = complete(tmp_path / "run" / "checkpoints" / "iter_0000010")
    other = complete(tmp_path / "other" / "checkpoints" / "iter_0000090")
    pointer = tmp_path / "run" / "checkpoints" / checkpoint.LATEST
    for named in ("../../other/checkpoints/iter_0000090", str(other), ".."):
        pointer.write_text(named + "\n")
        caplog.clear()
        assert checkpoint.latest(tmp_path / "run") == own
        assert "points outside this run" in caplog.text
    pointer.write_text("iter_0000010\n")
    assert checkpoint.latest(tmp_path / "run") == own


def test_a_grid_far_too_large_is_a_config_error_before_any_scan(tmp_path: Path) -> None:
    """It used to fail every scan with "unexpected RuntimeError: applying transform <object>"."""
    config = tmp_path / "huge.yaml"
    config.write_text("preprocessing:\n  grid: {depth: 100000, height: 100000, width: 100000}\n")
    result = CliRunner().invoke(
        app, ["prepare", "-o", str(tmp_path / "out"), "--mr", str(tmp_path), "--config", str(config), "-q"]
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"error: {config}: preprocessing.grid: grid 100000 x 100000 x 100000 is too large "
        "(at most 1024 per side and 64 M voxels)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        (
            ("networks.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
            3,
            "unreadable checkpoint weights",
        ),
        (("state.json", b'{"world_size": 1}'), 3, "checkpoint state has no iteration number"),
        (("state.json", b"[1, 2]"), 3, "run record is not a JSON object"),
    ],
)
def test_export_of_a_damaged_checkpoint_names_the_file(
    run_dir: Path, tmp_path: Path, damage: tuple[str, bytes], code: int, message: str
) -> None:
    """Each was "unexpected ..." with exit 70 and no file named."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    name, content = damage
    (run / "checkpoints" / "iter_0000001" / name).write_bytes(content)
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "m")])
    one_line_error(result, code, f"error: {run / 'checkpoints' / 'iter_0000001' / name}: {message}")
    assert not (tmp_path / "m").exists()


def test_export_records_where_its_final_losses_were_logged(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    entry = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    # A log written before losses were nulled could hold a bare NaN: export said "not plain JSON".
    (run / "log.jsonl").write_text(json.dumps({**entry, "loss/generator/total": float("nan")}) + "\n")
    assert runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "m")]).exit_code == 0
    training = json.loads((tmp_path / "m" / "model.json").read_text())["training"]
    assert (
        training["final_losses_iteration"] == 1 and training["final_losses"]["loss/generator/total"] is None
    )
    # From a hunt: the package, made to be shared, held the prepared set's absolute path.
    prepared_at = json.loads((run / "data.json").read_text())["prepared_set"]
    assert "/" in prepared_at and training["data"]["prepared_set"] == Path(prepared_at).name
    assert prepared_at not in (tmp_path / "m" / "README.md").read_text()


def test_channel_counts_other_than_one_are_config_errors(tmp_path: Path) -> None:
    """They reached the first training step: "unexpected ValueError: expected input (N, 2, ...)"."""
    for section in (
        "generator: {in_channels: 2}",
        "generator: {out_channels: 2}",
        "discriminator: {in_channels: 2}",
    ):
        with pytest.raises(
            ConfigError, match=r"must be 1 \(prepared MR and CT volumes have one channel"
        ) as info:
            load_train_config(config_file(tmp_path, f"model: {{{section}}}\n"))
        assert info.value.path is not None


def test_a_patch_found_wrong_at_training_names_the_config_file(run_dir: Path, tmp_path: Path) -> None:
    from tests.test_training import TINY_YAML

    path = config_file(
        tmp_path, TINY_YAML.replace("data: {workers: 0}", "data: {workers: 0, patch: [16, 64, 64]}")
    )
    result = runner.invoke(
        app, ["train", "-c", str(path), "--data", str(run_dir.parent / "prepared"), "-o", str(tmp_path / "r")]
    )
    one_line_error(result, 1, f"error: {path}: data.patch [16, 64, 64] is larger than the prepared grid")
    assert not (tmp_path / "r").exists()


def test_export_takes_a_card_description_and_a_one_line_licence(run_dir: Path, tmp_path: Path) -> None:
    text = "Trained on 35 IXI T1 MRs (CC BY-SA 3.0) and one cadaver CT. Not for clinical use."
    args = [
        "export",
        str(run_dir),
        "-o",
        str(tmp_path / "m"),
        "--description",
        text,
        "--license",
        "CC-BY-SA-3.0",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert text in (tmp_path / "m" / "README.md").read_text()
    bad = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "n"), "--license", "a\nb"])
    one_line_error(bad, 1, "give the licence as one line of text")
    assert not (tmp_path / "n").exists()
