"""Translate every series under a folder: what ``mrct batch IN_DIR -o OUT_DIR --to ct`` runs.

``IN_DIR`` is searched recursively (hidden entries and ``OUT_DIR`` left out). NIfTI/NRRD/MHA
files and zips are one series each; other files are read as DICOM headers and grouped by
SeriesInstanceUID, split like dcm2niix/3D Slicer when size, orientation or echo differ, or when
acquisitions repeat slice positions. Outputs mirror the input's folders (file-safe names)::

    IN_DIR/p01/study/t1/*.dcm            ->  OUT_DIR/p01/study/t1_synthetic_ct/  (a DICOM series)
    IN_DIR/p01/study/*.dcm (series 3, 5) ->  OUT_DIR/p01/study_s3_synthetic_ct/, study_s5_...
    IN_DIR/p02/head.nii.gz               ->  OUT_DIR/p02/head_synthetic_ct.nii.gz
    OUT_DIR/manifest.json, manifest.csv      one row per input series

Series sharing a folder get ``_s<SeriesNumber>`` (``_e<echo>``/``_a<acquisition>`` for parts of
a split one); names that still clash get ``_2``, ``_3``. The format is the input's unless
``fmt`` is given. A shard ``K/N`` writes ``manifest-shardKofN.*`` (shards may share ``OUT_DIR``).

Manifest rows: ``id``, ``input`` (relative to IN_DIR), ``series_uid``, ``modality``, ``output``
(relative to OUT_DIR), ``status`` (``done``, ``skipped``, ``failed``; ``pending`` while running),
``seconds``, ``message`` (why skipped or failed); no patient names or IDs. Both files are
rewritten atomically after each series and outputs are renamed into place when complete, so a
killed run leaves no partial output and a re-run resumes: series done (output present) or
skipped are kept, failed ones retried; ``overwrite`` redoes all. ``workers`` threads read and
decode the next series while this thread preprocesses and translates the current one (one
``Translator``, loaded once), and as many threads write finished outputs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from mrct import __version__
from mrct.errors import InputNotFoundError, MrctError, OutputExistsError, ReadError
from mrct.io import OutputFormat
from mrct.io.atomic import atomic_file
from mrct.io.dicom_scan import SeriesFiles, iter_files
from mrct.io.discover import MIN_SERIES_FRAMES, SCAN_SUFFIXES, safe_name
from mrct.preprocessing.crop import CropRequest
from mrct.translate import EXTENSIONS, derivation_description, input_format, series_description
from mrct.volume import Modality, guess_modality

log = logging.getLogger(__name__)

COLUMNS = ("id", "input", "series_uid", "modality", "output", "status", "seconds", "message")
Members = list[tuple[Path, Any]]  # DICOM files and their headers (pydicom Datasets)


@dataclass(frozen=True)
class Series:
    """One input series: a file for ``read_volume``, or a DICOM ``stack`` grouped here."""

    id: str  # unique: ``input``, plus ``#<SeriesInstanceUID>[#<part>]`` for DICOM
    input: str  # POSIX path relative to IN_DIR of the series' folder, or the file
    path: Path
    uid: str = ""
    modality: str = ""  # from the DICOM header; empty for other formats
    stack: SeriesFiles | None = None
    number: int = 0
    part: str = ""  # names one part of a split SeriesInstanceUID
    skip: str | None = None  # decided from the headers alone
    error: str | None = None
    output: str = ""  # relative to OUT_DIR
    fmt: OutputFormat = OutputFormat.NIFTI


@dataclass
class BatchSummary:
    """The manifest's path and rows; ``earlier`` series were done by a previous run, ``attempted``
    series were read (and translated, unless skipped or failed) by this one."""

    manifest: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    earlier: int = 0
    attempted: int = 0

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (1-based) -> ``(K, N)``; refuses anything but ``1 <= K <= N``."""
    if text is None:
        return None
    try:
        k, n = (int(p) for p in text.split("/")) if isinstance(text, str) else text
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise MrctError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return k, n


# ---------------------------------------------------------------- finding and naming series


def _header(path: Path) -> tuple[Any, str | None, str | None]:
    """(dataset, skip, error) from the header alone: non-DICOM files are skipped, broken ones fail."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not an image file (DICOM, NIfTI, NRRD, MHA or zip)", None
    except Exception as err:  # truncated or malformed: pydicom raises many kinds
        return None, None, f"unreadable DICOM file ({type(err).__name__})"
    if "Rows" not in ds or "SeriesInstanceUID" not in ds:
        sop_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
        if "Image Storage" in getattr(sop_class, "name", ""):  # pydicom stops quietly at a cut
            return None, None, "incomplete DICOM image file (truncated?)"
        return None, f"no image in this DICOM file (modality {ds.get('Modality') or 'none'})", None
    return ds, None, None


def split_series(members: Members) -> list[tuple[str, Members]]:
    """Split one SeriesInstanceUID as dcm2niix does: by image size, orientation and echo, then by
    AcquisitionNumber where acquisitions repeat slice positions (not when each slice has its own).
    Returns ``(part, members)``; ``part`` is empty when nothing was split."""
    groups: dict[tuple[Any, ...], Members] = defaultdict(list)
    for p, ds in members:
        iop = tuple(round(float(v), 3) for v in ds.get("ImageOrientationPatient") or ())
        echo = str(ds.get("EchoNumbers", "") or ds.get("EchoTime", "") or "")
        groups[(echo, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), iop)].append((p, ds))
    parts: list[tuple[tuple[str, str], Members]] = []
    for key, group in groups.items():
        by_acq: dict[str, Members] = defaultdict(list)
        for p, ds in group:
            by_acq[str(ds.get("AcquisitionNumber", "") or "")].append((p, ds))
        positions = {tuple(ds.get("ImagePositionPatient") or ()) for _, ds in group}
        split = len(by_acq) > 1 and len(positions) < len(group)
        parts += [((key[0], a), g) for a, g in sorted(by_acq.items())] if split else [((key[0], ""), group)]
    if len(parts) == 1:
        return [("", parts[0][1])]
    parts.sort(key=lambda p: (p[0], -len(p[1])))
    echoes, acqs = (len({k[i] for k, _ in parts}) > 1 for i in (0, 1))
    labels = ["_".join([f"e{e}"] * echoes + [f"a{a}"] * bool(acqs and a)) for (e, a), _ in parts]
    if len(set(labels)) < len(labels) or not all(labels):  # orientation or size differ: number them
        labels = [f"{label}_{n}".lstrip("_") for n, label in enumerate(labels, start=1)]
    labels = [safe_name(label) for label in labels]
    return [(label, group) for label, (_, group) in zip(labels, parts, strict=True)]


def _rel(path: Path, root: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix() if path != root else "."


def _dicom_series(root: Path, files: list[Path]) -> list[Series]:
    found: list[Series] = []
    images: dict[str, Members] = defaultdict(list)
    for f in files:
        ds, skip, error = _header(f)
        if ds is None:
            found.append(Series(_rel(f, root), _rel(f, root), f, skip=skip, error=error))
        else:
            images[str(ds.SeriesInstanceUID)].append((f, ds))
    for uid, members in images.items():
        for part, group in split_series(members):
            first, paths = group[0][1], tuple(p for p, _ in group)
            frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in group)
            key, modality = f"{uid}#{part}" if part else uid, str(first.get("Modality", ""))
            description = str(first.get("SeriesDescription", ""))
            stack = SeriesFiles(key, uid, description, modality, paths, frames, tuple(d for _, d in group))
            where, number = Path(os.path.commonpath(paths)), str(first.get("SeriesNumber", "") or "")
            small = f"a {frames}-image stack (a localiser?)" if frames < MIN_SERIES_FRAMES else None
            n = int(number) if number.isdigit() else 0
            rel = _rel(where, root)
            found.append(Series(f"{rel}#{key}", rel, where, uid, modality, stack, n, part, skip=small))
    return found


def discover(in_dir: Path, exclude: Sequence[Path] = ()) -> list[Series]:
    """Every series under ``in_dir`` (not under ``exclude``), sorted by input path, then SeriesNumber."""
    excluded = [e.resolve() for e in exclude]

    def wanted(f: Path) -> bool:
        hidden = any(part.startswith(".") for part in f.relative_to(in_dir).parts)
        return not hidden and not any(f.resolve().is_relative_to(e) for e in excluded)

    files = [f for f in iter_files(in_dir) if wanted(f)]
    scans = [f for f in files if f.name.lower().endswith(SCAN_SUFFIXES)]
    series = [Series(_rel(f, in_dir), _rel(f, in_dir), f) for f in scans]
    series += _dicom_series(in_dir, sorted(set(files) - set(scans)))
    return sorted(series, key=lambda s: (s.input, s.number, s.id))


def _stem(s: Series) -> str:
    name = s.path.name if s.input != "." else s.path.resolve().name
    suffix = next((x for x in SCAN_SUFFIXES if name.lower().endswith(x)), None)
    return name[: -len(suffix)] if suffix else (Path(name).stem if s.path.is_file() else name)


def name_outputs(series: list[Series], to: Modality, fmt: OutputFormat | None) -> list[Series]:
    """Give each readable series its output (relative, file-safe, unique; see the module docstring).
    Names depend on the input tree only, never on which series a run translates."""
    readable = [s for s in series if s.skip is None and s.error is None]
    per_folder: dict[str, int] = defaultdict(int)
    for s in readable:
        per_folder[s.input] += 1
    taken, named = set(), {}
    for s in readable:
        base = safe_name(_stem(s))
        if per_folder[s.input] > 1:
            base += f"_s{s.number}" + (f"_{s.part}" if s.part else "")
        parent = PurePosixPath(*(safe_name(p) for p in PurePosixPath(s.input).parent.parts if p != "."))
        out_fmt = fmt or (OutputFormat.DICOM if s.stack else input_format(s.path))
        ext = "" if out_fmt is OutputFormat.DICOM else EXTENSIONS[out_fmt]
        n, name = 1, base
        while (out := (parent / f"{name}_synthetic_{to.value.lower()}{ext}").as_posix()).lower() in taken:
            n, name = n + 1, f"{base}_{n + 1}"
        taken.add(out.lower())
        named[s.id] = replace(s, output=out, fmt=out_fmt)
    return [named.get(s.id, s) for s in series]


# ---------------------------------------------------------------- reading and writing (threads)


def _why_not(found: Modality | str | None, to: Modality, how: str) -> str | None:
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


@dataclass
class _Loaded:
    volume: Any = None
    modality: str = ""
    skip: str | None = None
    error: str | None = None
    seconds: float = 0.0


def _one_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, MrctError) else f"unexpected {type(err).__name__}: {err}"
    return (text.splitlines() or [type(err).__name__])[0]


def _load(s: Series, to: Modality) -> _Loaded:
    """Read a series and check its modality (header, else intensities). Never raises."""
    from mrct.io import read_volume
    from mrct.io.dicom_read import read_series_files  # a stack grouped here: headers not re-read

    start = time.perf_counter()
    try:
        volume = read_series_files(s.stack, s.path, None, False) if s.stack else read_volume(s.path)
        found = volume.modality or guess_modality(volume)
        skip = _why_not(found, to, "header" if volume.modality else "intensities")
        modality = found.value if found else ""
        return _Loaded(None if skip else volume, modality, skip, None, time.perf_counter() - start)
    except Exception as err:  # one unreadable series must not stop the batch
        log.debug("%s: not read", s.id, exc_info=not isinstance(err, MrctError))
        return _Loaded(error=_one_line(err), seconds=time.perf_counter() - start)


def _write(volume: Any, dst: Path, fmt: OutputFormat, to: Modality, how: str, overwrite: bool) -> float:
    from mrct.io import write_volume

    start = time.perf_counter()
    target = f"{dst}/" if fmt is OutputFormat.DICOM else dst
    desc = series_description(to)
    write_volume(volume, target, overwrite=overwrite, series_description=desc, derivation_description=how)
    return time.perf_counter() - start


# ---------------------------------------------------------------- manifest


class _Manifest:
    """Rows by series id, rewritten (JSON and CSV, atomically) on every change."""

    def __init__(self, path: Path, header: dict[str, Any], overwrite: bool, root: Path) -> None:
        self.path, self.header, self.root = path, header, f"{root}{os.sep}"  # messages: relative paths
        self.rows: dict[str, dict[str, Any]] = {}
        self.previous: dict[str, dict[str, Any]] = {}
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            self.previous = {r["id"]: r for r in old["series"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ReadError(f"not a readable batch manifest ({err}); use a new output folder", path) from err
        if old.get("to") != header["to"]:
            raise OutputExistsError(f"holds a batch --to {old.get('to')}; use another output folder", path)
        if old.get("model", {}).get("checksum") != header["model"]["checksum"] and not overwrite:
            raise OutputExistsError("made with another model; pass --overwrite or use a new folder", path)

    def set(
        self, s: Series, status: str, modality: str = "", seconds: float = 0.0, message: str = ""
    ) -> None:
        output = s.output if status in ("done", "pending") else ""
        message = message.replace(self.root, "")
        values = (s.id, s.input, s.uid, modality or s.modality, output, status, round(seconds, 2), message)
        self.rows[s.id] = dict(zip(COLUMNS, values, strict=True))

    def write(self) -> None:
        rows = list(self.rows.values())
        counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "skipped", "failed", "pending")}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        content = {**self.header, "updated": now, "counts": counts, "series": rows}
        with atomic_file(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_file(self.path.with_suffix(".csv"), overwrite=True) as tmp:
            tmp.write_text(text.getvalue(), encoding="utf-8")


# ---------------------------------------------------------------- the batch


def run_batch(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    to: Modality,
    fmt: OutputFormat | None = None,
    workers: int = 1,
    overwrite: bool = False,
    shard: tuple[int, int] | str | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    crop: CropRequest | None = None,
    progress: bool = True,
    search_dirs: Sequence[Path] | None = None,
) -> BatchSummary:
    """Translate every series under ``in_dir`` whose modality is the source side into ``out_dir``.

    Layout, manifest and resumption: see the module docstring. A series that fails is recorded
    and does not stop the others. The model (``model``, looked up in ``search_dirs``, default the
    repository's ``models/``) is loaded once; ``crop`` applies to every series.

    Raises:
        InputNotFoundError: ``in_dir`` is not a folder.
        ModelError: the model cannot be found or fails verification.
        OutputExistsError: ``out_dir`` holds a batch to the other modality, or by another model.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from mrct.inference import REPO_MODELS, Translator

    src, out = Path(in_dir), Path(out_dir)
    if not src.is_dir():
        raise InputNotFoundError("not a folder", src)
    if workers < 1:
        raise MrctError(f"--workers must be at least 1, got {workers}")
    part = parse_shard(shard)
    translator = Translator.from_package(model, device, tuple(search_dirs or (REPO_MODELS,)))
    package, suffix = translator.package, f"-shard{part[0]}of{part[1]}" if part else ""
    header = {"format": "mrct-batch", "version": 1, "mrct_version": __version__, "to": to.value}
    header["model"] = {"name": package.name, "checksum": package.checksum}
    header["shard"] = f"{part[0]}/{part[1]}" if part else None
    manifest = _Manifest(out / f"manifest{suffix}.json", header, overwrite, src)
    series = name_outputs(discover(src, exclude=[out]), to, fmt)
    series = [s for n, s in enumerate(series) if not part or n % part[1] == part[0] - 1]
    todo, earlier = [], 0
    for s in series:
        old = manifest.previous.get(s.id, {})
        ours = old.get("output") == s.output != ""  # an earlier run's output: may be replaced
        skip = s.skip or (_why_not(s.modality, to, "header") if s.stack else None)
        if skip or s.error:
            manifest.set(s, "skipped" if skip else "failed", message=skip or s.error or "")
        elif not overwrite and (
            old.get("status") == "skipped"
            or (old.get("status") == "done" and ours and (out / s.output).exists())
        ):
            manifest.rows[s.id], earlier = old, earlier + (old["status"] == "done")
        elif (out / s.output).exists() and not (overwrite or ours):
            manifest.set(s, "failed", message=f"{s.output} exists; pass --overwrite to replace it")
        else:
            manifest.set(s, "pending")
            todo.append((s, overwrite or ours))
    out.mkdir(parents=True, exist_ok=True)
    manifest.write()
    how = derivation_description(to, package)
    bar = tqdm(total=len(todo), disable=not progress, unit="series", file=sys.stderr, dynamic_ncols=True)

    def record(s: Series, status: str, *args: Any) -> None:
        manifest.set(s, status, *args)
        manifest.write()
        bar.update()

    writing: deque[tuple[Series, _Loaded, float, Future[float]]] = deque()

    def reap(keep: int) -> None:
        """Record finished writes in order, waiting until at most ``keep`` are under way."""
        while writing and (len(writing) > keep or writing[0][3].done()):
            s, loaded, took, job = writing.popleft()
            try:
                record(s, "done", loaded.modality, took + job.result())
            except Exception as err:
                record(s, "failed", loaded.modality, took, _one_line(err))

    pending, ahead = iter(todo), deque[tuple[Series, bool, Future[_Loaded]]]()
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    with bar, redirect, ThreadPoolExecutor(workers) as reads, ThreadPoolExecutor(workers) as writes:
        try:
            while True:
                while len(ahead) <= workers and (nxt := next(pending, None)):  # read ``workers`` ahead
                    ahead.append((*nxt, reads.submit(_load, nxt[0], to)))
                if not ahead:
                    break
                s, replace_it, future = ahead.popleft()
                bar.set_postfix_str(s.input, refresh=False)
                loaded = future.result()
                if loaded.volume is None:
                    message = loaded.skip or loaded.error or ""
                    record(
                        s, "skipped" if loaded.skip else "failed", loaded.modality, loaded.seconds, message
                    )
                    continue
                start = time.perf_counter()
                try:
                    result = translator.translate(loaded.volume, to, crop)
                except Exception as err:
                    record(s, "failed", loaded.modality, loaded.seconds, _one_line(err))
                    continue
                took, loaded.volume = loaded.seconds + time.perf_counter() - start, None
                job = writes.submit(_write, result.volume, out / s.output, s.fmt, to, how, replace_it)
                writing.append((s, loaded, took, job))
                reap(keep=workers)
        finally:
            for *_, future in ahead:
                future.cancel()
            reap(keep=0)
    return BatchSummary(manifest.path, list(manifest.rows.values()), earlier, len(todo))
