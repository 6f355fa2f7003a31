"""Compare translated volumes with their ground truth, case by case (``mrct evaluate``).

``pred`` and ``gt`` are two volume files, or two folders of volumes matched by file name
without its suffix (``case1.nii.gz`` matches ``case1.mha``); every prediction needs its
ground truth, extra ground-truth files are ignored. Files: NIfTI, NRRD, MetaImage (read with
their affines) and ``.npy`` (mrct's model-grid arrays (D, H, W), no affine). A mask is one
file for every case or a folder matched the same way; voxels > 0 count.

Metrics (``mrct/metrics.py``):

- ``ct``: the SynthRAD2023 metrics in HU inside the mask, as its reference code computes them
  (MAE on the images as they are; PSNR with data range 4024 and SSIM on both images clipped to
  [-1024, 3000]), and the slice flicker of the prediction and of the ground truth (mean
  absolute second difference across slices, HU, clipped) and their ratio. A mask too thin for
  the flicker (no three consecutive slices) leaves the flicker columns empty, with a warning.
- ``mnist-l2``: the Volumetric MNIST L2 of the paper's Table 2 (volumes in [-1, 1], the
  Euclidean norm of the difference on the [0, 1] scale over the whole volume; the mask is not
  used), and the flicker on the [0, 1] scale (inside the mask, if one is given).

The slice axis is the array axis closest to S (RAS) for files with an affine, axis 0 for
``.npy``. Shapes and affines (to 1e-3 mm) must agree, or the error names the file.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mrct import metrics
from mrct.errors import InputNotFoundError, MrctError, OutputExistsError, ReadError
from mrct.io.atomic import atomic_file, check_apart, check_writable, occupied, utf8_bytes

log = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
AFFINE_TOLERANCE_MM = 1e-3


class Metric(str, Enum):
    CT = "ct"
    MNIST_L2 = "mnist-l2"


COLUMNS: dict[Metric, tuple[str, ...]] = {
    Metric.CT: ("mae_hu", "psnr_db", "ssim", "flicker_hu", "flicker_gt_hu", "flicker_ratio"),
    Metric.MNIST_L2: ("l2", "flicker", "flicker_gt", "flicker_ratio"),
}


@dataclass(frozen=True)
class Case:
    """One prediction, its ground truth and its mask (or none)."""

    name: str
    pred: Path
    gt: Path
    mask: Path | None = None


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float  # sample standard deviation; 0 for one case
    median: float


@dataclass(frozen=True)
class Evaluation:
    """Per-case rows (``case`` and the metric's columns) and the CSV file they were written to."""

    metric: Metric
    rows: tuple[dict[str, Any], ...]
    csv: Path

    @property
    def columns(self) -> tuple[str, ...]:
        return COLUMNS[self.metric]

    def summary(self) -> dict[str, Stats]:
        """Mean, standard deviation and median of each column over the cases."""
        out = {}
        for column in self.columns:
            values = [float(r[column]) for r in self.rows if r[column] is not None]  # None: not measured
            if not values:
                out[column] = Stats(0, math.nan, 0.0, math.nan)
                continue
            std = statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) else 0.0
            out[column] = Stats(len(values), statistics.fmean(values), std, statistics.median(values))
        return out

    def table(self) -> str:
        """The summary as a markdown table."""
        lines = ["| metric | cases | mean ± std | median |", "|---|---|---|---|"]
        for column, s in self.summary().items():
            lines.append(f"| {column} | {s.n} | {s.mean:.4g} ± {s.std:.2g} | {s.median:.4g} |")
        return "\n".join(lines)


# ---------------------------------------------------------------- finding the cases


def case_name(path: Path) -> str:
    """The file name without its volume suffix."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _volumes_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not f.name.lower().endswith(SUFFIXES):
            continue
        name = case_name(f)
        if name in found:
            raise ReadError(f"two volumes named {name!r} ({found[name].name}, {f.name})", folder)
        found[name] = f
    return found


def match_cases(pred: str | Path, gt: str | Path, mask: str | Path | None = None) -> list[Case]:
    """The cases to compare: two files, or every volume of the ``pred`` folder with its namesake
    in the ``gt`` folder (and the ``mask`` folder, when ``mask`` is a folder)."""
    pred, gt = Path(pred), Path(gt)
    mask = None if mask is None else Path(mask)
    for p in (pred, gt, mask):
        if p is not None and not p.exists():
            raise InputNotFoundError("no such file or folder", p)
    if pred.is_dir() != gt.is_dir():
        what = ("a folder", "a file") if pred.is_dir() else ("a file", "a folder")
        raise MrctError(
            f"PRED is {what[0]} and TRUTH {what[1]}: give two files, or two folders of volumes", gt
        )
    if not pred.is_dir():
        if mask is not None and mask.is_dir():
            raise ReadError("a folder of masks needs folders of volumes", mask)
        return [Case(case_name(pred), pred, gt, mask)]
    preds, gts = _volumes_in(pred), _volumes_in(gt)
    masks = _volumes_in(mask) if mask is not None and mask.is_dir() else None
    if not preds:
        raise InputNotFoundError(f"no volume ({', '.join(SUFFIXES)}) in this folder", pred)
    cases = []
    for name, p in preds.items():
        if name not in gts:
            raise InputNotFoundError(f"no ground truth named {name!r} in {gt}", p)
        if masks is not None and name not in masks:
            raise InputNotFoundError(f"no mask named {name!r} in {mask}", p)
        cases.append(Case(name, p, gts[name], mask if masks is None else masks[name]))
    if missing := sorted(set(gts) - set(preds)):
        # Said aloud: a summary over fewer cases than the reference set is easy to misquote.
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        log.warning(
            "%s: %d ground-truth volume(s) have no prediction and are left out: %s", gt, len(missing), shown
        )
    return cases


# ---------------------------------------------------------------- one case


def read_array(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """A volume's voxels as float64 and its affine (None for ``.npy``)."""
    if path.name.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ReadError(f"not a readable .npy array ({err})", path) from err
        if array.ndim != 3:
            raise ReadError(f"a 3D array is needed, got shape {array.shape}", path)
        from mrct.io.validate import check_values

        check_values(array, path)  # NaN/Inf refused, as read_volume refuses them in a NIfTI
        return np.asarray(array, dtype=np.float64), None
    from mrct.io import read_volume

    volume = read_volume(path)
    return np.asarray(volume.array, dtype=np.float64), volume.affine


def _same_grid(
    path: Path, array: npt.NDArray[Any], affine: Any, gt: npt.NDArray[Any], gt_affine: Any
) -> None:
    if array.shape != gt.shape:
        raise ReadError(f"shape {array.shape} differs from the ground truth's {gt.shape}", path)
    if affine is not None and gt_affine is not None:
        worst = float(np.max(np.abs(affine - gt_affine)))
        if worst > AFFINE_TOLERANCE_MM:
            raise ReadError(f"affine differs from the ground truth's (by up to {worst:.4g} mm)", path)


def slice_axis(affine: npt.NDArray[np.float64] | None) -> int:
    """The array axis most aligned with S (RAS), or 0 (mrct's (D, H, W) arrays) without an affine."""
    return 0 if affine is None else int(np.argmax(np.abs(affine[2, :3])))


def _check_scale(case: Case, metric: Metric, pred: npt.NDArray[Any], gt: npt.NDArray[Any]) -> None:
    """Refuse Volumetric MNIST volumes off [-1, 1]; warn when a CT does not look like HU."""
    if metric is Metric.MNIST_L2:
        for path, a in ((case.pred, pred), (case.gt, gt)):
            low, high = float(a.min()), float(a.max())
            if low < -1.001 or high > 1.001:
                raise ReadError(f"values {low:.4g}..{high:.4g} are off [-1, 1], the prepared-set scale", path)
    elif float(gt.min()) > -200 or float(gt.max()) < 200:
        log.warning("%s: values %.4g..%.4g do not look like HU", case.gt, float(gt.min()), float(gt.max()))


def evaluate_case(case: Case, metric: Metric) -> dict[str, Any]:
    """The metric's columns for one case (plus ``case``)."""
    gt, gt_affine = read_array(case.gt)
    pred, affine = read_array(case.pred)
    _same_grid(case.pred, pred, affine, gt, gt_affine)
    mask = None
    if case.mask is not None:
        mask_array, mask_affine = read_array(case.mask)
        _same_grid(case.mask, mask_array, mask_affine, gt, gt_affine)
        mask = mask_array > 0
        if not mask.any():
            raise ReadError("the mask selects no voxel", case.mask)
    axis = slice_axis(gt_affine if gt_affine is not None else affine)
    _check_scale(case, metric, pred, gt)
    try:
        if metric is Metric.CT:
            p, g = metrics.clip_hu(pred), metrics.clip_hu(gt)
            values: dict[str, float | None] = {
                "mae_hu": metrics.mae(pred, gt, mask, clip=False),  # SynthRAD2023's MAE: unclipped
                "psnr_db": metrics.psnr(p, g, mask),
                "ssim": _or_none(lambda: metrics.ssim(p, g, mask), case),  # mask near the borders
            }
            units = "hu"
        else:
            p, g = (pred + 1.0) / 2.0, (gt + 1.0) / 2.0
            values = {"l2": metrics.volumetric_mnist_l2(pred, gt)}
            units = ""
        flicker = _or_none(lambda: metrics.slice_flicker(p, mask, axis=axis), case)  # a thin mask
        flicker_gt = _or_none(lambda: metrics.slice_flicker(g, mask, axis=axis), case)
    except ValueError as err:  # the mask leaves nothing to measure, or the volume is too small
        blamed = case.mask if isinstance(err, metrics.MaskError) and case.mask is not None else case.pred
        raise ReadError(str(err), blamed) from err
    suffix = f"_{units}" if units else ""
    ratio = None
    if flicker is not None and flicker_gt is not None:
        ratio = flicker / flicker_gt if flicker_gt > 0 else (0.0 if flicker == 0 else math.inf)
    values.update({f"flicker{suffix}": flicker, f"flicker_gt{suffix}": flicker_gt, "flicker_ratio": ratio})
    return {"case": case.name, **values}


def _or_none(measure: Callable[[], float], case: Case) -> float | None:
    """A metric the mask leaves undefined (SSIM's window, the flicker's three slices) is an
    empty cell with a warning: the case's other metrics still hold."""
    try:
        return measure()
    except metrics.MaskError as err:
        if case.mask is None:
            raise
        log.warning("%s: %s; left empty", case.mask, err)
        return None


# ---------------------------------------------------------------- all cases


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", *columns])
    for r in rows:
        writer.writerow([r["case"], *("" if r[c] is None else f"{float(r[c]):.8g}" for c in columns)])
    return buf.getvalue()


def evaluate_volumes(
    pred: str | Path,
    gt: str | Path,
    out_csv: str | Path,
    *,
    mask: str | Path | None = None,
    metric: str | Metric = Metric.CT,
    overwrite: bool = False,
) -> Evaluation:
    """Evaluate every case (see the module docstring) and write one CSV row per case."""
    try:
        chosen = Metric(metric)
    except ValueError:
        choices = ", ".join(m.value for m in Metric)
        raise MrctError(f"unknown metric {metric!r} (expected one of {choices})") from None
    out_csv = Path(out_csv)
    for given in (pred, gt, mask):  # --overwrite replaced an input given as -o by the CSV
        if given is not None:
            check_apart(Path(given), out_csv)
    if occupied(out_csv) and not overwrite:
        raise OutputExistsError("output exists; pass --overwrite to replace it", out_csv)
    check_writable(out_csv)  # the folders are made when the CSV is written: not for a bad input
    rows = []
    for case in match_cases(pred, gt, mask):
        log.info("evaluating %s", case.name)
        rows.append(evaluate_case(case, chosen))
    with atomic_file(
        out_csv, overwrite=overwrite, keep=[p for p in (pred, gt, mask) if p is not None]
    ) as tmp:
        tmp.write_bytes(utf8_bytes(_csv_text(rows, COLUMNS[chosen])))
    return Evaluation(chosen, tuple(rows), out_csv)
