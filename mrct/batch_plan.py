"""What a ``mrct batch`` run does with each series it found, decided before any is read: skip it
(another modality by its header, an earlier run's skip), keep an earlier run's output (done, its
input unchanged), fail it (an output it may not write), or translate it."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mrct.batch_folder import Manifest, same_input
from mrct.batch_series import Series, zip_rows
from mrct.errors import MrctError, OutputExistsError
from mrct.io import OutputFormat
from mrct.io.atomic import check_replaceable
from mrct.volume import Modality


def why_not(found: Modality | str | None, to: Modality, how: str) -> str | None:
    """Why a series of modality ``found`` is not translated to ``to`` (None when it is)."""
    source = Modality.MR if to is Modality.CT else Modality.CT
    value = found.value if isinstance(found, Modality) else found
    if value == source.value:
        return None
    if value == to.value:
        return f"already {to.value} ({how}); --to {to.value.lower()} translates {source.value} only"
    if not value:
        return f"cannot tell CT from MR ({how}); use mrct translate --force for this one"
    return f"{value} modality ({how}); only {source.value} is translated to {to.value}"


def check_out_inside_in(src: Path, out: Path) -> None:
    """Refuse an existing folder inside IN as OUT unless a batch made it: it is left out of the
    walk, so the series in it (``-o IN/p01``) were silently never listed, and a DICOM series
    folder given as OUT had the manifest and outputs written among its slices. Hidden entries
    (a lock, temporary files) and desktop litter are left out of the walk anyway."""
    from mrct.io.atomic import OS_LITTER

    # Inside by its name too: a link in IN to a folder elsewhere is walked, and OUT left out.
    lexically = Path(os.path.abspath(out)).is_relative_to(os.path.abspath(src))
    if not (lexically or out.resolve().is_relative_to(src.resolve())) or not out.is_dir():
        return
    try:
        names = [n for n in os.listdir(out) if not n.startswith(".") and n not in OS_LITTER]
    except OSError:  # unreadable: the lock, made next, says so in one line
        return
    batch_made = any(n == "manifest.json" or re.fullmatch(r"manifest-shard\d+of\d+\.json", n) for n in names)
    if names and not batch_made:
        raise OutputExistsError(
            "lies inside the input folder and holds files no batch wrote (its inputs would be left "
            "out); choose a new output folder",
            out,
        )


def unsafe_output(src: Path, out: Path, target: Path) -> str | None:
    """Why writing ``target`` could harm an input or a user's folder (OUT holding IN can put an
    output inside IN; OUT inside IN is left out of the walk, so is safe), before any work; None
    when it is safe."""
    from mrct.io.dicom_write import SERIES_FILES

    inside = out.resolve().is_relative_to(src.resolve())
    if not inside and target.resolve().is_relative_to(src.resolve()):
        return f"{target.name} would lie inside the input folder; choose an output folder outside it"
    if target.is_dir():  # a DICOM output of an earlier run, or a folder of the user's
        try:
            check_replaceable(target, SERIES_FILES)
        except MrctError as err:
            return str(err).splitlines()[0]
    # The folder it goes in, or the nearest one there is (the rest is made when it is written):
    # found unwritable only when written, a series failed after its whole translation.
    folder = next((p for p in target.parents if p.exists()), None)
    if folder is not None and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder}: output folder is not writable"  # as writing says it
    return None


def plan(
    series: list[Series],
    manifest: Manifest,
    src: Path,
    out: Path,
    to: Modality,
    overwrite: bool,
    every: list[Series],
) -> tuple[list[tuple[Series, bool]], int]:
    """Record what is skipped, failed from the headers, or done by an earlier run; return the
    series to translate (with whether their output may be replaced) and how many were done.
    ``every``: the series of the whole batch (all shards): an output inside the DICOM output of
    one would be read back as part of that series."""
    todo, earlier = [], 0
    folders = {s.output.lower() for s in every if s.output and s.fmt is OutputFormat.DICOM}
    for s in series:
        holder = next((p for p in PurePosixPath(s.output).parents if p.as_posix().lower() in folders), None)
        if s.output and holder is not None:
            manifest.set(
                s,
                "failed",
                message=f"its output would lie inside the DICOM output {holder}; rename the input folder",
            )
            continue
        if s.unlisted:
            earlier += _unlisted_zip(s, manifest, out, overwrite)
            continue
        old = manifest.previous.get(s.id, {})
        ours = old.get("output") == s.output != ""  # an earlier run's output: may be replaced
        # A damaged file fails whatever its modality: the user should hear of it.
        # A stack with no modality in its header (or "OT") is judged from its intensities on reading.
        by_header = (s.stack is not None or s.member != "") and s.modality not in ("", "OT")
        skip = None if s.error else s.skip or (why_not(s.modality, to, "header") if by_header else None)
        # An earlier row stands unless its files changed since: grown (still arriving from a PACS),
        # or replaced.
        unchanged = not overwrite and same_input(old, s)
        if skip or s.error:
            manifest.set(s, "skipped" if skip else "failed", message=skip or s.error or "")
            continue
        if unchanged and old.get("status") == "skipped":
            manifest.rows[s.id] = old
            continue
        try:  # only for a series to translate: a skipped one never writes
            exists = bool(s.output) and (out / s.output).exists()
        except OSError as err:  # a path longer than the system takes (PATH_MAX): this series only
            path = f"cannot use the output path {s.output} ({err.strerror})"
            manifest.set(s, "failed", message=f"{path}; choose a shorter output folder")
            continue
        if unchanged and old.get("status") == "done" and ours and exists:
            manifest.rows[s.id], earlier = old, earlier + 1
        elif exists and not (overwrite or ours):
            manifest.set(s, "failed", message=f"{s.output} exists; pass --overwrite to replace it")
        elif problem := unsafe_output(src, out, out / s.output):
            manifest.set(s, "failed", message=problem)
        else:
            manifest.set(s, "pending")
            todo.append((s, overwrite or ours))
    return todo, earlier


def adopt_legacy_zip_rows(previous: dict[str, dict[str, Any]], found: list[Series], own: set[str]) -> None:
    """Move the row that mrct wrote before it listed zips (id ``the.zip``, no series UID, for a zip
    of one series) onto the id of that series now (``the.zip#UID``), so its output keeps its name
    and owner (``own``: the ids of the manifest's own rows, which keep it as their own too). Only
    where the zip holds one series (readable or damaged) now."""
    members: dict[str, list[Series]] = {}
    for s in found:
        if s.member and s.uid:
            members.setdefault(s.input, []).append(s)
    for zip_input, listed in members.items():
        row = previous.get(zip_input)
        if row is None or row.get("series_uid") or len(listed) != 1 or listed[0].id in previous:
            continue
        if row.get("status") == "skipped":  # no output to keep: a zip then empty, say; planned anew
            continue
        del previous[zip_input]
        previous[listed[0].id] = {**row, "id": listed[0].id, "series_uid": listed[0].uid}
        if zip_input in own:
            own.add(listed[0].id)


def _unlisted_zip(s: Series, manifest: Manifest, out: Path, overwrite: bool) -> int:
    """Record a zip whose series could not be listed this time (the memory limit, a full
    temporary folder) as one failed row, and return how many of its series stay done. Its earlier
    rows are kept where they still hold (done with the output on disk, or skipped, from the zip
    unchanged since); the others fail, keeping their outputs' names, and so do all under
    --overwrite: the next run that lists the zip redoes them."""
    manifest.set(s, "failed", message=s.error or "")
    unread = {"status": "failed", "message": "not checked: its zip could not be listed"}
    kept = 0
    for key, row in manifest.previous.items():
        if key == s.id or not zip_rows(s.input, key):
            continue
        status = row.get("status")
        holds = status == "skipped" or (status == "done" and manifest.owned(row) != "")
        if holds and same_input(row, s) and not overwrite:
            manifest.rows[key], kept = row, kept + (status == "done")
        else:
            manifest.rows[key] = {**row, **unread, "output": manifest.owned(row)}
    return kept
