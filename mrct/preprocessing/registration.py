"""SimpleITK registration for the localiser: images from RAS arrays, Mattes mutual
information registration, and point mapping between RAS and ITK's LPS.

ITK is run single-threaded and serialised (:func:`one_itk_thread`) so that the same scan
gives the same slab every time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


def sitk_image(array: npt.NDArray, affine: npt.NDArray[np.float64]):  # type: ignore[no-untyped-def]
    """A SimpleITK image (LPS) of a RAS-aligned working array indexed [x, y, z]."""
    import SimpleITK as sitk

    from mrct.io.itk import sitk_geometry

    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0))
    )
    spacing, direction, origin = sitk_geometry(affine)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


@dataclass(frozen=True)
class Registered:
    transform: Any
    metric: float


# ITK's thread count is process-wide: one localisation at a time sets it (see one_itk_thread).
_ITK_THREADS = threading.Lock()


@contextlib.contextmanager
def one_itk_thread() -> Iterator[None]:
    """Run ITK single-threaded: its registration metric adds up per-thread partial sums in an
    order that varies from run to run, so with several threads the same scan gave slightly
    different slabs (by up to 7 mm where the jaw is extrapolated below the field of view).
    SimpleITK's documentation gives one thread as the way to reproducible registration; it
    costs about 0.4 s per scan on two cores."""
    import SimpleITK as sitk

    with _ITK_THREADS:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register(  # type: ignore[no-untyped-def]
    fixed,
    fixed_mask,
    moving,
    initial,
    *,
    shrink: tuple[int, ...],
    iterations: int,
    affine: bool = False,
    outer=None,
) -> Registered:
    """Mattes MI registration of the scan (moving) to the reference (fixed), LPS.

    ``initial`` is a similarity transform (optimised in place when ``outer`` is
    given: then ``outer`` is held fixed and applied after it, for local refinement).
    """
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.3, 17)  # fixed seed and one thread: the same slab every time
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=0.5 if outer is not None else 1.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([float(s) for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if outer is not None:
        method.SetMovingInitialTransform(outer)
        transform = initial
    elif affine:
        transform = sitk.AffineTransform(3)
        transform.SetCenter(initial.GetCenter())
        transform.SetMatrix(initial.GetMatrix())
        transform.SetTranslation(initial.GetTranslation())
    else:
        transform = sitk.Similarity3DTransform(initial)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return Registered(transform, float(method.GetMetricValue()))


def map_point(ras: tuple[float, float, float], *transforms) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Map a reference point (RAS) through transforms applied in order (ITK works in LPS)."""
    point = (-ras[0], -ras[1], ras[2])
    for t in transforms:
        point = t.TransformPoint(point)
    return (-float(point[0]), -float(point[1]), float(point[2]))


def uint8_image(mask: npt.NDArray[np.bool_], affine: npt.NDArray[np.float64]):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    return sitk.Cast(sitk_image(mask.astype(np.float32), affine), sitk.sitkUInt8)


def covered_fraction(fixed_mask, moving_mask, moving_affine, transform) -> float:  # type: ignore[no-untyped-def]
    """The share of ``fixed_mask`` (a UInt8 image) that, mapped through ``transform`` (fixed points
    to moving points, as a registration gives it), lands inside ``moving_mask`` (a boolean array
    on ``moving_affine``). Beyond the moving grid the mask is taken as at its nearest voxel."""
    import SimpleITK as sitk

    moving = uint8_image(moving_mask, moving_affine)
    mapped = sitk.Resample(moving, fixed_mask, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8, True)
    inside = np.asarray(sitk.GetArrayViewFromImage(fixed_mask)) > 0
    covered = inside & (np.asarray(sitk.GetArrayViewFromImage(mapped)) > 0)
    return float(covered.sum() / max(int(inside.sum()), 1))
