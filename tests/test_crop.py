"""Crop overrides: --crop-mm, 3D Slicer markups files, --no-crop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrct.errors import CropError, InputNotFoundError, MarkupsError
from mrct.preprocessing.crop import CropRequest, parse_crop_mm, read_markups


def markups(path: Path, points: list[tuple[str, tuple[float, float, float]]], system: str = "LPS") -> Path:
    """A markups file as 3D Slicer 5 writes it (trimmed to the fields Slicer needs)."""
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "controlPoints": [
                    {"id": str(n + 1), "label": label, "position": list(pos), "positionStatus": "defined"}
                    for n, (label, pos) in enumerate(points)
                ],
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_parse_crop_mm() -> None:
    assert parse_crop_mm("20,-95") == (20.0, -95.0)
    assert parse_crop_mm(" 20.5 , -95 ") == (20.5, -95.0)
    for bad in ("20", "20,-95,3", "a,b", ""):
        with pytest.raises(CropError, match="--crop-mm expects two numbers SUP,INF"):
            parse_crop_mm(bad)


def test_crop_mm_needs_the_brow_above_the_jaw() -> None:
    with pytest.raises(CropError, match="SUP at least 20 mm above INF"):
        CropRequest.millimetres(-95, 20)
    assert CropRequest.millimetres(20, -95).mode == "mm"


def test_markups_by_label_in_either_order(tmp_path: Path) -> None:
    path = markups(tmp_path / "a.mrk.json", [("jaw", (1, 2, -90.0)), ("brow", (3, 4, 18.0))])
    assert read_markups(path) == (18.0, -90.0)
    req = CropRequest.from_markups(path)
    assert (req.mode, req.superior_mm, req.inferior_mm, req.markups) == ("markups", 18.0, -90.0, path)


def test_markups_without_labels_use_the_upper_point_as_brow(tmp_path: Path) -> None:
    path = markups(tmp_path / "b.mrk.json", [("F-1", (0, 0, -80.0)), ("F-2", (0, 0, 25.0))], system="RAS")
    assert read_markups(path) == (25.0, -80.0)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_markups_with_the_wrong_number_of_points(tmp_path: Path, count: int) -> None:
    pts = [(f"p{n}", (0.0, 0.0, 10.0 * n)) for n in range(count)]
    path = markups(tmp_path / "c.mrk.json", pts)
    with pytest.raises(
        MarkupsError,
        match=f"found {count} placed control points?; expected .*two control points, brow and jaw",
    ):
        read_markups(path)


def test_markups_bad_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{not json")
    with pytest.raises(MarkupsError, match=r"not valid JSON.*expected a 3D Slicer markups file"):
        read_markups(bad)
    wrong = tmp_path / "wrong.mrk.json"
    wrong.write_text(json.dumps({"points": []}))
    with pytest.raises(MarkupsError, match="unexpected content"):
        read_markups(wrong)
    with pytest.raises(InputNotFoundError, match="not found"):  # exit 2, as any input not found
        read_markups(tmp_path / "missing.mrk.json")


def test_only_one_override_at_a_time(tmp_path: Path) -> None:
    path = markups(tmp_path / "d.mrk.json", [("brow", (0, 0, 20.0)), ("jaw", (0, 0, -90.0))])
    with pytest.raises(CropError, match="only one of"):
        CropRequest.from_options(crop_mm="20,-90", no_crop=True)
    with pytest.raises(CropError, match="only one of"):
        CropRequest.from_options(crop_mm="20,-90", markups=path)
    assert CropRequest.from_options().mode == "auto"
    assert CropRequest.from_options(no_crop=True).mode == "none"
    assert CropRequest.from_options(markups=path).mode == "markups"


def test_unplaced_points_units_odd_content_and_absurd_levels(tmp_path: Path) -> None:
    """From a hunt: Slicer's unplaced point (positionStatus "undefined", at [0, 0, 0]) was read as
    S = 0; coordinateUnits "um" was read as mm; a list of strings under "markups" crashed (exit 70);
    --crop-mm 1e308,-1e308 crashed; a malformed markups file was exit 3, the README says 1."""
    doc = {
        "markups": [
            {
                "coordinateSystem": "RAS",
                "controlPoints": [
                    {"label": "brow", "position": [0, 0, 40.0]},
                    {"label": "jaw", "position": [0, 0, 0.0], "positionStatus": "undefined"},
                ],
            }
        ]
    }
    unplaced = tmp_path / "u.mrk.json"
    unplaced.write_text(json.dumps(doc))
    with pytest.raises(MarkupsError, match="found 1 placed control point;") as caught:
        read_markups(unplaced)
    assert caught.value.exit_code == 1
    doc["markups"][0]["controlPoints"][1] = {"label": "jaw", "position": [0, 0, -90000.0]}
    doc["markups"][0]["coordinateUnits"] = "um"
    doc["markups"][0]["controlPoints"][0]["position"] = [0, 0, 20000.0]
    unplaced.write_text(json.dumps(doc))
    assert read_markups(unplaced) == pytest.approx((20.0, -90.0))
    for content in ({"markups": ["x"]}, {"markups": {"a": 1}}):
        unplaced.write_text(json.dumps(content))
        with pytest.raises(MarkupsError, match="unexpected content"):
            read_markups(unplaced)
    with pytest.raises(CropError, match="within 100000 mm of the origin"):
        CropRequest.millimetres(1e308, -1e308)
    # From review: markups skipped that bound (1e308 crashed; 2e10 um hung the resampling), and
    # Slicer's array form of coordinateUnits was refused.
    doc["markups"][0]["coordinateUnits"] = ["um", "UCUM", "micrometer"]
    doc["markups"][0]["controlPoints"][0]["position"] = [0, 0, 2e10]
    unplaced.write_text(json.dumps(doc))
    with pytest.raises(MarkupsError, match="a point lies beyond 100000 mm from the origin"):
        CropRequest.from_markups(unplaced)
    doc["markups"][0]["controlPoints"][0]["position"] = [0, 0, 20000.0]
    unplaced.write_text(json.dumps(doc))
    assert read_markups(unplaced) == pytest.approx((20.0, -90.0))
