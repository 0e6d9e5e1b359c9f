"""Evaluation of class-conditioned generation (metric ranges, class fidelity, equal-n distances, memorisation) and
the trust gate (held-out real images pass at about the nominal rate; noise, blanks, other classes and a
mode-collapsed batch are rejected; the try budget)."""
import dataclasses

import numpy as np
import torch
import pytest

from mudiff.data.labelled import LabelledSlices, load_labelled, phantom_class_slices
from mudiff.evaluation import class_eval
from mudiff.evaluation.trust_gate import GateBudgetError, TrustGate, plot_control_chart


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    # two classes, 4 / 2 / 2 subjects per class: the test split is two subjects per class, so every rate below is
    # clustered by subject (one subject with a small lesion moves it by half); the bounds leave room for that
    root = phantom_class_slices(tmp_path_factory.mktemp("gate") / "slices", {"healthy": 8, "meningioma": 8}, size=32,
                                slices_per_subject=6, split=(0.5, 0.25, 0.25), seed=2, min_lesion_fraction=0.025)
    return {s: load_labelled(root, s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def classifier(real):
    return class_eval.train_classifier(real["train"], steps=200, seed=0, width=8)


@pytest.fixture(scope="module")
def gate(classifier, real):
    return TrustGate(classifier, real["train"], real["val"], quantile=0.95)


def test_metric_inputs_must_be_in_the_model_range():
    ok = class_eval.to_unit(np.array([[[[-1.0, 0.0, 1.0]]]]))
    assert ok.min() == 0 and ok.max() == 1
    with pytest.raises(ValueError, match=r"model range \[-1, 1\].*\[0, 255\]"):
        class_eval.to_unit(np.array([[[[0.0, 255.0]]]]))
    with pytest.raises(ValueError, match="non-finite"):
        class_eval.to_unit(np.array([[[[np.nan]]]]))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        class_eval.to_unit(np.zeros((2, 4, 4)))


def test_the_real_data_classifier_recognises_held_out_classes(classifier, real):
    scores = class_eval.accuracy(classifier, real["test"])
    assert scores["balanced"] >= 0.7, scores  # chance: 1/2
    fidelity = class_eval.class_fidelity(classifier, real["test"])
    assert fidelity == {**{c: scores[c] for c in real["test"].classes}, "all": scores["balanced"]}


class _SaysHealthy(torch.nn.Module):
    """A classifier that calls every image "healthy" (class 0)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 4).float() * 10


def test_class_fidelity_of_a_label_blind_generator_is_chance_whatever_the_class_counts():
    counts = [8, 4, 4, 4]  # 40 % healthy: pooled accuracy would give 0.4
    labels = np.repeat(np.arange(4), counts)
    generated = LabelledSlices(np.zeros((len(labels), 1, 8, 8)), labels, ("healthy", "glioma", "meningioma",
                                                                          "metastases"), labels.astype(str))
    fidelity = class_eval.class_fidelity(_SaysHealthy(), generated)
    assert fidelity == {"healthy": 1.0, "glioma": 0.0, "meningioma": 0.0, "metastases": 0.0, "all": 0.25}


def test_feature_probe_learns_separable_features_and_chooses_its_weight_on_validation():
    """Three classes, each a shifted cloud in 20-d: new draws are classified; the L2 weight is the best of the grid
    on the validation set (the smallest on ties); the fit is deterministic; a probe reads features, not images."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 20))

    def draw(n):
        labels = np.repeat(np.arange(3), n)
        return centres[labels] + rng.normal(0, 1, (len(labels), 20)), labels

    (x, y), (xv, yv), (xt, yt) = draw(10), draw(5), draw(20)
    probe = class_eval.FeatureProbe.fit(x, y, 3, xv, yv)
    assert (probe.predict(xt) == yt).mean() > 0.95
    assert probe.weight_decay == class_eval.PROBE_WEIGHT_DECAYS[0]  # every weight separates these: the first kept
    again = class_eval.FeatureProbe.fit(x, y, 3, xv, yv)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    heavy = class_eval.FeatureProbe.fit(x, y, 3, xv, yv, weight_decays=[1e3])
    assert heavy.weight.abs().max() < probe.weight.abs().max()  # the weight decay is applied
    generated = LabelledSlices(np.zeros((len(yt), 1, 4, 4)), yt, ("a", "b", "c"), yt.astype(str))
    assert class_eval.class_fidelity(probe, generated, xt)["all"] > 0.95
    with pytest.raises(ValueError, match="features of the 60 images"):
        class_eval.class_fidelity(probe, generated)
    with pytest.raises(ValueError, match="at least two classes"):
        class_eval.FeatureProbe.fit(x[:10], y[:10], 3, xv, yv)


def test_distances_are_per_class_at_equal_n_and_small_for_real_images(real):
    bank = class_eval.FeatureBank(real["train"], real["test"], inception=False, domain_epochs=2)
    same = bank.distances(real["test"], "real test")
    assert list(same["class"]) == ["healthy", "meningioma", "all"]
    assert np.allclose(same["fd_domain"], 0, atol=1e-6)
    noise = LabelledSlices(np.random.default_rng(0).uniform(-1, 1, real["test"].images.shape), real["test"].labels,
                           real["test"].classes, real["test"].origins)
    assert (bank.distances(noise, "noise")["fd_domain"] > 1e-2).all()
    test = real["test"]  # the same images with the class order reversed: classes are matched by name
    swapped = LabelledSlices(test.images, len(test.classes) - 1 - test.labels, test.classes[::-1], test.origins)
    table = bank.distances(swapped, "swapped").set_index("class")
    assert np.allclose(table.loc[["healthy", "meningioma"], "fd_domain"], 0, atol=1e-6)
    with pytest.raises(ValueError, match="equal n per class"):
        bank.distances(real["test"].subset([0, 1, 2]))


def test_inception_fid_of_a_set_with_itself_is_zero(real):
    few = real["test"].subset(np.r_[np.flatnonzero(real["test"].labels == 0)[:3],
                                    np.flatnonzero(real["test"].labels == 1)[:3]])
    bank = class_eval.FeatureBank(real["train"], few, inception=True, domain_epochs=1)
    table = bank.distances(few, "same")
    assert np.allclose(table["fid"], 0, atol=1e-3) and "kid_x1000" in table


def test_nearest_training_images_find_copies(real):
    copies = real["train"].subset([4, 9])
    table = class_eval.nearest_training_images(copies, real["train"])
    assert np.allclose(table["distance"], 0, atol=1e-3) and set(table["nn_index"]) == {4, 9}
    held_out = class_eval.train_nn_distances(real["train"], real["test"])
    assert (held_out > 0).all()


def test_tstr_on_real_images_beats_noise(real):
    shuffled = LabelledSlices(real["train"].images, np.random.default_rng(0).permutation(real["train"].labels),
                              real["train"].classes, real["train"].origins)
    good = class_eval.tstr(real["train"], real["train"], real["test"], steps=100)
    bad = class_eval.tstr(shuffled, real["train"], real["test"], steps=100)
    assert good["synthetic"] > bad["synthetic"] and set(good) == {"synthetic", "real+synthetic"}


def test_held_out_real_images_pass_at_about_the_nominal_rate(gate, real):
    log = gate.score(real["test"].images, real["test"].labels)
    assert log["accepted"].mean() >= 0.6, log.loc[~log["accepted"], "reason"].tolist()


def test_noise_blank_nan_and_other_class_images_are_rejected(gate, real):
    rng = np.random.default_rng(0)
    shape = (6, *real["test"].images.shape[1:])
    noise = gate.score(rng.uniform(-1, 1, shape), np.zeros(6, int))
    assert not noise["accepted"].any()
    blank = gate.score(np.full(shape, -1.0), np.zeros(6, int))
    assert not blank["accepted"].any() and blank["reason"].str.contains("constant image").all()
    broken = np.array(real["test"].images[:2])
    broken[0, 0, 5, 5] = np.nan
    broken[1] *= 3
    log = gate.score(broken, real["test"].labels[:2])
    assert list(log["reason"].str.split(";").str[0]) == ["non-finite values", "outside [-1, 1]"]
    meningioma = real["test"].of_class("meningioma")
    as_healthy = gate.score(meningioma, np.zeros(len(meningioma), int))
    assert as_healthy["accepted"].mean() <= 0.5, as_healthy["reason"].tolist()


def test_a_mode_collapsed_batch_is_rejected(gate, real):
    image = real["test"].images[np.argmax(gate.score(real["test"].images, real["test"].labels)["accepted"])]
    label = real["test"].labels[np.argmax(gate.score(real["test"].images, real["test"].labels)["accepted"])]
    collapsed = np.repeat(image[None], 8, 0) + np.random.default_rng(0).normal(0, 1e-3, (8, *image.shape))
    log = gate.score(collapsed.clip(-1, 1), np.full(8, label))
    assert log["accepted"].sum() == 1 and log["duplicate"].sum() == 7


def test_generate_until_n_accepted_or_a_clear_budget_error(gate, real, tmp_path):
    images = real["test"].of_class("meningioma")

    def replay(labels, seeds):  # a "generator" that returns real held-out images, then noise
        return np.stack([images[s] if s < len(images) else np.random.default_rng(s).uniform(-1, 1, images[0].shape)
                         for s in seeds])

    result = gate.generate(replay, "meningioma", n=3, batch_size=4)
    assert result.accepted.shape == (3, *images.shape[1:]) and len(result.seeds) == 3
    assert 0 < result.acceptance_rate <= 1 and {"try", "seed", "mahalanobis", "reason"} <= set(result.log)
    plot_control_chart(result.log, gate, "meningioma", tmp_path / "chart.png")
    assert (tmp_path / "chart.png").is_file()
    with pytest.raises(GateBudgetError, match=r"acceptance rate \d+\.\d%") as err:
        gate.generate(lambda labels, seeds: np.random.default_rng(seeds[0]).uniform(-1, 1, (len(seeds), 1, 32, 32)),
                      "meningioma", n=2, max_tries=6)
    assert len(err.value.log) == 6 and not err.value.log["accepted"].any()


def test_df_mri_rule_is_two_sided_mean_plus_minus_z_sd(classifier, real, tmp_path):
    gate = TrustGate(classifier, real["train"], real["val"], quantile=0.95, rule="mean_sd")
    lim = gate.limits["healthy"]
    for band, held_out in ((lim.mahalanobis_range, lim.calibration_mahalanobis),
                           (lim.confidence_range, lim.calibration_confidence)):
        half = 1.959964 * held_out.std(ddof=1)
        assert np.allclose(band, (held_out.mean() - half, held_out.mean() + half), atol=1e-4)
    # a distance below the lower limit (an image more typical than the held-out real ones) is rejected
    healthy = real["test"].of_class("healthy")
    maha = gate.score(healthy, np.zeros(len(healthy), int))["mahalanobis"]
    gate.limits["healthy"] = dataclasses.replace(lim, mahalanobis_range=(float(maha.median()), np.inf),
                                                 confidence_range=(0.0, 1.0))
    log = gate.score(healthy, np.zeros(len(healthy), int))
    assert (log["accepted"] == (maha >= maha.median())).all()
    assert log.loc[~log["accepted"], "reason"].str.startswith("mahalanobis").all()
    train = real["train"]
    default = TrustGate(classifier, train, real["val"], quantile=0.95)
    assert all(default.limits[c].mahalanobis_range[0] == 0 and default.limits[c].confidence_range[1] == 1
               for c in train.classes)
    one_sided = TrustGate(classifier, train, real["val"], quantile=0.95, rule="mean_sd_one_sided").limits["healthy"]
    assert one_sided.mahalanobis_range == (0.0, lim.mahalanobis_range[1])  # the two-sided band's poor side only
    assert one_sided.confidence_range == (lim.confidence_range[0], 1.0)
    plot_control_chart(gate.score(train.images, train.labels), gate, "healthy", tmp_path / "two_sided.png")
    with pytest.raises(ValueError, match="rule must be one of"):
        TrustGate(classifier, train, real["val"], rule="fid")
