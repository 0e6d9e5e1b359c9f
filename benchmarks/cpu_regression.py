"""CPU training speed against an earlier commit (issue 9: no change may slow CPU training); writes JSON.

The quick config's plain training step (critic step + generator step, no R1) at the CPU's auto settings (fp32,
channels-last, eager), timed in fresh processes that alternate between this checkout and a git worktree of
``--base``: each process reports the median of 18 plain steps after 3 warm-up steps, and the rounds alternate so
that a drift of the machine's speed hits both sides alike. Only the package API that every commit shares is used
(``load_config``, ``build_method``, ``setup``, ``train_step``), so any commit can be the base.

    python benchmarks/cpu_regression.py --base bafd1c2 --out benchmarks/results/cpu_regression_bafd1c2.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = r"""
import json, statistics, time
import torch
from mudiff.config import load_config
from mudiff.methods import build_method

torch.manual_seed(0)
cfg = load_config("configs/quick.yaml")
method = build_method(cfg)
method.setup(torch.device("cpu"), None, torch.channels_last, lambda module, **kwargs: module)
b, s, n = cfg.train.batch_size, cfg.model.image_size, cfg.model.num_sources
x0, sources = torch.rand(b, 1, s, s) * 2 - 1, torch.rand(b, n, s, s) * 2 - 1
for step in range(1, 4):
    method.train_step(x0, sources, step)
seconds = []
for step in range(4, 24):
    start = time.perf_counter()
    method.train_step(x0, sources, step)
    if step % cfg.train.lazy_reg:  # plain steps only
        seconds.append(time.perf_counter() - start)
print(json.dumps(statistics.median(seconds)))
"""


def plain_step_seconds(checkout: Path) -> float:
    """Median seconds of a plain quick-config step with the code of ``checkout``, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", STEP], cwd=checkout, env={"PYTHONPATH": str(checkout)},
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. the one that measured "
                        "results/train_cpu.json)")
    parser.add_argument("--rounds", type=int, default=6, help="processes per side, alternating")
    parser.add_argument("--out", required=True, help="JSON path")
    args = parser.parse_args(argv)

    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    base = git("rev-parse", "--short", args.base)
    samples: dict[str, list[float]] = {"head": [], "base": []}
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "base"
        git("worktree", "add", "--detach", str(worktree), base)
        try:
            for _ in range(args.rounds):
                samples["head"].append(plain_step_seconds(ROOT))
                samples["base"].append(plain_step_seconds(worktree))
                print(f"head {samples['head'][-1]:.4f} s, base {samples['base'][-1]:.4f} s", flush=True)
        finally:
            git("worktree", "remove", "--force", str(worktree))
    medians = {side: statistics.median(v) for side, v in samples.items()}
    report = {
        "device": f"CPU ({platform.processor() or platform.machine()})",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "head": head + (" (with uncommitted changes)" if dirty else ""), "base": base,
        "measure": "median seconds of 18 plain quick-config training steps per process (fp32, channels-last, "
                   "eager), processes alternating head / base",
        "seconds": samples, "median_seconds": medians,
        "head_over_base": medians["head"] / medians["base"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"median plain step: head {medians['head']:.4f} s, base {medians['base']:.4f} s "
          f"(head / base = {report['head_over_base']:.3f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
