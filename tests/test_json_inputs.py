"""JSON files a user hands over, broken in ways json.loads reports oddly.

Arrays nested deeper than Python's recursion limit raised RecursionError, and an integer of
over 4300 digits a ValueError that the markups reader did not catch: both ended as
"unexpected ...", exit 70, naming no file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrct.cli import app
from tests.bad_files import good_nifti
from tests.model_fixtures import write_tiny_model

runner = CliRunner()
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INTEGER = '{"markups": [{"controlPoints": [{"position": [0, 0, ' + "9" * 5000 + "]}]}]}"


@pytest.mark.parametrize("text", [DEEP, HUGE_INTEGER], ids=["deep", "huge-integer"])
def test_a_broken_markups_file_is_one_line_naming_it(tmp_path: Path, text: str) -> None:
    src = good_nifti(tmp_path)
    markups = tmp_path / "levels.mrk.json"
    markups.write_text(text)
    model = write_tiny_model(tmp_path / "tiny")
    args = ["translate", str(src), "--to", "mr", "--model", str(model), "-o", str(tmp_path / "out.nii.gz")]
    result = runner.invoke(app, [*args, "--crop-markups", str(markups)])
    assert result.exit_code not in (0, 70), result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {markups}: not valid JSON")


def test_a_deep_batch_manifest_is_one_line_naming_it(tmp_path: Path) -> None:
    good_nifti(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(DEEP)
    result = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(out), "--to", "ct", "--quiet"])
    assert result.exit_code not in (0, 70), result.output
    assert result.output.splitlines()[-1] == (
        f"error: {out / 'manifest.json'}: not a readable batch manifest (nested too deeply to parse); "
        "use a new output folder"
    )


def test_a_deep_model_json_is_refused_as_a_bad_package(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny")
    (model / "model.json").write_text(DEEP)
    result = runner.invoke(app, ["models", "info", str(model)])
    assert result.exit_code == 7, result.output
    assert result.output.splitlines() == [
        f"error: {model / 'model.json'}: not valid JSON (nested too deeply to parse)"
    ]
    shutil.rmtree(model)
