"""De-identify the DICOM files mrct writes (``--anonymize``): PS3.15 Annex E's Basic Profile.

:meth:`Anonymizer.apply` runs over a dataset about to be saved, nested sequences included:

- every attribute of the Basic Application Level Confidentiality Profile
  (:mod:`mrct.io.deid_profile`) gets its action: X removed; Z, Z/D emptied; X/Z, X/D, X/Z/D
  removed (the CT and MR Image IODs need none of them); D a dummy value; U a new UID;
  X/Z/U* (the source-image references) kept with their instance UIDs replaced;
- private tags, curves (50xx) and overlay data and comments (60xx) are removed;
- PatientID becomes a pseudonym, ``ANON-`` + 16 hex digits of a keyed hash of the original
  PatientID (PatientName the same, ``ANON^...``), so the outputs of one patient still file
  together; birth date and sex are emptied and age removed (no "Retain Patient Characteristics"
  option);
- PatientIdentityRemoved ``YES``, DeidentificationMethod, and DeidentificationMethodCodeSequence
  113100 (Basic Application Confidentiality Profile) and, when descriptors are kept, 113105
  (Clean Descriptors Option), both DCM.

UIDs: ``2.25.<UUID>`` from an HMAC-SHA256 of the original under the anonymizer's secret key, so
the same source UID (study, frame of reference, source series and instances) maps to the same
new UID in every file written with one key, and nobody without the key can map it back. A batch
keeps its key in ``OUT/.mrct-anonymize-key`` so a resumed or sharded run maps identically; that
file, like the manifest, links outputs to their sources: share the output series, not the folder.

Kept on purpose: the descriptors mrct itself writes (SeriesDescription "mrct synthetic CT – not
for diagnosis", DerivationDescription naming the model), which hold no source text, hence the
Clean Descriptors Option; ImageType ``DERIVED\\SECONDARY``; Manufacturer (``mrct``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mrct.errors import ReadError, WriteError
from mrct.io.deid_profile import ACTIONS
from mrct.io.leftovers import TMP_MARK

__all__ = ["KEY_FILE", "Anonymizer"]

KEY_FILE = ".mrct-anonymize-key"
METHOD = "DICOM PS3.15 E.1 Basic Profile by mrct"  # LO: 64 characters at most
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
PSEUDONYM_PREFIX = "ANON-"

_ACTION = {tag: action for action, tags in ACTIONS.items() for tag in tags}
_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
# Dummy values for action D, by VR (the profile asks for values "consistent with the VR").
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "PN": "ANONYMOUS"}
_NUMERIC = ("DS", "IS", "SS", "US", "SL", "UL", "FL", "FD", "SV", "UV")


class Anonymizer:
    """Applies the Basic Profile; ``key`` (32 random bytes by default) drives UIDs and pseudonyms."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key if key is not None else secrets.token_bytes(32)

    @classmethod
    def for_folder(cls, folder: str | Path) -> Anonymizer:
        """The anonymizer of an output folder: its key file, created (mode 0600) on first use.

        Concurrent first uses (shards) agree: the key is written under a temporary name and
        hard-linked into place, which fails if another process got there first.
        """
        path = Path(folder) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{KEY_FILE}{TMP_MARK}", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(secrets.token_hex(32) + "\n")
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            except OSError as err:
                raise WriteError(f"cannot create the anonymization key: {err.strerror}", path) from err
            finally:
                Path(tmp).unlink(missing_ok=True)
        try:
            return cls(bytes.fromhex(path.read_text(encoding="ascii").strip()))
        except (OSError, ValueError) as err:
            raise ReadError("not a readable anonymization key; use a new output folder", path) from err

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The new UID for ``original``: the same for the same key, unrelated otherwise."""
        return f"2.25.{uuid.UUID(bytes=self._digest('uid', original)[:16], version=4).int}"

    def pseudonym(self, patient: str) -> str:
        """``ANON-`` + 16 hex digits standing for one patient (a PatientID, or a study UID)."""
        return PSEUDONYM_PREFIX + self._digest("patient", patient).hex()[:16].upper()

    def apply(self, ds: Any, clean: Collection[str] = ()) -> None:
        """De-identify pydicom Dataset ``ds`` in place (and its file meta).

        ``clean`` names top-level attributes (keywords) that the caller wrote itself and that
        hold no identifying text; they are kept (PS3.15's Clean Descriptors Option).
        """
        from pydicom.dataset import Dataset
        from pydicom.tag import Tag

        patient = str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", ""))
        keep = {int(Tag(keyword)) for keyword in clean}
        ds.remove_private_tags()
        self._walk(ds, keep | {_PATIENT_NAME, _PATIENT_ID})  # those two: set just below
        ds.PatientID = self.pseudonym(patient)
        ds.PatientName = ds.PatientID.replace("-", "^", 1)  # PN: family^given, as validators expect
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = [BASIC_PROFILE] + ([CLEAN_DESCRIPTORS] if keep else [])
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or self.uid(
                str(meta.MediaStorageSOPInstanceUID)
            )

    def _walk(self, ds: Any, keep: Collection[int] = ()) -> None:
        for element in list(ds):  # a copy: elements are deleted on the way
            tag = int(element.tag)
            group, number = tag >> 16, tag & 0xFFFF
            if tag in keep:
                continue
            if (group & 0xFF00) == 0x5000 or ((group & 0xFF00) == 0x6000 and number in (0x3000, 0x4000)):
                del ds[tag]  # curves; overlay data and comments (burned-in text may be there)
                continue
            action = _ACTION.get(tag, "K")
            if action == "X/Z/U*" or (action == "K" and element.VR == "SQ"):
                for item in element.value or ():
                    self._walk(item)  # keep the references, replace the UIDs inside
            elif action == "U" or (action == "D" and element.VR == "UI"):
                values = list(element.value) if element.VM > 1 else [element.value]
                new = [self.uid(str(v)) for v in values if v]
                element.value = new if element.VM > 1 else (new[0] if new else "")
            elif action.startswith("X"):
                del ds[tag]
            elif action.startswith("Z"):
                element.value = [] if element.VR == "SQ" else ""
            elif action == "D":
                element.value = _dummy(element.VR)


def _dummy(vr: str) -> Any:
    if vr == "SQ":
        return []
    if vr in _NUMERIC:
        return 0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    return _DUMMY.get(vr, "ANONYMOUS")
