"""Networks: shape tables (3D and 2D), parameter counts, init, checkpointing, configs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from mrct.config import from_mapping
from mrct.errors import ConfigError
from mrct.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchGANDiscriminator,
    ResnetGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
)
from mrct.networks.generator import pad_spatial

# Small widths keep the paper-sized inputs fast on a CPU; shapes do not depend on them.
SMALL_G = {"ngf": 4, "n_residual_blocks": 1}


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Uniform noise in [-1, 1], the generator's input range."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.mark.parametrize(
    ("overrides", "shape"),
    [
        # The paper's grid, both answers to the 30 -> 15 -> 8 depth problem.
        ({"depth_stride": 2, "ngf": 2}, (1, 1, 30, 256, 256)),
        ({"depth_stride": 1, "ngf": 2}, (1, 1, 30, 256, 256)),
        # Odd sizes: padded up to multiples of 4 (1 along D with depth_stride 1), cropped back.
        ({"depth_stride": 2}, (1, 1, 30, 37, 41)),
        ({"depth_stride": 1}, (2, 1, 30, 37, 41)),
        ({"depth_stride": 2}, (1, 1, 7, 9, 10)),
        ({"depth_stride": 1, "padding": "replicate"}, (1, 1, 7, 9, 10)),
        ({"depth_stride": 2, "n_residual_blocks": 0}, (1, 1, 5, 6, 7)),
        # Tiny: reflection is undefined there, so padding falls back to replicate.
        ({"depth_stride": 2}, (1, 1, 1, 2, 5)),
        ({"spatial_dims": 2}, (2, 1, 256, 256)),
        ({"spatial_dims": 2, "depth_stride": 1}, (2, 1, 33, 47)),  # depth_stride is ignored in 2D
        ({"spatial_dims": 2, "in_channels": 3, "out_channels": 3}, (1, 3, 9, 10)),
    ],
)
def test_generator_output_shape_equals_input_shape(overrides: dict[str, Any], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = build_generator(GeneratorConfig(**{**SMALL_G, **overrides}))
    with torch.no_grad():
        out = net(images(shape))
    assert out.shape == shape
    assert out.min() >= -1 and out.max() <= 1
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("overrides", "shape", "expected"),
    [
        # k4, padding 1: a stride-2 conv maps n -> floor(n/2), a stride-1 conv n -> n - 1.
        # D (stride 1 everywhere): 30 -> 29 -> 28 -> 27 -> 26 -> 25.
        # H, W: 256 -> 128 -> 64 -> 32 (strided) -> 31 -> 30 (stride 1).
        ({}, (1, 1, 30, 256, 256), (1, 1, 25, 30, 30)),
        # H, W: 64 -> 32 -> 16 -> 8 -> 7 -> 6.
        ({}, (1, 1, 30, 64, 64), (1, 1, 25, 6, 6)),
        # Depth stride 2 collapses depth as MONAI's PatchDiscriminator does: 30 -> 15 -> 7 -> 3 -> 2 -> 1.
        ({"depth_stride": 2}, (1, 1, 30, 256, 256), (1, 1, 1, 30, 30)),
        # The classic 70 x 70 PatchGAN: 256 -> 128 -> 64 -> 32 -> 31 -> 30.
        ({"spatial_dims": 2}, (1, 1, 256, 256), (1, 1, 30, 30)),
        # Four strided layers: 256 -> 128 -> 64 -> 32 -> 16 -> 15 -> 14.
        ({"spatial_dims": 2, "n_layers": 4}, (2, 1, 256, 256), (2, 1, 14, 14)),
    ],
)
def test_discriminator_logit_shape(
    overrides: dict[str, Any], shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    net = build_discriminator(DiscriminatorConfig(**{"ndf": 2, **overrides}))
    with torch.no_grad():
        logits = net(images(shape))
    assert isinstance(logits, torch.Tensor)  # one tensor, not MONAI's list
    assert tuple(logits.shape) == expected
    assert net.output_shape(shape[2:]) == expected[2:]


def test_discriminator_receptive_field() -> None:
    assert build_discriminator(DiscriminatorConfig(spatial_dims=2, ndf=2)).receptive_field == (70, 70)
    # Depth: five k4 convs of stride 1 see 1 + 5 * 3 = 16 slices.
    assert build_discriminator(DiscriminatorConfig(ndf=2)).receptive_field == (16, 70, 70)
    assert build_discriminator(DiscriminatorConfig(ndf=2, depth_stride=2)).receptive_field == (70, 70, 70)


def generator_count(spatial_dims: int, ngf: int = 64, blocks: int = 9) -> int:
    """Closed form for in/out 1 channel: weights + biases of every conv, in layer order."""
    k3, k7, f = 3**spatial_dims, 7**spatial_dims, ngf
    return (
        (k7 * 1 * f + f)  # head
        + (k3 * f * 2 * f + 2 * f)
        + (k3 * 2 * f * 4 * f + 4 * f)  # down
        + blocks * 2 * (k3 * 4 * f * 4 * f + 4 * f)  # residual blocks
        + (k3 * 4 * f * 2 * f + 2 * f)
        + (k3 * 2 * f * f + f)  # up
        + (k7 * f * 1 + 1)  # tail
    )


def test_paper_generator_parameter_counts() -> None:
    paper_3d = build_generator(GeneratorConfig())
    frames_2d = build_generator(GeneratorConfig(spatial_dims=2))
    print(f"generator parameters: 3D {count_parameters(paper_3d):,}, 2D {count_parameters(frames_2d):,}")
    assert count_parameters(paper_3d) == generator_count(3) == 34_111_489
    # CycleGAN's resnet_9blocks has 11,378,179 for RGB; one channel in and out saves 12,546.
    assert count_parameters(frames_2d) == generator_count(2) == 11_365_633
    assert count_parameters(paper_3d, trainable_only=True) == count_parameters(paper_3d)

    # Layer by layer, a 3D kernel has k times the weights of its 2D twin; biases are the same.
    convs_2d = [m for m in frames_2d.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    convs_3d = [m for m in paper_3d.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert len(convs_2d) == len(convs_3d) == 1 + 2 + 2 * 9 + 2 + 1
    for c2, c3 in zip(convs_2d, convs_3d, strict=True):
        assert c3.weight.numel() == c3.kernel_size[0] * c2.weight.numel()
        assert c3.bias.numel() == c2.bias.numel()


def test_discriminator_parameter_count() -> None:
    # CycleGAN's 70 x 70 PatchGAN on RGB has 2,764,737 parameters.
    assert (
        count_parameters(build_discriminator(DiscriminatorConfig(spatial_dims=2, in_channels=3))) == 2_764_737
    )


def test_init_is_cyclegan_and_deterministic_under_a_seed() -> None:
    cfg = GeneratorConfig(ngf=8, n_residual_blocks=2)
    torch.manual_seed(7)
    a = build_generator(cfg)
    torch.manual_seed(7)
    b = build_generator(cfg)
    torch.manual_seed(8)
    c = build_generator(cfg)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head[1].conv.weight, c.head[1].conv.weight)

    weights = torch.cat(
        [m.weight.flatten() for m in a.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    )
    assert abs(weights.mean().item()) < 2e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(not m.bias.any() for m in a.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)))

    torch.manual_seed(7)
    d1 = build_discriminator(DiscriminatorConfig(ndf=4))
    torch.manual_seed(7)
    d2 = build_discriminator(DiscriminatorConfig(ndf=4))
    assert all(torch.equal(p, q) for p, q in zip(d1.parameters(), d2.parameters(), strict=True))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointing_gives_same_output_and_gradients(
    dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mrct.networks.generator as generator_module

    calls = []
    real_checkpoint = generator_module.checkpoint

    def counting_checkpoint(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(generator_module, "checkpoint", counting_checkpoint)

    cfg = GeneratorConfig(ngf=4, n_residual_blocks=2, dropout=dropout)
    plain = ResnetGenerator(cfg).train()
    saving = ResnetGenerator(cfg, checkpointing=True).train()
    saving.load_state_dict(plain.state_dict())
    x = images((1, 1, 6, 12, 12))

    results = []
    for net in (plain, saving):
        torch.manual_seed(3)  # same dropout masks; checkpoint replays the RNG state when recomputing
        out = net(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad for p in net.parameters()]))
    assert calls == [False, False]  # once per residual block, non-reentrant
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for g_plain, g_saving in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_plain, g_saving)

    calls.clear()
    with torch.no_grad():
        saving(x)
    saving.eval()(x)
    assert calls == []  # nothing to save without grad, or in eval mode


def test_reflect_falls_back_to_replicate_where_undefined() -> None:
    x = torch.arange(3.0).view(1, 1, 3)
    assert pad_spatial(x, [(2, 2)], "reflect").flatten().tolist() == [2, 1, 0, 1, 2, 1, 0]
    assert pad_spatial(x, [(3, 0)], "reflect").flatten().tolist() == [0, 0, 0, 0, 1, 2]
    assert pad_spatial(x, [(0, 0)], "reflect") is x


@pytest.mark.parametrize(
    ("net", "shape", "match"),
    [
        (lambda: build_generator(GeneratorConfig(**SMALL_G)), (1, 1, 2, 3, 3), "too small"),
        (
            lambda: build_generator(GeneratorConfig(**SMALL_G)),
            (1, 2, 8, 8, 8),
            r"expected input \(N, 1, D, H, W\)",
        ),
        (lambda: build_generator(GeneratorConfig(**SMALL_G)), (1, 1, 8, 8), "expected input"),
        (lambda: build_discriminator(DiscriminatorConfig(ndf=2)), (1, 1, 30, 8, 8), "too small"),
        (
            lambda: build_discriminator(DiscriminatorConfig(ndf=2, spatial_dims=2)),
            (1, 1, 4, 8, 8),
            r"\(N, 1, H, W\)",
        ),
    ],
)
def test_bad_inputs_raise(net: Any, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        net()(torch.zeros(shape))


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (GeneratorConfig, {"spatial_dims": 1}, "spatial_dims"),
        (GeneratorConfig, {"spatial_dims": True}, "spatial_dims"),
        (GeneratorConfig, {"in_channels": 0}, "in_channels"),
        (GeneratorConfig, {"out_channels": 0}, "out_channels"),
        (GeneratorConfig, {"ngf": 0}, "ngf"),
        (GeneratorConfig, {"n_residual_blocks": -1}, "n_residual_blocks"),
        (GeneratorConfig, {"padding": "zeros"}, "padding"),
        (GeneratorConfig, {"depth_stride": 3}, "depth_stride"),
        (GeneratorConfig, {"dropout": 1.0}, "dropout"),
        (GeneratorConfig, {"dropout": -0.1}, "dropout"),
        (DiscriminatorConfig, {"spatial_dims": 4}, "spatial_dims"),
        (DiscriminatorConfig, {"in_channels": 0}, "in_channels"),
        (DiscriminatorConfig, {"ndf": 0}, "ndf"),
        (DiscriminatorConfig, {"n_layers": 0}, "n_layers"),
        (DiscriminatorConfig, {"depth_stride": 0}, "depth_stride"),
    ],
)
def test_invalid_configs_name_the_field(cls: type, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must be"):
        cls(**kwargs)


def test_configs_load_from_plain_mappings() -> None:
    cfg = from_mapping(GeneratorConfig, {"ngf": 32, "depth_stride": 1, "padding": "replicate"})
    assert cfg == GeneratorConfig(ngf=32, depth_stride=1, padding="replicate")
    with pytest.raises(ConfigError, match="depth_stride"):
        from_mapping(DiscriminatorConfig, {"depth_stride": 3})
    assert isinstance(
        build_discriminator(from_mapping(DiscriminatorConfig, {"ndf": 2})), PatchGANDiscriminator
    )


def test_config_module_does_not_import_torch() -> None:
    code = (
        "import mrct.networks.config, mrct.networks, sys; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
