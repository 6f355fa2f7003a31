"""Architecture configurations of the generator and the discriminator.

Plain frozen dataclasses, loadable from YAML with :func:`mrct.config.from_mapping`.
This module must not import torch: the CLI reads configs and must start fast
(a test checks it in a subprocess).

Variants are values, not subclasses: ``spatial_dims=3`` is the paper's 3D model
(Bashkirova et al. 2018), ``spatial_dims=2`` the frame-wise 2D CycleGAN baseline
built by the same classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


def _is_int(value: object) -> bool:
    # bool is an int subclass; ``ngf: true`` in a YAML file is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


# Field rules: (test, what the message says the value must be).
_Rule = tuple[Callable[[Any], bool], str]
_SPATIAL_DIMS: _Rule = (lambda v: _is_int(v) and v in (2, 3), "2 or 3")
_POSITIVE: _Rule = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_NON_NEGATIVE: _Rule = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_DEPTH_STRIDE: _Rule = (lambda v: _is_int(v) and v in (1, 2), "1 or 2")
_PADDING: _Rule = (lambda v: v in ("reflect", "replicate"), "'reflect' or 'replicate'")
_PROBABILITY: _Rule = (
    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
    "a number in [0, 1)",
)


def _validate(config: object, rules: dict[str, _Rule]) -> None:
    """Raise ValueError naming the first field (``Class.field``) that breaks its rule."""
    for name, (ok, expected) in rules.items():
        value = getattr(config, name)
        if not ok(value):
            raise ValueError(f"{type(config).__name__}.{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class GeneratorConfig:
    """The ResNet generator (Johnson et al. 2016, as in CycleGAN and the paper's 3D model).

    Attributes:
        spatial_dims: 3 for volumes (N, C, D, H, W), the paper's model; 2 for
            slices (N, C, H, W), the frame-wise baselines.
        in_channels: channels of the input (1 for a single MR or CT volume).
        out_channels: channels of the output.
        ngf: filters of the first convolution; the bottleneck has ``4 * ngf``
            (paper: 64; CPU configs use fewer).
        n_residual_blocks: residual blocks at the bottleneck (paper: 9).
        padding: how borders are padded before the 7^k and residual convolutions,
            and how the input is padded up to a size the two stride-2 steps divide.
        depth_stride: 3D only; the stride along depth (axis D) of the two
            down-sampling and two up-sampling convolutions. 2 is the paper's
            isotropic architecture; 1 never down-samples the (thick, few) slices.
        dropout: dropout probability inside each residual block (0 = none, as in CycleGAN).
    """

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    ngf: int = 64
    n_residual_blocks: int = 9
    padding: Literal["reflect", "replicate"] = "reflect"
    depth_stride: Literal[1, 2] = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _validate(
            self,
            {
                "spatial_dims": _SPATIAL_DIMS,
                "in_channels": _POSITIVE,
                "out_channels": _POSITIVE,
                "ngf": _POSITIVE,
                "n_residual_blocks": _NON_NEGATIVE,
                "padding": _PADDING,
                "depth_stride": _DEPTH_STRIDE,
                "dropout": _PROBABILITY,
            },
        )


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The PatchGAN discriminator (Isola et al. 2017; the 70x70 one with ``n_layers=3`` in 2D).

    Attributes:
        spatial_dims: 3 for volumes (N, C, D, H, W), 2 for slices (N, C, H, W).
        in_channels: channels of the input.
        ndf: filters of the first convolution, doubled per strided layer up to ``8 * ndf``.
        n_layers: stride-2 convolutions (3 in the 70x70 PatchGAN).
        depth_stride: 3D only; stride along depth (axis D) of the strided layers.
            1 (default) keeps a patch grid along the paper's 30 slices instead of
            collapsing depth to 1.
    """

    spatial_dims: int = 3
    in_channels: int = 1
    ndf: int = 64
    n_layers: int = 3
    depth_stride: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        _validate(
            self,
            {
                "spatial_dims": _SPATIAL_DIMS,
                "in_channels": _POSITIVE,
                "ndf": _POSITIVE,
                "n_layers": _POSITIVE,
                "depth_stride": _DEPTH_STRIDE,
            },
        )
