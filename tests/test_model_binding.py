"""model.json bound to its weights: what changes the computation cannot be edited after export.

A review changed ``intensity.ct.hu_range`` in a copy of the bundled package's model.json:
``mrct models info`` said "verified: ok" and translate used it, though the README promised that
a changed byte is refused. Export now records a digest of the sections that change what a
package computes in each weight file; what only the card reads may still be completed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
from typer.testing import CliRunner

from mrct.cli import app
from mrct.errors import ModelError
from mrct.inference import REPO_MODELS
from mrct.model_manifest import BOUND_SECTIONS, safetensors_metadata, section_digests, sha256_file
from mrct.models import load_package
from tests.model_fixtures import write_tiny_model

runner = CliRunner()
Edit = Callable[[dict[str, Any]], object]


def _edit(package: Path, edit: Edit) -> None:
    manifest = json.loads((package / "model.json").read_text())
    edit(manifest)
    (package / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.mark.parametrize(
    ("section", "edit"),
    [
        ("intensity", lambda m: m["intensity"]["ct"].update(hu_range=[-1000, 2000])),
        ("preprocessing", lambda m: m["preprocessing"].update(margin_mm=m["preprocessing"]["margin_mm"] + 1)),
        ("architecture", lambda m: m["architecture"].update(parameters=m["architecture"]["parameters"] + 1)),
    ],
)
def test_an_edit_that_changes_the_computation_is_refused(tmp_path: Path, section: str, edit: Edit) -> None:
    package = write_tiny_model(tmp_path / "tiny")
    _edit(package, edit)
    result = runner.invoke(app, ["models", "info", str(package)])
    assert result.exit_code == 7, result.output
    assert result.output.splitlines() == [
        f"error: {package / 'model.json'}: {section} is not what generator_ct_to_mr.safetensors was exported "
        "with: model.json was changed after export (export the model again, or restore it)"
    ]


def test_what_only_the_card_reads_may_be_completed(tmp_path: Path) -> None:
    package = write_tiny_model(tmp_path / "tiny")
    before = load_package(package).checksum
    _edit(package, lambda m: m.update(description="evaluated: see metrics", metrics={"head_dice": 0.97}))
    after = load_package(package)
    assert after.checksum != before  # the package's checksum (in every report) still tells them apart
    assert after.load_generator("mr_to_ct") is not None


def test_packages_exported_before_the_binding_still_load(tmp_path: Path) -> None:
    package = write_tiny_model(tmp_path / "tiny")
    manifest = json.loads((package / "model.json").read_text())
    for name in manifest["files"]:  # as export wrote them before: the direction alone
        weights = package / name
        direction = safetensors_metadata(weights)["mrct_direction"]
        state = safetensors.torch.load_file(str(weights))
        safetensors.torch.save_file(state, str(weights), metadata={"mrct_direction": direction})
        manifest["files"][name] = {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    manifest["intensity"]["ct"]["hu_range"] = [-1000, 2000]  # nothing recorded to compare it with
    (package / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    load_package(package).load_generator("ct_to_mr")


def test_the_bundled_package_is_bound() -> None:
    package = load_package(REPO_MODELS / "mrct-head-medium")
    for name in package.manifest["files"]:
        metadata = safetensors_metadata(package.path / name)
        assert {k: metadata[k] for k in section_digests(package.manifest)} == section_digests(
            package.manifest
        )
    assert set(BOUND_SECTIONS) == {"architecture", "preprocessing", "intensity", "directions"}


def test_loading_a_generator_checks_again(tmp_path: Path) -> None:
    """The manifest is checked at load_package and again as each generator is read."""
    package = load_package(write_tiny_model(tmp_path / "tiny"))
    package.manifest["intensity"]["ct"]["hu_range"] = [-1000, 2000]  # changed in memory after loading
    with pytest.raises(ModelError, match=r"intensity is not what generator_mr_to_ct\.safetensors"):
        package.load_generator("mr_to_ct")


def test_nan_in_a_bound_section_is_a_package_error(tmp_path: Path) -> None:
    """Python's JSON reads NaN, which the digests cannot take: it was "unexpected ValueError", exit 70."""
    package = write_tiny_model(tmp_path / "tiny")
    text = (package / "model.json").read_text().replace('"hu_range": [', '"window": NaN, "hu_range": [', 1)
    (package / "model.json").write_text(text)
    result = runner.invoke(app, ["models", "info", str(package)])
    assert result.exit_code == 7, result.output
    assert result.output.splitlines() == [
        f"error: {package / 'model.json'}: holds NaN or Infinity, which export never writes: it was changed"
    ]
