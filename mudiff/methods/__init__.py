"""Synthesis methods trained by the same loop: MU-Diff (and its ablations) and the baselines.

``build_method(cfg)`` picks the class named by ``cfg.model.method``.
"""
from importlib import import_module

from mudiff.config import RunConfig
from mudiff.methods.base import Method, no_wrap

# method name -> "module:Class", imported on demand
REGISTRY = {
    "mudiff": "mudiff.methods.mudiff:MuDiffMethod",
    "unet_l1": "mudiff.methods.unet_l1:UNetL1Method",
    "pix2pix": "mudiff.methods.pix2pix:Pix2PixMethod",
    "ddpm": "mudiff.methods.ddpm:DDPMMethod",
    "copy_source": "mudiff.methods.copy_source:CopySourceMethod",
    "syndiff_cycle": "mudiff.methods.syndiff_cycle:SynDiffCycleMethod",
    "cyclegan": "mudiff.methods.syndiff_cycle:CycleGANMethod",
    "midiffusion": "mudiff.methods.midiffusion:MIDiffusionMethod",
    "sdedit": "mudiff.methods.midiffusion:SDEditMethod",
    # class-conditioned generation on labelled slices (issue 11)
    "class_ddpm": "mudiff.methods.class_ddpm:ClassDDPMMethod",
    "wgan_gp": "mudiff.methods.wgan_gp:WGANGPMethod",
    "cwgan_gp": "mudiff.methods.wgan_gp:WGANGPMethod",
}


def build_method(cfg: RunConfig) -> Method:
    """A fresh, CPU-resident method for ``cfg`` (call ``.setup(...)`` before training)."""
    name = cfg.model.method
    if name not in REGISTRY:
        raise ValueError(f"model.method {name!r} is not implemented; available: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(import_module(module), cls)(cfg)


__all__ = ["Method", "build_method", "no_wrap", "REGISTRY"]
