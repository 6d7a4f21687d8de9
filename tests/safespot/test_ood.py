"""OOD scores, the outlier training terms and the feature hook (safespot.ood)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import build_network
from models.normalize import Classifier
from safespot import SearchConfig, find_safe_spots, ood
from safespot.training import Recipe


def test_msp_and_energy_shapes_ranges_and_direction() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 3
    msp, energy = ood.msp_score(logits), ood.energy_score(logits)
    assert msp.shape == energy.shape == (64,)
    assert bool((msp >= 0.1 - 1e-6).all() and (msp <= 1).all())
    top = logits.amax(dim=1)
    assert bool((energy >= top).all() and (energy <= top + math.log(10) + 1e-5).all())
    # Confident logits score higher than flat ones under both (high = in-distribution).
    sharp, flat = torch.tensor([[9.0] + [0.0] * 9]), torch.zeros(1, 10)
    assert ood.msp_score(sharp) > ood.msp_score(flat) and ood.energy_score(sharp) > ood.energy_score(flat)


def test_safespot_score_interpolates_msp_and_attacked_msp() -> None:
    msp, adv = torch.tensor([0.9, 0.5]), torch.tensor([0.2, 0.5])
    assert torch.equal(ood.safespot_score(msp, adv, 1.0), msp)
    assert torch.equal(ood.safespot_score(msp, adv, 0.0), adv)
    assert torch.allclose(ood.safespot_score(msp, adv, 0.25), torch.tensor([0.375, 0.5]))
    with pytest.raises(ValueError):
        ood.safespot_score(msp, adv, 1.5)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_keeps_the_requested_true_positive_rate(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=g))
    scores = (torch.rand(n, generator=g) * 10).round() / 10  # many ties
    for tpr in (0.95, 0.8, 1.0):
        t = ood.threshold_for_tpr(scores, tpr)
        assert float((scores >= t).double().mean()) >= tpr
        above = scores[scores > t]  # the next larger threshold would drop below the rate
        if above.numel():
            assert float((scores >= above.min()).double().mean()) < tpr


def test_kl_to_uniform_is_zero_for_uniform_and_matches_outlier_exposure() -> None:
    flat = torch.full((3, 10), 4.2)
    assert torch.allclose(ood.kl_to_uniform(flat), torch.zeros(3), atol=1e-6)
    logits = torch.randn(8, 10)
    kl = ood.kl_to_uniform(logits)
    assert bool((kl > 0).all())
    oe = -(logits.log_softmax(1)).mean(1)  # Hendrycks et al.: CE to the uniform distribution
    assert torch.allclose(kl, oe - math.log(10), atol=1e-6)
    uniform = torch.full((8, 10), 0.1)
    expected = (uniform * (uniform.log() - logits.log_softmax(1))).sum(1)
    assert torch.allclose(kl, expected, atol=1e-5)


def test_safe_spot_term_pushes_the_outliers_attacked_loss_up() -> None:
    torch.manual_seed(0)
    net = nn.Linear(6, 4)
    x_out, x_adv = torch.randn(16, 6), torch.randn(16, 6)
    labels = net(x_out).detach().argmax(1)
    loss, logs = ood.outlier_terms(net(x_out), net(x_adv), labels, gamma=0.0, lam=0.5)
    ce = F.cross_entropy(net(x_adv), labels)
    assert loss.item() == pytest.approx(-0.5 * ce.item(), rel=1e-6)
    assert logs["ood_adv_ce"] == pytest.approx(ce.item(), rel=1e-5) and 0 <= logs["ood_safe"] <= 1
    grad_loss = torch.autograd.grad(loss, net.weight)[0]
    grad_ce = torch.autograd.grad(ce, net.weight)[0]
    assert torch.allclose(grad_loss, -0.5 * grad_ce, atol=1e-6)
    with torch.no_grad():  # a descent step on the loss is an ascent step on the attacked CE
        net.weight -= 0.1 * grad_loss
    assert F.cross_entropy(net(x_adv), labels) > ce


def test_ce_cap_stops_the_push_once_the_attacked_point_is_no_better_than_chance() -> None:
    logits_adv = torch.tensor([[0.0, 9.0, 0.0], [3.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])  # row 0: CE ~ 9 > cap; row 1: CE ~ 0.1 < cap
    loss, _ = ood.outlier_terms(torch.zeros(2, 3), logits_adv, labels, gamma=1.0, lam=1.0,
                                ce_cap=ood.default_ce_cap(3))
    (grad,) = torch.autograd.grad(loss, logits_adv)
    assert torch.equal(grad[0], torch.zeros(3)) and bool(grad[1].abs().sum() > 0)


def test_outlier_loss_on_the_tiny_model(tiny_model, test_images) -> None:
    x = test_images[0][:8]
    recipe = Recipe(name="s-fgsm-adv")
    gen = torch.Generator().manual_seed(0)
    oe_loss, oe_logs = ood.outlier_loss(tiny_model, x, recipe, gamma=0.5, lam=0.0, generator=gen)
    assert set(oe_logs) == {"ood_kl"} and oe_loss.item() == pytest.approx(0.5 * oe_logs["ood_kl"], rel=1e-5)
    loss, logs = ood.outlier_loss(tiny_model, x, recipe, gamma=0.5, lam=0.1, ce_cap=math.log(10), generator=gen)
    assert {"ood_kl", "ood_adv_ce", "ood_safe"} <= set(logs) and math.isfinite(loss.item())
    grads = torch.autograd.grad(loss, [p for p in tiny_model.parameters() if p.requires_grad])
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_outlier_recipe_follows_the_training_recipe() -> None:
    s_pgd = Recipe(name="s-pgd-adv")
    assert ood.outlier_recipe(s_pgd) is s_pgd
    from_pgd = ood.outlier_recipe(Recipe(name="adv-pgd", attack_steps=7))
    assert from_pgd.name == "s-fgsm-adv" and not from_pgd.fast_attack and from_pgd.attack_steps == 7
    assert ood.outlier_recipe(Recipe(name="natural")).fast_attack


@pytest.mark.parametrize(("arch", "kwargs", "size"), [
    ("cifar_cnn", {"width": 4, "hidden": 16}, 32),
    ("preact_resnet18", {"width": 4}, 32),
    ("wide_resnet", {"depth": 10, "widen_factor": 1}, 32),
])  # resnet50 (torchvision) ends in `fc` too; left out because building it takes seconds
def test_features_are_the_last_linear_layers_input(arch, kwargs, size) -> None:
    net = build_network(arch, **kwargs).eval()
    model = Classifier(net, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(3, 3, size, size)
    logits, feats = ood.logits_and_features(model, x, batch_size=2)
    assert logits.shape == (3, 10) and feats.shape[0] == 3 and feats.ndim == 2
    assert torch.allclose(ood.last_linear(model)(feats), logits, atol=1e-4)
    assert not ood.last_linear(model)._forward_hooks  # the hook is gone afterwards


def test_mahalanobis_uses_the_shared_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    scale = torch.tensor([3.0, 0.3])  # wide along x, narrow along y
    y = torch.arange(20_000) % 2
    z = means[y] + torch.randn(20_000, 2, generator=g) * scale
    det = ood.MahalanobisDetector.fit(z, y)
    assert torch.allclose(det.means.float(), means, atol=0.3)
    probes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    d = det.distances(probes)
    assert d.shape == (3, 2)
    # Same Euclidean distance from class 0's mean, but the narrow axis is far less likely.
    score = det.score(probes)
    assert score[0] > score[1] > score[2]
    assert float(d[1, 0]) == pytest.approx((2 / 3) ** 2, rel=0.1)
    assert float(d[2, 0]) == pytest.approx((2 / 0.3) ** 2, rel=0.1)
    with pytest.raises(ValueError):
        ood.MahalanobisDetector.fit(z[y == 0], y[y == 0] + 1)  # class 0 absent


def test_mahalanobis_agrees_with_pytorch_ood() -> None:
    import pytorch_ood.detector as pytorch_ood  # dev extra: an independent implementation
    g = torch.Generator().manual_seed(1)
    y = torch.arange(600) % 3
    z = torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(600, 8, generator=g)
    probes = torch.randn(50, 8, generator=g) * 3
    ours = ood.MahalanobisDetector.fit(z, y, shrinkage="ridge").score(probes)  # theirs has no shrinkage
    theirs = -pytorch_ood.Mahalanobis(None).fit_features(z, y).predict_features(probes)  # their outlier score
    # pytorch-ood uses the unnormalised scatter matrix and a factor 1/2: the same ranking.
    assert np.corrcoef(ours.numpy(), theirs.double().numpy())[0, 1] > 0.9999


def test_ledoit_wolf_keeps_a_low_rank_covariance_invertible_and_matches_scikit_learn() -> None:
    from sklearn.covariance import LedoitWolf

    g = torch.Generator().manual_seed(2)
    y = torch.arange(200) % 4
    basis = torch.randn(10, 64, generator=g)  # features of rank 10 in 64 dimensions, as ReLU features often are
    z = (torch.randn(4, 10, generator=g)[y] + torch.randn(200, 10, generator=g)) @ basis
    det = ood.MahalanobisDetector.fit(z, y)
    centered = (z - det.means.float()[y]).double().numpy()
    assert np.allclose(det.precision.numpy(), LedoitWolf(assume_centered=True).fit(centered).precision_)
    assert float(torch.linalg.cond(det.precision)) < 1e6
    inside = det.means.float()[y[:20]]  # at the class means
    off = inside + torch.randn(20, 64, generator=g) * 5  # leaves the feature subspace
    assert bool((det.score(inside) > det.score(off)).all())
    with pytest.raises(ValueError, match="shrinkage"):
        ood.MahalanobisDetector.fit(z, y, shrinkage="oracle")


def test_gaussian_noise_scores_lower_than_cifar_with_the_tiny_model(tiny_model, test_images) -> None:
    from training.data import to_tensor
    from training.ood_sets import noise_images

    x_in = test_images[0][::8][:24]
    x_noise = to_tensor(noise_images("gaussian", 24, (32, 32)))
    cfg = SearchConfig.preset("fast")
    r_in, r_noise = find_safe_spots(tiny_model, x_in, cfg), find_safe_spots(tiny_model, x_noise, cfg)
    for mu in (0.0, 0.5, 1.0):
        d_in = ood.safespot_score(r_in.msp, r_in.msp_adv, mu)
        d_noise = ood.safespot_score(r_noise.msp, r_noise.msp_adv, mu)
        assert float(d_noise.mean()) < float(d_in.mean())


def test_layer_features_are_channel_means_at_evenly_spaced_depths_then_the_penultimate(tiny_model, test_images) -> None:
    x = test_images[0][:20]
    logits, layers = ood.layer_features(tiny_model, x, batch_size=8)
    assert torch.allclose(logits, tiny_model(x), atol=1e-5)
    convs = [m for m in tiny_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [f.shape[1] for f in layers[:-1]] == [c.out_channels for c in convs][: len(layers) - 1]
    assert torch.allclose(layers[-1], ood.logits_and_features(tiny_model, x)[1])
    assert all(len(f) == 20 for f in layers)
    thinned = ood.layer_features(tiny_model, x, max_layers=3)[1]
    assert len(thinned) == 3 and torch.allclose(thinned[0], layers[0]) and torch.allclose(thinned[-1], layers[-1])


def test_layerwise_mahalanobis_standardises_each_layer_on_its_fit_images(tiny_model, test_images) -> None:
    from training.data import to_tensor
    from training.ood_sets import noise_images

    x, y = test_images[0][:160], test_images[1][:160]
    layers = ood.layer_features(tiny_model, x)[1]
    det = ood.LayerwiseMahalanobis.fit(layers, y)
    fitted = det.layer_scores(layers)
    assert fitted.shape == (160, len(layers))
    assert torch.allclose(fitted.mean(dim=0), torch.zeros(len(layers), dtype=fitted.dtype), atol=1e-6)
    noise = ood.layer_features(tiny_model, to_tensor(noise_images("gaussian", 40, (32, 32))))[1]
    assert float(det.score(noise).max()) < float(det.score(layers).median())  # noise is far from every class
