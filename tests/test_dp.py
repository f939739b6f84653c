"""Tests for mexp_lib.dp: DP-SGD through Opacus, per-epoch curves, runs, tables and text."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from mexp_lib import dp, dp_results
from mexp_lib.experiment import load_study

matplotlib.use("Agg")

NUM_CLASSES = 4
FEATURE_DIM = 16


def _blobs(samples_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs, one per class, as float32 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(NUM_CLASSES, FEATURE_DIM))
    labels = np.repeat(np.arange(NUM_CLASSES), samples_per_class)
    features = centres[labels] + rng.normal(size=(len(labels), FEATURE_DIM))
    return features.astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def blobs():
    features, labels = _blobs(60, seed=0)
    test_features, test_labels = _blobs(30, seed=0)
    # The last 20 training samples play poisons: relabelled to the next class.
    labels = labels.copy()
    labels[-20:] = (labels[-20:] + 1) % NUM_CLASSES
    evaluation_sets = {dp.NORMAL: (features[:-20], labels[:-20]),
                       dp.POISON: (features[-20:], labels[-20:]),
                       dp.NONMEMBER: (test_features, test_labels),
                       "empty": (features[:0], labels[:0])}
    return features, labels, evaluation_sets


def _train(blobs, *, privacy, epochs=3, seed=0, **kwargs) -> dp.TrainedHead:
    features, labels, evaluation_sets = blobs
    return dp.train_head_with_curves(
        features, labels, num_classes=NUM_CLASSES, evaluation_sets=evaluation_sets,
        seed=seed, training=dp.TrainingConfig(epochs=epochs, batch_size=50),
        privacy=privacy, device=torch.device("cpu"), **kwargs)


def _weights(trained: dp.TrainedHead) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in trained.head.parameters()])


# --------------------------------------------------------------------------- training


def test_private_epsilon_finite_and_growing(blobs):
    trained = _train(blobs, privacy=dp.PrivacyConfig())

    assert trained.epsilon.shape == (3,)
    assert np.all(np.isfinite(trained.epsilon))
    assert trained.epsilon[0] > 0
    assert np.all(np.diff(trained.epsilon) > 0)


def test_private_epsilon_matches_rdp_accountant(blobs):
    features = blobs[0]
    trained = _train(blobs, privacy=dp.PrivacyConfig(noise_multiplier=1.3))
    steps_per_epoch = math.ceil(len(features) / 50)
    accountant = RDPAccountant()
    accountant.history = [(1.3, 1 / steps_per_epoch, 3 * steps_per_epoch)]

    assert trained.epsilon[-1] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_nonprivate_epsilon_is_infinite(blobs):
    trained = _train(blobs, privacy=None)

    assert np.all(np.isinf(trained.epsilon))


@pytest.mark.parametrize("privacy", [None, dp.PrivacyConfig()], ids=["plain", "dp"])
def test_curves_cover_every_epoch_and_group(blobs, privacy):
    trained = _train(blobs, privacy=privacy, epochs=4)

    for group in (dp.NORMAL, dp.POISON, dp.NONMEMBER):
        assert trained.loss[group].shape == (4,)
        assert trained.accuracy[group].shape == (4,)
        assert np.all(np.isfinite(trained.loss[group])), group
        assert np.all((trained.accuracy[group] >= 0) & (trained.accuracy[group] <= 1)), group
    assert np.all(np.isnan(trained.loss["empty"]))
    assert np.all(np.isnan(trained.accuracy["empty"]))


def test_curves_match_final_head(blobs):
    trained = _train(blobs, privacy=dp.PrivacyConfig())
    features, labels = blobs[2][dp.NONMEMBER]
    logits = trained.head(torch.as_tensor(features)).detach().numpy()

    assert trained.accuracy[dp.NONMEMBER][-1] == pytest.approx(
        np.mean(logits.argmax(axis=1) == labels))


def test_nonprivate_head_learns_blobs(blobs):
    trained = _train(blobs, privacy=None, epochs=20)

    assert trained.accuracy[dp.NORMAL][-1] > 0.9
    assert trained.accuracy[dp.NONMEMBER][-1] > 0.9


def test_private_and_nonprivate_differ(blobs):
    plain = _train(blobs, privacy=None)
    private = _train(blobs, privacy=dp.PrivacyConfig())

    assert not np.allclose(_weights(plain), _weights(private))
    assert not np.allclose(plain.loss[dp.NORMAL], private.loss[dp.NORMAL])


def test_private_training_reproducible(blobs):
    first = _train(blobs, privacy=dp.PrivacyConfig(), seed=5)
    second = _train(blobs, privacy=dp.PrivacyConfig(), seed=5)
    other_seed = _train(blobs, privacy=dp.PrivacyConfig(), seed=6)

    np.testing.assert_array_equal(_weights(first), _weights(second))
    assert not np.allclose(_weights(first), _weights(other_seed))


def test_ghost_clipping_matches_hooks(blobs):
    ghost = _train(blobs, privacy=dp.PrivacyConfig(), grad_sample_mode="ghost")
    hooks = _train(blobs, privacy=dp.PrivacyConfig(), grad_sample_mode="hooks")

    np.testing.assert_allclose(_weights(ghost), _weights(hooks), atol=1e-5)
    np.testing.assert_array_equal(ghost.epsilon, hooks.epsilon)


def test_more_noise_spends_less_epsilon(blobs):
    low_noise = _train(blobs, privacy=dp.PrivacyConfig(noise_multiplier=0.7))
    high_noise = _train(blobs, privacy=dp.PrivacyConfig(noise_multiplier=2.0))

    assert high_noise.epsilon[-1] < low_noise.epsilon[-1]


def test_trained_head_has_no_opacus_hooks(blobs):
    trained = _train(blobs, privacy=dp.PrivacyConfig())

    for module in trained.head.modules():
        assert not module._forward_hooks, module
        assert not module._backward_hooks, module


def test_training_restores_thread_count(blobs):
    before = torch.get_num_threads()
    _train(blobs, privacy=dp.PrivacyConfig(), epochs=1)

    assert torch.get_num_threads() == before


def test_rejects_unknown_grad_sample_mode(blobs):
    with pytest.raises(ValueError, match="grad_sample_mode must be one of"):
        _train(blobs, privacy=dp.PrivacyConfig(), grad_sample_mode="functorch")


def test_rejects_out_of_range_labels(blobs):
    features, labels, evaluation_sets = blobs
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        dp.train_head_with_curves(features, labels, num_classes=3,
                                  evaluation_sets=evaluation_sets, seed=0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("noise_multiplier", [0.0, -1.0, math.nan, math.inf])
def test_invalid_noise_multiplier_raises(noise_multiplier):
    with pytest.raises(ValueError, match="noise_multiplier") as error:
        dp.PrivacyConfig(noise_multiplier=noise_multiplier)
    assert str(noise_multiplier) in str(error.value)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0])
def test_invalid_delta_raises(delta):
    with pytest.raises(ValueError, match="delta") as error:
        dp.PrivacyConfig(delta=delta)
    assert str(delta) in str(error.value)


@pytest.mark.parametrize("max_grad_norm", [0.0, -1.0, math.inf])
def test_invalid_max_grad_norm_raises(max_grad_norm):
    with pytest.raises(ValueError, match="max_grad_norm"):
        dp.PrivacyConfig(max_grad_norm=max_grad_norm)


@pytest.mark.parametrize("settings, name", [({"epochs": 0}, "epochs"),
                                            ({"epochs": 2.5}, "epochs"),
                                            ({"batch_size": 0}, "batch_size"),
                                            ({"lr": 0.0}, "lr"),
                                            ({"lr": math.nan}, "lr")])
def test_invalid_training_config_raises(settings, name):
    with pytest.raises(ValueError, match=name):
        dp.TrainingConfig(**settings)


def test_noise_sweep_rejects_empty_list():
    with pytest.raises(ValueError, match="noise_multipliers is empty"):
        dp.noise_sweep(None, {}, noise_multipliers=[], seed=0)


def test_noise_sweep_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicates"):
        dp.noise_sweep(None, {}, noise_multipliers=[1.0, 1.0], seed=0)


def test_noise_sweep_rejects_nonpositive_sigma():
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp.noise_sweep(None, {}, noise_multipliers=[1.0, 0.0], seed=0)


# --------------------------------------------------------------------------- runs on MNIST-5k


@pytest.fixture(scope="module")
def study(lite0, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_study")
    return load_study("mnist5k", extractor=lite0, members_per_class=10, nonmembers_per_class=10,
                      pool_per_class=20, seed=0, cache_dir=root / "cache", run_dir=root / "run")


@pytest.fixture(scope="module")
def dirty_sets(study):
    return {target: study.poisoning_set("dirty_label", target_class=target, budget=20, seed=0)
            for target in (0, 1)}


def test_run_setting_counts_poisons_and_measures(study, dirty_sets, tmp_path):
    training = dp.TrainingConfig(epochs=2)
    result = dp.run_setting(study, dirty_sets[0], seed=0, training=training,
                            privacy=dp.PrivacyConfig(), store_dir=tmp_path)

    assert result.num_poisons == 18  # b - b // C = 20 - 2
    assert result.private
    assert math.isfinite(result.final_epsilon)
    assert result.final_epsilon > 0
    assert 0 <= result.mi_auc <= 1
    assert result.test_accuracy == result.accuracy[dp.NONMEMBER][-1]
    assert len(list(tmp_path.glob("dirty_label-t0-sigma1-*.npz"))) == 1


def test_run_setting_reuses_stored_run(study, dirty_sets, tmp_path, monkeypatch):
    training = dp.TrainingConfig(epochs=2)
    first = dp.run_setting(study, dirty_sets[1], seed=0, training=training, store_dir=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(dp, "train_head_with_curves", fail)
    second = dp.run_setting(study, dirty_sets[1], seed=0, training=training, store_dir=tmp_path)

    assert second.mi_auc == first.mi_auc
    np.testing.assert_array_equal(second.loss[dp.POISON], first.loss[dp.POISON])


def test_run_setting_pairs_initial_weights(study, dirty_sets, monkeypatch):
    """The private and the non-private head of one target class get the same seed."""
    seeds = []
    original = dp.train_head_with_curves

    def record(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(dp, "train_head_with_curves", record)
    training = dp.TrainingConfig(epochs=1)
    for privacy in (None, dp.PrivacyConfig()):
        dp.run_setting(study, dirty_sets[0], seed=3, training=training, privacy=privacy)
    dp.run_setting(study, dirty_sets[1], seed=3, training=training)

    assert seeds[0] == seeds[1]
    assert seeds[2] != seeds[0]


def test_noise_sweep_orders_and_reuses_runs(study, dirty_sets, tmp_path):
    training = dp.TrainingConfig(epochs=2)
    dp.run_settings(study, {"dirty_label": dirty_sets}, seed=0, training=training,
                    privacy=dp.PrivacyConfig(), store_dir=tmp_path, progress=False)
    stored = set(tmp_path.glob("*.npz"))
    sweep = dp.noise_sweep(study, dirty_sets, noise_multipliers=[2.0, 1.0], seed=0,
                           training=training, store_dir=tmp_path, progress=False)

    assert [run.noise_multiplier for run in sweep] == [None, None, 1.0, 1.0, 2.0, 2.0]
    assert len(set(tmp_path.glob("*.npz")) - stored) == 2  # only sigma = 2 was new
    by_sigma = {run.noise_multiplier: run.final_epsilon for run in sweep if run.private}
    assert by_sigma[2.0] < by_sigma[1.0]


# --------------------------------------------------------------------------- tables, figures, text


def _run(attack="dirty_label", target=0, sigma=None, *, poison_accuracy=(0.5, 0.9),
         poison_loss=(1.0, 0.5), auc=0.7, epsilon=3.0, num_poisons=90) -> dp.RunResult:
    epochs = len(poison_accuracy)
    curve = np.linspace(0.4, 0.9, epochs)
    return dp.RunResult(
        attack=attack, target_class=target, noise_multiplier=sigma,
        loss={dp.NORMAL: curve[::-1].copy(), dp.POISON: np.array(poison_loss, float),
              dp.NONMEMBER: curve[::-1].copy()},
        accuracy={dp.NORMAL: curve, dp.POISON: np.array(poison_accuracy, float),
                  dp.NONMEMBER: curve - 0.1},
        epsilon=np.full(epochs, math.inf) if sigma is None else np.linspace(1, epsilon, epochs),
        delta=math.nan if sigma is None else 1e-5, test_accuracy=0.8, mi_auc=auc,
        num_poisons=num_poisons)


def _dirty_runs(private_accuracy, private_loss):
    runs = []
    for target in (0, 1):
        runs.append(_run(target=target, auc=0.70 + 0.02 * target))
        runs.append(_run(target=target, sigma=1.0, poison_accuracy=private_accuracy,
                         poison_loss=private_loss, auc=0.55))
    return runs


def test_privacy_table_rows_and_cells():
    table = dp_results.privacy_table(_dirty_runs((0.1, 0.1), (2.0, 2.5)), attack="dirty_label",
                             noise_multiplier=1.0)

    assert list(table.index) == ["without DP-SGD", "with DP-SGD (σ = 1)"]
    assert table.loc["without DP-SGD", "ε (δ = 1e-05)"] == "∞"
    assert table.loc["with DP-SGD (σ = 1)", "ε (δ = 1e-05)"] == "3.00"
    assert table.loc["without DP-SGD", "MI AUC (Mentr)"] == "0.710±0.010"
    assert table.loc["with DP-SGD (σ = 1)", "target classes"] == 2


def test_privacy_table_unknown_attack_raises():
    with pytest.raises(ValueError, match="clean_label"):
        dp_results.privacy_table(_dirty_runs((0.1, 0.1), (2.0, 2.5)), attack="clean_label",
                         noise_multiplier=1.0)


def test_sweep_table_orders_by_sigma():
    runs = [_run(sigma=2.0, epsilon=1.0), _run(sigma=None), _run(sigma=0.5, epsilon=20.0)]
    table = dp_results.sweep_table(runs)

    assert list(table.index) == ["without DP-SGD", "with DP-SGD (σ = 0.5)",
                                 "with DP-SGD (σ = 2)"]


@pytest.mark.parametrize("accuracy, expected", [(0.1, "near"), (0.3, "above"), (0.0, "below")])
def test_chance_relation(accuracy, expected):
    assert dp_results.chance_relation(accuracy, chance=0.1, num_samples=180) == expected


def test_describe_dirty_label_agrees_at_chance():
    text = dp_results.describe_learning(_dirty_runs((0.1, 0.1), (2.0, 2.5)), attack="dirty_label",
                                num_classes=10, noise_multiplier=1.0)

    assert "near chance" in text
    assert "agrees on the accuracy level and agrees on the loss" in text
    assert "0.710±0.010 without and 0.550±0.000 with DP-SGD" in text


def test_describe_dirty_label_differs_above_chance():
    text = dp_results.describe_learning(_dirty_runs((0.2, 0.6), (2.0, 1.0)), attack="dirty_label",
                                num_classes=10, noise_multiplier=1.0)

    assert "above chance" in text
    assert "differs on the accuracy level and differs on the loss" in text
    assert "loss fell" in text


def test_describe_clean_setting_reports_gap():
    runs = [_run(attack="none"), _run(attack="none", sigma=1.0)]
    text = dp_results.describe_learning(runs, attack="none", num_classes=10, noise_multiplier=1.0)

    assert "gap +0.100" in text


def test_describe_sweep_lists_every_sigma():
    runs = [_run(sigma=None, auc=0.8), _run(sigma=0.5, auc=0.7, epsilon=20.0),
            _run(sigma=2.0, auc=0.6, epsilon=1.0)]
    text = dp_results.describe_sweep(runs)

    assert "σ = 0.5 (ε = 20.00)" in text
    assert "σ = 2 (ε = 1.00)" in text
    assert "between 0.600 and 0.700, below the non-private 0.800" in text
    assert "from 0.800 at σ = 0.5 to 0.800 at σ = 2" in text


def test_learning_curve_figure_has_chance_lines():
    figure = dp_results.plot_learning_curves(_dirty_runs((0.1, 0.1), (2.0, 2.5)), attack="dirty_label",
                                     num_classes=10, noise_multiplier=1.0, title="test")
    accuracy_axes = [figure.axes[1], figure.axes[3]]

    for axis in accuracy_axes:
        chance = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
        assert len(chance) == 1
        assert chance[0].get_ydata()[0] == pytest.approx(0.1)
    assert figure.axes[2].get_title(loc="left").startswith("(b) with DP-SGD, σ = 1")
    matplotlib.pyplot.close(figure)


def test_learning_curve_figure_needs_both_trainings():
    with pytest.raises(ValueError, match="noise multiplier 2.0"):
        dp_results.plot_learning_curves(_dirty_runs((0.1, 0.1), (2.0, 2.5)), attack="dirty_label",
                                num_classes=10, noise_multiplier=2.0, title="test")


def test_sweep_figure_draws_each_sigma():
    runs = [_run(sigma=None), _run(sigma=0.5, epsilon=20.0), _run(sigma=2.0, epsilon=1.0)]
    figure = dp_results.plot_noise_sweep(runs, title="test")
    annotations = [text.get_text() for text in figure.axes[0].texts]

    assert annotations == ["σ = 0.5", "σ = 2"]
    assert figure.axes[0].get_xscale() == "log"
    matplotlib.pyplot.close(figure)
