"""mrct: MR <-> CT translation of head scans with a 3D CycleGAN.

Importing ``mrct`` is cheap: heavy libraries (torch, SimpleITK, pydicom) are
imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
