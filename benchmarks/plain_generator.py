"""The reference the benchmarks measure mrct's generator against: CycleGAN's ResnetGenerator in
3D, written out in plain PyTorch (``benchmarks/train_workers.py``, ``benchmarks/inference_bench.py``)."""

from __future__ import annotations

from typing import Any


def plain_generator(ngf: int, n_blocks: int) -> Any:
    """CycleGAN's ResnetGenerator in 3D, written out in plain PyTorch (the reference).

    Reflection padding, instance norm without affine, convs with biases, isotropic stride 2:
    the paper's architecture, as mrct.networks.ResnetGenerator builds it from MONAI blocks.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def norm_relu(channels: int) -> list[nn.Module]:
        return [nn.InstanceNorm3d(channels), nn.ReLU(inplace=True)]

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad3d(1),
                nn.Conv3d(c, c, 3),
                *norm_relu(c),
                nn.ReflectionPad3d(1),
                nn.Conv3d(c, c, 3),
                nn.InstanceNorm3d(c),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            up = {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}
            self.net = nn.Sequential(
                nn.ReflectionPad3d(3),
                nn.Conv3d(1, ngf, 7),
                *norm_relu(ngf),
                nn.Conv3d(ngf, 2 * ngf, 3, stride=2, padding=1),
                *norm_relu(2 * ngf),
                nn.Conv3d(2 * ngf, 4 * ngf, 3, stride=2, padding=1),
                *norm_relu(4 * ngf),
                *(Block(4 * ngf) for _ in range(n_blocks)),
                nn.ConvTranspose3d(4 * ngf, 2 * ngf, **up),
                *norm_relu(2 * ngf),
                nn.ConvTranspose3d(2 * ngf, ngf, **up),
                *norm_relu(ngf),
                nn.ReflectionPad3d(3),
                nn.Conv3d(ngf, 1, 7),
                nn.Tanh(),
            )
            for m in self.modules():
                if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Pad every axis to a multiple of 4 (30 -> 32 slices) and crop back, as mrct does.
            size = x.shape[2:]
            widths = [((-n % 4) // 2, -n % 4 - (-n % 4) // 2) for n in size]
            flat = [v for pair in reversed(widths) for v in pair]
            y = self.net(F.pad(x, flat, mode="reflect"))
            crop = (slice(b, b + n) for (b, _), n in zip(widths, size, strict=True))
            return y[(slice(None), slice(None), *crop)]

    return Generator()
