"""Training losses for tokenizers: pixel (L1/L2), LPIPS perceptual, PatchGAN hinge with adaptive weight."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# torchvision weight files that lpips' backbones load through torch.hub
LPIPS_BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"reconstruction loss {kind!r} is not supported; use 'l1' or 'l2'")


def build_lpips(net: str = "vgg", random_backbone: bool = False) -> nn.Module:
    """LPIPS from the lpips package, frozen. The backbone weights must already be in the torch hub cache.

    ``random_backbone=True`` is a stand-in for tests only: a randomly initialised backbone (lpips' pnet_rand)
    that measures nothing perceptual.
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"perceptual_net={net!r} is not supported; use one of {sorted(LPIPS_BACKBONE_FILES)}")
    if not random_backbone:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", LPIPS_BACKBONE_FILES[net])
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"LPIPS needs the torchvision {net} weights at {path} (no download at run time). Copy "
                f"{LPIPS_BACKBONE_FILES[net]} there (it is what torchvision downloads for this backbone), "
                "or set `perceptual_weight: 0` in the recipe's loss section."
            )
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
    return model.eval().requires_grad_(False)


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided convs giving a map of real/fake logits over overlapping patches."""

    def __init__(self, channels: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, num_layers):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(min(32, c * 2 // 4), c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(min(32, c // 4), c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4):
    """Balance the GAN term against reconstruction by their gradient norms at the decoder's last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, max_weight).detach()
