"""The CycleGAN objective of the paper, written to be read next to it.

Notation. Domain A is MR and domain B is CT. The generators are ``mr_to_ct`` (paper F:
MR -> CT) and ``ct_to_mr`` (paper G: CT -> MR); the discriminators are ``d_ct`` (judges
CT, the paper's D_A) and ``d_mr`` (judges MR, D_B). The full objective (paper eq. 1) is

    L = L_GAN(G, D_B) + L_GAN(F, D_A) + gamma * L_cyc(F, G)

with L_cyc = E||G(F(x)) - x||_1 + E||F(G(y)) - y||_1, optionally plus CycleGAN's identity
term and the paper's slice-continuity ("const") penalty of eq. 2. Tensors are channel-first,
(N, C, D, H, W) in 3D or (N, C, H, W) in 2D, with intensities in [-1, 1].

This module holds the maths only; optimisers, AMP, checkpoints and logging live in
:mod:`mrct.training`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mrct.networks import build_discriminator, build_generator
from mrct.training.config import LossConfig, ModelConfig

DIRECTIONS = ("mr_to_ct", "ct_to_mr")


# ----------------------------------------------------------------------------- networks


class Generators(nn.Module):
    """Both generators, run together so one forward gives every image the losses need.

    Keeping the four translations in one ``forward`` lets DistributedDataParallel see one
    forward per backward, which it needs.
    """

    def __init__(self, config: ModelConfig, checkpointing: bool = False) -> None:
        super().__init__()
        self.mr_to_ct = build_generator(config.generator, checkpointing=checkpointing)  # F
        self.ct_to_mr = build_generator(config.generator, checkpointing=checkpointing)  # G

    def forward(self, mr: Tensor, ct: Tensor, identity: bool = False) -> dict[str, Tensor]:
        fake_ct = self.mr_to_ct(mr)  # F(x)
        fake_mr = self.ct_to_mr(ct)  # G(y)
        out = {
            "fake_ct": fake_ct,
            "fake_mr": fake_mr,
            "cycled_mr": self.ct_to_mr(fake_ct),  # G(F(x)), should return to x
            "cycled_ct": self.mr_to_ct(fake_mr),  # F(G(y)), should return to y
        }
        if identity:
            out["same_ct"] = self.mr_to_ct(ct)  # F(y), should leave a CT unchanged
            out["same_mr"] = self.ct_to_mr(mr)  # G(x)
        return out


class Discriminators(nn.Module):
    """Both PatchGAN discriminators; ``forward`` scores real and (pooled) fake images."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.d_ct = build_discriminator(config.discriminator)  # D_A in the paper
        self.d_mr = build_discriminator(config.discriminator)  # D_B

    def forward(
        self, real_ct: Tensor, fake_ct: Tensor, real_mr: Tensor, fake_mr: Tensor
    ) -> dict[str, Tensor]:
        return {
            "real_ct": self.d_ct(real_ct),
            "fake_ct": self.d_ct(fake_ct),
            "real_mr": self.d_mr(real_mr),
            "fake_mr": self.d_mr(fake_mr),
        }


# ----------------------------------------------------------------------------- loss terms


def adversarial_loss(logits: Tensor, target_is_real: bool, kind: str) -> Tensor:
    """L_GAN of one discriminator's patch logits against an all-real or all-fake target.

    ``log_likelihood`` is the paper's E[log D(y)] + E[log(1 - D(G(x)))], written as binary
    cross-entropy on logits (the generator uses the non-saturating -log D(G(x)) form);
    ``least_squares`` replaces the log with a squared error (LSGAN), CycleGAN's practice,
    which trains more stably.
    """
    logits = logits.float()  # the loss in fp32, whatever autocast did to the network
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    if kind == "least_squares":
        return torch.mean((logits - target) ** 2)
    if kind == "log_likelihood":
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown adversarial loss {kind!r}")


def cycle_loss(original: Tensor, cycled: Tensor) -> Tensor:
    """One half of L_cyc (eq. 1): E||G(F(x)) - x||_1, mean absolute error per voxel."""
    return torch.mean(torch.abs(cycled.float() - original.float()))


def const_loss(translated: Tensor) -> Tensor:
    """The paper's eq. 2, sum over t of ||G(x)_t - G(x)_{t-1}||^2, on consecutive slices.

    Slices run along the first spatial axis: D of a 3D volume (averaged over the volumes of a
    batch), or the batch axis of a 2D batch of one volume's consecutive slices
    (``data.slices: sequential``). It is the sum the paper writes, over slices and voxels: a
    mean over voxels made it (T-1)*H*W times weaker (about 12,000 times at 16 x 28 x 28), a
    term of 0.1 % of the objective at weight 1, so that "sequential + const" trained as
    "sequential". Its weight therefore depends on the grid, as the paper's does.
    """
    x = translated.float()
    if x.ndim == 5:
        return torch.sum((x[:, :, 1:] - x[:, :, :-1]) ** 2) / x.shape[0]
    return torch.sum((x[1:] - x[:-1]) ** 2)


# ----------------------------------------------------------------------------- history pool


class ImagePool:
    """The image history of Shrivastava et al. used by CycleGAN (50 images).

    The discriminator sees, half of the time, a translation from an earlier iteration
    instead of the newest one, which damps oscillation. Randomness comes from an explicit
    generator whose state is saved with the pool, so a resumed run draws the same images.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.images: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.cpu().clone())
                out.append(image)
                continue
            if torch.rand(1, generator=self.generator).item() > 0.5:
                i = int(torch.randint(0, self.size, (1,), generator=self.generator).item())
                old = self.images[i].to(image.device, image.dtype)
                self.images[i] = image.cpu().clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"image.{i:03d}": im for i, im in enumerate(self.images)}
        state["rng"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        # By number: sorted as text, image.1000 came before image.101 (pools over 1000 images).
        keys = sorted((k for k in state if k.startswith("image.")), key=lambda k: int(k.split(".")[1]))
        self.images = [state[k].clone() for k in keys]
        self.generator.set_state(state["rng"])


# ----------------------------------------------------------------------------- the two steps


@dataclass
class GeneratorLosses:
    """The generator objective's terms for one iteration; ``total`` is what is minimised."""

    gan_mr_to_ct: Tensor  # L_GAN(F, D_A)
    gan_ct_to_mr: Tensor  # L_GAN(G, D_B)
    cycle_mr: Tensor  # ||G(F(x)) - x||_1
    cycle_ct: Tensor  # ||F(G(y)) - y||_1
    identity: Tensor
    const: Tensor
    total: Tensor

    def scalars(self) -> dict[str, float]:
        return {f"loss/generator/{f.name}": float(getattr(self, f.name).detach()) for f in fields(self)}


@dataclass
class DiscriminatorLosses:
    d_ct: Tensor
    d_mr: Tensor

    @property
    def total(self) -> Tensor:
        return self.d_ct + self.d_mr

    def scalars(self) -> dict[str, float]:
        return {
            "loss/discriminator/d_ct": float(self.d_ct.detach()),
            "loss/discriminator/d_mr": float(self.d_mr.detach()),
        }


def generator_losses(
    images: dict[str, Tensor], mr: Tensor, ct: Tensor, discriminators: Discriminators, cfg: LossConfig
) -> GeneratorLosses:
    """The generators' side of eq. 1 (discriminators fixed), plus identity and const terms."""
    kind = cfg.adversarial
    # L_GAN(F, D_A): F's translations should be scored real by the CT discriminator.
    gan_mr_to_ct = adversarial_loss(discriminators.d_ct(images["fake_ct"]), True, kind)
    # L_GAN(G, D_B): and G's by the MR discriminator.
    gan_ct_to_mr = adversarial_loss(discriminators.d_mr(images["fake_mr"]), True, kind)
    # gamma * L_cyc: a round trip returns the input (eq. 1).
    cycle_mr = cycle_loss(mr, images["cycled_mr"])
    cycle_ct = cycle_loss(ct, images["cycled_ct"])
    zero = gan_mr_to_ct.new_zeros(())
    # Identity (CycleGAN, not in the paper): a generator leaves its own output domain alone.
    identity = zero
    if cfg.identity_weight > 0:
        identity = cycle_loss(ct, images["same_ct"]) + cycle_loss(mr, images["same_mr"])
    # Const (eq. 2): consecutive output slices should not jump.
    const = zero
    if cfg.const_weight > 0:
        const = const_loss(images["fake_ct"]) + const_loss(images["fake_mr"])
    total = (
        gan_mr_to_ct
        + gan_ct_to_mr
        + cfg.cycle_weight * (cycle_mr + cycle_ct)
        + cfg.cycle_weight * cfg.identity_weight * identity
        + cfg.const_weight * const
    )
    return GeneratorLosses(gan_mr_to_ct, gan_ct_to_mr, cycle_mr, cycle_ct, identity, const, total)


def discriminator_losses(scores: dict[str, Tensor], cfg: LossConfig) -> DiscriminatorLosses:
    """Each discriminator's side of L_GAN: real scored real, (pooled) translations fake.

    Halved, as in CycleGAN, so a discriminator learns at half the generators' rate.
    """
    kind = cfg.adversarial
    d_ct = 0.5 * (
        adversarial_loss(scores["real_ct"], True, kind) + adversarial_loss(scores["fake_ct"], False, kind)
    )
    d_mr = 0.5 * (
        adversarial_loss(scores["real_mr"], True, kind) + adversarial_loss(scores["fake_mr"], False, kind)
    )
    return DiscriminatorLosses(d_ct, d_mr)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze the discriminators during the generator step (no wasted gradients)."""
    for p in module.parameters():
        p.requires_grad_(flag)


def unwrap(module: Any) -> Any:
    """The plain module inside DistributedDataParallel or torch.compile wrappers."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
