"""Translate every series under a folder: what ``mrct batch IN_DIR -o OUT_DIR --to ct`` runs.

Series are found and named by :mod:`mrct.batch_series`; outputs mirror the input's folders
(file-safe names)::

    IN_DIR/p01/study/t1/*.dcm            ->  OUT_DIR/p01/study/t1_synthetic_ct/  (a DICOM series)
    IN_DIR/p01/study/*.dcm (series 3, 5) ->  OUT_DIR/p01/study_s3_synthetic_ct/, study_s5_...
    IN_DIR/p02/head.nii.gz               ->  OUT_DIR/p02/head_synthetic_ct.nii.gz
    OUT_DIR/manifest.json, manifest.csv      one row per input series

Series sharing a folder get ``_s<SeriesNumber>`` (``_e<echo>``/``_a<acquisition>`` for parts of
a split one); names that still clash get ``_2``, ``_3``; a resumed run keeps the names its manifest
records, and an earlier run's outputs found in ``IN_DIR`` are skipped. The format is the input's unless
``fmt`` is given. A shard ``K/N`` translates the series :func:`shard_of` deals it and writes
``manifest-shardKofN.*`` (shards may share ``OUT_DIR``).

Manifest rows: ``id``, ``input`` (relative to IN_DIR), ``series_uid``, ``modality``, ``files``
(how many; a done series that has more now is translated again; the JSON also keeps a ``stamp``
of their names, sizes and times, so a series whose files were replaced is too), ``output``
(relative to OUT_DIR), ``status`` (``done``, ``skipped``, ``failed``; ``pending`` while running,
and failed for what an interrupted run did not finish),
``seconds``, ``message`` (why skipped or failed; for a done row, how much of the slab lay
outside the scan, if any); no patient names or IDs. The JSON's ``absent`` keeps the earlier
rows of series not found this time whose outputs are on disk. Both files are
rewritten atomically after each series and outputs are renamed into place when complete, so a
killed run leaves no partial output and a re-run resumes: series done (output present) or
skipped are kept, failed ones retried; ``overwrite`` redoes all. A run locks ``OUT_DIR`` and
first deletes the temporary files of killed runs (:mod:`mrct.batch_folder`). ``workers`` threads
read, localise and preprocess the next series (``Translator.prepare``) while this thread runs the
model on the current one (one ``Translator``, loaded once), and as many threads put finished
outputs back on their input grids and write them (``Translator.finish``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrct import __version__
from mrct.batch_folder import Manifest, hold, slab_request, sweep
from mrct.batch_plan import adopt_legacy_zip_rows, check_out_inside_in, plan, why_not
from mrct.batch_series import EARLIER_OUTPUT, Series, discover, name_outputs, read_zip_member
from mrct.errors import InputNotFoundError, MrctError, OutputExistsError
from mrct.io import OutputFormat
from mrct.io.anonymize import Anonymizer
from mrct.labels import derivation_description, series_description, synthetic_source
from mrct.preprocessing.crop import CropRequest
from mrct.translation import check_grid_fits
from mrct.volume import Modality, guess_modality

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """The manifest's path and rows; ``earlier`` series were done by a previous run, ``attempted``
    series were read (and translated, unless skipped or failed) by this one; ``resumed`` when the
    folder held rows of an earlier run."""

    manifest: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    earlier: int = 0
    attempted: int = 0
    resumed: bool = False

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (1-based) -> ``(K, N)``; refuses anything but ``1 <= K <= N``."""
    if text is None:
        return None
    try:
        k, n = (int(p) for p in text.split("/")) if isinstance(text, str) else (int(p) for p in text)
    except (ValueError, TypeError):
        k = n = 0
    if not 1 <= k <= n:
        raise MrctError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return k, n


def shard_of(series_id: str, shards: int) -> int:
    """The shard (1..``shards``) that translates a series: dealt by a hash of its id, not by its
    place in the tree, so series added between the shards' runs move no other series to a shard
    that has already run."""
    digest = hashlib.sha256(series_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


# ---------------------------------------------------------------- reading and writing (threads)


@dataclass
class _Loaded:
    volume: Any = None
    modality: str = ""
    skip: str | None = None
    error: str | None = None
    seconds: float = 0.0
    prepared: Any = None  # localised and on the model grid (Translator.prepare), ready to run


# Advice worded for ``mrct translate``, reworded for batch (translate-only options point there).
_TRANSLATE_ONLY = {
    "pass --allow-gaps": "translate it alone with mrct translate --allow-gaps",
    "with --series UID": "with mrct translate --series UID",
    "write NIfTI (.nii.gz), which keeps it": "use --format nifti, which keeps it",
}


def _one_line(err: BaseException) -> str:
    # mrct's messages are one line but for a line break in a file name (the manifest escapes it);
    # another error's first line is its summary.
    text = str(err) if isinstance(err, MrctError) else f"unexpected {type(err).__name__}: {err}"
    line = text if isinstance(err, MrctError) else (text.splitlines() or [type(err).__name__])[0]
    for option, instead in _TRANSLATE_ONLY.items():
        line = line.replace(option, instead)
    return line


def _load(s: Series, to: Modality) -> _Loaded:
    """Read a series and check its modality (header, else intensities). Never raises."""
    from mrct.io import read_volume
    from mrct.io.dicom_read import read_series_files  # a stack grouped here: headers not re-read

    start = time.perf_counter()
    try:
        if s.stack is not None:
            volume = read_series_files(s.stack, s.path, None, False)
        elif s.member:  # one series of a zip holding several
            volume = read_zip_member(s)
        else:
            volume = read_volume(s.path)
        found = volume.modality or guess_modality(volume)
        skip = why_not(found, to, "header" if volume.modality else "intensities")
        if synthetic_source(volume) is not None:  # mrct's output under a name of the user's
            skip = EARLIER_OUTPUT
        modality = found.value if found else ""
        return _Loaded(None if skip else volume, modality, skip, None, time.perf_counter() - start)
    except Exception as err:  # one unreadable series must not stop the batch
        log.debug("%s: not read", s.id, exc_info=not isinstance(err, MrctError))
        return _Loaded(error=_one_line(err), seconds=time.perf_counter() - start)


def _load_and_prepare(s: Series, to: Modality, translator: Any, crop: CropRequest | None) -> _Loaded:
    """Read, localise and preprocess a series in a worker thread, while the model runs on the
    previous one (the CPU-bound parts around the forward pass overlap it). Never raises."""
    loaded = _load(s, to)
    if loaded.volume is None:
        return loaded
    start = time.perf_counter()
    try:
        check_grid_fits(loaded.volume, s.fmt, s.path)  # a sheared grid for NRRD: fail before the model
        loaded.prepared = translator.prepare(loaded.volume, to, crop)
    except Exception as err:  # a slab that cannot be found fails this series only
        loaded.error = _one_line(err)
    loaded.volume, loaded.seconds = None, loaded.seconds + time.perf_counter() - start
    return loaded


def _finish_and_write(translator: Any, prepared: Any, outputs: Any, *args: Any) -> tuple[float, str]:
    """Invert onto the input grid and write (in a writer thread, overlapping the next forward).
    Returns the seconds taken and the manifest's note for a done row (the slab's part outside
    the scan, a jaw level guessed near the scan's bottom: what ``mrct translate`` warns about)."""
    start = time.perf_counter()
    result = translator.finish(prepared, outputs)
    missing = float(result.slabs[0].get("outside_fov_mm", 0.0))
    notes = [f"{missing:.1f} mm of the brow-to-jaw slab lies outside the scan"] if missing > 0 else []
    if result.slabs[0].get("jaw_guessed_near_edge"):
        notes.append("no chin outline near the scan's bottom: the jaw level is the template's guess")
    note = "; ".join(notes)
    return time.perf_counter() - start + _write(result.volume, *args), note


def _write(
    volume: Any, dst: Path, fmt: OutputFormat, to: Modality, how: str, overwrite: bool, anonymizer: Any
) -> float:
    from mrct.io import write_volume

    start = time.perf_counter()
    target = f"{dst}/" if fmt is OutputFormat.DICOM else dst
    desc, anon = series_description(to), anonymizer
    write_volume(
        volume,
        target,
        overwrite=overwrite,
        series_description=desc,
        derivation_description=how,
        anonymizer=anon,
    )
    return time.perf_counter() - start


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
    device: str | None = "auto",
    precision: str = "auto",
    crop: CropRequest | None = None,
    progress: bool = True,
    search_dirs: Sequence[Path] | None = None,
    anonymize: bool = False,
) -> BatchSummary:
    """Translate every series under ``in_dir`` whose modality is the source side into ``out_dir``.

    Layout, manifest and resumption: see the module docstring; the folder's lock and the clean-up
    after killed runs: :mod:`mrct.batch_folder`. A series that fails is recorded and does not stop
    the others. The model (``model``, looked up in ``search_dirs``, default the repository's
    ``models/``) is loaded once; ``crop`` applies to every series. ``anonymize`` de-identifies
    DICOM outputs with the folder's key (:mod:`mrct.io.anonymize`).

    Raises:
        InputNotFoundError: ``in_dir`` is not a folder, or holds no series or scans.
        OutputBusyError: another ``mrct batch`` is writing the same outputs or manifest.
        ModelError: the model cannot be found or fails verification.
        OutputExistsError: ``out_dir`` holds a batch to the other modality, or (without
            ``overwrite``) one by another model, with the other ``anonymize`` or in another
            output format; or it is a folder inside ``in_dir`` holding files no batch wrote.
    """
    src, out = Path(in_dir), Path(out_dir)
    if not src.exists():
        raise InputNotFoundError("no such folder", src)
    if not src.is_dir():
        raise InputNotFoundError("not a folder (batch walks a folder; mrct translate takes one file)", src)
    if workers < 1:
        raise MrctError(f"--workers must be at least 1, got {workers}")
    if out.resolve() == src.resolve():
        raise OutputExistsError(
            "the output folder is the input folder; choose another (outputs would be read back as inputs)",
            out,
        )
    # An output folder inside the input is left out of the walk; one holding the input cannot be.
    check_out_inside_in(src, out)
    skip = [] if src.resolve().is_relative_to(out.resolve()) else [out]
    part = parse_shard(shard)
    with hold(out, part):  # first: a second run on this folder is refused before any work
        from mrct.inference import REPO_MODELS, Translator  # torch: after the lock, refusals are quick

        translator = Translator.from_package(
            model, device, tuple(search_dirs or (REPO_MODELS,)), precision=precision
        )
        package, suffix = translator.package, f"-shard{part[0]}of{part[1]}" if part else ""
        header = {"format": "mrct-batch", "version": 1, "mrct_version": __version__, "to": to.value}
        header["model"] = {"name": package.name, "checksum": package.checksum}
        header["shard"], header["anonymize"] = f"{part[0]}/{part[1]}" if part else None, anonymize
        header["output_format"] = fmt.value if fmt else "input"
        manifest = Manifest(out / f"manifest{suffix}.json", header, overwrite, src, slab_request(crop))
        # Where done series were read: a copy added elsewhere since must not move (and rename) them.
        found = discover(src, exclude=skip, prefer=manifest.done_inputs(src))
        manifest.present = {s.id for s in found}
        adopt_legacy_zip_rows(manifest.previous, found, manifest.own)
        # A resumed run keeps the names its rows own (and a shard those of the folder's other
        # manifests), and reserves those of series unreadable or gone this time.
        owned = {k: r["output"] for k, r in manifest.previous.items() if isinstance(r.get("output"), str)}
        named = name_outputs(found, to, fmt, keep=owned)
        if not named:
            raise InputNotFoundError("no DICOM series or NIfTI/NRRD/MHA scans in this folder or below", src)
        series = [s for s in named if not part or shard_of(s.id, part[1]) == part[0]]
        ours = None if part is None else [out / s.output for s in series if s.output] + [manifest.path]
        if removed := sweep(out, ours, exclude=[src]):
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        todo, earlier = plan(series, manifest, src, out, to, overwrite, named)
        if other := manifest.done_with_another_slab():  # kept: another slab is how a failure is retried
            log.warning(
                "%s: %d series done by an earlier run with another slab are kept (--overwrite "
                "translates them again with this one)",
                out,
                other,
            )
        manifest.write()
        anonymizer = Anonymizer.for_folder(out) if anonymize else None
        try:
            _translate(todo, translator, manifest, out, to, crop, workers, progress, anonymizer)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM unwinding (mrct.cli)
            manifest.interrupted([s for s, _ in todo])
            raise
    resumed = bool(manifest.own or manifest.previous)
    return BatchSummary(manifest.path, list(manifest.rows.values()), earlier, len(todo), resumed)


def _translate(
    todo: list[tuple[Series, bool]],
    translator: Any,
    manifest: Manifest,
    out: Path,
    to: Modality,
    crop: CropRequest | None,
    workers: int,
    progress: bool,
    anonymizer: Anonymizer | None,
) -> None:
    """Read ahead, translate and write behind (threads), recording each series as it ends."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    how = derivation_description(to, translator.package)
    # Nothing to do (a resumed run that finds all done): no bar, rather than "0series [00:00]".
    quiet = not progress or not todo
    bar = tqdm(total=len(todo), disable=quiet, unit="series", file=sys.stderr, dynamic_ncols=True)

    def record(s: Series, status: str, *args: Any) -> None:
        manifest.set(s, status, *args)
        manifest.write()
        bar.update()

    writing: deque[tuple[Series, _Loaded, float, Future[tuple[float, str]]]] = deque()

    def reap(keep: int) -> None:
        """Record finished writes in order, waiting until at most ``keep`` are under way."""
        while writing and (len(writing) > keep or writing[0][3].done()):
            # Taken off the queue only once recorded: a Ctrl-C while waiting here left a written
            # output unrecorded ("failed"), and every later run refused it as someone else's.
            s, loaded, took, job = writing[0]
            try:
                seconds, note = job.result()
                record(s, "done", loaded.modality, took + seconds, note)
            except Exception as err:
                record(s, "failed", loaded.modality, took, _one_line(err))
            writing.popleft()

    pending, ahead = iter(todo), deque[tuple[Series, bool, Future[_Loaded]]]()
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    try:
        with bar, redirect, ThreadPoolExecutor(workers) as reads, ThreadPoolExecutor(workers) as writes:
            try:
                while True:
                    while len(ahead) <= workers and (nxt := next(pending, None)):  # read ``workers`` ahead
                        ahead.append((*nxt, reads.submit(_load_and_prepare, nxt[0], to, translator, crop)))
                    if not ahead:
                        break
                    s, replace_it, future = ahead.popleft()
                    bar.set_postfix_str(s.input, refresh=False)
                    loaded = future.result()
                    if loaded.prepared is None:
                        message = loaded.skip or loaded.error or ""
                        record(
                            s,
                            "skipped" if loaded.skip else "failed",
                            loaded.modality,
                            loaded.seconds,
                            message,
                        )
                        continue
                    start = time.perf_counter()
                    try:
                        outputs = translator.run(loaded.prepared)
                    except Exception as err:
                        record(s, "failed", loaded.modality, loaded.seconds, _one_line(err))
                        continue
                    took, prepared, loaded.prepared = (
                        loaded.seconds + time.perf_counter() - start,
                        loaded.prepared,
                        None,
                    )
                    dst = out / s.output
                    job = writes.submit(
                        _finish_and_write,
                        translator,
                        prepared,
                        outputs,
                        dst,
                        s.fmt,
                        to,
                        how,
                        replace_it,
                        anonymizer,
                    )
                    writing.append((s, loaded, took, job))
                    reap(keep=workers)
            finally:
                for *_, future in ahead:
                    future.cancel()
                reap(keep=0)
    finally:  # the writers have stopped: a Ctrl-C while one was awaited left its row unrecorded
        reap(keep=0)
