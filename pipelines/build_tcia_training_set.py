"""Build the paper's MR/CT training set from two TCIA collections downloaded as DICOM.

The paper trained on head MR from TCIA LGG-1p19qDeletion and head CT from TCIA
Head-Neck-PET-CT, one scan per patient. This script chooses the series from DICOM
headers only (no pixel data), writes ``OUT/selection.csv`` and hands the chosen series
to :func:`mrct.api.prepare` (brow-to-jaw crop, model grid, manifest, QC pictures).

1. Install the NBIA Data Retriever (TCIA wiki, "Downloading TCIA Images"; needs Java).
2. Download each collection's manifest (``*.tcia``) from its TCIA page (for
   Head-Neck-PET-CT, filtering the cart to Modality CT leaves out PET and RTSTRUCT), then
   (4.x flags: ``-d`` folder, ``-v`` verbose, ``-f`` fetch again; see your ``--help``)::

       /opt/nbia-data-retriever/nbia-data-retriever --cli LGG-1p19qDeletion.tcia -d /data/tcia -v -f
       /opt/nbia-data-retriever/nbia-data-retriever --cli Head-Neck-PET-CT.tcia -d /data/tcia -v -f

   Disk, order of magnitude: a few GB for LGG-1p19qDeletion, ~100 GB for all of
   Head-Neck-PET-CT (tens of GB for its CTs); the prepared set adds ~10 MB per scan.
   "Descriptive" (``<PatientID>/<date-study>/<n-series>/1-001.dcm``) and "classic"
   (``<PatientID>/<StudyUID>/<SeriesUID>/``) layouts both work; give any folder above the patients.
3. Check the choice in ``data/paper/selection.csv`` (headers only) and adjust the patterns::

       python pipelines/build_tcia_training_set.py --mr-root /data/tcia/LGG-1p19qDeletion \\
           --ct-root /data/tcia/Head-Neck-PET-CT -o data/paper --dry-run

4. Run it without ``--dry-run`` (``--workers N``; it resumes), look at ``data/paper/qc/``, then
   ``mrct train --config configs/paper_3d.yaml --data data/paper -o runs/paper``.

Rules per root (``--mr-root`` gives MR, ``--ct-root`` CT), in order: Modality must be the
root's (PT, SEG... skipped; RTSTRUCT, REG, SR hold no image and are only counted); ImageType
LOCALIZER skipped; under ``--min-slices`` images skipped (scouts); SeriesDescription must
match the domain's regex (case-insensitive search). ``--one-per-patient`` (default) keeps,
per PatientID, the candidate with most slices, ties to the lower SeriesNumber (acquired
first: for MR, before contrast), then the UID.

Default MR regex: T1-weighted (T1, MPRAGE, SPGR, BRAVO) without contrast (post, gad, Gd, +C,
C+, T1C, contrast, enhanced): T1 contrast (dark CSF, dark bone) is what maps to CT, while
gadolinium lights up vessels and tumour, which CT does not show. Caveat: LGG-1p19qDeletion is
published as post-contrast T1 and T2 (Akkus et al. 2017), so there the default may choose
nothing; the summary then lists the refused descriptions; ``--mr-series-pattern t1`` takes
the post-contrast T1. Default CT regex: all but scouts, topograms, dose reports, MIPs.

Privacy: PatientID/PatientName group series in memory and are never printed or written.
``selection.csv`` paths are relative to the root, with each occurrence of them in a path part
replaced by ``[patient]``; chosen series are linked (symlinks, else hard links) into
``OUT/series/<domain>/<id>/`` and prepared from there, so the manifest holds no patient folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
from argparse import BooleanOptionalAction
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrct.io.dicom_scan import SeriesFiles, group_series
from mrct.io.discover import safe_name

DOMAINS = {"mr": "MR", "ct": "CT"}
_CONTRAST = (
    r"post|gad|contrast|enhanc|(?<![a-z])gd(?![a-z])|(?<![a-z])ce(?![a-z])"
    r"|\+\s*c(?![a-z])|(?<![a-z])c\s*\+|t1[\s_-]*c(?![a-z])"
)
PATTERNS = {
    "mr": rf"^(?!.*({_CONTRAST})).*(t1(?!\d)|mp-?rage|spgr|bravo)",
    "ct": r"^(?!.*(scout|topogram|locali[sz]|surview|scanogram|dose|screen ?save|mip(?![a-z])))",
}
# Localisers have 1-3 images per plane; the ~120 mm brow-to-jaw slab needs 16 even at 7.5 mm.
MIN_SLICES = 16
REDACTED = "[patient]"
COLUMNS: tuple[str, ...] = ("domain", "status", "rule", "reason", "path", "series_uid", "modality")
COLUMNS += ("description", "slices", "series_number", "image_type", "prepared_id")


@dataclass(frozen=True)
class Series:
    """One image stack found under a root; ``patient`` is a grouping key, never written."""

    domain: str
    path: str  # relative to the root, patient parts redacted
    key: str  # SeriesInstanceUID, with "#N" when mrct split the UID into stacks
    modality: str
    description: str  # redacted as the path
    slices: int
    series_number: int
    image_type: str
    files: tuple[Path, ...]
    patient: str

    @property
    def prepared_id(self) -> str:
        """Staging folder name = the id mrct prepare gives it: description + hash of the UID."""
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:8]
        return f"{safe_name(self.description or self.modality)}-{digest}"


@dataclass(frozen=True)
class Choice:
    """A series, chosen or not, the rule that skipped it and why, in words."""

    series: Series
    chosen: bool
    rule: str
    reason: str


def _identifiers(ds: Any) -> list[str]:
    """PatientID, PatientName and the name's components, longest first (for redaction)."""
    name = str(ds.get("PatientName", "") or "").strip()
    found = {str(ds.get("PatientID", "") or "").strip(), name, *re.split(r"[\^=\s]+", name)}
    return sorted((s for s in found if s), key=len, reverse=True)


def _redact(text: str, identifiers: list[str]) -> str:
    """``text`` with identifiers replaced; one- and two-letter ones only as a whole path part."""
    parts = []
    for part in text.split("/"):
        if part.casefold() in {i.casefold() for i in identifiers}:
            part = REDACTED
        for ident in (i for i in identifiers if len(i) >= 3):
            part = re.sub(re.escape(ident), REDACTED, part, flags=re.IGNORECASE)
        parts.append(part)
    return "/".join(parts)


def _describe(root: Path, domain: str, s: SeriesFiles) -> Series:
    first = s.headers[0]
    ids = _identifiers(first)
    rel = Path(os.path.commonpath(s.files)).relative_to(root).as_posix()
    image_type = first.get("ImageType", "")
    image_type = image_type if isinstance(image_type, str) else "\\".join(str(v) for v in image_type)
    try:
        number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    # Without a PatientID, the top folder under the root stands for the patient (TCIA layout).
    patient = str(first.get("PatientID", "") or "").strip() or f"folder:{rel.split('/')[0]}"
    meta = (s.key, s.modality.strip().upper(), _redact(s.description.strip(), ids), s.n_frames, number)
    return Series(domain, _redact(rel, ids), *meta, image_type.upper(), tuple(sorted(s.files)), patient)


def scan_root(root: Path, domain: str) -> tuple[list[Series], int]:
    """Every image stack under ``root`` (headers only) and the number of other files.

    Folder by folder, so memory holds one folder's headers at a time even for
    collections of hundreds of thousands of files.
    """
    found, other = [], 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
        if files:
            stacks = group_series(files)
            other += len(files) - sum(len(s.files) for s in stacks)
            found += [_describe(root, domain, s) for s in stacks]
    return found, other


def _rejection(s: Series, pattern: re.Pattern[str], min_slices: int) -> tuple[str, str] | None:
    want = DOMAINS[s.domain]
    if s.modality != want:
        return "modality", f"modality {s.modality or '?'}; this root gives {want}"
    if "LOCALIZER" in s.image_type.split("\\"):
        return "localiser", "ImageType LOCALIZER"
    if s.slices < min_slices:
        return "slices", f"{s.slices} images < --min-slices {min_slices} (a scout or single image?)"
    if not pattern.search(s.description):
        return "description", f"description does not match --{s.domain}-series-pattern"
    return None


def select(
    series: list[Series], pattern: re.Pattern[str], min_slices: int, one_per_patient: bool
) -> list[Choice]:
    """Apply the rules of the module docstring; every series gets a choice and a reason."""
    choices, candidates = [], defaultdict(list)
    for s in series:
        why = _rejection(s, pattern, min_slices)
        if why is not None:
            choices.append(Choice(s, False, *why))
        else:
            candidates[s.patient if one_per_patient else s.key].append(s)
    for group in candidates.values():
        best, *rest = sorted(group, key=lambda s: (-s.slices, s.series_number, s.key))
        note = f"most slices of {len(group)} candidates of this patient" if rest else "matches all rules"
        choices.append(Choice(best, True, "", note))
        lost = f"the patient's series {best.key} has more slices (or as many and a lower SeriesNumber)"
        choices += [Choice(s, False, "one-per-patient", lost) for s in rest]
    return sorted(choices, key=lambda c: (c.series.path, c.series.key))


def write_selection(path: Path, choices: list[Choice]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for c in choices:
            s, status = c.series, "chosen" if c.chosen else "skipped"
            row = (s.domain, status, c.rule, c.reason, s.path, s.key, s.modality, s.description, s.slices)
            writer.writerow((*row, s.series_number, s.image_type, s.prepared_id if c.chosen else ""))
    os.replace(tmp, path)  # never a half-written table under the final name


def stage(out: Path, chosen: list[Choice]) -> dict[str, list[Path]]:
    """Link each chosen series' files into ``OUT/series/<domain>/<id>/``: one folder, one series.

    Folders of earlier runs that are no longer chosen are removed (links only).
    """
    folders: dict[str, list[Path]] = {d: [] for d in DOMAINS}
    for domain in DOMAINS:
        base = out / "series" / domain
        keep = {c.series.prepared_id for c in chosen if c.series.domain == domain}
        for old in sorted(base.iterdir()) if base.is_dir() else []:
            if old.name not in keep and all(f.is_symlink() or f.stat().st_nlink > 1 for f in old.iterdir()):
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
    for c in chosen:
        folder = out / "series" / c.series.domain / c.series.prepared_id
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            f.unlink()
        for i, src in enumerate(c.series.files):
            link = folder / f"{i:05d}.dcm"
            try:
                link.symlink_to(src.resolve())
            except OSError:  # no symlinks here (some Windows set-ups): a hard link costs no space either
                os.link(src, link)
        folders[c.series.domain].append(folder)
    return folders


def _summary_line(domain: str, choices: list[Choice], other: int) -> str:
    mine = [c for c in choices if c.series.domain == domain]
    rules = Counter(c.rule for c in mine if not c.chosen)
    skipped = ", ".join(f"{rule} {n}" for rule, n in sorted(rules.items()))
    n_chosen = sum(c.chosen for c in mine)
    line = f"{domain.upper()}: {len(mine)} series found, {n_chosen} chosen, {len(mine) - n_chosen} skipped"
    return line + (f" ({skipped})" if skipped else "") + f"; {other} non-image files ignored"


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a regex: {err}") from err


def _folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {text}")
    return Path(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for d, name in DOMAINS.items():
        p.add_argument(f"--{d}-root", type=_folder, required=True, help=f"{name} folder (recursive).")
        p.add_argument(f"--{d}-series-pattern", type=_regex, default=PATTERNS[d], help="Description regex.")
    p.add_argument("-o", "--output", type=Path, required=True, help="Folder of the training set.")
    p.add_argument("--one-per-patient", action=BooleanOptionalAction, default=True, help="Default: on.")
    p.add_argument("--min-slices", type=int, default=MIN_SLICES, help="Fewer images: a scout, skipped.")
    p.add_argument("--workers", type=int, default=1, help="Scans prepared in parallel.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the 70/30 train/test split.")
    p.add_argument("--config", type=Path, help="YAML config; its preprocessing: section is used.")
    p.add_argument("--dry-run", action="store_true", help="Write selection.csv only; prepare nothing.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Select, write the table, prepare. 0: all chosen scans ready; 1: none chosen in a domain, or
    some failed (as ``mrct prepare``); 2: bad arguments; else the mrct error's code."""
    args = parse_args(argv)
    from mrct.errors import MrctError

    choices, other = [], {}
    for d in DOMAINS:
        series, other[d] = scan_root(getattr(args, f"{d}_root"), d)
        choices += select(series, getattr(args, f"{d}_series_pattern"), args.min_slices, args.one_per_patient)
    args.output.mkdir(parents=True, exist_ok=True)
    write_selection(args.output / "selection.csv", choices)
    for d in DOMAINS:
        print(_summary_line(d, choices, other[d]))
    print(f"selection table: {args.output / 'selection.csv'}")
    chosen = [c for c in choices if c.chosen]
    empty = [d for d in DOMAINS if not any(c.series.domain == d for c in chosen)]
    for d in empty:  # help to pick a pattern: what this domain's series are called
        seen = Counter(
            c.series.description for c in choices if c.series.domain == d and c.rule == "description"
        )
        listing = ", ".join(f"{desc!r} x{n}" for desc, n in seen.most_common(12)) or "none"
        print(f"no {d.upper()} series chosen; descriptions refused by the pattern: {listing}")
    if args.dry_run or empty:
        return 1 if empty else 0
    from mrct.api import prepare

    folders = stage(args.output, chosen)
    try:
        opts = {"config": args.config, "workers": args.workers, "seed": args.seed}
        result = prepare(folders["mr"], folders["ct"], args.output, **opts, progress=sys.stderr.isatty())
    except MrctError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    counts = "; ".join(
        f"{d} {c.ok} ok, {c.skipped} from earlier, {c.failed} failed" for d, c in result.counts.items()
    )
    print(f"prepared: {counts}; manifest {result.manifest}")
    current = {(c.series.domain, c.series.prepared_id) for c in chosen}
    entries = json.loads(result.manifest.read_text(encoding="utf-8"))["scans"]
    for e in entries:
        if e["status"] != "ok" and (e["domain"], e["id"]) in current:
            print(f"failed {e['domain']}/{e['id']}: {e['error']}")
    if stale := sum((e["domain"], e["id"]) not in current for e in entries):
        # mrct prepare keeps scans of earlier runs: a changed selection does not drop them
        print(f"{stale} scans prepared earlier are no longer chosen but stay in the manifest; use a new -o")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
