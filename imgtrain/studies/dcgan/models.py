"""The DCGAN's networks: the spatial plan, the generator, the discriminator, the paper's weight
initialisation, and the PNG grid of samples."""
from __future__ import annotations

import io
import math

import torch
from torch import nn

from imgtrain.studies.dcgan.data import DataError


# =============================================================================== models

def spatial_plan(img_size: int) -> tuple[int, int]:
    """(start size s0, upsamplings k) with img_size = s0 * 2**k, s0 in (4, 7), k >= 1."""
    for s0 in (4, 7):
        ratio = img_size / s0
        if ratio >= 2 and ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0:
            return s0, int(ratio).bit_length() - 1
    raise DataError(f"--img-size {img_size}: must be 4 or 7 times a power of two (28, 32, 64, ...)")


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, img_size: int = 28, nc: int = 1):
        super().__init__()
        s0, k = spatial_plan(img_size)
        ch = ngf * 2 ** (k - 1)
        layers = [nn.ConvTranspose2d(nz, ch, s0, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz, 1, 1))


D_NORMS = ("batch", "none")


class Discriminator(nn.Module):
    """Outputs one logit per image. `norm="batch"` adds the paper's BatchNorm layers (see the module notes)."""

    def __init__(self, ndf: int = 64, img_size: int = 28, nc: int = 1, norm: str = "none", extra_conv: int = 0):
        super().__init__()
        if norm not in D_NORMS:
            raise DataError(f"--d-norm {norm}: choose from {', '.join(D_NORMS)}")
        if extra_conv < 0:
            raise DataError(f"--d-extra-conv {extra_conv}: a number of filters, 0 for none")
        s0, k = spatial_plan(img_size)
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        if extra_conv:  # S001's PyTorch port: one more 3x3 convolution (32 filters there), same resolution
            layers += [nn.Conv2d(ch, extra_conv, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
            ch = extra_conv
        for _ in range(k - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                       *([nn.BatchNorm2d(ch * 2)] if norm == "batch" else []), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, s0, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def init_weights(m: nn.Module) -> None:
    """The paper's initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def sample_grid_png(images: torch.Tensor) -> bytes:
    """[n, C, H, W] in [-1, 1] -> PNG bytes of a grid with ceil(sqrt(n)) columns and 2 px padding."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(images.detach().cpu(), buf, format="png", nrow=math.ceil(math.sqrt(len(images))), padding=2,
               normalize=True, value_range=(-1.0, 1.0))
    return buf.getvalue()
