"""Does a trained MU-Diff-method run's critic tell the real x_t from the generators' posterior samples, and could a
critic trained now against the final generator? Writes JSON to benchmarks/results/.

For each run folder (MU-Diff, or ``variant: single`` as the unpaired comparison's paired upper bound), with the
run's last (non-EMA) generator weights, which its critic was trained against: ``--n`` evenly spaced slices of its
``--split``, t cycling over 0..T-1 (``analysis.fixed_draws``), and ``analysis.critic_separation`` of
``analysis.critic_masks`` (per t, the share of draws whose real x_t the critic scores above each posterior sample;
0.5 is chance), with the run's last logged critic loss. With ``--fresh-steps``, the same for a new critic (seed
``--seed``) trained that many steps against the frozen generator by the method's own ``critic_step`` (its
optimiser, learning rate and lazy R1, batches of the run's size from its training split): whether the final
generator's samples are told apart by a critic that it never trained against.

    python benchmarks/critic_separation.py runs/study/percentile/seed{0,1,2}/mudiff \\
        /work/bench/unpaired_evidence/seed{0,1,2}/paired_mr_to_ct --fresh-steps 300
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def fresh_critic(method, steps: int, seed: int) -> float:
    """Replace ``method``'s critic by a new one trained ``steps`` critic steps against its frozen generator;
    returns the seconds it took."""
    from torch.utils.data import default_collate

    from mudiff.methods import no_wrap
    from mudiff.models import Critic

    cfg = method.cfg
    torch.manual_seed(seed)
    method.critic = Critic(cfg.model)
    method.optimizers["critic"] = method.adam(method.critic.parameters(), cfg.train.lr_d)
    method.setup(method.device, method.amp_dtype, method.memory_format, no_wrap).train()
    method.generator.eval()
    train = method.dataset("train")
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        batch = default_collate([train[int(i)] for i in torch.randint(len(train), (cfg.train.batch_size,),
                                                                          generator=gen)])
        method.critic_step(batch["target"], batch["sources"].contiguous(memory_format=method.memory_format), step)
    method.eval()
    return time.perf_counter() - start


def separation(run: Path, split: str, n: int, seed: int, fresh_steps: int) -> dict:
    from mudiff.evaluation import analysis
    from mudiff.sample import Sampler
    from mudiff.train import read_stats

    sampler = Sampler.from_checkpoint(run, device="cpu", use_ema=False)
    method = sampler.method
    draws = analysis.fixed_draws(method.dataset(split), method.schedule, sampler.cfg.model.z_dim, n=n, seed=seed)
    last = [r for r in read_stats(run / "stats.jsonl") if "loss_d" in r][-1]
    def shares() -> list[dict]:
        return analysis.critic_separation(analysis.critic_masks(method, draws, seed)).to_dict("records")

    result = {"run": str(run), "variant": sampler.cfg.model.variant, "task": sampler.cfg.data.task,
              "step": last["step"], "last_loss_d": last["loss_d"], "trained_critic": shares()}
    if fresh_steps:
        seconds = fresh_critic(method, fresh_steps, seed)
        result["fresh_critic"] = {"steps": fresh_steps, "seconds": round(seconds, 1), "separation": shares()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with checkpoints/last.pt)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=64, help="slices (draws) per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-steps", type=int, default=0, help="train a new critic this many steps (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "critic_separation_cpu.json")
    args = parser.parse_args()
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "command": shlex.join(["python", "benchmarks/critic_separation.py", *sys.argv[1:]]),
              "runs": [separation(run, args.split, args.n, args.seed, args.fresh_steps) for run in args.runs]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for run in result["runs"]:
        shares = {name: {k: round(v, 3) for k, v in table[-1].items() if k.startswith("real_above")}
                  for name, table in (("trained", run["trained_critic"]),
                                      ("fresh", run.get("fresh_critic", {}).get("separation", [{}])))}
        print(run["run"], f"loss_d {run['last_loss_d']:.4f}", shares)


if __name__ == "__main__":
    main()
