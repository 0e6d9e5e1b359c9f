"""FID/KID with the shipped Inception TorchScript, the Fréchet distance, and the domain feature encoder."""
import numpy as np
import pytest
import torch

from mudiff.evaluation.fid import (InceptionFeatures, domain_features, extract_features, fid_kid, fid_kid_from_features,
                                   frechet_distance, inception, train_domain_encoder)

N, H = 16, 32
SIGMAS = (0.05, 0.15, 0.3)


def phantoms(n: int, seed: int = 0) -> np.ndarray:
    """(n, H, H) 'brain slices': ellipses of random size, position and texture, with a bright blob, on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :H] / H
    out = []
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(0.45, 0.55, 2).tolist() + rng.uniform(0.25, 0.4, 2).tolist()
        brain = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        blob = (yy - cy - rng.uniform(-0.1, 0.1)) ** 2 + (xx - cx - rng.uniform(-0.1, 0.1)) ** 2 < 0.005
        out.append(brain * (0.3 + 0.3 * np.sin(rng.uniform(4, 9) * xx) ** 2) + 0.3 * blob)
    return np.clip(out, 0, 1).astype(np.float32)


def noisy(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(x + sigma * np.random.default_rng(1).standard_normal(x.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def sets():
    """{0: real phantoms, sigma: their noisy versions} as (images, Inception features) pairs."""
    real = phantoms(N)
    images = {s: noisy(real, s) if s else real for s in (0, *SIGMAS)}
    return {s: (x, extract_features(x, inception(), batch_size=8)) for s, x in images.items()}


def test_frechet_distance_matches_torchmetrics():
    """Both of our exact routes (n <= d: SVD of A B^T; n > d: symmetric eigenproblem) agree with torchmetrics'
    FID on low-dimensional features (where its general eigvals is fast)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from mudiff.evaluation.fid import _Given

    rng = np.random.default_rng(0)
    d = 16
    for n in (10, 40):
        a, b = rng.standard_normal((n, d)), 0.5 + 1.5 * rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
        ref = FrechetInceptionDistance(feature=_Given(d))
        ref.update(torch.as_tensor(a), real=True), ref.update(torch.as_tensor(b), real=False)
        assert frechet_distance(a, b) == pytest.approx(float(ref.compute()), rel=1e-6)
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_inception_contract_and_identity(sets):
    model = inception()
    assert isinstance(model, InceptionFeatures) and model.num_features == 2048
    real = sets[0][0][:2]
    result = fid_kid(real, real.copy(), batch_size=2)  # grey (N, H, W) in [0, 1], end to end
    assert result["n"] == 2 and result["fid"] == pytest.approx(0.0, abs=1e-3)
    assert result["kid_mean"] <= 0  # the unbiased MMD of a set with itself is slightly negative
    # torchmetrics accepts the module as its feature extractor on float [0, 1] images, and scores as we do
    from torchmetrics.image.kid import KernelInceptionDistance

    (real, real_f), (fake, fake_f) = ((x[:4], f[:4]) for x, f in (sets[0], sets[0.3]))
    kid = KernelInceptionDistance(feature=model, subsets=5, subset_size=4)
    kid.update(torch.from_numpy(real)[:, None], real=True), kid.update(torch.from_numpy(fake)[:, None], real=False)
    ours = fid_kid_from_features(real_f, fake_f, kid_subsets=5)
    assert float(kid.compute()[0]) == pytest.approx(ours["kid_mean"], rel=1e-4)


def test_fid_kid_grow_with_noise(sets):
    features = {s: f for s, (_, f) in sets.items()}
    results = [fid_kid_from_features(features[0], features[s]) for s in SIGMAS]
    assert all(r["n"] == N and r["kid_subset_size"] == N for r in results)
    assert np.all(np.diff([r["fid"] for r in results]) > 0)
    assert np.all(np.diff([r["kid_mean"] for r in results]) > 0)
    with pytest.warns(UserWarning, match="different size"):
        assert fid_kid_from_features(features[0], features[SIGMAS[0]][:-2])["n_fake"] == N - 2


def test_domain_encoder_features():
    train, test = phantoms(32, seed=1), phantoms(N, seed=2)
    encoder, losses = train_domain_encoder(train, epochs=8, seed=0, batch_size=8)
    assert losses[-1] < 0.7 * losses[0]
    feats = domain_features(encoder, test)
    assert feats.shape == (N, 64)
    again = [domain_features(train_domain_encoder(train, epochs=1, seed=0, batch_size=8)[0], test) for _ in "ab"]
    np.testing.assert_array_equal(*again)
    distances = [frechet_distance(feats, domain_features(encoder, noisy(test, s))) for s in SIGMAS]
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(distances) > 0)
