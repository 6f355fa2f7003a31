"""`mrct models list` and `mrct models info`: what a package says about itself, verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrct import __version__, api
from mrct.cli import app
from mrct.inference import REPO_MODELS
from tests.model_fixtures import write_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the tiny package and a folder whose model.json is not JSON."""
    root = tmp_path_factory.mktemp("models")
    write_tiny_model(root / "tiny")
    (root / "broken").mkdir()
    (root / "broken" / "model.json").write_text("{not json")
    return root


def test_list_shows_every_package(models: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--dir", str(models)])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["name", "directions", "license", "mrct", "path"]
    tiny = next(line for line in lines if line.startswith("tiny"))
    assert tiny.split() == ["tiny", "mr->ct,ct->mr", "test", __version__, str(models / "tiny")]
    assert any("broken" in line and "unreadable" in line for line in lines)

    listed = json.loads(runner.invoke(app, ["models", "list", "--dir", str(models), "--json"]).stdout)
    assert {p["name"] for p in listed} == {"tiny", "broken"}
    assert [p["directions"] for p in listed if p["name"] == "tiny"] == [["mr_to_ct", "ct_to_mr"]]


def test_list_defaults_to_the_repository_models() -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert [s.path for s in api.list_models()] == [s.path for s in api.list_models([REPO_MODELS])]


def test_list_of_a_missing_folder_is_input_not_found(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--dir", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope: no such folder" in result.stderr  # not "no packages"
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["models", "list", "--dir", str(tmp_path / "empty")])
    assert empty.exit_code == 0 and "no model packages in" in empty.stdout


def test_info_verifies_and_summarises(models: Path) -> None:
    by_name = runner.invoke(app, ["models", "info", "tiny", "--dir", str(models)])
    by_path = runner.invoke(app, ["models", "info", str(models / "tiny")])
    assert by_name.exit_code == 0 and by_name.stdout == by_path.stdout, by_name.output
    text = by_name.stdout
    assert "name:         tiny" in text and "MR -> CT, CT -> MR" in text
    assert "grid:         8 x 48 x 48 at 4.0 mm in plane" in text
    assert "verified:     ok, 2 weight files" in text and "note:" not in text
    info = api.model_info(models / "tiny")
    assert len(info.checksum) == 64 and info.files_verified == 2 and info.version_note is None


def test_info_refuses_weights_that_do_not_fit_the_architecture(tmp_path: Path, models: Path) -> None:
    """Checksums match, but model.json says another width: info fails as translate would (7)."""
    edited = tmp_path / "edited"
    shutil.copytree(models / "tiny", edited)
    manifest = json.loads((edited / "model.json").read_text())
    manifest["architecture"]["generator"]["ngf"] *= 2
    (edited / "model.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["models", "info", str(edited)])
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_info_reports_another_release_line(tmp_path: Path, models: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(models / "tiny", old)
    manifest = json.loads((old / "model.json").read_text())
    manifest["mrct_version"] = "7.2.0"
    (old / "model.json").write_text(json.dumps(manifest))  # weights (and their checksums) unchanged
    result = runner.invoke(app, ["models", "info", str(old)])
    assert result.exit_code == 0, result.output
    assert (
        f"mrct version: 7.2.0 (note: made by mrct 7.2.0, another release line than this mrct {__version__}"
        in (result.stdout)
    )


@pytest.mark.parametrize("damage", ["flip a byte", "unknown name"])
def test_info_refuses_a_tampered_or_missing_package(tmp_path: Path, models: Path, damage: str) -> None:
    target = "no-such-model"
    if damage == "flip a byte":
        target = str(tmp_path / "tampered")
        shutil.copytree(models / "tiny", target)
        weights = Path(target) / "generator_ct_to_mr.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    result = runner.invoke(app, ["models", "info", target, "--dir", str(models)])
    assert result.exit_code == 7
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert (
        ("sha256" in result.stderr)
        if damage == "flip a byte"
        else ("available: broken, tiny" in result.stderr)
    )
