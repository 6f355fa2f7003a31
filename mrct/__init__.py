"""mrct: MR <-> CT translation of head scans with a 3D CycleGAN.

The Python API::

    import mrct

    sct = mrct.translate("scan.nii.gz", to="ct")  # a mrct.Volume on the input's grid
    mrct.translate_file("scan.nii.gz", "scan_sct.nii.gz", to="ct")
    mrct.write_volume(sct, "sct/")  # DICOM, labelled synthetic

Importing ``mrct`` is cheap: these names are looked up in :mod:`mrct.api`, :mod:`mrct.io` and
:mod:`mrct.volume` on first use, and heavy libraries (torch, SimpleITK, pydicom) are imported
inside the functions that need them, so ``mrct --help`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it; read on first access (PEP 562). No name here may also
# be a submodule of mrct, or importing that submodule would replace the function.
_EXPORTS = {
    "translate": "mrct.api",
    "translate_file": "mrct.api",
    "read_volume": "mrct.io",
    "write_volume": "mrct.io",
    "Volume": "mrct.volume",
    "Modality": "mrct.volume",
}

__all__ = [
    "Modality",
    "Volume",
    "__version__",
    "read_volume",
    "translate",
    "translate_file",
    "write_volume",
]

if TYPE_CHECKING:
    from mrct.api import translate, translate_file
    from mrct.io import read_volume, write_volume
    from mrct.volume import Modality, Volume


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "errors":  # ``except mrct.errors.MrctError`` after a bare ``import mrct``
        import importlib

        return importlib.import_module("mrct.errors")
    raise AttributeError(f"module 'mrct' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "errors"})
