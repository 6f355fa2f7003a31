"""Where the brow-to-jaw slab comes from: automatic, ``--crop-mm``, a markups file, or none.

Slab levels are RAS millimetres along the patient's S axis (DICOM's LPS has
the same S), ``superior_mm`` > ``inferior_mm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mrct.errors import CropOptionError, InputNotFoundError, MarkupsError
from mrct.jsontext import parse_json

CropMode = Literal["auto", "mm", "markups", "none"]
# Said wherever a slab cannot be used, so users know their way out.
OVERRIDES_HINT = "pass --crop-mm SUP,INF, --crop-markups FILE.mrk.json, or --no-crop"
# Shorter than any real brow-to-jaw distance (adults: 100-125 mm).
MIN_SLAB_MM = 20.0


@dataclass(frozen=True)
class SlabBounds:
    """The slab's levels in RAS mm along S, where they came from, and a confidence in [0, 1]."""

    superior_mm: float
    inferior_mm: float
    source: str
    confidence: float | None = None

    @property
    def height_mm(self) -> float:
        return self.superior_mm - self.inferior_mm


@dataclass(frozen=True)
class CropRequest:
    """How to choose the slab. Build one with the class methods."""

    mode: CropMode = "auto"
    superior_mm: float | None = None
    inferior_mm: float | None = None
    markups: Path | None = None

    @classmethod
    def auto(cls) -> CropRequest:
        return cls("auto")

    @classmethod
    def millimetres(cls, superior_mm: float, inferior_mm: float) -> CropRequest:
        sup, inf = float(superior_mm), float(inferior_mm)
        if not (abs(sup) <= MAX_LEVEL_MM and abs(inf) <= MAX_LEVEL_MM):  # NaN fails this too
            raise CropOptionError(
                f"--crop-mm SUP,INF must be finite numbers within {MAX_LEVEL_MM:g} mm of the origin "
                f"(RAS mm), got {sup:g},{inf:g}"
            )
        if sup - inf < MIN_SLAB_MM:
            raise CropOptionError(
                f"--crop-mm SUP,INF needs SUP at least {MIN_SLAB_MM:g} mm above INF (RAS mm), "
                f"got {sup:g},{inf:g}"
            )
        return cls("mm", sup, inf)

    @classmethod
    def from_markups(cls, path: str | Path) -> CropRequest:
        sup, inf = read_markups(path)
        return cls("markups", sup, inf, Path(path))

    @classmethod
    def none(cls) -> CropRequest:
        return cls("none")

    @classmethod
    def from_options(
        cls,
        crop_mm: str | Sequence[float] | None = None,
        markups: str | Path | None = None,
        no_crop: bool = False,
    ) -> CropRequest:
        """The request the CLI options describe (``crop_mm``: "SUP,INF" or two numbers); at most
        one may be given."""
        given = [o for o in (crop_mm, markups, no_crop or None) if o is not None]
        if len(given) > 1:
            raise CropOptionError("give only one of --crop-mm, --crop-markups and --no-crop")
        if crop_mm is not None:
            return cls.millimetres(*parse_crop_mm(crop_mm))
        if markups is not None:
            return cls.from_markups(markups)
        return cls.none() if no_crop else cls.auto()


def parse_crop_mm(text: str | Sequence[float]) -> tuple[float, float]:
    """``"SUP,INF"`` (RAS mm along S), or the two numbers from Python -> ``(sup, inf)``."""
    try:
        parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
        if len(parts) != 2:
            raise ValueError
        sup, inf = float(parts[0]), float(parts[1])
    except (ValueError, TypeError):
        raise CropOptionError(
            f"--crop-mm expects two numbers SUP,INF in RAS mm (e.g. 20,-95), got {text!r}"
        ) from None
    return sup, inf


_MARKUP_UNITS_MM = {"mm": 1.0, "um": 1e-3}  # what Slicer writes in coordinateUnits
MAX_LEVEL_MM = 1e5  # 100 m from the scanner's origin: no scan reaches that far


def read_markups(path: str | Path) -> tuple[float, float]:
    """The S levels of the two control points of a 3D Slicer ``.mrk.json`` file, brow first.

    Slicer stores positions in LPS or RAS (``coordinateSystem``); S is the same
    in both. Points labelled ``brow``/``jaw`` are used by label; otherwise the
    upper point is the brow.
    """
    p = Path(path)
    expected = "a 3D Slicer markups file (.mrk.json) with two control points, brow and jaw"
    try:
        doc = parse_json(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputNotFoundError("markups file not found", p) from None
    except OSError as err:  # a folder, no permission, a name too long for the file system
        raise MarkupsError(f"cannot read the markups file ({err.strerror or err})", p) from None
    except ValueError as err:  # bad UTF-8, bad JSON, nesting too deep, a huge integer
        raise MarkupsError(f"not valid JSON ({err}); expected {expected}", p) from None
    points = []
    try:
        for markup in doc["markups"]:
            system = str(markup.get("coordinateSystem", "LPS")).upper()
            if system not in ("LPS", "RAS"):
                raise MarkupsError(f"unknown coordinateSystem {system!r}; expected LPS or RAS", p)
            units = markup.get("coordinateUnits", "mm")
            units = str(units[0] if isinstance(units, list) and units else units)  # or ["mm", "UCUM", ...]
            if units not in _MARKUP_UNITS_MM:
                raise MarkupsError(f"unknown coordinateUnits {units!r}; expected mm or um", p)
            for cp in markup.get("controlPoints", []):
                if str(cp.get("positionStatus", "defined")).lower() != "defined":
                    continue  # a point listed but never placed: Slicer writes it at [0, 0, 0]
                x, y, z = (float(v) * _MARKUP_UNITS_MM[units] for v in cp["position"])
                if not all(map(math.isfinite, (x, y, z))):
                    raise ValueError("a position is not finite")
                points.append((str(cp.get("label", "")).strip().lower(), z))
    except MarkupsError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MarkupsError(f"unexpected content ({err}); expected {expected}", p) from None
    if len(points) != 2:
        found = f"{len(points)} placed control point" + ("" if len(points) == 1 else "s")
        raise MarkupsError(f"found {found}; expected {expected}", p)
    labels = {label: z for label, z in points}
    if set(labels) == {"brow", "jaw"}:
        sup, inf = labels["brow"], labels["jaw"]
    else:
        sup, inf = max(z for _, z in points), min(z for _, z in points)
    if not (abs(sup) <= MAX_LEVEL_MM and abs(inf) <= MAX_LEVEL_MM):  # as --crop-mm: 1e308 crashed
        raise MarkupsError(
            f"a point lies beyond {MAX_LEVEL_MM:g} mm from the origin; no scan reaches there", p
        )
    if sup - inf < MIN_SLAB_MM:
        raise MarkupsError(
            f"the brow point (S={sup:.1f} mm) must lie at least {MIN_SLAB_MM:g} mm above the jaw point "
            f"(S={inf:.1f} mm)",
            p,
        )
    return sup, inf
