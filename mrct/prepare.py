"""Build a training set: preprocess many MR and CT head scans onto the model grid.

    OUT/manifest.json             what was prepared, from what, and the train/test split
    OUT/<domain>/<id>.npy         float32 (D, H, W) in [-1, 1] on the model grid
    OUT/<domain>/<id>_mask.npy    uint8 head mask on the same grid
    OUT/<domain>/<id>.json        the preprocessing record (enough to undo the chain)
    OUT/qc/<domain>/<id>.png      the slab's levels drawn on the original scan

``<domain>`` is ``mr`` or ``ct``. Every file is written under a temporary name
and renamed, and the manifest is rewritten after each scan, so a run that is
interrupted resumes where it stopped: scans already prepared (same source
bytes, same crop request, outputs present with their recorded checksums) are
skipped, failed ones are tried again. Prepared scans of earlier runs stay in
the manifest when they are not given again; their failures do not.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fnmatch
import logging
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mrct.batch_folder import sweep
from mrct.config import seed_problem, to_dict
from mrct.errors import ConfigError, InputNotFoundError, MrctError, ReadError, WriteError
from mrct.folder_locks import folder_lock
from mrct.io import limits
from mrct.io.discover import find_scans, sha256_files, short_hash
from mrct.prepare_manifest import DOMAINS as DOMAIN_NAMES
from mrct.prepare_manifest import (
    load_manifest,
    now,
    stable_ids,
    write_manifest,
)
from mrct.prepare_outputs import (
    absolute,
    check_output_folder,
    crop_request_dict,
    failed_scan_image,
    prepared_scan_image,
    still_valid,
    write_outcome,
)
from mrct.preprocessing.config import PreprocessConfig
from mrct.preprocessing.crop import CropRequest
from mrct.volume import Modality

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK_NAME = ".mrct-prepare.lock"
DOMAINS: dict[str, Modality] = {d: Modality[d.upper()] for d in DOMAIN_NAMES}


@dataclass(frozen=True)
class ScanInput:
    """One scan to prepare (see :class:`~mrct.io.discover.FoundScan`) and its unique ``id``."""

    domain: str
    path: Path
    series: str | None
    files: tuple[Path, ...]
    id: str
    checksum: str = ""  # of the source files, once known (mrct.prepare_manifest.stable_ids)


@dataclass
class DomainCounts:
    """Scans of one domain: newly ``ok``, ``skipped`` (prepared by an earlier run), ``failed``."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def ready(self) -> int:
        return self.ok + self.skipped


@dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did, per domain, and where the manifest is."""

    manifest: Path
    counts: dict[str, DomainCounts] = field(default_factory=lambda: {d: DomainCounts() for d in DOMAINS})

    @property
    def ready(self) -> int:
        return sum(c.ready for c in self.counts.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.counts.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.counts.values())


# ---------------------------------------------------------------- inputs, ids, split


def collect_scans(mr: Iterable[str | Path], ct: Iterable[str | Path]) -> list[ScanInput]:
    """The scans under the inputs of each domain, with ids unique per domain (case-insensitively):
    ids that clash get a short hash of the absolute path."""
    found = [(d, f) for d, paths in (("mr", mr), ("ct", ct)) for f in find_scans(paths)]
    clashes = Counter((d, f.name.lower()) for d, f in found)
    scans = []
    for d, f in found:
        name = f.name if clashes[(d, f.name.lower())] == 1 else f"{f.name}-{short_hash(f.path, f.series)}"
        scans.append(ScanInput(d, f.path, f.series, f.files, name))
    return scans


# ---------------------------------------------------------------- one scan (in a worker)


@dataclass(frozen=True, eq=False)
class ScanOutcome:
    """A worker's result: the arrays, record and QC picture, or the one-line error."""

    scan: ScanInput
    source_checksum: str | None
    error: str | None = None
    image: npt.NDArray[np.float32] | None = None
    mask: npt.NDArray[np.bool_] | None = None
    record: dict[str, Any] | None = None
    qc: npt.NDArray[np.uint8] | None = None


def _check_modality(volume: Any, scan: ScanInput) -> None:
    """Fail when the header (or, without one, the intensities) says the other modality."""
    from mrct.volume import guess_modality

    want = DOMAINS[scan.domain]
    if volume.modality is not None and volume.modality is not want:
        raise ReadError(
            f"the header says {volume.modality.value} but it was given with --{scan.domain}", scan.path
        )
    guessed = guess_modality(volume) if volume.modality is None else None
    if guessed is not None and guessed is not want:
        why = "air near -1000 HU" if guessed is Modality.CT else "no air near -1000 HU"
        raise ReadError(
            f"the intensities look like {guessed.value} ({why}) but it was given with --{scan.domain}",
            scan.path,
        )


NO_GAPS = "mrct prepare does not fill them in for training; leave this series out"


def prepare_scan(
    scan: ScanInput, config: PreprocessConfig, crop: CropRequest, localiser: Any = None
) -> ScanOutcome:
    """Read, check and preprocess one scan and draw its QC picture; errors become the outcome.

    A scan that was read but failed still gets a picture: the levels that were found and
    refused (if any) and the reason in red.
    """
    from mrct.io import read_volume
    from mrct.preprocessing.chain import preprocess

    checksum, volume = None, None
    try:
        checksum = scan.checksum or sha256_files(scan.files)
        volume = read_volume(scan.path, series=scan.series)
        _check_modality(volume, scan)
        out = preprocess(volume, config, crop, modality=DOMAINS[scan.domain], localiser=localiser)
        slab, outside = out.record.slab, (out.record.localisation or {}).get("outside_fov_mm", 0.0)
        picture = prepared_scan_image(volume, (slab.superior_mm, slab.inferior_mm), scan.id, outside)
    except Exception as err:  # one bad scan must not stop the others; keep the evidence
        log.debug("%s/%s failed", scan.domain, scan.id, exc_info=not isinstance(err, MrctError))
        # An error about the image in memory (a slab it cannot use) learns which file it was.
        why = (
            str(err.naming(scan.path))
            if isinstance(err, MrctError)
            else f"unexpected {type(err).__name__}: {err}"
        )
        # prepare has no --allow-gaps: slices made up by interpolation are no data to train on.
        why = why.splitlines()[0].replace("pass --allow-gaps to interpolate across", NO_GAPS)
        loc = getattr(err, "localisation", None)  # what a refused automatic slab found
        levels = (loc.slab.superior_mm, loc.slab.inferior_mm) if loc is not None else (None, None)
        return ScanOutcome(scan, checksum, error=why, qc=failed_scan_image(volume, levels, scan.id, why))
    return ScanOutcome(scan, checksum, None, out.image, out.mask, out.record.to_dict(), picture)


_WORKER: dict[str, Any] = {}  # per worker process: its Localiser


def _orphaned(main_pid: int, parent: int) -> bool:
    """Whether the main process of a prepare is gone, seen from one of its workers.

    A worker's parent is the main process (spawn) or the forkserver, which exits with it; either
    way the worker is re-parented when the main process dies. The PID alone could be fooled by a
    new process that took it over, so the parent is checked first."""
    if os.getppid() != parent:
        return True
    try:
        os.kill(main_pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else: not ours to judge
        pass
    return False


def _init_worker(auto: bool, threads: int, main_pid: int, memory: tuple[int | None, str]) -> None:
    """Share the machine's cores between workers and load one Localiser per process; end the
    worker when the main process is gone (killed with SIGKILL, by the OOM killer, its workers
    and their gigabytes lived on). ``memory``: the main process's memory limit, when set there
    (MRCT_MAX_MEMORY reaches workers by itself; a limit set from Python did not)."""
    import threading
    import time

    import SimpleITK as sitk
    import torch

    limits.adopt_override(memory)
    parent = os.getppid()

    def watch() -> None:
        while not _orphaned(main_pid, parent):
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mrct-main-watch").start()

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if auto:
        from mrct.preprocessing.localise import Localiser

        _WORKER["localiser"] = Localiser()


def _prepare_in_worker(scan: ScanInput, config: PreprocessConfig, crop: CropRequest) -> ScanOutcome:
    return prepare_scan(scan, config, crop, _WORKER.get("localiser"))


def _outcomes(
    todo: list[ScanInput], config: PreprocessConfig, crop: CropRequest, workers: int, progress: bool
) -> Iterator[ScanOutcome]:
    """Outcomes as they finish, in this process or in a pool, with a progress bar on stderr."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="scan", file=sys.stderr, dynamic_ncols=True)
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    with bar, redirect:
        if workers <= 1 or len(todo) <= 1:
            localiser = None
            if crop.mode == "auto" and todo:
                from mrct.preprocessing.localise import Localiser

                localiser = Localiser()
            for scan in todo:
                bar.set_postfix_str(f"{scan.domain}/{scan.id}", refresh=False)
                yield prepare_scan(scan, config, crop, localiser)
                bar.update()
            return
        n = min(workers, len(todo))
        threads = max(1, (os.cpu_count() or 1) // n)
        # Workers fork from a server that imported the heavy modules once (fast to start), never
        # from this process, whose torch or ITK threads could deadlock a forked child.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["mrct.prepare", "mrct.preprocessing.chain", "mrct.qc", "mrct.api"])
        pool = cf.ProcessPoolExecutor(
            n,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(crop.mode == "auto", threads, os.getpid(), limits.override_state()),
        )
        try:
            futures = {pool.submit(_prepare_in_worker, s, config, crop): s for s in todo}
            for fut in cf.as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as err:  # a worker died (out of memory?) or could not start
                    reason = f"worker failed: {type(err).__name__}: {err}".splitlines()[0]
                    outcome = ScanOutcome(futures[fut], None, error=reason)
                yield outcome
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def prepare_dataset(
    mr: Sequence[str | Path],
    ct: Sequence[str | Path],
    out: str | Path,
    *,
    config: PreprocessConfig | None = None,
    crop: CropRequest = CropRequest.auto(),  # noqa: B008 - frozen, so a safe default
    workers: int = 1,
    seed: int = 0,
    hold_out_from: str | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Preprocess every scan under ``mr`` and ``ct`` into ``out`` (layout in the module docstring).

    The train/test split is :func:`mrct.prepare_manifest.split_ids` with ``seed`` and ``hold_out_from``.

    Inputs given with ``mr`` are MR, with ``ct`` CT; a scan whose header (or,
    without a modality in the header, whose intensities) says otherwise fails.
    Failures are recorded in the manifest and do not stop the others.

    Raises:
        InputNotFoundError: an input does not exist, or no scan was found.
        OutputExistsError: ``out`` holds a dataset prepared with another config.
    """
    if problem := seed_problem(seed):
        raise ConfigError(f"--seed {problem}")
    config = config or PreprocessConfig()
    scans = collect_scans(mr, ct)
    if not scans:
        if not [*mr, *ct]:
            raise InputNotFoundError("no inputs: give --mr and --ct (files or folders of scans)")
        given = ", ".join(str(p) for p in [*mr, *ct])
        raise InputNotFoundError(f"no input scans (NIfTI, NRRD, MHA, zip or DICOM series) in {given}")
    if hold_out_from is not None and not any(fnmatch.fnmatchcase(s.id, hold_out_from) for s in scans):
        log.warning(
            "--hold-out-from %r matches no scan id (case matters): no scan is held out", hold_out_from
        )
    out = Path(out)
    check_output_folder(out, [*mr, *ct])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create the output folder: {err.strerror}", out) from err
    # One prepare per folder: two rewrote one manifest, each dropping the other's scans.
    with folder_lock(out, LOCK_NAME, "mrct prepare"):
        # Temporary files of a run killed with SIGKILL (the OOM killer); never inside an input.
        sweep(out, exclude=[Path(p) for p in [*mr, *ct] if Path(p).is_dir()])
        return _prepare_into(out, scans, config, crop, workers, seed, hold_out_from, progress)


def _prepare_into(
    out: Path,
    scans: list[ScanInput],
    config: PreprocessConfig,
    crop: CropRequest,
    workers: int,
    seed: int,
    hold_out_from: str | None,
    progress: bool,
) -> PrepareSummary:
    crop_dict = crop_request_dict(crop)
    path = out / MANIFEST
    config_dict = to_dict(config)
    manifest = load_manifest(path, config_dict, seed, hold_out_from)
    created = str(manifest.get("created") or now())
    entries = {(e["domain"], e["id"]): e for e in manifest.get("scans", [])}
    summary = PrepareSummary(path)
    scans, twins = stable_ids(scans, entries)
    for scan, twin in twins:
        log.warning("%s: the same image as %s/%s, given again; prepared once", scan.path, scan.domain, twin)
    # An earlier entry not given again whose image a scan of this run now has (files renamed
    # round) would hold that image twice: the scan's entry stands for it.
    contents = {(s.domain, s.checksum): s.id for s in scans if s.checksum}
    entries = {
        k: e for k, e in entries.items() if contents.get((k[0], e.get("source_checksum")), k[1]) == k[1]
    }
    todo = []
    for scan in scans:
        entry = entries.get((scan.domain, scan.id))
        if entry is not None and still_valid(out, scan, entry, crop_dict):
            where = {"source": absolute(scan.path), "series": scan.series, "crop_request": crop_dict}
            entries[(scan.domain, scan.id)] = {**entry, **where}
            summary.counts[scan.domain].skipped += 1
        else:
            todo.append(scan)
    log.info("%d scans found, %d already prepared", len(scans), len(scans) - len(todo))
    current = {(s.domain, s.id) for s in scans}  # failures of inputs not given again are forgotten
    entries = {k: e for k, e in entries.items() if e.get("status") == "ok" or k in current}
    write_manifest(path, created, seed, config_dict, entries, hold_out_from, manifest, complete=False)
    for outcome in _outcomes(todo, config, crop, workers, progress):
        s = outcome.scan
        entry = write_outcome(out, outcome, crop_dict)
        entries[(s.domain, s.id)] = entry
        counts = summary.counts[s.domain]
        if entry["status"] == "ok":
            counts.ok += 1
        else:
            counts.failed += 1
            log.warning("%s/%s failed: %s", s.domain, s.id, entry["error"])
        write_manifest(path, created, seed, config_dict, entries, hold_out_from, manifest, complete=False)
    write_manifest(path, created, seed, config_dict, entries, hold_out_from, manifest)
    return summary
