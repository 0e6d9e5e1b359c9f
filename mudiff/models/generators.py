"""The two denoising generators F1, F2 and their mutual pair (spec section 2).

Both predict the clean target x0 from (x_{t+1}, sources, t, z). Hookable names inside a :class:`MuDiff`:
``f1.phi``, ``f1.backbone.<UNet name>``; ``f2.rho``, ``f2.r0``, ``f2.phi``, ``f2.tau.<ContrastAdapter name>``,
``f2.backbone.<UNet name>`` (see :mod:`mudiff.models.unet` and :mod:`mudiff.models.adapters`).
"""
from __future__ import annotations

import torch
from torch import nn

from mudiff.config import ModelConfig
from mudiff.models.adapters import ContrastAdapter, FeatureMapper, TargetAdapter
from mudiff.models.unet import UNet


class F1(nn.Module):
    """F1 = phi1 + H1: x_{t+1} (B, 1, H, W), sources y (B, n, H, W), t (B,), z (B, z_dim) -> x^{p1} (B, 1, H, W).

    f_c^1 = R0(x_{t+1}) (+) R1(y1) (+) ... (+) Rn(yn): (n+1)*nf channels into H1.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n, nf = cfg.num_sources, cfg.base_channels
        self.phi = FeatureMapper(n + 1, nf)
        self.backbone = UNet(cfg, (n + 1) * nf)

    def forward(self, x_tp1: torch.Tensor, sources: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.phi(torch.cat([x_tp1, sources], dim=1)), x_tp1, t, z)


class F2(nn.Module):
    """F2 = rho + phi2 + tau + H2: like F1, plus F1's prediction x^{p1} (B, 1, H, W) -> x^{p2} (B, 1, H, W).

    rho turns x^{p1} into a style f_s that modulates phi2's source blocks; tau fuses the adapted sources pairwise
    (``use_tau=False``, the abl3 variant, concatenates them unchanged); f_c^2 = R0(x_{t+1}) (+) tau(...).
    """

    def __init__(self, cfg: ModelConfig, use_tau: bool = True):
        super().__init__()
        n, nf = cfg.num_sources, cfg.base_channels
        self.rho = TargetAdapter(nf, cfg.style_dim)
        self.r0 = FeatureMapper(1, nf)
        self.phi = FeatureMapper(n, nf, style_dim=cfg.style_dim)
        self.tau = ContrastAdapter(n, nf) if use_tau else nn.Identity()
        self.backbone = UNet(cfg, (n + 1) * nf)

    def forward(self, x_tp1: torch.Tensor, sources: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                x_p1: torch.Tensor) -> torch.Tensor:
        f_s = self.rho(x_p1)
        f_c = torch.cat([self.r0(x_tp1), self.tau(self.phi(sources, f_s))], dim=1)
        return self.backbone(f_c, x_tp1, t, z)


class MuDiff(nn.Module):
    """The mutual pair (F1, F2) for one ``cfg.variant``.

    - ``mudiff``: F1 and F2; ``no_tau``: F2 without tau (abl3);
    - ``two_f1``: a second, separately initialised F1 that does not see x^{p1} (abl2);
    - ``single``: F1 only (abl1, the supervised SynDiff baseline); ``f2`` is None.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.variant = cfg.variant
        self.f1 = F1(cfg)
        self.f2: F2 | F1 | None
        if cfg.variant in ("mudiff", "no_tau"):
            self.f2 = F2(cfg, use_tau=cfg.variant == "mudiff")
        elif cfg.variant == "two_f1":
            self.f2 = F1(cfg)
        else:
            self.f2 = None

    def forward(self, x_tp1: torch.Tensor, sources: torch.Tensor, t: torch.Tensor,
                z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_{t+1} (B, 1, H, W), sources (B, n, H, W), t (B,) long, z (B, z_dim) -> (x^{p1}, x^{p2}), each
        (B, 1, H, W) in [-1, 1]; x^{p2} is None for ``single``. The same z feeds both networks, and x^{p1} is
        passed to F2 undetached so that F2's losses also train F1."""
        x_p1 = self.f1(x_tp1, sources, t, z)
        if self.f2 is None:
            return x_p1, None
        if isinstance(self.f2, F2):
            return x_p1, self.f2(x_tp1, sources, t, z, x_p1)
        return x_p1, self.f2(x_tp1, sources, t, z)
