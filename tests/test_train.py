"""The training loop: losses go down, every ablation runs, checkpoints round-trip, resume, one trainer per run
folder, DDP, NaN guard."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mudiff import cli
from mudiff.checkpoint import load_checkpoint
from mudiff.config import load_config
from mudiff.sample import Sampler
from mudiff.train import NonFiniteLossError, RunInUseError, Trainer, read_stats, run_lock, training_seconds

REPO = Path(__file__).resolve().parents[1]


def test_generator_loss_falls_on_a_fixed_batch(make_config, tmp_path):
    trainer = Trainer(make_config(train={"lr_g": 1e-3, "lr_d": 1e-3, "val_slices": 0}), tmp_path / "run")
    batch = next(iter(trainer.loader))
    first = trainer.train_step(batch)
    for _ in range(25):
        last = trainer.train_step(batch)
    assert last["l1"] < 0.7 * first["l1"], (first, last)
    assert set(first) >= {"loss_d", "loss_g", "adv", "l1", "mask", "r1"} and "mask_head" not in first  # fixed


@pytest.mark.parametrize("model, train, absent, present", [
    ({"variant": "single"}, {}, {"mask"}, {"adv", "l1"}),  # abl1 = supervised SynDiff
    ({"variant": "two_f1"}, {}, set(), {"mask"}),  # abl2
    ({"variant": "no_tau"}, {}, set(), {"mask"}),  # abl3
    ({}, {"mask_loss": False}, {"mask"}, {"adv"}),  # abl4
    ({}, {"use_critic": False}, {"adv", "mask", "loss_d"}, {"l1"}),  # no critic (FID ablation)
    ({"num_timesteps": 2}, {}, set(), {"mask"}),
    ({"num_timesteps": 8}, {}, set(), {"mask"}),
    ({"mask_head": "learned"}, {}, set(), {"mask_head", "mask"}),
    ({"critic_sees_sources": True}, {"r1_scale_by_interval": False}, set(), {"adv"}),
])
def test_every_ablation_switch_trains(make_config, tmp_path, model, train, absent, present):
    trainer = Trainer(make_config(model=model, train={"max_steps": 2, **train}), tmp_path / "run").fit()
    records = [r for r in read_stats(tmp_path / "run" / "stats.jsonl") if "loss_g" in r]
    assert records and records[-1]["step"] == 2
    assert present <= set(records[0]) and not absent & set(records[0])
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())


@pytest.mark.parametrize("debias", [False, True])
def test_ema_is_the_plain_or_the_debiased_average_of_the_steps(make_config, tmp_path, debias):
    decay = 0.9
    trainer = Trainer(make_config(train={"ema_decay": decay, "ema_debias": debias, "val_slices": 0}), tmp_path / "r")
    batch = next(iter(trainer.loader))
    params = [[p.detach().clone() for p in trainer.method.generator.parameters()]]
    for _ in range(3):
        trainer.train_step(batch)
        trainer.step += 1
        params.append([p.detach().clone() for p in trainer.method.generator.parameters()])
    weights = [decay ** 3] + [(1 - decay) * decay ** (3 - n) for n in (1, 2, 3)]  # theta_0 .. theta_3
    if debias:  # the initial weights keep no share; the steps' weights are renormalised to sum to 1
        weights = [0.0] + [w / (1 - decay ** 3) for w in weights[1:]]
    for k, ema in enumerate(trainer.ema.parameters()):
        expected = sum(w * step[k] for w, step in zip(weights, params))
        torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-6)


def test_a_max_steps_beyond_the_epochs_is_flagged(make_config, tmp_path):
    with pytest.warns(UserWarning, match=r"max_steps=10000 is never reached.*set train.epochs >= "):
        Trainer(make_config(train={"epochs": 2, "max_steps": 10000}), tmp_path / "run")


def test_training_seconds_weights_each_log_record_by_its_steps():
    records = [{"step": 10, "sec_per_step": 0.5}, {"step": 10, "val_psnr": 20.0}, {"step": 14, "sec_per_step": 2.0}]
    assert training_seconds(records) == 10 * 0.5 + 4 * 2.0
    assert training_seconds([]) == 0


def test_fixed_mask_head_is_never_optimised(make_config, tmp_path):
    trainer = Trainer(make_config(model={"mask_head": "fixed"}, train={"max_steps": 3}), tmp_path / "run")
    before = trainer.method.critic.mask_head.weight.detach().clone()
    trainer.fit()
    assert torch.equal(before, trainer.method.critic.mask_head.weight)
    learned = Trainer(make_config(model={"mask_head": "learned"}, train={"max_steps": 3}), tmp_path / "run2")
    before = learned.method.critic.mask_head.weight.detach().clone()
    learned.fit()
    assert not torch.equal(before, learned.method.critic.mask_head.weight)


def test_a_compiled_run_takes_the_smaller_last_batch_eagerly(make_config, tmp_path, monkeypatch, capsys):
    from torch._dynamo.utils import counters

    compile_ = torch.compile  # traced and guarded as with inductor, without its minutes of code generation
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: compile_(module, backend="eager"))
    graphs = []  # the compiler's counters after every step
    trainer = Trainer(make_config(train={"compile": True, "batch_size": 4, "val_slices": 0}), tmp_path / "run",
                      callbacks=[lambda record: graphs.append(dict(counters["stats"]))])
    assert trainer.sampler.per_rank % 4 and trainer.steps_per_epoch >= 3
    trainer.fit()
    steps = [r for r in read_stats(tmp_path / "run" / "stats.jsonl") if "loss_g" in r]
    assert [r["step"] for r in steps] == list(range(1, trainer.steps_per_epoch + 1))
    assert graphs[-2]["unique_graphs"] >= 4  # the generator with and without grad, the critic trained and frozen
    assert graphs[-1] == graphs[-2]  # nothing compiled for the smaller batch
    assert capsys.readouterr().out.count("torch.compile: the first steps compile") == 1  # why the bar waits


def test_run_folder_and_checkpoint_round_trip(make_config, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(make_config(train={"max_steps": 4}), run).fit()
    assert (run / "config.json").exists() and (run / "data_manifest.json").exists()
    state = load_checkpoint(run)
    assert state["step"] == 4 and state["format_version"] == 1
    again = Trainer(make_config(train={"max_steps": 4}), run)  # resumes: nothing left to do
    assert again.step == 4
    for a, b in zip(trainer.method.state_dict().values(), again.method.state_dict().values()):
        assert torch.equal(a, b)
    sampler = Sampler.from_checkpoint(run)  # the run folder alone is enough
    assert sampler.cfg == trainer.cfg
    for a, b in zip(trainer.ema.state_dict().values(), sampler.method.generator.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "config.yaml").write_text("train: {}\n")  # a file that is not a checkpoint, or a truncated one
    (tmp_path / "half.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes()[:1000])
    for path in (tmp_path / "config.yaml", tmp_path / "half.pt"):
        with pytest.raises(ValueError, match="not a file mudiff wrote, or truncated") as err:
            load_checkpoint(path)
        assert "weights_only=False" not in str(err.value)  # torch's advice to load unsafely does not apply


def test_keep_best_keeps_the_state_of_the_best_validation_across_a_resume(make_config, tmp_path):
    run, key = tmp_path / "run", "val_psnr_mutual"

    def scripted(trainer, scores):
        values = iter(scores)
        trainer.method.validate = lambda *args, **kwargs: {key: next(values), "val_psnr_x_p1": 0.0}
        return trainer

    trainer = scripted(Trainer(make_config(train={"epochs": 3, "keep_best": key}), run), [10.0, 12.0, 11.0]).fit()
    validations = [r["step"] for r in read_stats(run / "stats.jsonl") if key in r]
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run)
    assert len(validations) == 3 and best["step"] == validations[1] < last["step"] == trainer.step
    assert best["val"][key] == best["best_val"] == last["best_val"] == 12.0
    assert Sampler.from_checkpoint(run / "checkpoints" / "best.pt").cfg == trainer.cfg
    scripted(Trainer(make_config(train={"epochs": 5, "keep_best": key}), run), [11.5, 12.5]).fit()  # resumed
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["val"][key] == 12.5 and best["step"] == load_checkpoint(run)["step"]
    wrong = scripted(Trainer(make_config(train={"keep_best": "val_psnr_x_p3"}), tmp_path / "wrong"), [1.0])
    with pytest.raises(ValueError, match=r"val_psnr_x_p3.*its scores: \['val_psnr_mutual', 'val_psnr_x_p1'\]"):
        wrong.fit()
    for train in ({"keep_best": "psnr"}, {"keep_best": key, "val_slices": 0}):
        with pytest.raises(ValueError, match="train.keep_best must name a validation score"):
            make_config(train=train)


KILLED_DURING_STEP = """
import os, signal, sys
from mudiff import train
from mudiff.cli import main
steps_done, run_step = int(sys.argv[1]), train.Trainer.train_step
def train_step(self, batch):
    if self.step == steps_done:  # kill -9 in the middle of the run
        os.kill(os.getpid(), signal.SIGKILL)
    return run_step(self, batch)
train.Trainer.train_step = train_step
sys.exit(main(sys.argv[2:]))
"""


def test_resume_after_kill_matches_an_uninterrupted_run(make_config, tmp_path):
    """``mudiff train`` killed with SIGKILL during step 10 (6 steps per epoch, checkpoints every 4 steps: the last
    one at step 8, mid-epoch; step 9 trained and logged, then lost), then resumed: the same weights as 12 steps
    straight, and the lost step's log line replaced, not duplicated."""
    cfg = make_config(train={"epochs": 3, "max_steps": 12, "checkpoint_every": 4, "val_slices": 0})
    straight = Trainer(cfg, tmp_path / "straight").fit()

    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "killed"
    # same thread count as this process: float reductions (and so bitwise equality) depend on it
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-c", KILLED_DURING_STEP, "9", "train", "--config", str(config_file),
                             "--run-dir", str(run)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(run)["step"] == 8
    assert max(r["step"] for r in read_stats(run / "stats.jsonl")) == 9

    resumed = Trainer(cfg, run)
    assert resumed.step == 8
    resumed.fit()
    assert resumed.step == 12
    for a, b in zip(straight.method.state_dict().values(), resumed.method.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [r["step"] for r in read_stats(run / "stats.jsonl") if "loss_g" in r]
    assert steps == list(range(1, 13))  # no duplicated or lost log lines


def test_resume_mid_epoch_is_bitwise_identical(make_config, tmp_path):
    """Stop at step 4 (mid-epoch: 6 steps per epoch), resume to 8: the same weights as 8 straight steps."""
    def cfg(max_steps):
        return make_config(train={"epochs": 2, "max_steps": max_steps, "checkpoint_every": 2, "val_slices": 0})

    straight = Trainer(cfg(8), tmp_path / "straight").fit()
    Trainer(cfg(4), tmp_path / "resumed").fit()
    resumed = Trainer(cfg(8), tmp_path / "resumed").fit()
    for a, b in zip(straight.method.state_dict().values(), resumed.method.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_refuses_a_different_config(make_config, tmp_path):
    Trainer(make_config(train={"max_steps": 2}), tmp_path / "run").fit()
    with pytest.raises(ValueError, match="lambda_s"):
        Trainer(make_config(train={"max_steps": 2, "lambda_s": 2.0}), tmp_path / "run")
    with pytest.raises(ValueError, match="mask_head"):
        Trainer(make_config(model={"mask_head": "learned"}, train={"max_steps": 2}), tmp_path / "run")
    # a field the method never reads (a run without a critic has no mask head) does not make another run
    Trainer(make_config(model={"method": "unet_l1"}, train={"max_steps": 2}), tmp_path / "unet").fit()
    resumed = Trainer(make_config(model={"method": "unet_l1", "mask_head": "learned"}, train={"max_steps": 2}),
                      tmp_path / "unet")
    assert resumed.step == 2


def test_resume_goes_on_only_on_the_same_data(make_config, tiny_slices, phantom_dir, tmp_path):
    from mudiff.data.prepare import prepare_dataset

    run = tmp_path / "run"
    Trainer(make_config(train={"max_steps": 2, "val_slices": 0}), run).fit()
    stored = (run / "data_manifest.json").read_text()
    resplit = prepare_dataset(phantom_dir, tmp_path / "resplit", size=32, slices=6, seed=5).parent  # other split
    with pytest.raises(ValueError, match="trained on other data .* differ in .*split"):
        Trainer(make_config(train={"max_steps": 4, "val_slices": 0}, root=resplit), run)
    assert (run / "data_manifest.json").read_text() == stored
    raw_moved = tmp_path / "raw"
    shutil.copytree(phantom_dir, raw_moved)
    again = prepare_dataset(raw_moved, tmp_path / "again", size=32, slices=6, seed=0).parent  # the same, re-prepared
    assert Trainer(make_config(train={"max_steps": 3, "val_slices": 0}, root=again), run).fit().step == 3
    moved = tmp_path / "moved"
    shutil.copytree(tiny_slices, moved)  # the same data in another folder: fine
    assert Trainer(make_config(train={"max_steps": 4, "val_slices": 0}, root=moved), run).fit().step == 4
    (run / "config.json").write_text("")  # a broken run file is named, not a bare JSON error
    with pytest.raises(ValueError, match="config.json cannot be read .* delete it to resume from the checkpoint"):
        Trainer(make_config(train={"max_steps": 4, "val_slices": 0}), run)
    (run / "config.json").unlink()
    assert Trainer(make_config(train={"max_steps": 4, "val_slices": 0}), run).step == 4


def test_a_run_folder_is_trained_by_one_process_at_a_time(make_config, tmp_path, capsys):
    cfg = make_config(train={"max_steps": 2, "val_slices": 0})
    run = tmp_path / "run"
    with run_lock(run):  # another holder of the lock (its own open file, as another process would have)
        with pytest.raises(RunInUseError, match=rf"being trained by another process \(pid {os.getpid()} on "):
            Trainer(cfg, run).fit()
        (tmp_path / "cfg.yaml").write_text(json.dumps(cfg.to_dict()))
        assert cli.main(["train", "--config", str(tmp_path / "cfg.yaml"), "--run-dir", str(run)]) == 2
    assert "being trained by another process" in capsys.readouterr().err  # one line, no traceback
    assert not (run / "checkpoints").exists() and not (run / "config.json").exists()  # the refused one wrote nothing
    stale = Trainer(make_config(train={"max_steps": 4, "val_slices": 0}), run)  # reads the run: no checkpoint yet
    Trainer(cfg, run).fit()  # meanwhile another trainer writes step 2
    with pytest.raises(RunInUseError, match="written by another process after this Trainer read it"):
        stale.fit()
    assert load_checkpoint(run)["step"] == 2
    assert Trainer(make_config(train={"max_steps": 4, "val_slices": 0}), run).fit().step == 4  # lock released


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(make_config, tmp_path):
    run = tmp_path / "run"

    def poison_at(step):
        def poison(record):
            if record.get("step") == step:
                with torch.no_grad():
                    next(trainer.method.parameters()).fill_(float("nan"))
        return poison

    for step, match in [(3, "non-finite .*l1"), (4, "non-finite weights")]:  # NaN loss next step / NaN at a save
        trainer = Trainer(make_config(train={"epochs": 2, "max_steps": 10, "checkpoint_every": 2}), run / str(step),
                          callbacks=[poison_at(step)])
        with pytest.raises(NonFiniteLossError, match=match):
            trainer.fit()
        state = load_checkpoint(run / str(step))
        assert state["step"] == 2
        assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_config_errors_are_clear(make_config, tmp_path):
    with pytest.raises(ValueError, match="cannot be halved"):
        make_config(model={"image_size": 48, "channel_mult": [1, 2, 2, 2, 2, 2]})
    with pytest.raises(ValueError, match="dwi"):
        Trainer(make_config(task="t1ce_from_dwi_t2_t1"), tmp_path / "run")
    with pytest.raises(ValueError, match="image_size"):
        Trainer(make_config(model={"image_size": 64}), tmp_path / "run")
    with pytest.raises(ValueError, match="num_sources"):
        make_config(task="t1ce_from_flair_t2")
    with pytest.raises(ValueError, match="unknown field"):
        load_config(None, ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="variant"):
        make_config(model={"variant": "triple"})


def test_two_process_torchrun_on_cpu(make_config, tmp_path):
    cfg = make_config(train={"max_steps": 3, "batch_size": 2, "val_slices": 2})
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "mudiff",
         "train", "--config", str(config_file), "--run-dir", str(run)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_stats(run / "stats.jsonl") if "loss_g" in r]
    assert records[-1]["step"] == 3
    assert records[-1]["images_per_sec"] > 0
    state = load_checkpoint(run)
    assert state["step"] == 3
