"""PatchGAN discriminator (Isola et al. 2017, as in CycleGAN) that stays a grid on 30-slice volumes.

Tensors are channel-first: input (N, C, D, H, W) in 3D or (N, C, H, W) in 2D,
images in [-1, 1]; output one tensor of raw logits (N, 1, *patch grid), no
activation (the loss decides: least squares in CycleGAN).

Layers (k = ``spatial_dims``; every conv has kernel 4^k and zero padding 1, as in CycleGAN):

==================================================  =================================
conv stride s, LeakyReLU(0.2)   (no norm)            in_channels -> ndf
conv stride s, IN, LeakyReLU(0.2)  (n_layers - 1)    doubling channels, at most 8 ndf
conv stride 1, IN, LeakyReLU(0.2)                    -> ndf * min(2^n_layers, 8)
conv stride 1                                        -> 1 logit per patch
==================================================  =================================

with s = 2 in H and W and ``depth_stride`` along D in 3D. Per axis a conv of
stride 2 maps n -> floor(n / 2), one of stride 1 maps n -> n - 1.

Why not MONAI's ``PatchDiscriminator``: with stride 2 along every axis, three
strided layers take the paper's 30 slices to 30 -> 15 -> 7 -> 3 -> 2 -> 1, one
patch in depth; it also defaults to batch norm and returns a list. With the
default ``depth_stride=1`` depth only shrinks by one per layer, keeping a
patch grid along the slices.

Output grids for 30 x 256 x 256 (D x H x W), ``n_layers=3``:

* ``depth_stride=1``: (1, 1, 25, 30, 30) - depth 30 -> 29 -> 28 -> 27 -> 26 -> 25,
  in-plane 256 -> 128 -> 64 -> 32 -> 31 -> 30. Receptive field 16 x 70 x 70 voxels
  (about 56 x 70 x 70 mm at the paper's ~3.5 mm slices and 1 mm pixels); neighbouring
  patches are 1 slice and 8 pixels apart, so they overlap heavily in depth.
* ``depth_stride=2``: (1, 1, 1, 30, 30); receptive field 70 x 70 x 70.
* 30 x 64 x 64 with ``depth_stride=1``: (1, 1, 25, 6, 6).
* 2D, 256 x 256: (1, 1, 30, 30), the classic 70 x 70 PatchGAN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.blocks import Convolution
from torch import Tensor, nn

from mrct.networks.config import DiscriminatorConfig
from mrct.networks.generator import INSTANCE_NORM, init_weights

_KERNEL = 4
_PADDING = 1
_LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.2})


class PatchGANDiscriminator(nn.Module):
    """Scores overlapping patches of an image as real (high logit) or translated (low).

    Args:
        cfg: the architecture (defaults: 3D, ndf 64, 3 strided layers, depth stride 1).

    Input: (N, in_channels, D, H, W) in 3D or (N, in_channels, H, W) in 2D.
    Output: logits (N, 1, *:meth:`output_shape` of the spatial size).
    Weights are CycleGAN's N(0, 0.02), drawn from torch's global generator.
    """

    def __init__(self, cfg: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        self.config = cfg
        dims, ndf = cfg.spatial_dims, cfg.ndf
        step = (cfg.depth_stride, 2, 2) if dims == 3 else (2,) * dims
        one = (1,) * dims
        # Per-layer strides, kept for output_shape() and receptive_field.
        self.strides: tuple[tuple[int, ...], ...] = (step,) * cfg.n_layers + (one, one)

        def conv(cin: int, cout: int, strides: Sequence[int], norm: bool) -> Convolution:
            return Convolution(
                dims,
                cin,
                cout,
                strides=strides,
                kernel_size=_KERNEL,
                padding=_PADDING,
                norm=INSTANCE_NORM if norm else None,
                act=_LEAKY_RELU,
            )

        layers: list[nn.Module] = [conv(cfg.in_channels, ndf, step, norm=False)]
        channels = ndf
        for n in range(1, cfg.n_layers):
            layers.append(conv(channels, ndf * min(2**n, 8), step, norm=True))
            channels = ndf * min(2**n, 8)
        layers.append(conv(channels, ndf * min(2**cfg.n_layers, 8), one, norm=True))
        channels = ndf * min(2**cfg.n_layers, 8)
        layers.append(
            Convolution(dims, channels, 1, strides=1, kernel_size=_KERNEL, padding=_PADDING, conv_only=True)
        )
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def output_shape(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """The patch grid (spatial shape of the logits) for an input of ``spatial_size`` voxels."""
        size = list(spatial_size)
        for strides in self.strides:
            size = [(n + 2 * _PADDING - _KERNEL) // s + 1 for n, s in zip(size, strides, strict=True)]
        return tuple(size)

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Voxels per axis that one logit sees: 1 + sum of (kernel - 1) x (stride product before it)."""
        dims = self.config.spatial_dims
        return tuple(
            1
            + sum(
                (_KERNEL - 1) * math.prod(s[axis] for s in self.strides[:i]) for i in range(len(self.strides))
            )
            for axis in range(dims)
        )

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            axes = "D, H, W" if cfg.spatial_dims == 3 else "H, W"
            raise ValueError(f"expected input (N, {cfg.in_channels}, {axes}), got shape {tuple(x.shape)}")
        grid = self.output_shape(x.shape[2:])
        if min(grid) < 1:
            raise ValueError(f"input of spatial size {tuple(x.shape[2:])} is too small: patch grid {grid}")
        out: Tensor = self.model(x)
        return out
