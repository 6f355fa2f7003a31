"""Splitting one SeriesInstanceUID into the stacks that read as volumes, as dcm2niix does.

Shared by the single-series reader (``mrct translate``, ``info``: ``--series UID#part``) and by
``mrct batch``, so both name the same parts: ``e1``/``e2`` per echo, ``a1``/``a2`` per repeated
acquisition, ``1``/``2`` for stacks that differ in image size or orientation.
"""

from __future__ import annotations

from collections import defaultdict
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


def orientation_key(ds: Any) -> tuple[Any, ...]:
    """ImageOrientationPatient rounded for grouping; garbled values group as text, and reading
    that series then fails with a message naming the file (a failed row, not a crashed batch)."""
    value = ds.get("ImageOrientationPatient") or ()
    try:
        return tuple(round(float(v), 3) for v in value)
    except Exception:  # pydicom parses lazily: damage raises many kinds
        return ("unparsable", str(value))


def split_series(members: Members) -> list[tuple[str, Members]]:
    """Split one SeriesInstanceUID as dcm2niix does: by image size, orientation, echo and
    enhanced (multi-frame) against classic files, then by
    AcquisitionNumber where acquisitions repeat slice positions (not when each slice has its own).
    Returns ``(part, members)``; ``part`` is empty when nothing was split. Parts of one echo and
    acquisition are numbered largest first."""
    from mrct.io.discover import safe_name  # discover imports the scanner, which imports this

    groups: dict[tuple[Any, ...], Members] = defaultdict(list)
    keys = [orientation_key(ds) for _, ds in members]
    # A file without ImageOrientationPatient joins the series' one orientation, so that reading
    # it says which file lacks it; on its own it was a 1-slice "series" and a false gap.
    known = {k for k in keys if k}
    keys = [k or (next(iter(known)) if len(known) == 1 else k) for k in keys]
    for (p, ds), orientation in zip(members, keys, strict=True):
        echo = _number_text(ds, "EchoNumbers") or _number_text(ds, "EchoTime")
        # An enhanced (functional-group) file is a volume of its own, as dcm2niix reads it, even
        # when a classic copy of the same series shares its SeriesInstanceUID. Judged by its
        # structure, not its frame count: a concatenation's last file may hold one frame, and a
        # stray NumberOfFrames in a classic slice must fail its series, not split a slice off.
        enhanced = "PerFrameFunctionalGroupsSequence" in ds
        size = (header_int(ds, "Rows"), header_int(ds, "Columns"))
        groups[(echo, *size, orientation, enhanced)].append((p, ds))
    parts: list[tuple[tuple[str, str], Members]] = []
    for key, group in groups.items():
        by_acq: dict[str, Members] = defaultdict(list)
        for p, ds in group:
            by_acq[_number_text(ds, "AcquisitionNumber")].append((p, ds))
        positions = {tuple(ds.get("ImagePositionPatient") or ()) for _, ds in group}
        split = len(by_acq) > 1 and len(positions) < len(group)
        parts += [((key[0], a), g) for a, g in sorted(by_acq.items())] if split else [((key[0], ""), group)]
    if len(parts) == 1:
        return [("", parts[0][1])]
    parts.sort(key=lambda p: (_in_order(p[0][0]), _in_order(p[0][1]), -len(p[1])))  # e2 before e10
    echoes, acqs = (len({k[i] for k, _ in parts}) > 1 for i in (0, 1))
    labels = ["_".join([f"e{e or 'none'}"] * echoes + [f"a{a}"] * bool(acqs and a)) for (e, a), _ in parts]
    if len(set(labels)) < len(labels) or not all(labels):  # orientation or size differ: number them
        labels = [f"{label}_{n}".lstrip("_") for n, label in enumerate(labels, start=1)]
    labels = [safe_name(label) for label in labels]
    return [(label, group) for label, (_, group) in zip(labels, parts, strict=True)]


def _number_text(ds: Any, key: str) -> str:
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
