"""The ResNet generator of the paper (§3), after Johnson et al. 2016 and CycleGAN's ``ResnetGenerator``.

Tensors are channel-first: (N, C, D, H, W) with ``spatial_dims=3`` (the paper's
3D model), (N, C, H, W) with ``spatial_dims=2`` (the frame-wise baselines).
Images are in [-1, 1]; the output ends in tanh. Layers, with k = ``spatial_dims``:

=============================================  ===========================
pad 3, conv 7^k, IN, ReLU                       in_channels -> ngf
conv 3^k stride 2, IN, ReLU  (x2)               ngf -> 2 ngf -> 4 ngf
residual blocks (x n): pad 1, conv 3^k, IN,     4 ngf
ReLU, [dropout], pad 1, conv 3^k, IN, + input
transposed conv 3^k stride 2, IN, ReLU  (x2)    4 ngf -> 2 ngf -> ngf
pad 3, conv 7^k, tanh                           ngf -> out_channels
=============================================  ===========================

IN is instance norm without affine parameters; convolutions keep their biases
(as CycleGAN does with instance norm, so parameter counts match it). Padding
is ``cfg.padding`` (reflect or replicate) around the 7^k and residual convs;
the stride-2 convs pad 1 with zeros, as in CycleGAN. MONAI's ``Convolution``
only zero-pads, so the other modes are explicit :class:`SpatialPad` layers.

The depth problem
-----------------
The paper feeds 30 x 256 x 256 volumes. Two stride-2 convs map depth
30 -> 15 -> 8 and the transposed convs bring 8 back to 32, not 30. Two answers,
chosen by ``cfg.depth_stride``:

* ``depth_stride=2`` (default; the paper's isotropic strides): every spatial
  axis of the input is padded (``cfg.padding`` mode) up to the next multiple
  of 4, the network runs, and the output is cropped back. Any input size
  gives the same output size: 30 x 256 x 256 -> (32 x 256 x 256) -> 30 x 256 x 256.
* ``depth_stride=1``: strides (1, 2, 2) in the two down convs and the two
  transposed convs (output padding (0, 1, 1)); depth is never down-sampled,
  so only H and W are padded to multiples of 4.

In 2D, ``depth_stride`` is ignored and H, W are padded to multiples of 4.

Reflection needs the pad to be smaller than the axis it pads. For tiny sizes
(an axis of at most 3 voxels before the 7^k conv, or a bottleneck of 1 voxel
before a residual conv) :func:`pad_spatial` falls back to replicate padding;
at the paper's sizes reflection is always used.

Note for GPU training: the CUDA backward of reflection and replication padding
uses atomic adds, so it is not bit-deterministic under
``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from mrct.networks.config import GeneratorConfig

# Instance norm without learned scale/shift, as in CycleGAN.
INSTANCE_NORM = ("instance", {"affine": False})

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """CycleGAN's init: conv weights ~ N(0, ``std``), biases 0. Seed torch first for repeatability."""
    for m in module.modules():
        # A skeleton on the meta device (shapes only, to check a model file) has no values to draw;
        # drawing them went through torch's reference kernels, which import its compiler (1.3 s).
        if isinstance(m, _CONV_TYPES) and not m.weight.is_meta:
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def pad_spatial(x: Tensor, widths: Sequence[tuple[int, int]], mode: str) -> Tensor:
    """Pad the spatial axes of channel-first ``x`` by ``widths`` = ((before, after) per axis, in axis order).

    ``mode`` is "reflect" or "replicate"; reflect falls back to replicate when a
    pad is not smaller than the axis it pads (reflection is undefined there).
    """
    if not any(b or a for b, a in widths):
        return x
    if mode == "reflect" and any(max(w) >= n for w, n in zip(widths, x.shape[2:], strict=True)):
        mode = "replicate"
    # F.pad takes (before, after) pairs starting from the last axis. It is used
    # instead of nn.ReflectionPad{2,3}d because the fallback depends on the size
    # known only at run time; the number of pairs follows spatial_dims.
    flat = [v for pair in reversed(widths) for v in pair]
    return F.pad(x, flat, mode=mode)


class SpatialPad(nn.Module):
    """Layer form of :func:`pad_spatial` with the same ``width`` before and after every axis."""

    def __init__(self, spatial_dims: int, width: int, mode: str) -> None:
        super().__init__()
        self.widths = ((width, width),) * spatial_dims
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return pad_spatial(x, self.widths, self.mode)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, mode={self.mode!r}"


class ResidualBlock(nn.Module):
    """x + (pad, conv 3^k, IN, ReLU, [dropout], pad, conv 3^k, IN)(x); shape-preserving."""

    def __init__(self, spatial_dims: int, channels: int, padding: str, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SpatialPad(spatial_dims, 1, padding),
            # "NAD": dropout after the ReLU, where CycleGAN puts it.
            Convolution(
                spatial_dims,
                channels,
                channels,
                kernel_size=3,
                padding=0,
                norm=INSTANCE_NORM,
                act="relu",
                dropout=dropout or None,
                adn_ordering="NAD",
            ),
            SpatialPad(spatial_dims, 1, padding),
            Convolution(
                spatial_dims, channels, channels, kernel_size=3, padding=0, norm=INSTANCE_NORM, act=None
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator; output shape == input shape, values in [-1, 1].

    Args:
        cfg: the architecture (defaults: the paper's 3D model, ngf 64, 9 blocks).
        checkpointing: recompute the residual blocks in the backward pass instead
            of storing their activations (``torch.utils.checkpoint``), trading
            compute for memory; only active in train mode with grad enabled.

    Input: (N, in_channels, D, H, W) in 3D or (N, in_channels, H, W) in 2D, any size.
    Output: (N, out_channels, same spatial size). Weights are CycleGAN's
    N(0, 0.02), drawn from torch's global generator (seed it for repeatability).
    """

    def __init__(self, cfg: GeneratorConfig | None = None, *, checkpointing: bool = False) -> None:
        super().__init__()
        cfg = cfg or GeneratorConfig()
        self.config = cfg
        self.checkpointing = checkpointing
        dims, ngf = cfg.spatial_dims, cfg.ngf
        # Stride of each resampling step per spatial axis; depth is axis 0 in 3D.
        step = (cfg.depth_stride, 2, 2) if dims == 3 else (2,) * dims
        # Input sizes divisible by these (per axis) need no padding.
        self.size_multiple: tuple[int, ...] = tuple(s * s for s in step)

        def conv(cin: int, cout: int, **kw: Any) -> Convolution:
            return Convolution(dims, cin, cout, norm=INSTANCE_NORM, act="relu", **kw)

        self.head = nn.Sequential(
            SpatialPad(dims, 3, cfg.padding),
            conv(cfg.in_channels, ngf, kernel_size=7, padding=0),
        )
        self.down = nn.Sequential(
            conv(ngf, 2 * ngf, kernel_size=3, strides=step, padding=1),
            conv(2 * ngf, 4 * ngf, kernel_size=3, strides=step, padding=1),
        )
        self.blocks = nn.Sequential(
            *(ResidualBlock(dims, 4 * ngf, cfg.padding, cfg.dropout) for _ in range(cfg.n_residual_blocks))
        )
        # Transposed conv k3, padding 1: out = stride * (in - 1) + 1 + output_padding, so
        # output_padding = stride - 1 gives stride * in, undoing a down step on even sizes.
        up = {"kernel_size": 3, "strides": step, "padding": 1, "output_padding": tuple(s - 1 for s in step)}
        self.up = nn.Sequential(
            conv(4 * ngf, 2 * ngf, is_transposed=True, **up),
            conv(2 * ngf, ngf, is_transposed=True, **up),
        )
        self.tail = nn.Sequential(
            SpatialPad(dims, 3, cfg.padding),
            Convolution(dims, ngf, cfg.out_channels, kernel_size=7, padding=0, conv_only=True),
            nn.Tanh(),
        )
        init_weights(self)

    def bottleneck_shape(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape between the resampling steps for an input of ``spatial_size`` voxels
        (each axis padded up to a multiple of its total stride)."""
        return tuple(-(-n // m) for n, m in zip(spatial_size, self.size_multiple, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            axes = "D, H, W" if cfg.spatial_dims == 3 else "H, W"
            raise ValueError(f"expected input (N, {cfg.in_channels}, {axes}), got shape {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        # Pad each axis up to a multiple the two resampling steps divide, centred,
        # so the transposed convs restore the padded size exactly; crop after.
        widths = []
        for n, m in zip(size, self.size_multiple, strict=True):
            extra = -n % m
            widths.append((extra // 2, extra - extra // 2))
        bottleneck = self.bottleneck_shape(size)
        if math.prod(bottleneck) < 2:
            # Instance norm needs more than one voxel to normalise over.
            raise ValueError(f"input of spatial size {size} is too small: bottleneck {tuple(bottleneck)}")
        y = self.down(self.head(pad_spatial(x, widths, cfg.padding)))
        use_checkpoint = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            y = checkpoint(block, y, use_reentrant=False) if use_checkpoint else block(y)
        y = self.tail(self.up(y))
        crop = tuple(slice(before, before + n) for (before, _), n in zip(widths, size, strict=True))
        return y[(slice(None), slice(None), *crop)]
