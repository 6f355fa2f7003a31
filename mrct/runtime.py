"""How a generator runs for inference on this machine: precision, threads and kernels.

:class:`FastResnet` computes exactly what :class:`mrct.networks.generator.ResnetGenerator`
computes (same weights, same operators), with kernels chosen for CPU inference. Each choice
was measured on a 2-core Xeon with AMX (``benchmarks/run.py``; ``docs/performance.md``):

* **The 7^3 convolution onto one channel** (the tail) takes half of the bundled model's
  forward (35 % of the paper-size one's) in PyTorch's kernel, which vectorises over output
  channels and has only one. It is computed as a (1, 7, 7) convolution onto 7 channels (one
  per depth tap), then a shift-and-add along depth: the same sum in another order, 3-5x
  faster in fp32 (29 -> 6 s at ngf 64).
* **The 7^3 convolution from one channel** (the head): its seven depth taps become seven
  input channels of a (1, 7, 7) convolution; in bf16 that is 8x faster than PyTorch's bf16
  kernel for this layer, which is slower than its fp32 one.
* **bf16** (``precision="bf16"``): convolutions in bfloat16 on a channels-last layout run on
  the CPU's AMX/AVX-512-BF16 units, 4-10x faster than fp32 at 64-256 channels. Instance norm
  statistics, the residual stream, the tail's sums and tanh stay in fp32; activations are
  rounded to bf16 where a convolution reads them (as autocast does). The accuracy against
  fp32 is checked on real heads (``tests/test_inference_precision.py``: MAE under 5 HU).
* **channels_last_3d** layout throughout: oneDNN's kernels (AMX/AVX-512) are written for it;
  measured faster for both models and both precisions (0.75 vs 1.3 s for the bundled model in
  bf16, 61 vs 72 s for the paper-size one in fp32), so it is kept. ``channels_last=False``
  exists for that measurement (``benchmarks/run.py`` times both).

Threads: :func:`inference_threads` is the number of physical cores the process may use,
unless the user set ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``; :func:`torch_threads` applies
it for the duration of a call and restores the previous value (no global flag flipped for
good).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mrct.errors import ConfigError
from mrct.networks.generator import ResnetGenerator, pad_spatial

PRECISIONS = ("auto", "fp32", "bf16")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
log = logging.getLogger(__name__)
EPS = 1e-5  # nn.InstanceNorm3d's default, as the generator uses it


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AMX or AVX-512-BF16); elsewhere oneDNN emulates
    bf16 and it is slower than fp32, so ``auto`` keeps fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    native = " amx_bf16" in flags or " avx512_bf16" in flags
    return native and bool(torch.backends.mkldnn.is_available())


def parse_device(name: str) -> torch.device:
    """``--device`` as a usable torch device, or ConfigError (one line naming it)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None
    check_device(device, name)
    return device


def check_device(device: torch.device, name: str) -> None:
    """Raise ConfigError (one line naming ``--device name``) unless ``device`` is usable here:
    otherwise a missing GPU ordinal or an MPS/XPU build that lacks the backend surfaces later as
    an "unexpected RuntimeError" from the first tensor moved there."""
    if device.type == "cpu":
        if device.index not in (None, 0):  # torch accepts cpu:N but there is one CPU device
            raise ConfigError(f"--device {name}: there is one CPU device (cpu)")
        return
    if device.type not in ("cuda", "mps", "xpu"):  # meta, privateuse1, ...: no data to compute on
        raise ConfigError(f"--device {name}: not a device mrct computes on (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:120]
        raise ConfigError(f"--device {name}: not available on this machine ({reason})") from None


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``fp32``; others as given.

    CUDA keeps fp32 under ``auto``: the bf16 accuracy check runs on the CPU path, and a GPU
    translates one scan in well under a second in fp32 anyway; ``bf16`` can be asked for.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("bf16 on this CPU is emulated (no AMX or AVX-512-BF16): far slower than fp32")
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on, capped by a cgroup CPU quota."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            package, core = "0", str(cpu)  # no topology: count logical CPUs
        cores.add((package, core))
    count = len(cores) or os.cpu_count() or 1
    try:  # containers limited by --cpus see every host CPU but may use only `quota` of them
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def inference_threads() -> int | None:
    """Intra-op threads for inference; ``None`` when the user chose them through the environment."""
    if any(os.environ.get(name) for name in THREAD_ENV):
        return None
    return physical_cores()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: leave as is), then restore.

    More threads than physical cores (hyper-threads, or a container's quota) slows the
    memory-bound layers down; fewer leaves cores idle.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the generator


class _Conv:
    """One convolution's weights in the run's dtype and layout, with how to apply it."""

    def __init__(self, conv: Any, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        self.transposed = isinstance(conv, nn.ConvTranspose3d)
        self.weight: Tensor = conv.weight.detach().to(dtype).contiguous(memory_format=memory_format)
        self.bias: Tensor | None = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.stride: tuple[int, ...] = tuple(conv.stride)
        self.padding: tuple[int, ...] = tuple(conv.padding)
        self.output_padding: tuple[int, ...] = tuple(getattr(conv, "output_padding", (0, 0, 0)))

    def __call__(self, x: Tensor) -> Tensor:
        if self.transposed:
            return F.conv_transpose3d(
                x, self.weight, self.bias, self.stride, self.padding, self.output_padding
            )
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding)


class FastResnet(nn.Module):
    """A 3D :class:`ResnetGenerator`'s forward for inference (see the module docstring).

    Input (N, 1, D, H, W) float32 in [-1, 1]; output the same shape, float32 in [-1, 1].
    """

    def __init__(
        self, generator: ResnetGenerator, precision: str = "fp32", channels_last: bool | None = None
    ) -> None:
        super().__init__()
        cfg = generator.config
        if cfg.spatial_dims != 3 or cfg.in_channels != 1 or cfg.out_channels != 1:
            raise ValueError("FastResnet runs 3D generators with one input and one output channel")
        self.config, self.size_multiple = cfg, generator.size_multiple
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if channels_last is None:
            channels_last = True  # measured faster for every model and precision (module docstring)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        conv = functools.partial(_Conv, dtype=self.dtype, memory_format=self.memory_format)
        net: Any = generator  # MONAI's Convolution blocks hold their layer as `.conv`
        self.head = conv(net.head[1].conv)
        if (
            channels_last
        ):  # the 7 depth taps of the 7^3 kernel become the input channels of a (1, 7, 7) kernel
            self.head.weight = self.head.weight.permute(0, 2, 1, 3, 4).contiguous(
                memory_format=self.memory_format
            )
        self.unfold_head = channels_last
        self.down = [conv(c.conv) for c in net.down]
        self.blocks = [(conv(b.body[1].conv), conv(b.body[3].conv)) for b in net.blocks]
        self.up = [conv(c.conv) for c in net.up]
        tail = net.tail[1].conv
        # (C, 7, 7, 7) -> 7 output channels (one per depth tap) of a (1, 7, 7) kernel.
        self.tail_weight = (
            tail.weight.detach()[0]
            .permute(1, 0, 2, 3)[:, :, None]
            .to(self.dtype)
            .contiguous(memory_format=self.memory_format)
        )
        self.tail_bias: Tensor | None = None if tail.bias is None else tail.bias.detach().float()
        self.pad_mode = cfg.padding

    def _in(self, x: Tensor) -> Tensor:
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _head(self, x: Tensor) -> Tensor:
        x = pad_spatial(x, ((3, 3),) * 3, self.pad_mode)
        if not self.unfold_head:
            return self.head(self._in(x))
        depth = x.shape[2] - 6
        taps = torch.cat([x[:, :, k : k + depth] for k in range(7)], dim=1)
        return F.conv3d(self._in(taps), self.head.weight, self.head.bias)

    def _tail(self, x: Tensor) -> Tensor:
        x = pad_spatial(x, ((3, 3),) * 3, self.pad_mode)
        taps = F.conv3d(x, self.tail_weight)  # (N, 7, D + 6, H, W): one depth tap per channel
        depth = taps.shape[2] - 6
        y = taps[:, 0:1, 0:depth].float()
        for k in range(1, 7):
            y += taps[:, k : k + 1, k : k + depth]
        if self.tail_bias is not None:
            y += self.tail_bias
        return torch.tanh_(y)

    def _norm(self, x: Tensor, relu: bool) -> Tensor:
        """Instance norm (no affine; biased variance, eps 1e-5), statistics in fp32."""
        if self.memory_format is torch.contiguous_format:
            y = F.instance_norm(x, eps=EPS)
        else:
            # Channels-last: PyTorch's instance norm copies to channels-first; per-channel sums
            # over (voxels, channels) rows and batch norm's inference kernel avoid the copy.
            n, c = x.shape[:2]
            if n != 1:
                return torch.cat([self._norm(x[i : i + 1], relu) for i in range(n)])
            rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
            count = rows.shape[0]
            mean = rows.sum(0, dtype=torch.float32) / count
            square = (rows * rows).sum(0, dtype=torch.float32) / count
            var = (square - mean * mean).clamp_min_(0.0)
            y = F.batch_norm(x, mean, var, training=False, eps=EPS)
        return y.relu_() if relu else y

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[2:])
        widths = []
        for n, m in zip(size, self.size_multiple, strict=True):
            extra = -n % m
            widths.append((extra // 2, extra - extra // 2))
        x = pad_spatial(x.float(), widths, self.pad_mode)
        y = self._norm(self._head(x), relu=True)
        for conv in self.down:
            y = self._norm(conv(self._in(y)), relu=True)
        residual = y.float()  # the skip connections add up in fp32
        for first, second in self.blocks:
            h = self._norm(first(pad_spatial(self._in(residual), ((1, 1),) * 3, self.pad_mode)), relu=True)
            h = self._norm(second(pad_spatial(h, ((1, 1),) * 3, self.pad_mode)), relu=False)
            residual = residual + h
        y = self._in(residual)
        del residual
        for conv in self.up:
            y = self._norm(conv(y), relu=True)
        out = self._tail(y)
        crop = tuple(slice(before, before + n) for (before, _), n in zip(widths, size, strict=True))
        return out[(slice(None), slice(None), *crop)].contiguous()


def for_inference(generator: Any, precision: str, device: torch.device) -> Any:
    """The fastest equivalent of ``generator`` for inference at ``precision`` (fp32 or bf16).

    On the CPU a 3D :class:`ResnetGenerator` becomes a :class:`FastResnet`. 2D baselines, and
    every generator on a GPU (where cuDNN already picks kernels and ``Translator.forward``
    applies autocast for bf16), are used as they are.
    """
    if device.type == "cpu" and isinstance(generator, ResnetGenerator) and generator.config.spatial_dims == 3:
        return FastResnet(generator, precision).eval()
    return generator
