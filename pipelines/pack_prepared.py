"""Pack the training split of a prepared set small enough to carry to a GPU machine, and unpack it.

A prepared set (``mrct prepare``) holds float32 volumes of 30 x 256 x 256 in [-1, 1]: about
8 MB each, 500 MB for the heads. A machine that takes a few tens of MB of upload gets
them quantised to 12 bits (steps of 2/4095: about 1 HU on the linear CT map, far under MR
noise) and xz-compressed, about 1 MB a head. Only the training split travels; the test
split stays here for evaluation. Unpacking writes float32 ``.npy`` files where the manifest
expects them, so ``mrct train --data`` reads the unpacked folder as it would the original.

    python pipelines/pack_prepared.py pack PREPARED PACKED
    python pipelines/pack_prepared.py unpack PACKED PREPARED
"""

from __future__ import annotations

import argparse
import io
import lzma
import re
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from mrct.errors import OutputExistsError, ReadError
from mrct.io.atomic import Owned, atomic_dir
from mrct.training.data import PreparedSet

LEVELS = 4095  # 12 bits
SUFFIX = ".u12.xz"


def _train_images(root: Path, packed: bool = False) -> list[Path]:
    """The training split's images, relative to ``root``, as ``mrct train`` reads them."""
    scans = PreparedSet.open(root, check_arrays=not packed).scans.values()
    return [scan.image.relative_to(root) for domain in scans for scan in domain]


ANY = Owned(re.compile(r".*"))  # only used to replace a folder, which these never do


def _new_folder(target: Path, verb: str) -> AbstractContextManager[Path]:
    """mrct's own temporary-sibling-and-rename for ``target``: an existing folder is never
    written into (unpacking over a prepared set replaced its volumes by 12-bit copies), and a
    failed run leaves nothing under the target's name."""
    if target.exists() or target.is_symlink():
        raise OutputExistsError(f"already exists; {verb} into a new folder", target)
    return atomic_dir(target, ANY)


def pack(prepared: Path, final: Path) -> None:
    images = _train_images(prepared)
    with _new_folder(final, "pack") as packed:
        total = _pack_into(prepared, packed, images)
    print(f"packed {len(images)} training volumes into {final}: {total / 1e6:.1f} MB")


def _pack_into(prepared: Path, packed: Path, images: list[Path]) -> int:
    shutil.copy2(prepared / "manifest.json", packed / "manifest.json")
    total = 0
    for rel in images:
        volume = np.load(prepared / rel, allow_pickle=False)
        if volume.min() < -1 or volume.max() > 1:
            raise ReadError("values outside [-1, 1]; not a prepared volume", prepared / rel)
        levels = np.round((volume.astype(np.float64) + 1.0) * (LEVELS / 2)).astype(np.uint16)
        buffer = io.BytesIO()
        np.save(buffer, levels, allow_pickle=False)
        target = packed / f"{rel}{SUFFIX}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
        total += target.stat().st_size
    return total


def unpack(packed: Path, final: Path) -> None:
    images = _train_images(packed, packed=True)
    with _new_folder(final, "unpack") as prepared:
        _unpack_into(packed, prepared, images)
    print(f"unpacked {len(images)} training volumes into {final}")


def _unpack_into(packed: Path, prepared: Path, images: list[Path]) -> None:
    shutil.copy2(packed / "manifest.json", prepared / "manifest.json")
    for rel in images:
        source = packed / f"{rel}{SUFFIX}"
        try:
            levels = np.load(io.BytesIO(lzma.decompress(source.read_bytes())), allow_pickle=False)
        except (lzma.LZMAError, ValueError, EOFError) as err:
            raise ReadError(f"not a packed volume ({err}); pack the set again", source) from None
        target = prepared / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, (levels.astype(np.float32) * np.float32(2 / LEVELS) - 1.0).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
