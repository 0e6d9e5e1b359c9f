"""Notebook 11's comparison (mudiff.experiments.class_generation) on a tiny trained run: the metrics table's
reference rows and columns, the gate's acceptance rates, the guidance explorer as widgets and as a figure, and the
evidence over evaluation seeds (resumable per seed; issue 11's targets tested over seeds)."""
import numpy as np
import pandas as pd
import pytest

from mudiff.evaluation import class_eval
from mudiff.experiments import class_generation as cx
from mudiff.experiments.comparisons import train_variants

TINY = ["model.base_channels=8", "model.channel_mult=[1, 2]", "model.style_dim=16", "model.z_dim=8",
        "model.critic_channels=8", "model.ddpm_sampling_steps=2", "train.max_steps=2", "train.batch_size=4",
        "train.val_slices=0", "train.ema_decay=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("classgen")
    data = cx.labelled_data(root / "slices", {"healthy": 3, "meningioma": 3}, 32, ["t1ce"], 2, seed=0)
    runs = train_variants("configs/class_quick.yaml", {"ddpm_cfg": cx.RUNS["ddpm_cfg"]}, root / "runs",
                          [f"data.root={root / 'slices'}", "model.num_classes=2", *TINY])
    return runs, data


@pytest.fixture(scope="module")
def comparison(trained):
    runs, data = trained
    comparison = cx.Comparison(runs, data, classifier_steps=5, inception=False, domain_epochs=1)
    comparison.generate("ddpm_cfg", gated=False, guidance_scale=2.0)
    comparison.generate("ddpm_cfg", gated=True, guidance_scale=2.0)
    return comparison


def test_metrics_start_with_the_real_reference_and_score_every_set(comparison):
    table = comparison.metrics(["ddpm_cfg"], tstr_steps=5)
    assert list(table.columns) == ["set", "class", "n", "fd_domain", "class_fidelity", "class_fidelity_judge",
                                   "tstr_synthetic", "tstr_real+synthetic", "acceptance_rate"]
    assert list(table["set"].unique()) == ["real", "ddpm_cfg", "ddpm_cfg+gate"]
    test = comparison.data["test"]
    real = table[table["set"] == "real"].set_index("class")
    accuracy = class_eval.accuracy(comparison.classifier, test)
    assert real["class_fidelity"].to_dict() == {**{c: accuracy[c] for c in test.classes}, "all": accuracy["balanced"]}
    judged = class_eval.accuracy(comparison.judge, test)
    assert real["class_fidelity_judge"].to_dict() == {**{c: judged[c] for c in test.classes}, "all": judged["balanced"]}
    assert real["n"].to_dict() == {**test.counts(), "all": len(test)}
    assert real["fd_domain"].isna().all() and real["tstr_real+synthetic"].isna().all()
    pooled = table["class"] == "all"
    assert table.loc[pooled, "tstr_synthetic"].between(0, 1).all() and table.loc[~pooled, "tstr_synthetic"].isna().all()
    generated = table[table["set"] != "real"]
    assert (generated["fd_domain"] >= 0).all() and generated["class_fidelity"].between(0, 1).all()
    assert generated["class_fidelity_judge"].between(0, 1).all()
    gated = table[table["set"] == "ddpm_cfg+gate"].set_index("class")["acceptance_rate"]
    log = comparison.gate_logs["ddpm_cfg"]
    assert gated["all"] == pytest.approx(log["accepted"].mean())
    assert gated["healthy"] == pytest.approx(log.loc[log["class"] == "healthy", "accepted"].mean())
    assert table.loc[table["set"] != "ddpm_cfg+gate", "acceptance_rate"].isna().all()


def test_the_gated_sets_classes_try_their_own_seeds(comparison):
    log = comparison.gate_logs["ddpm_cfg"]
    healthy, meningioma = (set(log.loc[log["class"] == c, "seed"]) for c in ("healthy", "meningioma"))
    assert healthy and meningioma and not healthy & meningioma


def test_guidance_explorer_redraws_on_every_control_and_draws_a_static_figure(comparison, tmp_path, monkeypatch):
    from mudiff.display import explore

    drawn = []
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    box = cx.explorer(comparison, "ddpm_cfg", interactive=True, n_seeds=2)
    cls, scale, seed = box.children[0].children
    assert len(drawn) == 1 and "healthy, w = 2" in drawn[-1].get_suptitle()
    cls.value, scale.value, seed.value = "meningioma", 0.0, 5
    assert len(drawn) == 4 and "meningioma, w = 0" in drawn[-1].get_suptitle()
    assert [ax.get_title() for ax in drawn[-1].axes] == ["seed 5", "seed 6"]
    first = drawn[-1].axes[0].images[0].get_array()
    seed.value = 6  # the explorer's seeds are the sampler's per-image seeds: seed 6 is drawn again, unchanged
    assert np.array_equal(drawn[-1].axes[0].images[0].get_array(), drawn[-2].axes[1].images[0].get_array())
    assert not np.array_equal(drawn[-1].axes[0].images[0].get_array(), first)
    fig = cx.explorer(comparison, "ddpm_cfg", interactive=False, out=tmp_path / "explorer.png", scales=(0.0, 2.0),
                      n_seeds=2)
    assert (tmp_path / "explorer.png").is_file() and len(fig.axes) == 2 * 2 * 2  # scales x (classes x seeds)


def test_seed_evaluation_scores_each_seed_once_and_resumes_from_its_tables(trained, tmp_path, monkeypatch):
    runs, data = trained
    options = {"ddpm_cfg": {"guidance_scale": 2.0}}
    table = cx.seed_evaluation(runs, data, [0, 1], tmp_path, options, classifier_steps=5, inception=False,
                               domain_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0.csv", "seed1.csv"]
    assert list(table["seed"].unique()) == [0, 1] and set(table["set"]) == {"real", "ddpm_cfg", "ddpm_cfg+gate"}
    by_seed = [table[table["seed"] == s].drop(columns="seed").reset_index(drop=True) for s in (0, 1)]
    assert not by_seed[0].equals(by_seed[1])  # new classifier, images and gate draws per seed

    def no_new_scoring(*args, **kwargs):
        raise AssertionError("a seed with a table was scored again")

    monkeypatch.setattr(cx, "Comparison", no_new_scoring)
    pd.testing.assert_frame_equal(cx.seed_evaluation(runs, data, [0, 1], tmp_path, options), table)
    pd.read_csv(tmp_path / "seed1.csv").drop(columns="class_fidelity_judge").to_csv(tmp_path / "seed1.csv")
    with pytest.raises(ValueError, match="seed1.csv was written by an earlier version .no class_fidelity_judge"):
        cx.seed_evaluation(runs, data, [0, 1], tmp_path, options)
    pd.read_csv(tmp_path / "seed0.csv").assign(fid=1.0, kid_x1000=1.0).to_csv(tmp_path / "seed0.csv")  # no probe
    with pytest.raises(ValueError, match="seed0.csv was written by an earlier version .no class_fidelity_probe"):
        cx.seed_evaluation(runs, data, [0, 1], tmp_path, options)


def test_with_inception_features_a_linear_probe_judges_class_fidelity_too(trained):
    """The probe (another model family) is fitted on the real training split's Inception features; its row for the
    real test split is its accuracy there, and it scores every generated set."""
    runs, data = trained
    comparison = cx.Comparison(runs, data, classifier_steps=5, inception=True, domain_epochs=1)
    comparison.generate("ddpm_cfg", gated=False, guidance_scale=2.0)
    table = comparison.metrics(["ddpm_cfg"], tstr_steps=5)
    assert {"fid", "kid_x1000", "class_fidelity_probe"} <= set(table)
    real = table[table["set"] == "real"].set_index("class")["class_fidelity_probe"]
    expected = class_eval.accuracy(comparison.probe, data["test"], comparison.bank.real["inception"])
    assert real.to_dict() == {**{c: expected[c] for c in data["test"].classes}, "all": expected["balanced"]}
    assert table.loc[table["set"] == "ddpm_cfg", "class_fidelity_probe"].between(0, 1).all()


def test_seed_evaluation_fits_the_probe_once_for_all_seeds(trained, tmp_path, monkeypatch):
    runs, data = trained
    fits = []
    fit = class_eval.FeatureProbe.fit
    monkeypatch.setattr(class_eval.FeatureProbe, "fit", lambda *a, **k: fits.append(1) or fit(*a, **k))
    table = cx.seed_evaluation({"ddpm_cfg": runs["ddpm_cfg"]}, data, [0, 1], tmp_path, classifier_steps=5,
                               inception=True, domain_epochs=1)
    assert len(fits) == 1
    real = table[(table["set"] == "real") & (table["class"] == "all")].set_index("seed")["class_fidelity_probe"]
    assert real[0] == real[1]  # the same probe judges every seed's real test split


def test_the_judge_is_a_classifier_the_gate_did_not_use(comparison):
    images = comparison.data["test"].images
    gate, judge = (class_eval.predict_proba(c, images) for c in (comparison.classifier, comparison.judge))
    assert comparison.gate.classifier is comparison.classifier and comparison.judge is not comparison.classifier
    assert not np.allclose(gate, judge)  # trained with its own seed


def _pooled(seed, values):
    rows = [{"seed": seed, "set": name, "class": c, "class_fidelity": v, "fid": 100 - 50 * v}
            for name, v in values.items() for c in ("healthy", "glioma")]
    return rows + [{"seed": seed, "set": name, "class": "all", "class_fidelity": v, "fid": 100 - 50 * v}
                   for name, v in values.items()]


def test_target_table_tests_each_target_over_seeds():
    runs = [{"good": 0.9, "bad": 0.1, "mixed": 0.5 + d} for d in (0.2, -0.1, 0.05)]
    metrics = pd.DataFrame([row for seed, values in enumerate(runs) for row in _pooled(seed, values)])
    targets = [cx.Target("good above chance", "good", None, "class_fidelity"),
               cx.Target("bad beats good", "bad", "good", "class_fidelity"),
               cx.Target("mixed beats chance", "mixed", None, "class_fidelity"),
               cx.Target("good has the lower FID", "good", "bad", "fid", lower_is_better=True),
               cx.Target("absent beats good", "absent", "good", "class_fidelity"),
               cx.Target("no such metric", "good", "bad", "tstr_synthetic")]
    table = cx.target_table(metrics, targets).set_index("target")
    assert table["verdict"].to_dict() == {"good above chance": "met", "bad beats good": "missed",
                                          "mixed beats chance": "inconclusive", "good has the lower FID": "met",
                                          "absent beats good": "not run", "no such metric": "not run"}
    assert table.loc["good above chance", "b"] == "chance (0.5)"  # two classes
    assert table.loc["good above chance", "effect"] == pytest.approx(0.4)
    assert table.loc["bad beats good", "effect"] == pytest.approx(-0.8)
    assert table.loc["good has the lower FID", "effect"] == pytest.approx(40)  # FID 55 vs 95, lower is better
    assert table.loc["mixed beats chance", "per_seed"] == "+0.2, -0.1, +0.05"
    assert table.loc["good above chance", "n_seeds"] == 3
