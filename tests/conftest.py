"""Shared fixtures: a tiny prepared phantom slice dataset and a tiny run config."""
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from mudiff.config import RunConfig

TINY_MODEL = dict(image_size=32, num_sources=3, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, z_dim=8,
                  style_dim=16, critic_channels=8, num_timesteps=4)
TINY_TRAIN = dict(epochs=1, batch_size=3, checkpoint_every=2, log_every=1, val_slices=4, ema_decay=0.9, seed=0)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny networks gain nothing from threads, and on a busy 2-core machine spinning OpenMP workers that get
    preempted slow the tests down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Five 2 mm tumour phantom subjects (BraTS layout)."""
    from mudiff.data.phantom import generate_dataset

    out = tmp_path_factory.mktemp("phantom")
    generate_dataset(out, 5, seed=3, kind="tumour", resolution=2.0, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_slices(phantom_dir, tmp_path_factory) -> Path:
    """The phantom prepared as 32x32 slices, 6 per subject."""
    from mudiff.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("slices") / "tiny"
    prepare_dataset(phantom_dir, out, size=32, slices=6, seed=0)
    return out


def _config(root: Path, model: dict | None = None, train: dict | None = None,
            task: str = "t1ce_from_flair_t2_t1") -> RunConfig:
    return RunConfig.from_dict({"data": {"root": str(root), "task": task},
                                "model": {**TINY_MODEL, **(model or {})},
                                "train": {**TINY_TRAIN, **(train or {})}})


@pytest.fixture
def make_config(tiny_slices):
    """Factory of validated tiny RunConfigs on the prepared slices (keyword dicts override model/train fields)."""

    def make(model: dict | None = None, train: dict | None = None, task: str = "t1ce_from_flair_t2_t1",
             root: Path | None = None) -> RunConfig:
        return _config(root or tiny_slices, model, train, task)

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_slices, tmp_path_factory) -> Path:
    """A MU-Diff run folder trained for 2 steps on the tiny slices (read-only for tests)."""
    from mudiff.train import Trainer

    run = tmp_path_factory.mktemp("runs") / "mudiff"
    Trainer(_config(tiny_slices, train={"max_steps": 2}), run).fit()
    return run


def forwards_past_the_wrappers(method, step: Callable[[], object]) -> tuple[Counter, Counter]:
    """Set ``method`` up on the CPU with a Wrap that counts, run ``step()``, and return (forward passes made
    through the wrappers, all forward passes) per wrapped network. A training step that calls a network directly
    bypasses DDP and torch.compile, and makes the two differ."""
    through, total = Counter(), Counter()

    class Counted(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            through[type(self.module).__name__, id(self.module)] += 1
            return self.module(*args, **kwargs)

    wrappers = []
    method.setup(torch.device("cpu"), None, torch.contiguous_format,
                 lambda module, **_: wrappers.append(Counted(module)) or wrappers[-1])
    for module in {id(w.module): w.module for w in wrappers}.values():
        module.register_forward_pre_hook(lambda m, _: total.update([(type(m).__name__, id(m))]))
    step()
    return through, total
