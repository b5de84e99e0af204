"""Tests of `SharpnessAwareModel` with SAM and ASAM against exact references."""

import functools
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_eigensam as ks
from tests import numpy_reference as ref
from tests import tiny

def _sam_model(method, net=None, lr=0.1, **kwargs):
    model = ks.SharpnessAwareModel(net or tiny.mlp(), method=method, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


# ---------------------------------------------------------------- one step


@pytest.mark.parametrize(
    "method, perturbation",
    [
        (ks.SAM(rho=0.05), functools.partial(ref.sam_perturbation, rho=0.05)),
        (ks.SAM(rho=0.5), functools.partial(ref.sam_perturbation, rho=0.5)),
        (
            ks.ASAM(rho=0.5, eta=0.01),
            functools.partial(ref.asam_perturbation, rho=0.5, eta=0.01),
        ),
        (
            ks.ASAM(rho=1.0, eta=0.1),
            functools.partial(ref.asam_perturbation, rho=1.0, eta=0.1),
        ),
    ],
    ids=["sam-0.05", "sam-0.5", "asam-0.5", "asam-1.0-eta0.1"],
)
def test_one_step_matches_numpy(method, perturbation):
    x, y = tiny.data()
    model = _sam_model(method)
    w0 = tiny.weights_of(model)
    model.train_on_batch(x, y)
    expected = ref.sam_sgd_step(w0, x.astype(float), y.astype(float), 0.1, perturbation)
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    # The step must differ from plain SGD, or the test could not fail.
    plain = ref.sam_sgd_step(w0, x, y, 0.1, lambda g, w: [0 * gi for gi in g])
    assert max(np.abs(a - b).max() for a, b in zip(expected, plain)) > 1e-4


def test_sample_weight_enters_both_passes():
    x, y = tiny.data()
    sw = np.linspace(0.0, 2.0, len(x)).astype("float32")
    model = _sam_model(ks.SAM(rho=0.3))
    w0 = tiny.weights_of(model)
    model.train_on_batch(x, y, sample_weight=sw)
    expected = ref.sam_sgd_step(
        w0, x, y, 0.1, functools.partial(ref.sam_perturbation, rho=0.3), sw
    )
    tiny.assert_weights_close(tiny.weights_of(model), expected)


@pytest.mark.parametrize("method", [ks.SAM(rho=0.3), ks.EigenSAM(rho=0.3, alpha=0.0, refresh_every=1)],
                         ids=["sam", "eigensam-alpha0"])
def test_weight_regularisers_enter_both_passes(method):
    """Coupled L2 (a kernel regulariser) is part of the loss that SAM perturbs."""
    x, y = tiny.data()
    model = _sam_model(method, net=tiny.mlp(l2=0.05))
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    expected = ref.sam_sgd_step(
        w0, x, y, 0.1, functools.partial(ref.sam_perturbation, rho=0.3), l2=0.05
    )
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    loss, _ = ref.mlp_loss_and_grad(w0, x, y, l2=0.05)
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)


def test_class_weight_equals_sample_weight():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 5)).astype("float32")
    labels = rng.integers(0, 3, size=12)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}

    def step(**fit_kwargs):
        keras.utils.clear_session()
        model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM(rho=0.2))
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, labels, batch_size=12, epochs=1, verbose=0, shuffle=False, **fit_kwargs)
        return tiny.weights_of(model)

    with_class = step(class_weight=class_weight)
    with_sample = step(sample_weight=np.array([class_weight[c] for c in labels], "float32"))
    unweighted = step()
    tiny.assert_weights_close(with_class, with_sample)
    assert max(np.abs(a - b).max() for a, b in zip(with_class, unweighted)) > 1e-5


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["bn", "bn+dropout"])
def test_rho_zero_equals_plain_keras_step(dropout):
    """ρ = 0 reduces to the base optimizer, BN and dropout included.

    With dropout this also shows that the second pass runs in training mode
    with the first pass's masks: otherwise its gradient would differ.
    """
    x, y = tiny.data(n=32)
    plain = tiny.bn_dropout_net(dropout=dropout)
    plain.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    sam = _sam_model(ks.SAM(rho=0.0), net=tiny.bn_dropout_net(dropout=dropout))
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    for _ in range(3):
        plain.train_on_batch(x, y)
        sam.train_on_batch(x, y)
    for a, b in zip(plain.weights, sam.model.weights):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)


def test_second_pass_does_not_update_batchnorm_statistics():
    x, y = tiny.data(n=32)
    plain = tiny.bn_dropout_net()
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sam = _sam_model(ks.SAM(rho=0.5), net=tiny.bn_dropout_net())
    plain.train_on_batch(x, y)
    sam.train_on_batch(x, y)
    bn_plain = plain.layers[1]
    bn_sam = sam.model.layers[1]
    # One update with momentum 0.5 from the first pass only; a second update
    # from the perturbed pass would have moved them again.
    np.testing.assert_allclose(
        np.array(bn_sam.moving_mean), np.array(bn_plain.moving_mean), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        np.array(bn_sam.moving_variance), np.array(bn_plain.moving_variance), rtol=1e-6, atol=1e-7
    )
    assert not np.allclose(np.array(bn_sam.moving_mean), 0.0)
    # And the weights did take a SAM step, not the plain one.
    assert not np.allclose(np.array(sam.model.layers[0].kernel), np.array(plain.layers[0].kernel))


# ---------------------------------------------------------------- logging


def test_logged_loss_is_first_pass_mean_loss():
    x, y = tiny.data(n=16)
    model = _sam_model(ks.SAM(rho=0.5))
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected, _ = ref.mlp_loss_and_grad(w0, x, y)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


def test_logged_loss_with_two_replicas(mirrored_strategy):
    x, y = tiny.data(n=16)
    with mirrored_strategy.scope():
        model = _sam_model(ks.SAM(rho=0.5))
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected, _ = ref.mlp_loss_and_grad(w0, x, y)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


# ---------------------------------------------------------------- distribution


def test_global_scope_is_independent_of_replica_count(mirrored_strategy):
    x, y = tiny.data(n=48)
    single = _sam_model(ks.SAM(rho=0.3), perturbation_scope="global")
    tiny.fit_steps(single, x, y, 16, 3)
    with mirrored_strategy.scope():
        mirrored = _sam_model(ks.SAM(rho=0.3), perturbation_scope="global")
    tiny.fit_steps(mirrored, x, y, 16, 3)
    tiny.assert_weights_close(tiny.weights_of(mirrored), tiny.weights_of(single), rtol=1e-5, atol=1e-6)


def test_replica_scope_matches_per_shard_numpy(mirrored_strategy):
    x, y = tiny.data(n=16)
    with mirrored_strategy.scope():
        model = _sam_model(ks.SAM(rho=0.3))
    w0 = tiny.weights_of(model)
    tiny.fit_steps(model, x, y, 16, 1)
    perturbation = functools.partial(ref.sam_perturbation, rho=0.3)
    # Each replica perturbs with its own half-batch gradient; the optimizer
    # averages the two second-pass gradients.
    halves = [(x[:8], y[:8]), (x[8:], y[8:])]
    steps = [ref.sam_sgd_step(w0, xs, ys, 0.1, perturbation) for xs, ys in halves]
    expected = [(a + b) / 2 for a, b in zip(*steps)]
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    global_step = ref.sam_sgd_step(w0, x, y, 0.1, perturbation)
    assert max(np.abs(a - b).max() for a, b in zip(expected, global_step)) > 1e-5


# ---------------------------------------------------------------- mixed precision, NaN


def test_mixed_float16_scales_loss_and_updates_at_full_size():
    x, y = tiny.data(n=32)
    deltas = []
    for policy in ("float32", "mixed_float16"):
        keras.utils.clear_session()
        keras.config.set_dtype_policy(policy)
        model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM(rho=0.05))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        w0 = tiny.weights_of(model)
        model.train_on_batch(x, y)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        w1 = tiny.weights_of(model)
        assert all(np.isfinite(w).all() for w in w1)
        deltas.append(np.concatenate([(a - b).ravel() for a, b in zip(w1, w0)]))
    # Without loss scaling handled, the update would be ~32768× too small.
    ratio = np.linalg.norm(deltas[1]) / np.linalg.norm(deltas[0])
    assert 0.98 < ratio < 1.02, ratio
    assert np.corrcoef(deltas[0], deltas[1])[0, 1] > 0.999


@pytest.mark.parametrize("loss_scale", [False, True], ids=["sgd", "loss-scale-optimizer"])
def test_non_finite_batch_leaves_weights_unchanged(loss_scale):
    x, y = tiny.data(n=8)
    x_bad = x.copy()
    x_bad[3, 2] = np.nan
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model = ks.SharpnessAwareModel(tiny.bn_dropout_net(), method=ks.SAM(rho=0.05))
    model.compile(optimizer=optimizer, loss="mse")
    model.train_on_batch(x, y)  # build slots, take one good step
    # Weights, BN statistics, dropout seeds, optimizer slots and iterations.
    kept = model.weights + getattr(model.optimizer, "inner_optimizer", model.optimizer).variables
    before = [np.array(v) for v in kept]
    iterations = int(model.optimizer.iterations)
    model.train_on_batch(x_bad, y)
    for b, v in zip(before, kept):
        np.testing.assert_array_equal(np.array(v), b)
    assert int(model.optimizer.iterations) == iterations
    model.train_on_batch(x, y)  # and training goes on
    assert int(model.optimizer.iterations) == iterations + 1
    assert all(np.isfinite(np.array(v)).all() for v in model.weights)


def test_non_finite_on_one_replica_skips_step_everywhere(mirrored_strategy):
    x, y = tiny.data(n=16)
    x[12, 0] = np.inf  # lands on the second replica only
    with mirrored_strategy.scope():
        model = _sam_model(ks.SAM(rho=0.05))
    before = tiny.weights_of(model)
    history = tiny.fit_steps(model, x, y, 16, 1)
    tiny.assert_weights_close(tiny.weights_of(model), before, rtol=0, atol=0)
    assert history.history["skipped_steps"] == [1.0]  # once, not per replica


# ---------------------------------------------------------------- saving


def test_save_and_load_round_trip(tmp_path):
    x, y = tiny.data(n=32)
    model = _sam_model(ks.ASAM(rho=0.7, eta=0.02), perturbation_scope="global")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ks.SharpnessAwareModel)
    assert isinstance(loaded.method, ks.ASAM)
    assert (loaded.method.rho, loaded.method.eta) == (0.7, 0.02)
    assert loaded.perturbation_scope == "global"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # Optimizer state came back too, so one more step gives the same weights.
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    tiny.assert_weights_close(tiny.weights_of(loaded), tiny.weights_of(model))


@pytest.mark.parametrize(
    "method", [ks.SAM(rho=0.11, name="s"), ks.ASAM(rho=0.3, eta=0.05, name="a")], ids=["sam", "asam"]
)
def test_get_config_round_trip(method):
    model = ks.SharpnessAwareModel(tiny.mlp(), method=method, perturbation_scope="global", name="wrapped")
    config = model.get_config()
    clone = ks.SharpnessAwareModel.from_config(config)
    assert clone.get_config() == config
    assert clone.name == "wrapped"
    assert clone.perturbation_scope == "global"
    assert type(clone.method) is type(method)
    assert clone.method.get_config() == method.get_config()
    assert clone.model.get_config() == model.model.get_config()


# ---------------------------------------------------------------- subclassing

# BackupAndRestore, one trace per fit and XLA are checked for every method
# by tests/methods/test_contract.py.


def test_subclassed_model_equals_wrapped_model():
    class TinyMLP(ks.SharpnessAwareModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = tiny.mlp().layers[0]
            self.out = tiny.mlp().layers[1]

        def call(self, inputs, training=None):
            return self.out(self.hidden(inputs))

    x, y = tiny.data()
    sub = TinyMLP(method=ks.SAM(rho=0.2))
    sub.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sub(x[:1])
    wrapped = _sam_model(ks.SAM(rho=0.2))
    for a, b in zip(sub.trainable_variables, wrapped.trainable_variables):
        a.assign(b)
    sub.train_on_batch(x, y)
    wrapped.train_on_batch(x, y)
    tiny.assert_weights_close(tiny.weights_of(sub), tiny.weights_of(wrapped))


def test_unbuilt_model_is_built_by_fit():
    x, y = tiny.data()
    net = keras.Sequential([keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)])
    model = ks.SharpnessAwareModel(net, method=ks.SAM(rho=0.1))
    assert not model.method.state_built
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.method.state_built


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ks.SAM(rho=-0.1), ValueError, r"`rho` must be a float >= 0.0. Received: rho=-0.1"),
        (lambda: ks.SAM(rho="big"), TypeError, r"`rho` must be a number. Received: rho='big'"),
        (lambda: ks.SAM(rho=float("nan")), ValueError, r"`rho` must be finite"),
        (lambda: ks.ASAM(eta=-1), ValueError, r"`eta` must be a float >= 0.0. Received: eta=-1"),
        (lambda: ks.SAM(rho=True), TypeError, r"`rho` must be a number"),
        (
            lambda: ks.SharpnessAwareModel(tiny.mlp(), perturbation_scope="local"),
            ValueError,
            r"`perturbation_scope` must be one of \['global', 'replica'\]. Received: perturbation_scope='local'",
        ),
        (
            lambda: ks.SharpnessAwareModel(tiny.mlp(), method="sam"),
            TypeError,
            r"`method` must be a keras_eigensam method object.*Received: method='sam'",
        ),
        (
            lambda: ks.SharpnessAwareModel("net"),
            TypeError,
            r"`model` must be a `keras.Model`.*Received: model='net'",
        ),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_wrapping_a_sharpness_aware_model_is_refused():
    inner = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM(), name="inner")
    with pytest.raises(TypeError, match=r"already a SharpnessAwareModel.*model='inner'"):
        ks.SharpnessAwareModel(inner, method=ks.ASAM())


def test_model_without_trainable_weights_is_rejected():
    net = tiny.mlp()
    net.trainable = False
    with pytest.raises(ValueError, match=r"`model` has no trainable weights.*Received: model='sequential"):
        ks.SharpnessAwareModel(net)


def test_state_updates_applied_once_per_step(mirrored_strategy):
    """BN statistics and dropout RNG states advance on good steps, any strategy."""
    x, y = tiny.data(n=16)
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _sam_model(ks.SAM(rho=0.1), net=tiny.bn_dropout_net(dropout=0.3))
        seed_state = model.model.layers[-2].seed_generator.state
        before = np.array(seed_state)
        tiny.fit_steps(model, x, y, 16, 1)
        assert not np.array_equal(np.array(seed_state), before)
        assert not np.allclose(np.array(model.model.layers[1].moving_mean), 0.0)
        assert all(np.isfinite(np.array(v)).all() for v in model.weights)


# ------------------------------------------- audit: one rule for every optimizer


@pytest.mark.parametrize("loss_scale", [False, True], ids=["sgd", "loss-scale-optimizer"])
def test_infinite_loss_with_finite_gradient_is_skipped_on_one_replica(loss_scale):
    # The audit's reproduction: an overflowing label makes the loss inf while
    # the gradient stays finite; a LossScaleOptimizer on one replica applied
    # the step (weights moved by 6.7e27) because only gradients were checked.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype("f4"), rng.normal(size=(8, 3)).astype("f4")
    optimizer = keras.optimizers.SGD(0.05)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model = _sam_model(ks.SAM(rho=0.1))
    model.compile(optimizer=optimizer, loss="mse")
    model.train_on_batch(x, y)
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    kept = model.weights + inner.variables  # weights, iterations, slots
    before = [np.array(v) for v in kept]
    scale = float(model.optimizer.dynamic_scale) if loss_scale else None
    y_bad = y.copy()
    y_bad[2, 1] = 1e30
    model.train_on_batch(x, y_bad)
    for b, v in zip(before, kept):
        np.testing.assert_array_equal(np.array(v), b)
    if loss_scale:  # and the loss-scale optimizer lowered its scale
        assert float(model.optimizer.dynamic_scale) == scale / 2
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_skipped_batch_does_not_poison_the_logged_loss():
    x, y = tiny.data(n=32)
    x[12, 1] = np.nan  # in the second of four batches
    model = _sam_model(ks.SAM(rho=0.05))
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    # Counted per epoch (a sum, reset each epoch), not a mean.
    assert history.history["skipped_steps"] == [1.0, 1.0]
    assert "skipped_steps" not in model.evaluate(x[:8], y[:8], verbose=0, return_dict=True)
    # The mean of the three applied steps' first-pass losses.
    losses, w = [], w0
    for start in (0, 16, 24):
        xs, ys = x[start : start + 8].astype(float), y[start : start + 8].astype(float)
        loss, _ = ref.mlp_loss_and_grad(w, xs, ys)
        losses.append(loss)
        w = ref.sam_sgd_step(w, xs, ys, 0.1, functools.partial(ref.sam_perturbation, rho=0.05))
    np.testing.assert_allclose(history.history["loss"][0], np.mean(losses), rtol=1e-5)


@pytest.mark.parametrize("terminate", [True, False])
def test_terminate_on_nan_stops_at_a_skipped_step(terminate):
    """With `TerminateOnNaN` training stops at the first skipped step (which
    itself changes nothing); without it, training goes on and counts it."""
    x, y = tiny.data(n=32)
    x[12, 1] = np.nan  # in the second of four batches
    model = _sam_model(ks.SAM(rho=0.05))
    callbacks = [keras.callbacks.TerminateOnNaN()] if terminate else []
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                        callbacks=callbacks)
    if terminate:
        assert int(model.optimizer.iterations) == 1  # the first batch only
        assert len(history.history["loss"]) == 1
        assert np.isfinite(history.history["loss"][0])
    else:
        assert int(model.optimizer.iterations) == 3 * 3
        assert history.history["skipped_steps"] == [1.0, 1.0, 1.0]
    assert all(np.isfinite(w).all() for w in tiny.weights_of(model))


def test_summary_counts_parameters_not_method_state():
    """Issue 12, item 19: the eigenvector copy is state, not parameters."""
    model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.EigenSAM())
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = tiny.data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)
    parameters = model.model.count_params()
    state = sum(int(np.prod(v.shape)) for v in model.method.variables)
    assert state > parameters  # the eigenvector alone is one per parameter
    assert f"Total params: {parameters:,} " in text
    assert f"Method state (EigenSAM): {state:,} values" in lines[-1]


# ---------------------------------------------------------------- compatibility


def test_keras_file_saved_by_release_0_1_loads_and_trains():
    fixtures = pathlib.Path(__file__).parent / "fixtures"
    expected = json.loads((fixtures / "eigensam_v0.1.0.json").read_text())
    model = keras.models.load_model(fixtures / "eigensam_v0.1.0.keras")
    assert int(model.optimizer.iterations) == expected["iterations"]
    tracker = model.method.tracker
    assert int(tracker.num_refreshes) == expected["num_refreshes"]
    assert int(tracker.num_failed_refreshes) == 0
    np.testing.assert_allclose(float(tracker.eigenvalue), expected["top_eigenvalue"], rtol=1e-6)
    for variable, value in zip(tracker.vector, expected["eigenvector"]):
        np.testing.assert_array_equal(np.array(variable), np.array(value, "float32"))
    for variable, value in zip(model.trainable_variables, expected["weights"]):
        np.testing.assert_array_equal(np.array(variable), np.array(value, "float32"))
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("f4")
    np.testing.assert_allclose(
        model.predict(x[:4], verbose=0), np.array(expected["predictions"]), rtol=1e-6
    )
    # The refresh schedule goes on: iterations 4 and 5, refresh at 4.
    model.fit(x, x[:, :3], batch_size=16, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == expected["iterations"] + 2
    assert int(tracker.num_refreshes) == expected["num_refreshes"] + 1


def test_steps_per_execution_on_a_merge_call_strategy_is_refused(mirrored_strategy):
    # Every method failed there with a cryptic TensorFlow error.
    x, y = tiny.data(n=16)
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM())
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    with pytest.raises(ValueError, match="steps_per_execution=2; compile with"):
        tiny.fit_steps(model, x, y, 16, 2)


# ---------------------------------------------------------------- reload, export


class ReadmeMLP(ks.SharpnessAwareModel):
    """The README's subclassing pattern: `method=` passed to super()."""

    rho = 0.05

    def __init__(self, **kwargs):
        super().__init__(method=ks.EigenSAM(rho=self.rho, refresh_every=2, seed=0), **kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, inputs, training=None):
        return self.out(self.hidden(inputs))


def test_subclass_passing_method_to_super_reloads(tmp_path):
    x, y = tiny.data(n=16)
    model = ReadmeMLP()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    path = str(tmp_path / "mlp.keras")
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={"ReadmeMLP": ReadmeMLP})
    assert type(loaded) is ReadmeMLP
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert len(loaded.method.variables) == len(model.method.variables) > 0
    for a, b in zip(loaded.method.variables, model.method.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    tiny.assert_weights_close(tiny.weights_of(loaded), tiny.weights_of(model))


def test_subclass_reload_restores_the_saved_method(tmp_path):
    x, y = tiny.data(n=16)
    model = ReadmeMLP()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "mlp.keras")
    model.save(path)

    class Changed(ReadmeMLP):
        rho = 0.5  # the code changed since the file was saved

    loaded = keras.models.load_model(path, custom_objects={"ReadmeMLP": Changed})
    assert loaded.method.rho == 0.05  # what was trained, with its state
    assert len(loaded.method_metrics) == len(model.method_metrics)
    np.testing.assert_array_equal(
        np.array(loaded.method.tracker.eigenvalue), np.array(model.method.tracker.eigenvalue)
    )


def test_export_serves_the_wrapped_network(tmp_path):
    x, y = tiny.data(n=16)
    model = _sam_model(ks.EigenSAM(refresh_every=2, seed=0))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "served")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(
        served.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0), rtol=1e-6
    )
    # Inference only: no method state in the artifact.
    names = {v.name for v in served.variables}
    assert not any("eigenvector" in n or "top_eigenvalue" in n for n in names), names
