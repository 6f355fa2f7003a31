"""The output folder of ``mrct batch``: its lock, its manifest, and what killed runs left behind.

**Lock.** A run holds ``fcntl.flock`` locks on files in ``OUT_DIR`` for as long as it runs: an
unsharded run ``.mrct-batch.lock`` exclusively; a shard ``K/N`` that file shared (shards may run
side by side) and ``.mrct-batch-shardKofN.lock`` exclusively. A second run that would write the
same outputs or manifest is refused at once (:class:`~mrct.errors.OutputBusyError`, naming the
holder's pid and host, which the holder writes into its lock file). The kernel releases a flock
when its process dies, however it dies, so a killed run never blocks the next one; lock files
are left in place (deleting one would let two runs lock different files of the same name).
flock works on local file systems and, on Linux, on NFS; where it does not, a warning says so
and the run goes on unlocked.

**Leftovers.** Outputs and manifests are written under temporary names and renamed
(:mod:`mrct.io.atomic`); a killed run leaves those behind. An unsharded run, alone in the folder
by its lock, deletes every entry named like one (``.NAME.mrct-tmp-XXXXXXXX[.ext]``,
``.NAME.mrct-old-XXXXXXXX``) under ``OUT_DIR``; a shard only those beside its own outputs and
manifest, as other shards may be writing.

**Manifest.** One row per input series, rewritten (JSON, then CSV) under a temporary name and
renamed after every change, so a reader (or a killed run's successor) always finds a whole file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from mrct.errors import OutputBusyError, OutputExistsError, ReadError, WriteError, on_one_line
from mrct.folder_locks import flock_file as _flock
from mrct.folder_locks import holder as _holder
from mrct.folder_locks import release as _release
from mrct.io.atomic import atomic_file, utf8_bytes
from mrct.io.leftovers import LEFTOVER, leftovers_of, remove_leftover
from mrct.jsontext import parse_json
from mrct.preprocessing.crop import CropRequest

if TYPE_CHECKING:
    from mrct.batch_series import Series

log = logging.getLogger(__name__)

# ``files``: how many files the series was read from, so a resume can tell a series that grew
# (still arriving from a PACS when it was translated) from one that is done.
COLUMNS = ("id", "input", "series_uid", "modality", "files", "output", "status", "seconds", "message")
LOCK_NAME = ".mrct-batch.lock"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- lock


def _shard_holder(out: Path) -> str:
    """The holder of a shard lock that is still held (probed without keeping it)."""
    import fcntl

    for path in sorted(out.glob(".mrct-batch-shard*.lock")):
        with open(path, encoding="utf-8") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return f"shard {path.stem.split('shard')[-1].replace('of', '/')}: {_holder(path)}"
    return "shard runs"


@contextlib.contextmanager
def hold(out: Path, shard: tuple[int, int] | None) -> Iterator[None]:
    """Lock ``out`` for one batch run (see the module docstring); raise OutputBusyError if in use.

    An unsharded run that fails before writing anything (no GPU, a bad model, nothing to
    translate) removes the folder again when it made it, rather than leaving an empty one holding
    a lock file. Shards never do: another shard may hold its locks there."""
    created = not out.exists()
    if out.exists() and not out.is_dir():  # as convert, export and prepare say it (exit 4)
        raise OutputExistsError("is not a folder; mrct batch writes a folder here", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"cannot create the output folder: {err.strerror}", out) from err
    held: list[IO[str]] = []
    failed = False
    busy = "in use by another mrct batch ({}); wait for it to end or use another output folder"
    try:
        common = _flock(out / LOCK_NAME, exclusive=shard is None)
        if common is None:
            who = _holder(out / LOCK_NAME) or _shard_holder(out)  # shards leave it empty
            raise OutputBusyError(busy.format(who), out)
        held.append(common)
        if shard is not None:
            own = out / f".mrct-batch-shard{shard[0]}of{shard[1]}.lock"
            mine = _flock(own, exclusive=True)
            if mine is None:
                raise OutputBusyError(busy.format(f"shard {shard[0]}/{shard[1]}: {_holder(own)}"), out)
            held.append(mine)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        unmade = False
        if created and failed and shard is None and held:
            with contextlib.suppress(OSError):
                if os.listdir(out) == [LOCK_NAME]:  # nothing written but the lock
                    (out / LOCK_NAME).unlink()  # while still holding it
                    unmade = True
        for fh in reversed(held):
            _release(fh)
        if unmade:
            with contextlib.suppress(OSError):
                out.rmdir()  # fails, harmlessly, if another run has written there since


# ---------------------------------------------------------------- leftovers of killed runs


def sweep(out: Path, near: Iterable[Path] | None = None, exclude: Iterable[Path] = ()) -> int:
    """Delete mrct's temporary files and folders under ``out`` (or only those beside the paths in
    ``near``), never under ``exclude`` (an input folder inside ``out``). Returns how many."""
    skip = {p.resolve() for p in exclude}
    found: list[Path] = []
    if near is None:
        for folder, dirs, files in os.walk(out):
            here = Path(folder)
            dirs[:] = [d for d in dirs if (here / d).resolve() not in skip]
            found += [here / n for n in (*dirs, *files) if LEFTOVER.match(n)]
            dirs[:] = [d for d in dirs if not LEFTOVER.match(d)]
    else:
        found = sorted({leftover for path in near for leftover in leftovers_of(path)})
    for path in found:
        remove_leftover(path)
    return len(found)


# ---------------------------------------------------------------- manifest


def input_files(s: Series) -> int:
    """How many files a series was read from (1 for a NIfTI/NRRD/MHA file or a zip)."""
    return len(s.stack.files) if s.stack is not None else 1


def _detached_data(header: Path) -> list[Path]:
    """The data file a detached MetaImage (``.mhd``) or NRRD (``.nhdr``) header names, if one."""
    if header.suffix.lower() == ".mhd":
        from mrct.io.metaimage import data_file

        found = data_file(header)
        return [] if found is None else [found]
    if header.suffix.lower() != ".nhdr":
        return []
    with contextlib.suppress(OSError), header.open("rb") as fh:  # no NRRD parser here: ITK reads them
        for line in fh.read(1 << 16).decode("latin-1").splitlines():
            name, sep, value = line.partition(":")
            value = value.strip()
            if sep and name.strip().lower() in ("data file", "datafile"):
                # One file; a LIST or a printf-like pattern of files (rare) is left to the header's stamp.
                return (
                    [] if not value or value.split()[0] == "LIST" or "%" in value else [header.parent / value]
                )
    return []


def input_stamp(s: Series) -> str:
    """Names, sizes and modification times of a series' files (a detached header's data file
    too), hashed: a file replaced at the same path (another subject's scan) changes it, as it
    changes what ``make`` or ``rsync`` see."""
    paths = sorted(s.stack.files) if s.stack is not None else [s.path, *_detached_data(s.path)]
    digest = hashlib.sha256()
    for path in paths:
        # Names relative to the series: a tree copied elsewhere with its times (cp -p) matches.
        name = os.path.relpath(path, s.path) if s.stack is not None else os.path.basename(path)
        try:
            st = os.stat(path)
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{name}\0gone\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def same_input(row: dict[str, Any], s: Series) -> bool:
    """Whether an earlier row was made from the files the series has now: as many (a series still
    arriving from a PACS grows) and unchanged. Rows written before mrct recorded these are trusted."""
    return row.get("files") in (None, input_files(s)) and row.get("stamp") in (None, input_stamp(s))


def slab_request(crop: CropRequest | None) -> dict[str, Any]:
    """The slab a batch asked for, as its manifest records it: the levels count, not whether they
    came from --crop-mm or a markups file."""
    c = crop or CropRequest.auto()
    if c.superior_mm is not None and c.inferior_mm is not None:
        return {"mode": "levels", "superior_mm": c.superior_mm, "inferior_mm": c.inferior_mm}
    return {"mode": c.mode}


def _format_option(recorded: object) -> str:
    return "no --format (each input's own format)" if recorded == "input" else f"--format {recorded}"


class Manifest:
    """Rows by series id, rewritten (JSON and CSV, atomically) on every change.

    Opening checks that an existing manifest is one this run may continue: the same ``to``
    always, and unless ``overwrite`` (which redoes everything) the same model, ``anonymize`` and
    output format (``output_format``: a ``--format`` value, or ``input`` for each input's own;
    a manifest written before it was recorded matches any). A done row records the slab asked
    for (``slab``, JSON only); another run's may differ: it retries what failed with its own.
    """

    def __init__(
        self,
        path: Path,
        header: dict[str, Any],
        overwrite: bool,
        root: Path,
        slab: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.header, self.slab = path, header, slab
        # Messages name inputs relative to IN_DIR and outputs relative to OUT_DIR (as the output
        # column does), whatever the folder a run was started from: their paths are cut where a
        # path starts (not inside another path that merely ends the same way, such as "main/"
        # for an IN_DIR "in"). The longer first: OUT_DIR may lie inside IN_DIR.
        roots = sorted({f"{root}{os.sep}", f"{path.parent}{os.sep}"}, key=len, reverse=True)
        self.root = re.compile(r"(?<![^\s'\"(=])(?:" + "|".join(map(re.escape, roots)) + ")")
        self.rows: dict[str, dict[str, Any]] = {}
        self.stamps: dict[str, str] = {}  # taken when a series is first planned, before it is read
        self.previous: dict[str, dict[str, Any]] = {}
        # The ids of every series found in IN this run (all shards'): an earlier row of any other
        # is kept as ``absent`` while its output is on disk (a share unmounted for one run), so that
        # the series, back unchanged, is done, and no other series takes its output's name meanwhile.
        self.present: set[str] | None = None
        self.own: set[str] = set()  # the ids this manifest file held
        if not path.exists():
            if not overwrite:
                # The JSON is written before the CSV: a CSV without it is someone else's file.
                if path.with_suffix(".csv").exists():
                    raise OutputExistsError(
                        f"holds {path.with_suffix('.csv').name} but no {path.name}, so it is not a batch's "
                        "manifest; move it, or pass --overwrite to replace it",
                        path.parent,
                    )
                self._adopt_others(path, [])
            return
        try:
            old = parse_json(path.read_text(encoding="utf-8"))
            listed = [*old["series"], *old.get("absent", [])]
            own = [r for r in listed if isinstance(r, dict) and isinstance(r.get("id"), str)]
            self.own = {r["id"] for r in own}
            if not isinstance(old.get("model"), dict) and not overwrite:
                raise ValueError("no model recorded")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ReadError(f"not a readable batch manifest ({err}); use a new output folder", path) from err
        if old.get("to") != header["to"]:
            raise OutputExistsError(f"holds a batch --to {old.get('to')}; use another output folder", path)
        if overwrite:
            self.previous = {r["id"]: r for r in own}
            return
        if old.get("model", {}).get("checksum") != header["model"]["checksum"]:
            raise OutputExistsError("made with another model; pass --overwrite or use a new folder", path)
        if bool(old.get("anonymize")) != header["anonymize"]:
            made = "with" if old.get("anonymize") else "without"
            raise OutputExistsError(f"made {made} --anonymize; pass --overwrite or use a new folder", path)
        if old.get("output_format", header.get("output_format")) != header.get("output_format"):
            # Outputs of another format have other names: the run would translate everything again
            # beside them, and a later run in the first format would fail on each of its own files.
            raise OutputExistsError(
                f"made with {_format_option(old.get('output_format'))}; use it again, or a new folder "
                f"(--overwrite translates again and leaves those outputs beside the new ones)",
                path,
            )
        self._adopt_others(path, own)

    def _adopt_others(self, path: Path, own: list[dict[str, Any]]) -> None:
        """Rows of this manifest and of the others in the folder with the same ``to``, model and
        ``anonymize`` (an unsharded run after shards, a shard after an unsharded run or after
        shards of another N): without them a run failed on every output the others wrote. Of
        another manifest the rows that name an output (done, or cut short writing it) or a skip
        count, and for a series in several manifests the most recently written one wins (a
        shard's old done row must not undo the skip of an input replaced since); this one on a tie."""
        found: list[tuple[int, int, str, list[dict[str, Any]]]] = []
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime_ns, 1, path.name, own))
        for other in [path.with_name("manifest.json"), *sorted(path.parent.glob("manifest-shard*of*.json"))]:
            if other == path:
                continue
            try:
                with other.open("rb") as fh:  # the time of the content read, not of a later rewrite
                    written, old = os.fstat(fh.fileno()).st_mtime_ns, parse_json(fh.read())
                if any(old.get(k) != self.header[k] for k in ("to", "anonymize", "model")):
                    continue
                fmt = self.header.get("output_format")
                if old.get("output_format", fmt) != fmt:  # a shard, or a run after shards: as above
                    raise OutputExistsError(
                        f"{other.name} was made with {_format_option(old.get('output_format'))}; "
                        "use it again, or a new folder",
                        path.parent,
                    )
                rows = [
                    r
                    for r in [*old["series"], *old.get("absent", [])]
                    if isinstance(r, dict)
                    and isinstance(r.get("id"), str)
                    and (r.get("status") in ("done", "skipped") or r.get("output"))
                ]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # missing, or damaged: that run's own re-runs report it
            found.append((written, 0, other.name, rows))
        for *_, rows in sorted(found, key=lambda f: f[:3]):
            self.previous.update({r["id"]: r for r in rows})

    def set(
        self, s: Series, status: str, modality: str = "", seconds: float = 0.0, message: str = ""
    ) -> None:
        # A series that fails or is skipped keeps the name of the output an earlier run wrote for it,
        # so that no other series is named onto it and, mended, it replaces its own output.
        output = s.output if status in ("done", "pending") else self.owned(self.previous.get(s.id, {}))
        message = on_one_line(self.root.sub("", message))  # one row, one line
        identity = (s.id, s.input, s.uid, modality or s.modality, input_files(s))
        values = (*identity, output, status, round(seconds, 2), message)
        # ``stamp`` (JSON only): the input files as they were when planned, so a resume sees one
        # replaced since, even while this run read it.
        stamp = self.stamps.setdefault(s.id, input_stamp(s))
        self.rows[s.id] = {**dict(zip(COLUMNS, values, strict=True)), "stamp": stamp}
        if status == "done" and self.slab is not None:  # what its output was made with
            self.rows[s.id]["slab"] = self.slab

    def done_inputs(self, root: Path) -> list[Path]:
        """Where the series done by earlier runs were read (``root``: IN)."""
        inputs = {r.get("input") for r in self.previous.values() if r.get("status") == "done"}
        return sorted(root / i for i in inputs if isinstance(i, str) and i)

    def done_with_another_slab(self) -> int:
        """How many done rows (of earlier runs, when planned) record a slab other than this run's."""
        return sum(
            r["status"] == "done" and r.get("slab", self.slab) != self.slab for r in self.rows.values()
        )

    def owned(self, row: dict[str, Any]) -> str:
        """The output an earlier row names, if it is on disk, else "". Rows name only outputs of
        their own series: done, cut short writing it, or kept by a failed or skipped row."""
        output = row.get("output")
        if not isinstance(output, str) or not output:
            return ""
        inside = not PurePosixPath(output).is_absolute() and ".." not in PurePosixPath(output).parts
        return output if inside and (self.path.parent / output).exists() else ""  # never beyond OUT

    def interrupted(self, series: Iterable[Series]) -> None:
        """Rows the run did not finish say so, rather than keeping a status outside
        done/skipped/failed; the next run redoes them. They keep their output's name: this run
        may replace an output it wrote as it was interrupted (outputs appear whole or not at all)."""
        for s in series:
            if self.rows.get(s.id, {}).get("status") == "pending":
                self.set(s, "failed", message="interrupted before it finished; run the batch again to resume")
                self.rows[s.id]["output"] = s.output
        self.write()

    def _absent(self) -> list[dict[str, Any]]:
        """Earlier rows whose outputs are still on disk of series this run does not list: not found
        in IN, or (a shard) of this manifest but dealt to another shard now (shards were dealt by
        position before mrct dealt them by hash: the other shard must find them done)."""
        if self.present is None:
            return []
        kept = (k not in self.rows and (k not in self.present or k in self.own) for k in self.previous)
        return [r for r, keep in zip(self.previous.values(), kept, strict=True) if keep and self.owned(r)]

    def write(self) -> None:
        rows = list(self.rows.values())
        counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "skipped", "failed", "pending")}
        content = {**self.header, "updated": _now(), "counts": counts, "series": rows}
        content["absent"] = self._absent()
        with atomic_file(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_file(self.path.with_suffix(".csv"), overwrite=True) as tmp:
            tmp.write_bytes(utf8_bytes(text.getvalue()))
