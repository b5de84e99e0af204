"""The contract every registered method keeps, one battery over the registry.

A method joins this battery by being registered (`methods/registry.py`);
`BATTERY_ARGUMENTS` only makes schedules short enough to be exercised in a
few steps. The numbers of each rule are checked against NumPy oracles
elsewhere (tests/methods/test_family_oracles.py, tests/test_model.py,
tests/test_eigen_sam.py); here every method must: train under the default
strategy and MirroredStrategy (both perturbation scopes), give the same
steps with XLA and with `steps_per_execution > 1`, train under
`mixed_float16`, skip a non-finite batch without changing anything, save
and load and resume with its state, round-trip its configuration, be traced
once per fit, compose with the eigenvector tracker and with SAM-ON.
"""

import keras
import numpy as np
import pytest

import keras_eigensam as ks
from keras_eigensam.methods import eigenvector_tracker
from keras_eigensam.methods import registry
from tests import tiny

NAMES = registry.names()

#: Shorter schedules so that a few steps exercise every branch.
BATTERY_ARGUMENTS = {
    "sam": {"rho": 0.1},
    "eigensam": {"refresh_every": 2, "seed": 0},
    "xsam": {"refresh_every": 2, "seed": 0},
    "looksam": {"k": 2},
    "esam": {"seed": 0},
}

#: Methods whose step under `perturbation_scope="global"` on two replicas
#: is not the single-device step, and why.
NOT_REPLICA_INVARIANT = {
    # Each replica normalises its own perturbed gradient (as big_vision's
    # per-worker decomposition does) before the average.
    "gsam": "per-replica decomposition",
    # Each replica selects the sharpest examples of its own shard.
    "esam": "per-replica data selection",
}

#: Methods whose step under `perturbation_scope="global"` is checked against
#: one device on two replicas.
GLOBAL_SCOPE_METHODS = ("sam", "xsam", "friendlysam", "wsam")

RTOL, ATOL = 1e-4, 1e-6


def _method(method_name, **kwargs):
    arguments = {**BATTERY_ARGUMENTS.get(method_name, {}), **kwargs}
    return registry.get(method_name).cls(**arguments)


#: Tracker arguments of the methods that need one, where a test needs only
#: that the Hessian-vector products run (tracing them costs the most).
FEW_PRODUCTS = {"num_matvecs": 2}


def _method_with_few_products(method_name):
    """`_method`, with `FEW_PRODUCTS` for a method that tracks the eigenvector."""
    tracks = registry.get(method_name).cls.requires_tracker
    return _method(method_name, **(FEW_PRODUCTS if tracks else {}))


def _model(name, net=None, optimizer=None, **compile_kwargs):
    model = ks.SharpnessAwareModel(net or tiny.bn_dropout_net(), method=_method(name))
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        loss="mse",
        **compile_kwargs,
    )
    return model


def _state(model):
    return [np.array(v) for v in model.method.variables]


def _everything(model):
    """Weights, BN statistics, optimizer slots and iterations, method state."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return [np.array(v) for v in model.weights + optimizer.variables] + _state(model)


def _assert_all_close(actual, expected, rtol=RTOL, atol=ATOL):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def test_battery_arguments_name_registered_methods():
    assert set(BATTERY_ARGUMENTS) <= set(NAMES)
    assert set(NOT_REPLICA_INVARIANT) <= set(NAMES)
    assert set(GLOBAL_SCOPE_METHODS) <= set(NAMES) - set(NOT_REPLICA_INVARIANT)


# ------------------------------------------------------------ default fit


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_traced_once_trains_and_tracks(name):
    traces = []

    class Counting(ks.SharpnessAwareModel):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    x, y = tiny.data(n=32)
    # Weight regularisers and BatchNormalization: every pass (and ESAM's
    # per-example losses) must handle both.
    l2 = keras.regularizers.L2(0.01)
    net = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(8, kernel_regularizer=l2),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("tanh"),
        keras.layers.Dense(3, kernel_regularizer=l2),
    ])
    # With the eigenvector tracker: it composes with every method.
    method = _method(name, tracker=True, refresh_every=3, seed=0)
    model = Counting(net, method=method)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    before = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert len(traces) == 1
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert tiny.max_difference(tiny.weights_of(model), before) > 1e-4
    assert all(np.isfinite(s).all() for s in _state(model))
    for metric in eigenvector_tracker.METRIC_NAMES:
        assert np.isfinite(history.history[metric]).all(), metric
    assert history.history["top_eigenvalue"][-1] != 0.0
    assert int(method.tracker.num_refreshes) == 4  # steps 0, 3, 6, 9 of 12


# ------------------------------------------------------------ distribution


@pytest.mark.parametrize(
    "name, scope",
    [(name, "replica") for name in NAMES]
    # The global scope's replica invariance, for a linear rule, a rule that
    # normalises the averaged gradient and a stateful rule.
    + [(name, "global") for name in GLOBAL_SCOPE_METHODS],
)
def test_mirrored_strategy(name, scope, mirrored_strategy):
    x, y = tiny.data(n=32)
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(
            tiny.mlp(), method=_method(name), perturbation_scope=scope
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    history = tiny.fit_steps(model, x, y, 16, 2)
    assert np.isfinite(history.history["loss"]).all()
    # Every replica holds the same weights and method state.
    for variable in model.trainable_variables + model.method.variables:
        copies = [np.array(c) for c in variable.value.values]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
        assert np.isfinite(copies[0]).all()
    if scope == "global" and name not in NOT_REPLICA_INVARIANT:
        single = ks.SharpnessAwareModel(tiny.mlp(), method=_method(name))
        single.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        tiny.fit_steps(single, x, y, 16, 2)
        _assert_all_close(tiny.weights_of(model), tiny.weights_of(single))
    # A last batch of one example: the second replica's shard is empty. It
    # contributes nothing, and no division by its zero examples reaches
    # the step (the step is taken, not skipped as non-finite).
    history = model.fit(x[:17], y[:17], batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert history.history["skipped_steps"] == [0.0]
    assert np.isfinite(history.history["loss"]).all()
    assert int(np.array(model.optimizer.iterations.value)) == 4
    for variable in model.trainable_variables + model.method.variables:
        copies = [np.array(c) for c in variable.value.values]
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
        assert np.isfinite(copies[0]).all(), variable.path


# ------------------------------------------------------------ compilation


@pytest.mark.parametrize("name", NAMES)
def test_xla_and_steps_per_execution_take_the_same_steps(name):
    # XLA one step at a time against graph mode three steps at a time: a
    # difference in either shows.
    x, y = tiny.data(n=48)
    results = []
    for options in ({"jit_compile": True}, {"steps_per_execution": 3}):
        keras.utils.clear_session()
        model = _model(name, net=tiny.mlp(), **options)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        assert int(model.optimizer.iterations) == 6
        results.append(tiny.weights_of(model) + _state(model))
    _assert_all_close(results[1], results[0])


@pytest.mark.parametrize("name", NAMES)
def test_mixed_float16_trains(name):
    # Seeded: an unseeded shuffle made the loss of two short epochs rise
    # now and then (1.348 to 1.369 once), whatever the method.
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_float16")
    x, y = tiny.data(n=32)
    model = _model(name)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    tiny.assert_trains_keeping_float32_state(
        history, model.trainable_variables + model.method.variables
    )


# ------------------------------------------------------------ faults


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_batch_changes_nothing_and_ema_tracks_applied_weights(name):
    """A non-finite batch changes no weight, statistic, slot (the EMA
    included), counter or method state. `use_ema=True`: the average is that
    of the weights each step leaves (never a perturbed point, and after any
    decoupled update)."""
    x, y = tiny.data(n=8)
    bad = x.copy()
    bad[2, 0] = np.nan
    momentum = 0.8
    model = _model(name, optimizer=keras.optimizers.SGD(
        0.05, momentum=0.9, use_ema=True, ema_momentum=momentum))
    expected = None
    for batch in (x, x, x, bad, x):
        iterations = int(model.optimizer.iterations)
        before = _everything(model) if batch is bad else None
        model.train_on_batch(batch, y)
        if batch is bad:
            for b, a in zip(before, _everything(model)):
                np.testing.assert_array_equal(a, b)
            assert int(model.optimizer.iterations) == iterations
            continue
        applied = [np.array(v, dtype=np.float64) for v in model.trainable_variables]
        if expected is None:  # Keras: the first step's average is the weights
            expected = applied
        else:
            expected = [momentum * e + (1 - momentum) * w for e, w in zip(expected, applied)]
    assert int(model.optimizer.iterations) == 4
    averages = [np.array(a) for a in model.optimizer._model_variables_moving_average]
    _assert_all_close(averages, expected, rtol=1e-5, atol=1e-6)
    # Not vacuous: the weights moved away from their average.
    assert max(np.abs(a - w).max() for a, w in zip(averages, applied)) > 1e-4
    assert all(np.isfinite(v).all() for v in _everything(model))


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_and_zero_hessian_change_nothing(name):
    """Degenerate geometry: at zero input a bias-free network has zero
    output, zero gradient and zero Hessian. No division by zero: every
    method leaves the weights where they are, and the state stays finite
    (a refresh that finds a zero eigenvalue keeps its vector)."""
    net = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(4, use_bias=False, activation="tanh"),
        keras.layers.Dense(3, use_bias=False),
    ])
    model = _model(name, net=net)
    x, y = np.zeros((8, 5), "float32"), np.zeros((8, 3), "float32")
    model.train_on_batch(x, y)  # builds the state
    before = [np.array(v) for v in model.trainable_variables]
    for _ in range(3):
        model.train_on_batch(x, y)
    for b, a in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(np.array(a), b)
    assert int(model.optimizer.iterations) == 4
    assert all(np.isfinite(v).all() for v in _everything(model))


# ------------------------------------------------------------ saving


@pytest.mark.parametrize("name", NAMES)
def test_backup_and_restore_and_keras_file_keep_method_state(name, tmp_path):
    x, y = tiny.data(n=24)

    class InterruptAt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def new_model():
        keras.utils.clear_session()
        return _model(name, net=tiny.mlp())

    fit = dict(batch_size=8, epochs=3, verbose=0, shuffle=False)
    reference = new_model()
    reference.fit(x, y, **fit)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        new_model().fit(x, y, callbacks=[backup, InterruptAt()], **fit)
    resumed = new_model()
    history = resumed.fit(x, y, callbacks=[backup], **fit)
    assert len(history.history["loss"]) == 1
    assert int(resumed.optimizer.iterations) == 9
    _assert_all_close(
        tiny.weights_of(resumed) + _state(resumed),
        tiny.weights_of(reference) + _state(reference),
    )
    # A `.keras` file keeps the method, its configuration and its state, and
    # training goes on from it as from the model itself.
    path = str(tmp_path / "m.keras")
    reference.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.method) is type(reference.method)
    assert loaded.method.get_config() == reference.method.get_config()
    _assert_all_close(_state(loaded), _state(reference), rtol=0, atol=0)
    for m in (reference, loaded):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    _assert_all_close(
        tiny.weights_of(loaded) + _state(loaded), tiny.weights_of(reference) + _state(reference)
    )


@pytest.mark.parametrize("name", NAMES)
def test_get_config_round_trip(name):
    options = {"perturbed_variables": "normalization", "name": f"{name}_custom"}
    if registry.get(name).cls.supports_interval:
        options["interval"] = 3
    method = _method(name, **options)
    model = ks.SharpnessAwareModel(tiny.bn_dropout_net(), method=method)
    config = model.get_config()
    clone = ks.SharpnessAwareModel.from_config(config)
    assert clone.get_config() == config
    assert type(clone.method) is type(method)
    assert clone.method.get_config() == method.get_config()
    assert clone.method.perturbed_variables == "normalization"
    assert clone.method.interval == options.get("interval", 1)


# ------------------------------------------------------------ SAM-ON


@pytest.mark.parametrize("name", NAMES)
def test_sam_on_perturbs_only_normalization_layers(name):
    model = ks.SharpnessAwareModel(
        tiny.bn_dropout_net(), method=_method(name, perturbed_variables="normalization")
    )
    everything = ks.SharpnessAwareModel(tiny.bn_dropout_net(), method=_method(name))
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape) for v in variables]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    for slot in optimizer.momentums:  # momentum-SAM reads it
        slot.assign(rng.normal(size=slot.shape))
    # Independent of the library: the BatchNormalization layers' own weights.
    norm_ids = {
        id(w)
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.trainable_weights
    }
    flags = [id(v) in norm_ids for v in variables]
    assert any(flags) and not all(flags)
    perturbation = model.method.step_perturbation(
        tiny.eager_context(model, grads, optimizer)
    )
    for e, is_norm, v in zip(perturbation, flags, variables):
        if is_norm:
            assert np.abs(np.array(e)).max() > 0, v.path
        else:
            np.testing.assert_array_equal(np.array(e), 0.0, err_msg=v.path)
    # The rule on the selected variables alone: the unrestricted rule applied
    # to a gradient (and momentum) that is zero elsewhere, then cut to them.
    masked = [g if f else np.zeros_like(g) for g, f in zip(grads, flags)]
    optimizer_all = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer_all.build(everything.trainable_variables)
    for slot, source, f in zip(optimizer_all.momentums, optimizer.momentums, flags):
        slot.assign(np.array(source) if f else np.zeros(slot.shape))
    reference = everything.method.step_perturbation(
        tiny.eager_context(everything, masked, optimizer_all)
    )
    _assert_all_close(
        [np.array(e) for e in perturbation],
        [np.array(e) if f else np.zeros(e.shape) for e, f in zip(reference, flags)],
        rtol=1e-6, atol=1e-7,
    )


@pytest.mark.parametrize("name", NAMES)
def test_sam_on_without_normalization_layers_is_refused(name):
    model = ks.SharpnessAwareModel(
        tiny.mlp(), method=_method(name, perturbed_variables="normalization")
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    x, y = tiny.data(n=8)
    with pytest.raises(ValueError, match="perturbed_variables"):
        model.train_on_batch(x, y)


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ks.GSAM(rho_max=-0.1), ValueError, r"`rho_max`.*Received: rho_max=-0.1"),
        (lambda: ks.GSAM(rho_min="a"), TypeError, r"`rho_min`.*Received: rho_min='a'"),
        (lambda: ks.GSAM(rho=0.1), TypeError, r"takes no `rho`.*Received: rho=0.1"),
        (lambda: ks.GSAM(lr_max=0.1, lr_min=0.2), ValueError, r"lr_min=0.2, lr_max=0.1"),
        (lambda: ks.GSAM(lr_max=-1.0), ValueError, r"Received: lr_max=-1.0"),
        (lambda: ks.WSAM(gamma=1.0), ValueError, r"`gamma` must be below 1.*gamma=1.0"),
        (lambda: ks.WSAM(gamma=-0.5), ValueError, r"Received: gamma=-0.5"),
        (lambda: ks.WSAM(decouple="yes"), TypeError, r"Received: decouple='yes'"),
        (lambda: ks.FriendlySAM(lmbda=1.5), ValueError, r"Received: lmbda=1.5"),
        (lambda: ks.FriendlySAM(sigma=None), TypeError, r"Received: sigma=None"),
        (lambda: ks.LookSAM(k=0), ValueError, r"`k`.*Received: k=0"),
        (lambda: ks.LookSAM(k=2.5), TypeError, r"Received: k=2.5"),
        (lambda: ks.LookSAM(interval=2), ValueError, r"no `interval`.*interval=2"),
        (lambda: ks.ESAM(beta=0.0), ValueError, r"`beta`.*Received: beta=0.0"),
        (lambda: ks.ESAM(gamma=1.5), ValueError, r"`gamma`.*Received: gamma=1.5"),
        (lambda: ks.ESAM(seed=1.5), TypeError, r"Received: seed=1.5"),
        (lambda: ks.MomentumSAM(rho=-1.0), ValueError, r"Received: rho=-1.0"),
        (lambda: ks.MomentumSAM(interval=3), ValueError, r"no `interval`.*interval=3"),
        (lambda: ks.SAM(perturbed_variables="bn"), ValueError,
         r"`perturbed_variables` must be.*Received: perturbed_variables='bn'"),
        (lambda: ks.ASAM(interval=0), ValueError, r"`interval`.*Received: interval=0"),
    ],
)
def test_bad_arguments_are_named_with_the_value_received(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_momentum_sam_without_momentum_names_the_optimizer():
    model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.MomentumSAM())
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = tiny.data(n=8)
    with pytest.raises(ValueError, match=r"momentum.*Received: optimizer=SGD\(momentum=0.0\)"):
        model.train_on_batch(x, y)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if not registry.create(n).supports_gradient_accumulation],
)
def test_gradient_accumulation_is_refused(name):
    """Methods whose update is not a mean of per-micro-batch descents refuse
    accumulation; the others are checked against NumPy oracles under it in
    `test_gradient_accumulation.py`."""
    x, y = tiny.data(n=32)
    model = ks.SharpnessAwareModel(tiny.mlp(), method=_method(name))
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, gradient_accumulation_steps=2),
        loss="mse",
    )
    with pytest.raises(
        ValueError, match=rf"{type(model.method).__name__} does not support gradient "
        r"accumulation.*gradient_accumulation_steps=2"
    ):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
