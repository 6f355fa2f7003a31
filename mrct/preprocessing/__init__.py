"""Invertible preprocessing: reorient, head mask, brow-to-jaw slab, model grid, intensities.

``preprocess(volume)`` runs the chain (:mod:`.chain`) and ``invert(record, array)``
undoes it. They are imported lazily, because the chain needs MONAI and torch
and the light parts (crop overrides, configs) must not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CropRequest", "PreprocessConfig", "PreprocessRecord", "Preprocessed", "invert", "preprocess"]

_LAZY = {
    "preprocess": "mrct.preprocessing.chain",
    "invert": "mrct.preprocessing.chain",
    "Preprocessed": "mrct.preprocessing.chain",
    "PreprocessRecord": "mrct.preprocessing.record",
    "PreprocessConfig": "mrct.preprocessing.config",
    "CropRequest": "mrct.preprocessing.crop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrct.preprocessing' has no attribute {name!r}")
