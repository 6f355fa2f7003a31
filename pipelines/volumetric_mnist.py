"""Volumetric MNIST (Bashkirova, Usman & Saenko 2018, §5.1 and Figure 6) as an mrct prepared set.

    python pipelines/volumetric_mnist.py --idx ../shared/data/mnist/t10k-images-idx3-ubyte.gz \\
        --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz -o data/vmnist --count 1000
    mrct train --config configs/mnist_3d.yaml --data data/vmnist -o runs/vmnist_3d

Each MNIST digit becomes a volume of ``depth`` slices (D, H, W) = 30 x 84 x 84 whose stroke
thickness changes with the slice index, in two domains:

- **A, "spherical"**: the stroke grows, then shrinks along depth (rise then decay);
- **B, "sandglass"**: the stroke shrinks, then grows (decay then rise).

The trainer names its domains ``mr`` (A) and ``ct`` (B), so **spherical volumes are stored
as ``mr``, sandglass volumes as ``ct``**: ``mr_to_ct`` translates spherical to sandglass.

Construction, per digit (exact):

1. The 28 x 28 uint8 image, divided by 255, is up-sampled to ``size`` x ``size`` (84: x3) by
   linear interpolation (``scipy.ndimage.zoom``, order 1, ``grid_mode=True``, zero outside)
   and **binarised** at 0.5.
2. Its signed distance ``s`` (pixels; negative inside): outside, the Euclidean distance to
   the nearest stroke pixel centre minus 0.5; inside, minus (the distance to the nearest
   background pixel centre minus 0.5). The boundary sits half-way between pixel centres.
3. Slice ``t`` (0 .. D-1) takes the stroke grown by a radius ``r(t)`` (pixels; positive =
   dilation, negative = erosion, with a Euclidean disc as structuring element), with a
   one-pixel linear edge: ``v = clip(r(t) - s + 0.5, 0, 1)``. ``r = 0`` gives the binarised
   digit exactly; ``v`` is 1 inside the grown stroke and 0 in the background.
4. Schedules, with ``b(t) = sin(pi (t + 0.5) / D)`` (0 at the ends, 1 in the middle) and
   ``r_lo = -1.0 * size / 84`` (erosion by one pixel), ``r_hi = 4.0 * size / 84``
   (dilation by four pixels): spherical ``r(t) = r_lo + (r_hi - r_lo) b(t)``; sandglass
   ``r(t) = r_hi - (r_hi - r_lo) b(t)``.
5. Intensities are mapped to [-1, 1] as ``2 v - 1`` (background -1), float32, like every
   prepared volume.

Splits, pairs and ground truth. ``--count N`` volumes per domain, ``n_train`` = 70 % of N
(rounded half up) and ``n_test = N - n_train``. One permutation of the IDX file's digits,
seeded with ``--seed``, is cut into three disjoint parts: ``n_test`` test digits, rendered in
**both** domains, then ``n_train`` digits rendered only as spherical (A's training split),
then ``n_train`` others rendered only as sandglass (B's training split). So the training
splits share no digit at all (two independent 70/30 splits of the same digits would put
about half of the pairs in both training sets), while the test splits of both domains are
the same digits: a volume's id is its MNIST index (``"00042"``), and ``mr/<id>.npy`` and
``ct/<id>.npy`` are each other's ground truth. ``pairs.json`` lists those pairs. Evaluate a
model's test translations saved as ``PRED/<id>.npy`` with
``mrct evaluate PRED OUT/ct --metric mnist-l2`` (files are matched by name).

Outputs in ``OUT``: ``manifest.json`` (the ``mrct-prepared-dataset`` format read by ``mrct
train``; written last), ``mr/<id>.npy``, ``ct/<id>.npy`` and ``pairs.json``. Each digit takes
847 KB per domain (float32), so 1000 per domain take about 1.7 GB. The manifest's ``config``
is ``PreprocessConfig(grid=GridConfig(depth, size, size, inplane_mm=1.0))``, equal to the
``preprocessing:`` section of ``configs/mnist_*.yaml``; voxels are 1 mm cubes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mrct import __version__
from mrct.config import to_dict
from mrct.errors import MrctError, OutputExistsError, ReadError
from mrct.preprocessing.config import GridConfig, PreprocessConfig
from mrct.script_main import run_main

MNIST_SIZE = 28
ERODE_PX = 1.0  # at 84 x 84; scaled with --size
MIN_SIZE = 16
DILATE_PX = 4.0
DOMAINS = {"mr": "spherical", "ct": "sandglass"}  # trainer domain -> Volumetric MNIST domain (A, B)


@dataclass(frozen=True)
class BuildSummary:
    out: Path
    train: int
    test: int
    seconds: float


# ---------------------------------------------------------------- reading IDX files


def read_idx(path: str | Path, ndim: int) -> npt.NDArray[np.uint8]:
    """An IDX array (LeCun's MNIST format), gzipped or not: magic 0x0000 08 ``ndim``, then
    ``ndim`` big-endian uint32 sizes, then the bytes. ``ndim`` 3 for images, 1 for labels."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as err:
        raise ReadError("no such IDX file", p) from err
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ReadError(f"not a readable IDX file ({err})", p) from err
    expected = 0x0800 + ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected:
        found = "too short" if magic is None else f"0x{magic:08x}"
        kind = "image" if ndim == 3 else "label"
        raise ReadError(f"not an IDX {kind} file: magic number {found}, expected 0x{expected:08x}", p)
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise ReadError(f"IDX sizes {dims} need {header + int(np.prod(dims))} bytes, got {len(raw)}", p)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# ---------------------------------------------------------------- rendering


def binarise(digits: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.bool_]:
    """(N, 28, 28) uint8 -> (N, size, size) strokes: linear up-sampling, threshold 0.5."""
    grey = digits.astype(np.float32) / 255.0
    scale = size / digits.shape[-1]
    up = ndimage.zoom(grey, (1, scale, scale), order=1, grid_mode=True, mode="grid-constant")
    return np.asarray(up > 0.5)


def signed_distance(stroke: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Signed distance (pixels, negative inside) to the boundary half-way between pixel centres."""
    if not stroke.any():
        raise ValueError("empty digit")
    outside = ndimage.distance_transform_edt(~stroke) - 0.5
    inside = ndimage.distance_transform_edt(stroke) - 0.5
    return np.where(stroke, -inside, outside).astype(np.float32)


def radii(depth: int, size: int) -> dict[str, npt.NDArray[np.float32]]:
    """r(t) in pixels for both domains: spherical rises then decays, sandglass the reverse."""
    bump = np.sin(np.pi * (np.arange(depth) + 0.5) / depth)
    lo, hi = -ERODE_PX * size / 84, DILATE_PX * size / 84
    return {
        "spherical": (lo + (hi - lo) * bump).astype(np.float32),
        "sandglass": (hi - (hi - lo) * bump).astype(np.float32),
    }


def render(sdf: npt.NDArray[np.float32], r: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The (D, H, W) volume in [-1, 1] of the stroke grown by ``r[t]`` on slice ``t``."""
    v = np.clip(r[:, None, None] - sdf[None] + 0.5, 0.0, 1.0)
    return (2.0 * v - 1.0).astype(np.float32)


# ---------------------------------------------------------------- splits and files


def split_counts(count: int) -> tuple[int, int]:
    """(n_train, n_test) per domain: 70 % rounded half up, at least one test volume."""
    if count < 2:
        raise MrctError(f"--count must be at least 2, got {count}")
    n_train = min(max((7 * count + 5) // 10, 1), count - 1)
    return n_train, count - n_train


def choose_digits(available: int, count: int, seed: int) -> dict[str, list[int]]:
    """Disjoint MNIST indices: ``test`` (both domains), ``train_mr`` (A only), ``train_ct`` (B only)."""
    n_train, n_test = split_counts(count)
    need = n_test + 2 * n_train
    if need > available:
        most = max((c for c in range(2, available + 1) if c + split_counts(c)[0] <= available), default=0)
        raise MrctError(f"--count {count} needs {need} digits, the IDX file has {available} (at most {most})")
    perm = np.random.default_rng(seed).permutation(available)[:need]
    parts = {
        "test": perm[:n_test],
        "train_mr": perm[n_test : n_test + n_train],
        "train_ct": perm[n_test + n_train :],
    }
    return {k: sorted(int(i) for i in v) for k, v in parts.items()}


def _npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def build(
    idx: str | Path,
    out: str | Path,
    *,
    count: int = 1000,
    seed: int = 0,
    size: int = 84,
    depth: int = 30,
    labels: str | Path | None = None,
    overwrite: bool = False,
) -> BuildSummary:
    """Write the Volumetric MNIST prepared set (see the module docstring) into ``out``."""
    import time

    start = time.perf_counter()
    # Below 16 px some MNIST strokes vanish when binarised (29 of the 10,000 test digits at 8 px).
    if size < MIN_SIZE or depth < 3:
        raise MrctError(f"--size must be >= {MIN_SIZE} and --depth >= 3, got {size} and {depth}")
    if seed < 0:
        raise MrctError(f"--seed must be >= 0, got {seed}")
    try:  # before any output: a grid too large for mrct stopped the build with a traceback
        grid = GridConfig(depth=depth, height=size, width=size, inplane_mm=1.0)
    except ValueError as err:
        raise MrctError(f"--size {size} --depth {depth}: {err}") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError("is a file, not a folder", out)
    if (out / "manifest.json").exists() and not overwrite:
        raise OutputExistsError("already holds a prepared set; use --overwrite or a new folder", out)
    digits = read_idx(idx, 3)
    if digits.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ReadError(f"expected 28 x 28 digits, got {digits.shape[1:]}", idx)
    digit_labels = None if labels is None else read_idx(labels, 1)
    if digit_labels is not None and len(digit_labels) != len(digits):
        raise ReadError(f"{len(digit_labels)} labels for {len(digits)} images", labels)
    parts = choose_digits(len(digits), count, seed)
    config = to_dict(PreprocessConfig(grid=grid))
    schedules = radii(depth, size)
    width = len(str(len(digits) - 1))
    ids = {k: [f"{i:0{width}d}" for i in v] for k, v in parts.items()}
    rendered_in = {i: list(DOMAINS) for i in parts["test"]}
    rendered_in.update({i: [d] for d in DOMAINS for i in parts[f"train_{d}"]})
    chosen = sorted(rendered_in)
    strokes = binarise(digits[chosen], size)  # all at once: one vectorised zoom
    empty = [i for i, stroke in zip(chosen, strokes, strict=True) if not stroke.any()]
    if empty:  # before anything is written
        raise ReadError(f"digit #{empty[0]} has no stroke at --size {size} (blank, or too faint)", idx)
    (out / "manifest.json").unlink(missing_ok=True)  # written again last: its presence means complete
    for domain in DOMAINS:
        (out / domain).mkdir(parents=True, exist_ok=True)
    scans: list[dict[str, Any]] = []
    for index, stroke in zip(chosen, strokes, strict=True):
        sdf = signed_distance(stroke)
        scan_id = f"{index:0{width}d}"
        for domain in rendered_in[index]:
            volume = render(sdf, schedules[DOMAINS[domain]])
            data = _npy_bytes(volume)
            (out / domain / f"{scan_id}.npy").write_bytes(data)
            label = None if digit_labels is None else int(digit_labels[index])
            scans.append(
                {
                    "id": scan_id,
                    "domain": domain,
                    "status": "ok",
                    "source": f"{Path(idx).name}#{index}",
                    "mnist": {"index": index, "label": label},
                    "volumetric_mnist_domain": DOMAINS[domain],
                    "crop": {"superior_mm": float(depth), "inferior_mm": 0.0},
                    "shape": list(volume.shape),
                    "checksum": hashlib.sha256(data).hexdigest(),
                    "files": {"image": f"{domain}/{scan_id}.npy"},
                }
            )
    pairs = [
        {"mnist_index": e["mnist"]["index"], "label": e["mnist"]["label"], "mr": e["id"], "ct": e["id"]}
        for e in scans
        if e["domain"] == "mr" and e["id"] in ids["test"]
    ]
    _write_json(
        out / "pairs.json",
        {
            "description": "test pairs: mr/<mr>.npy (A, spherical) and ct/<ct>.npy (B, sandglass) "
            "render the same MNIST digit; training digits are rendered in one domain only",
            "pairs": pairs,
        },
    )
    _write_json(
        out / "manifest.json",
        {
            "format": "mrct-prepared-dataset",
            "version": 1,
            "mrct_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": seed,
            "config": config,
            "dataset": {
                "name": "volumetric-mnist",
                "domains": {"mr": "A: spherical (rise then decay)", "ct": "B: sandglass (decay then rise)"},
                "source": Path(idx).name,
                "radii_px": {k: [round(float(x), 4) for x in v] for k, v in schedules.items()},
            },
            "split": {d: {"train": ids[f"train_{d}"], "test": ids["test"]} for d in DOMAINS},
            "scans": scans,
        },
    )
    n_train, n_test = split_counts(count)
    return BuildSummary(out, n_train, n_test, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx", required=True, help="MNIST images, IDX format (.gz or not)")
    parser.add_argument("--labels", help="MNIST labels, IDX format (recorded in manifest and pairs)")
    parser.add_argument("-o", "--output", required=True, help="output folder (a prepared set)")
    parser.add_argument("--count", type=int, default=1000, help="volumes per domain (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="digit choice and splits (default 0)")
    parser.add_argument("--size", type=int, default=84, help="in-plane size (default 84)")
    parser.add_argument("--depth", type=int, default=30, help="slices (default 30)")
    parser.add_argument("--overwrite", action="store_true", help="replace a set already in the folder")
    args = parser.parse_args(argv)
    s = build(
        args.idx,
        args.output,
        count=args.count,
        seed=args.seed,
        size=args.size,
        depth=args.depth,
        labels=args.labels,
        overwrite=args.overwrite,
    )
    print(f"wrote {s.out}: {s.train} train + {s.test} test volumes per domain ({s.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
