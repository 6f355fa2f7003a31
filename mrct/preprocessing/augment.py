"""Training augmentations: random spatial and MR intensity transforms, sampled, then applied.

Randomness lives only in :func:`sample_augmentation`, which draws concrete values from an
explicit ``numpy.random.Generator`` into an :class:`AugmentParams`. :func:`apply_augmentation`
is deterministic, so a logged ``params.to_dict()`` reproduces an augmented sample exactly
(TorchIO's pattern). These transforms are for training only; the deterministic, invertible
preprocessing lives elsewhere in :mod:`mrct.preprocessing`.

Frames and units. Arrays are (D, H, W), D the slice axis, optionally with one leading
channel/batch axis that shares the transform. ``spacing_mm`` is (sD, sH, sW) in mm. Spatial
parameters are in mm and degrees in the *array frame*: the array axes scaled by the spacing,
origin at the volume centre (index (n - 1) / 2 on each axis), so a rotation is a rotation in
millimetres even when the slices are 4 mm apart. Angles are about the D, H and W axes; a
positive angle turns H towards W (about D), W towards D (about H) and D towards H (about W):
+90 degrees about D on an isotropic grid equals ``np.rot90(a, 1, axes=(1, 2))``. Patient
handedness (RAS) depends on the volume's affine and is not used here. Intensities are in
[-1, 1], background at ``fill`` (-1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Floats = tuple[float, ...]
HEAD_EPS = 1e-3  # voxels above fill + HEAD_EPS are head; only they get intensity changes
MODES = {"linear": "bilinear", "nearest": "nearest"}  # ours -> grid_sample's (5D "bilinear" is trilinear)


def _floats(name: str, value: Any, n: int, *, low: float | None = None, positive: bool = False) -> Floats:
    """``value`` as a tuple of ``n`` finite floats, or a ValueError naming ``name``."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n} numbers, got {value!r}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be {n} finite numbers, got {value!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if low is not None and min(out) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return out


def _range(name: str, value: Any) -> tuple[float, float]:
    lo, hi = _floats(name, value, 2, positive=True)
    if lo > hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")
    return lo, hi


def _monomials(order: int) -> list[tuple[int, ...]]:
    """Exponents (i, j, k) of zD^i zH^j zW^k with i + j + k <= order, in a fixed order."""
    return [e for e in itertools.product(range(order + 1), repeat=3) if sum(e) <= order]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities of the training augmentations (plain data, validated).

    Probabilities are per sample in [0, 1]. ``rotation_deg`` and ``translation_mm`` are maximum
    absolute values about/along (D, H, W), each drawn uniformly in [-max, max]. ``scale_range``
    is an isotropic (physical) scale factor. The elastic field is a cubic B-spline over an
    ``elastic_grid`` of control points spanning the volume, each displacement component drawn
    in [-elastic_max_mm, elastic_max_mm]. MR only: gamma (log-uniform in ``gamma_range``) on
    intensities shifted to [0, 1]; a multiplicative bias field exp(polynomial of degree
    ``bias_order``) with coefficients in [-bias_max_coefficient, bias_max_coefficient].
    MR only, off by default: a monotone contrast remap (MONAI's RandHistogramShift idea) through
    (0, 0), ``remap_knots`` knots each moved by up to ``remap_max_shift``, and (1, 1): unlike
    gamma's one curve, it bends tissue contrasts independently, as another T1 sequence does.
    """

    enabled: bool = True
    affine_probability: float = 0.8
    rotation_deg: tuple[float, float, float] = (10.0, 10.0, 10.0)
    scale_range: tuple[float, float] = (0.9, 1.1)
    translation_mm: tuple[float, float, float] = (10.0, 10.0, 10.0)
    elastic_probability: float = 0.3
    elastic_grid: tuple[int, int, int] = (5, 5, 5)
    elastic_max_mm: float = 3.0
    gamma_probability: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_probability: float = 0.5
    bias_order: int = 3
    bias_max_coefficient: float = 0.3
    remap_probability: float = 0.0
    remap_knots: int = 4
    remap_max_shift: float = 0.1

    def __post_init__(self) -> None:
        def fix(name: str, value: object) -> None:  # lists from YAML become tuples
            object.__setattr__(self, name, value)

        if not isinstance(self.enabled, bool):
            raise ValueError(f"AugmentConfig.enabled must be true or false, got {self.enabled!r}")
        for name in ("affine", "elastic", "gamma", "bias", "remap"):
            field = f"{name}_probability"
            (p,) = _floats(f"AugmentConfig.{field}", [getattr(self, field)], 1)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{field} must be in [0, 1], got {p}")
            fix(field, p)
        rotation = _floats("AugmentConfig.rotation_deg", self.rotation_deg, 3, low=0.0)
        if max(rotation) > 180.0:
            raise ValueError(f"AugmentConfig.rotation_deg must be <= 180 degrees, got {self.rotation_deg!r}")
        fix("rotation_deg", rotation)
        fix("translation_mm", _floats("AugmentConfig.translation_mm", self.translation_mm, 3, low=0.0))
        fix("scale_range", _range("AugmentConfig.scale_range", self.scale_range))
        fix("gamma_range", _range("AugmentConfig.gamma_range", self.gamma_range))
        grid = tuple(self.elastic_grid) if isinstance(self.elastic_grid, Sequence) else ()
        if len(grid) != 3 or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 2 for g in grid):
            raise ValueError(f"AugmentConfig.elastic_grid must be 3 integers >= 2, got {self.elastic_grid!r}")
        fix("elastic_grid", grid)
        fix("elastic_max_mm", _floats("AugmentConfig.elastic_max_mm", [self.elastic_max_mm], 1, low=0.0)[0])
        order = self.bias_order
        if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 5:
            raise ValueError(f"AugmentConfig.bias_order must be an integer in [0, 5], got {order!r}")
        coef = _floats("AugmentConfig.bias_max_coefficient", [self.bias_max_coefficient], 1, low=0.0)[0]
        fix("bias_max_coefficient", coef)
        knots = self.remap_knots
        if not isinstance(knots, int) or isinstance(knots, bool) or not 1 <= knots <= 16:
            raise ValueError(f"AugmentConfig.remap_knots must be an integer in [1, 16], got {knots!r}")
        shift = _floats("AugmentConfig.remap_max_shift", [self.remap_max_shift], 1, low=0.0)[0]
        if shift >= 0.5:  # knots moved half the range pile up at 0 or 1 and flatten whole tissues
            raise ValueError(f"AugmentConfig.remap_max_shift must be below 0.5, got {shift}")
        fix("remap_max_shift", shift)


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """Concrete values of one augmentation; None means "not applied". All None is the identity.

    The spatial map sends content at x (mm, array frame, from the centre) to
    y = scale * R @ x + translation_mm, then moves it by the elastic field: the output at y is
    the input at T^-1(y - d(y)). R = R_D @ R_H @ R_W from ``rotation_deg`` (about D, H, W).
    ``elastic_mm`` is (3, gD, gH, gW): B-spline coefficients of d's (D, H, W) components in mm on
    a control grid spanning the volume; d is their convex combination, so each component of d
    stays within its coefficients' range. ``gamma`` applies to intensities shifted to [0, 1];
    ``bias_coefficients`` are the log-bias polynomial's, in :func:`_monomials` order (their
    count fixes the degree). ``remap_knots``: the remap's outputs at inputs 1/(n+1) ... n/(n+1).
    """

    rotation_deg: tuple[float, float, float] | None = None
    scale: float | None = None
    translation_mm: tuple[float, float, float] | None = None
    elastic_mm: FloatArray | None = None
    gamma: float | None = None
    bias_coefficients: tuple[float, ...] | None = None
    remap_knots: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        def fix(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if self.rotation_deg is not None:
            fix("rotation_deg", _floats("AugmentParams.rotation_deg", self.rotation_deg, 3))
        if self.translation_mm is not None:
            fix("translation_mm", _floats("AugmentParams.translation_mm", self.translation_mm, 3))
        for name in ("scale", "gamma"):
            if getattr(self, name) is not None:
                fix(name, _floats(f"AugmentParams.{name}", [getattr(self, name)], 1, positive=True)[0])
        if self.elastic_mm is not None:
            field = np.array(self.elastic_mm, dtype=np.float64)  # a private, read-only copy
            if field.ndim != 4 or field.shape[0] != 3 or min(field.shape) < 2 or not np.isfinite(field).all():
                raise ValueError(f"AugmentParams.elastic_mm must be finite, (3, gD, gH, gW): {field.shape}")
            field.flags.writeable = False
            fix("elastic_mm", field)
        if self.bias_coefficients is not None:
            coef = _floats("AugmentParams.bias_coefficients", (c := self.bias_coefficients), len(c))
            if len(coef) not in {len(_monomials(k)) for k in range(6)}:
                raise ValueError(f"AugmentParams.bias_coefficients: {len(coef)} is no polynomial's count")
            fix("bias_coefficients", coef)
        if self.remap_knots is not None:
            given = self.remap_knots
            knots = _floats("AugmentParams.remap_knots", given, len(given))
            if not knots or min(knots) < 0 or max(knots) > 1 or any(np.diff(knots) < 0):
                raise ValueError(f"AugmentParams.remap_knots must be non-decreasing in [0, 1], got {given!r}")
            fix("remap_knots", knots)

    @property
    def is_spatial_identity(self) -> bool:
        spatial = (self.rotation_deg, self.scale, self.translation_mm, self.elastic_mm)
        return all(v is None for v in spatial)

    @property
    def changes_intensity(self) -> bool:
        return any(v is not None for v in (self.gamma, self.bias_coefficients, self.remap_knots))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists, floats, None) for logs; :meth:`from_dict` reverses it."""
        out = asdict(self)
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["elastic_mm"] = None if self.elastic_mm is None else self.elastic_mm.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentParams:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AugmentParams) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _check_geometry(shape: Sequence[int], spacing_mm: Sequence[float]) -> tuple[tuple[int, ...], FloatArray]:
    dims = tuple(int(n) for n in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"shape must be 3 positive sizes (D, H, W), got {shape!r}")
    return dims, np.array(_floats("spacing_mm", spacing_mm, 3, positive=True))


def sample_augmentation(
    config: AugmentConfig,
    rng: np.random.Generator,
    *,
    modality: str,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
) -> AugmentParams:
    """Draw one :class:`AugmentParams` from ``rng``; ``modality`` is "CT" or "MR".

    CT never gets gamma, bias or remap. ``shape`` (D, H, W) and ``spacing_mm`` are validated; the
    values drawn are in mm and degrees and do not depend on them. Every call draws the same
    numbers in the same order whatever the outcomes, so changing one probability (or the
    modality) never changes the values drawn for the others; a remap probability of 0 draws none.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if modality not in ("CT", "MR"):
        raise ValueError(f'modality must be "CT" or "MR", got {modality!r}')
    _check_geometry(shape, spacing_mm)
    if not config.enabled:
        return AugmentParams()
    affine = rng.random() < config.affine_probability
    rotation = rng.uniform(-1.0, 1.0, 3) * np.array(config.rotation_deg)
    scale = rng.uniform(*config.scale_range)
    translation = rng.uniform(-1.0, 1.0, 3) * np.array(config.translation_mm)
    elastic = rng.random() < config.elastic_probability
    control = rng.uniform(-config.elastic_max_mm, config.elastic_max_mm, (3, *config.elastic_grid))
    gamma = bias = remap = None
    if modality == "MR":
        apply_gamma = rng.random() < config.gamma_probability
        log_gamma = rng.uniform(*np.log(config.gamma_range))
        apply_bias = rng.random() < config.bias_probability
        n_coef = len(_monomials(config.bias_order))
        coef = rng.uniform(-config.bias_max_coefficient, config.bias_max_coefficient, n_coef)
        gamma = math.exp(log_gamma) if apply_gamma else None
        bias = tuple(coef.tolist()) if apply_bias else None
        # Drawn last, and not at all when off: runs from before the remap existed replay exactly.
        if config.remap_probability > 0:
            apply_remap = rng.random() < config.remap_probability
            inputs = np.arange(1, config.remap_knots + 1) / (config.remap_knots + 1)
            moved = inputs + rng.uniform(-config.remap_max_shift, config.remap_max_shift, config.remap_knots)
            remap = tuple(np.sort(np.clip(moved, 0.0, 1.0)).tolist()) if apply_remap else None
    return AugmentParams(
        rotation_deg=tuple(rotation.tolist()) if affine else None,  # type: ignore[arg-type]
        scale=float(scale) if affine else None,
        translation_mm=tuple(translation.tolist()) if affine else None,  # type: ignore[arg-type]
        elastic_mm=control if elastic else None,
        gamma=gamma,
        bias_coefficients=bias,
        remap_knots=remap,
    )


def _rotation(angles_deg: Sequence[float]) -> FloatArray:
    """R = R_D @ R_H @ R_W in (D, H, W) coordinates; see the module docstring for the sense."""
    (cd, ch, cw), (sd, sh, sw) = np.cos(np.radians(angles_deg)), np.sin(np.radians(angles_deg))
    r_d = np.array([[1, 0, 0], [0, cd, -sd], [0, sd, cd]])
    r_h = np.array([[ch, 0, sh], [0, 1, 0], [-sh, 0, ch]])
    r_w = np.array([[cw, -sw, 0], [sw, cw, 0], [0, 0, 1]])
    return r_d @ r_h @ r_w


def _bspline_weights(n: int, g: int) -> FloatArray:
    """(n, g) weights of g uniform cubic B-spline control points spanning n voxels; rows sum to 1."""
    u = np.linspace(0.0, g - 1.0, n) if n > 1 else np.array([(g - 1) / 2])
    t = np.abs(u[:, None] - np.arange(g)[None, :])
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w / w.sum(axis=1, keepdims=True)  # renormalised at the ends: a convex combination


def _sampling_grid(params: AugmentParams, shape: tuple[int, ...], spacing: FloatArray) -> Any:
    """grid_sample's grid, (D, H, W, 3) float32: the input voxel each output voxel samples, as
    (W, H, D) indices normalised to [-1, 1] (align_corners=True)."""
    centre = (np.array(shape) - 1) / 2
    shift = np.zeros(3) if params.translation_mm is None else np.array(params.translation_mm)
    y: list[Any] = [  # output positions in mm, broadcastable to (D, H, W), less the translation
        ((np.arange(n) - centre[k]) * spacing[k] - shift[k]).reshape([-1 if i == k else 1 for i in range(3)])
        for k, n in enumerate(shape)
    ]
    if params.elastic_mm is not None:
        weights = [_bspline_weights(n, g) for n, g in zip(shape, params.elastic_mm.shape[1:], strict=True)]
        field = np.einsum("cabe,da,hb,we->cdhw", params.elastic_mm, *weights, optimize=True)
        y = [y[k] - field[k] for k in range(3)]
    inverse = np.eye(3) if params.rotation_deg is None else _rotation(params.rotation_deg).T
    inverse = inverse / (params.scale or 1.0)
    grid = np.empty((*shape, 3), dtype=np.float32)
    for a, n in enumerate(shape):
        index = sum(inverse[a, b] * y[b] for b in range(3)) / spacing[a] + centre[a]
        grid[..., 2 - a] = index * (2.0 / max(n - 1, 1)) - 1.0
    return grid


def _resample(array: npt.NDArray[Any], grid: Any, mode: str, fill: float) -> npt.NDArray[np.float32]:
    """Sample ``array`` (D, H, W) or (C, D, H, W) on the normalised torch ``grid``; outside is ``fill``."""
    import torch
    import torch.nn.functional as F

    data = torch.from_numpy(np.asarray(array, dtype=np.float32).reshape(-1, *array.shape[-3:]) - fill)
    out = F.grid_sample(data[None], grid, mode=MODES[mode], padding_mode="zeros", align_corners=True)
    return (out[0].numpy() + np.float32(fill)).reshape(array.shape)


def _bias_field(coefficients: Sequence[float], shape: tuple[int, ...], spacing: FloatArray) -> FloatArray:
    """exp(polynomial) on (D, H, W); coordinates in mm from the centre / the largest half-extent."""
    order = next(k for k in range(6) if len(_monomials(k)) == len(coefficients))
    half = max(max((n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)), 1e-6)
    z = [(np.arange(n) - (n - 1) / 2) * s / half for n, s in zip(shape, spacing, strict=True)]
    powers = [zi[None, :] ** np.arange(order + 1)[:, None] for zi in z]  # (order + 1, n) per axis
    dense = np.zeros((order + 1,) * 3)
    for (i, j, k), c in zip(_monomials(order), coefficients, strict=True):
        dense[i, j, k] = c
    return np.exp(np.einsum("ijk,id,jh,kw->dhw", dense, *powers, optimize=True))


def _intensity(params: AugmentParams, array: Any, spacing: FloatArray, fill: float) -> Any:
    """Remap, gamma, then bias, on the head voxels of ``array`` in [-1, 1]; other voxels are kept."""
    if not params.changes_intensity:
        return array
    u = np.clip((array.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
    if params.remap_knots is not None:  # piecewise linear through (0, 0), the knots and (1, 1)
        knots = params.remap_knots
        u = np.interp(u, np.linspace(0.0, 1.0, len(knots) + 2), [0.0, *knots, 1.0])
    if params.gamma is not None:
        u = u**params.gamma
    if params.bias_coefficients is not None:
        u = u * _bias_field(params.bias_coefficients, array.shape[-3:], spacing)
    out = np.clip(2.0 * u - 1.0, -1.0, 1.0).astype(np.float32)
    return np.where(array > fill + HEAD_EPS, out, array)


def apply_augmentation_to(
    params: AugmentParams,
    arrays: Mapping[str, npt.NDArray[Any]],
    *,
    spacing_mm: Sequence[float],
    modes: Mapping[str, str] | None = None,
    fills: Mapping[str, float] | None = None,
    intensity_keys: Collection[str] = ("image",),
) -> dict[str, npt.NDArray[np.float32]]:
    """Apply one spatial transform to every array of ``arrays``, intensity only to ``intensity_keys``.

    Arrays are (D, H, W) or (C, D, H, W) with the same (D, H, W). ``modes`` maps a key to
    "linear" (trilinear, the default) or "nearest"; ``fills`` maps a key to its out-of-field
    value (default -1.0), e.g. ``modes={"mask": "nearest"}, fills={"mask": 0.0}``. The affine and
    elastic parts are one resampling; identity spatial params copy the input exactly.
    """
    import torch

    modes, fills = dict(modes or {}), dict(fills or {})
    unknown = (set(modes) | set(fills)) - set(arrays)
    if unknown or any(m not in MODES for m in modes.values()):
        raise ValueError(f"modes/fills: unknown key {sorted(unknown)} or mode (use {sorted(MODES)})")
    shapes = {a.shape[-3:] for a in arrays.values()}
    if len(shapes) != 1 or any(a.ndim not in (3, 4) for a in arrays.values()):
        raise ValueError(f"arrays must be (D, H, W) or (C, D, H, W) with one (D, H, W), got {shapes}")
    shape, spacing = _check_geometry(shapes.pop(), spacing_mm)
    grid = None
    if not params.is_spatial_identity:
        grid = torch.from_numpy(_sampling_grid(params, shape, spacing))[None]
    out = {}
    for key, array in arrays.items():
        fill = float(fills.get(key, -1.0))
        mode = modes.get(key, "linear")
        moved = np.array(array, dtype=np.float32) if grid is None else _resample(array, grid, mode, fill)
        out[key] = _intensity(params, moved, spacing, fill) if key in intensity_keys else moved
    return out


def apply_augmentation(
    params: AugmentParams, array: npt.NDArray[Any], *, spacing_mm: Sequence[float], fill: float = -1.0
) -> npt.NDArray[np.float32]:
    """Augment one image (D, H, W), or a (C, D, H, W) stack sharing the transform: float32, same shape.

    Spatial part: one trilinear resampling in mm (rotation about the volume centre, scale,
    translation, elastic), out-of-field voxels set to ``fill``. Then gamma and bias on voxels
    above ``fill`` (MR params only carry them), clipped to [-1, 1].
    """
    out = apply_augmentation_to(params, {"image": array}, spacing_mm=spacing_mm, fills={"image": fill})
    return out["image"]
