"""Splitting one SeriesInstanceUID into the stacks that read as volumes, as dcm2niix does.

Shared by the single-series reader (``mrct translate``, ``info``: ``--series UID#part``) and by
``mrct batch``, so both name the same parts: ``e1``/``e2`` per echo, ``a1``/``a2`` per repeated
acquisition, ``1``/``2`` for stacks that differ in image size or orientation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Members = list[tuple[Path, Any]]  # image files and their headers (pydicom Datasets)


def header_int(ds: Any, key: str, default: int = 0) -> int:
    """An integer header value; ``default`` when it is absent, empty or not a number."""
    try:
        value = ds.get(key)
        return default if value in (None, "") else int(value)
    except Exception:  # pydicom converts values lazily, on access; damage raises many kinds
        return default


# Values that split a series: a slice's orientation, and its position (repeated acquisitions).
PLACEMENT_KEYS = ("ImageOrientationPatient", "ImagePositionPatient")


def _finite_numbers(ds: Any, key: str) -> tuple[float, ...]:
    """A decimal-string header value as finite numbers; () when absent. Raises ValueError saying
    what is wrong, in the reader's words (:func:`mrct.io.dicom_read._numbers`)."""
    try:
        value = ds.get(key)
        if value is None or value == "":
            return ()
        many = isinstance(value, Sequence) and not isinstance(value, str | bytes)  # pydicom's MultiValue
        numbers = tuple(float(v) for v in (value if many else [value]))
    except Exception:  # pydicom parses lazily, on access: damage raises many kinds
        raise ValueError(f"{key} is not a list of numbers") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{key} holds a value that is not a finite number")
    return numbers


def placement_damage(ds: Any) -> str | None:
    """Why a file's orientation or position is damaged (not numbers, NaN, infinite), or None.

    Readers check this as they read a header: grouped by such a value, a slice fell out of its
    series (NaN equals nothing, so each NaN slice was a 1-slice "series" of its own)."""
    for key in PLACEMENT_KEYS:
        try:
            _finite_numbers(ds, key)
        except ValueError as err:
            return str(err)
    return None


# Orientations this close are one (the reader's own tolerance across a stack's slices): rounded
# to 3 decimals instead, exporters' print noise either side of a rounding boundary (0.0124999990
# and 0.0125000010) split one oblique stack into two interleaved half-volumes.
ORIENTATION_TOL = 1e-3


def orientation_key(ds: Any) -> tuple[float, ...]:
    """ImageOrientationPatient's numbers, for grouping (compare with :func:`same_orientation`);
    () when absent or damaged, so that the file stays with its series, which then fails naming
    it (:func:`placement_damage`)."""
    try:
        return _finite_numbers(ds, "ImageOrientationPatient")
    except ValueError:
        return ()


def within(a: tuple[float, ...], b: tuple[float, ...], tol: float) -> bool:
    """The same numbers, each to within ``tol`` (header values printed otherwise)."""
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def same_orientation(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return within(a, b, ORIENTATION_TOL)


def _grouped_orientations(keys: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """Each key replaced by the first one within tolerance of it (absent ones stay ())."""
    firsts: list[tuple[float, ...]] = []
    seen: dict[tuple[float, ...], tuple[float, ...]] = {(): ()}  # most slices repeat a key exactly
    grouped = []
    for key in keys:
        if (first := seen.get(key)) is None:
            first = next((f for f in firsts if same_orientation(f, key)), None)
            if first is None:
                firsts.append(first := key)
            seen[key] = first
        grouped.append(first)
    return grouped


def echo_key(ds: Any) -> str:
    """Which echo a file holds, as the split tells echoes apart: EchoNumbers, else EchoTime."""
    return number_text(ds, "EchoNumbers") or number_text(ds, "EchoTime")


# ImageType values (its third onwards) that mark a part of complex MR data, and the part label
# each gets (dcm2niix's "_ph", "_real", "_imaginary"); GE says it in a private ImageType instead.
_COMPLEX_PARTS = {"P": "ph", "PHASE": "ph", "PHASE MAP": "ph", "R": "real", "REAL": "real"}
_COMPLEX_PARTS |= {"I": "imag", "IMAGINARY": "imag"}
_GE_IMAGE_TYPE = 0x0043102F  # 0 magnitude, 1 phase, 2 real, 3 imaginary
_GE_CREATOR = 0x00430010  # the private block's creator: GEMS_PARM_01 for the tag above
_GE_PARTS = {1: "ph", 2: "real", 3: "imag"}
COMPLEX_PART_NAMES = {"ph": "a phase", "real": "a real-part", "imag": "an imaginary-part"}


def not_translated(kind: str) -> str:
    """Why a part of complex MR data (:func:`complex_part`) is not translated."""
    return f"{COMPLEX_PART_NAMES[kind]} image (by its header); only magnitude images are translated"


def complex_part(ds: Any) -> str:
    """Which part of complex MR data an image holds: "ph", "real" or "imag"; "" for magnitude
    and any image not marked as a part (as dcm2niix tells them apart). Philips and GE store the
    parts in one series, at the same positions."""
    try:
        if str(ds.get("Modality", "") or "").upper() not in ("MR", ""):
            return ""  # a CT's ImageType ...\AXIAL\R says nothing of the kind
        value = ds.get("ImageType") or ()
        values = [value] if isinstance(value, str) else list(value)
        found = {_COMPLEX_PARTS.get(str(v).strip().upper(), "") for v in values[2:]} - {""}
        if len(found) == 1:
            return found.pop()
        private, creator = ds.get(_GE_IMAGE_TYPE), ds.get(_GE_CREATOR)
        if private is None or creator is None or str(creator.value).strip() != "GEMS_PARM_01":
            return ""  # another maker's element at that number means something else
        raw = private.value
        number = int.from_bytes(raw[:2], "little", signed=True) if isinstance(raw, bytes) else int(raw)
        return _GE_PARTS.get(number, "")
    except Exception:  # pydicom converts values lazily: damage raises many kinds; read as magnitude
        return ""


def split_series(members: Members) -> list[tuple[str, Members]]:
    """Split one SeriesInstanceUID as dcm2niix does: by image size, orientation, echo, magnitude
    against phase (:func:`complex_part`) and enhanced (multi-frame) against classic files, then by
    AcquisitionNumber where acquisitions repeat slice positions (not when each slice has its own).
    Returns ``(part, members)``; ``part`` is empty when nothing was split. Parts of one echo and
    acquisition are numbered largest first."""
    from mrct.io.discover import safe_name  # discover imports the scanner, which imports this

    groups: dict[tuple[Any, ...], Members] = defaultdict(list)
    keys = _grouped_orientations([orientation_key(ds) for _, ds in members])
    # A file without (or with a damaged) ImageOrientationPatient joins the series' one
    # orientation, so that reading it says which file; alone it was a 1-slice "series", a false gap.
    known = {k for k in keys if k}
    keys = [k or (next(iter(known)) if len(known) == 1 else k) for k in keys]
    for (p, ds), orientation in zip(members, keys, strict=True):
        echo = echo_key(ds)
        # An enhanced (functional-group) file is a volume of its own, as dcm2niix reads it, even
        # when a classic copy of the same series shares its SeriesInstanceUID. Judged by its
        # structure, not its frame count: a concatenation's last file may hold one frame, and a
        # stray NumberOfFrames in a classic slice must fail its series, not split a slice off.
        enhanced = "PerFrameFunctionalGroupsSequence" in ds
        size = (header_int(ds, "Rows"), header_int(ds, "Columns"))
        groups[(echo, complex_part(ds), *size, orientation, enhanced)].append((p, ds))
    parts: list[tuple[tuple[str, str, str], Members]] = []
    for key, group in groups.items():
        by_acq: dict[str, Members] = defaultdict(list)
        for p, ds in group:
            by_acq[number_text(ds, "AcquisitionNumber")].append((p, ds))
        positions = {tuple(ds.get("ImagePositionPatient") or ()) for _, ds in group}
        split = len(by_acq) > 1 and len(positions) < len(group)
        echo, kind = key[0], key[1]
        parts += (
            [((echo, a, kind), g) for a, g in sorted(by_acq.items())]
            if split
            else [((echo, "", kind), group)]
        )
    if len(parts) == 1:
        return [("", parts[0][1])]
    # e2 before e10; the magnitude before its phase
    parts.sort(key=lambda p: (_in_order(p[0][0]), _in_order(p[0][1]), p[0][2], -len(p[1])))
    echoes, acqs, kinds = (len({k[i] for k, _ in parts}) > 1 for i in (0, 1, 2))
    # A phase part is named, its magnitude not: the magnitude keeps the name it had before its
    # phase arrived (from a PACS, later), so a batch sees the series it translated, unchanged.
    labels = [
        "_".join([f"e{e or 'none'}"] * echoes + [f"a{a}"] * bool(acqs and a) + [kind] * bool(kinds and kind))
        for (e, a, kind), _ in parts
    ]
    lone_magnitude = kinds and labels.count("") == 1
    if len(set(labels)) < len(labels) or (not all(labels) and not lone_magnitude):  # size, orientation
        labels = [f"{label}_{n}".lstrip("_") for n, label in enumerate(labels, start=1)]
    labels = [safe_name(label) if label else "" for label in labels]
    return [(label, group) for label, (_, group) in zip(labels, parts, strict=True)]


def number_text(ds: Any, key: str) -> str:
    """A header number as text that groups equal values: EchoTime "4.6" and "4.60" are one echo."""
    try:
        text = str(ds.get(key, "") or "").strip()
    except Exception:  # pydicom parses lazily: a garbled value groups apart, and fails on reading
        return "unparsable"
    try:
        return f"{float(text):g}" if text else ""
    except ValueError:  # not a number (several values): grouped as written
        return text


def _in_order(text: str) -> tuple[int, float, str]:
    """Sort key: numbers by value, then anything else as text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
