"""The SAM-family methods against float64 NumPy oracles (`tests.family_reference`).

GSAM, WSAM, FriendlySAM, LookSAM, ESAM and Momentum-SAM, SAM-ON
(`perturbed_variables`) and interval SAM (`interval`), each run for several
full-batch steps in Keras and compared with the oracle of its stated rule.

Tolerances: a Keras (float32) run against the oracle (float64) at
rtol=1e-5, atol=1e-6 (`tiny.RTOL/ATOL`); two Keras models that must agree by
a reduction at rtol=atol=1e-6 (float32 rounding only). Every oracle
comparison also checks that the expected weights differ from SAM's (or
SGD's) by more than 1e-4, so that it cannot pass vacuously.
"""

import keras
import numpy as np
import pytest

import keras_eigensam as ks
from tests import family_reference as fam
from tests import tiny

LR = 0.1
SCHEDULES = keras.optimizers.schedules
EXACT = dict(rtol=1e-6, atol=1e-6)  # Keras vs Keras: float32 rounding only
DIFFERENT = 1e-4


def _model(method, optimizer=None, net=None, **kwargs):
    model = ks.SharpnessAwareModel(net or tiny.mlp(), method=method, **kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), loss="mse")
    return model


def _fit(model, x, y, steps):
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == steps
    return tiny.weights_of(model)


def _problem():
    x, y = tiny.data(n=16)
    return x, y, fam.MLPProblem(x, y)


def _assert_differs(a, b, what="SAM"):
    difference = tiny.max_difference(a, b)
    assert difference > DIFFERENT, f"expected result within {difference:.2g} of {what}"


def _check(method, oracle, steps, optimizer=None, oracle_opt=None, lr=LR, net=None,
           problem=None, x=None, y=None, baseline=None):
    """Fits `method` for `steps` full-batch steps and compares it with
    `oracle` run from the same initial weights; returns the expected weights.
    `baseline` is an oracle method (default SAM with the oracle's rho) the
    expected weights must differ from."""
    if problem is None:
        x, y, problem = _problem()
    model = _model(method, optimizer, net)
    w0 = tiny.weights_of(model)
    expected = fam.run(oracle, problem, w0, steps, oracle_opt or fam.SGD(), lr)
    tiny.assert_weights_close(_fit(model, x, y, steps), expected)
    if baseline is not None:
        opt = _copy_of(oracle_opt)
        _assert_differs(expected, fam.run(baseline, problem, w0, steps, opt, lr),
                        type(baseline).__name__)
    return expected, w0, problem


def _copy_of(opt):
    if opt is None or isinstance(opt, fam.SGD):
        return fam.SGD(0.0 if opt is None else opt.momentum)
    return fam.Adam(opt.beta_1, opt.beta_2, opt.epsilon)


# =================================================================== GSAM


def test_gsam_sgd_matches_oracle():
    _check(
        ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
        fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
        steps=3,
        baseline=fam.SAM(0.3),  # constant rate: ρ_t = ρ_max
    )


@pytest.mark.parametrize(
    "schedule, lr_max, lr_min, rhos",
    [
        # ρ_t falls linearly from ρ_max to ρ_min with the rate.
        (
            lambda: SCHEDULES.PolynomialDecay(0.2, 4, end_learning_rate=0.04),
            0.2, 0.04, [0.3, 0.25, 0.2, 0.15, 0.1],
        ),
        # lr_max below the first rate: ρ_t clipped to ρ_max there.
        (
            lambda: SCHEDULES.PolynomialDecay(0.2, 4, end_learning_rate=0.04),
            0.12, 0.04, [0.3, 0.3, 0.3, 0.2, 0.1],
        ),
        # lr_max: the largest rate seen so far; lr_min: 0.
        (
            lambda: SCHEDULES.PiecewiseConstantDecay([0, 1, 2], [0.1, 0.2, 0.05, 0.15]),
            None, None, [0.3, 0.3, 0.15, 0.25, 0.25],
        ),
    ],
    ids=["explicit-bounds", "explicit-bounds-clipped", "seen-max-and-zero"],
)
def test_gsam_schedule_matches_oracle(schedule, lr_max, lr_min, rhos):
    sched = schedule()
    config = sched.get_config()
    if "boundaries" in config:
        lr = fam.piecewise_constant(config["boundaries"], config["values"])
    else:
        lr = fam.polynomial_decay(0.2, 4, 0.04)
    steps = 5
    # The NumPy schedule is Keras's.
    np.testing.assert_allclose([float(sched(t)) for t in range(steps)],
                               [lr(t) for t in range(steps)], rtol=1e-6)
    oracle = fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4, lr_max=lr_max, lr_min=lr_min)
    _check(
        ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4, lr_max=lr_max, lr_min=lr_min),
        oracle,
        steps=steps,
        optimizer=keras.optimizers.SGD(sched),
        lr=lr,
        baseline=fam.GSAM(rho_max=0.3, rho_min=0.3, alpha=0.4),  # ρ fixed at ρ_max
    )
    np.testing.assert_allclose(oracle.rhos, rhos, rtol=1e-12)


def test_gsam_momentum_matches_oracle():
    _check(
        ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
        fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
        steps=3,
        optimizer=keras.optimizers.SGD(LR, momentum=0.9),
        oracle_opt=fam.SGD(0.9),
        baseline=fam.SAM(0.3),
    )


def test_gsam_alpha_zero_fixed_rho_is_sam():
    x, y, problem = _problem()
    gsam = _model(ks.GSAM(rho_max=0.2, rho_min=0.2, alpha=0.0))
    sam = _model(ks.SAM(rho=0.2))
    w0 = tiny.weights_of(sam)
    tiny.assert_weights_close(_fit(gsam, x, y, 3), _fit(sam, x, y, 3), **EXACT)
    expected = fam.run(fam.SAM(0.2), problem, w0, 3)
    tiny.assert_weights_close(tiny.weights_of(gsam), expected)
    tiny.assert_weights_close(expected, fam.run(fam.GSAM(0.2, 0.2, 0.0), problem, w0, 3),
                              rtol=1e-12, atol=1e-12)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 3), "SGD")


# =================================================================== WSAM


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_sgd_matches_oracle(decouple):
    expected, w0, problem = _check(
        ks.WSAM(rho=0.2, gamma=0.8, decouple=decouple),
        fam.WSAM(rho=0.2, gamma=0.8, decouple=decouple),
        steps=3,
        baseline=fam.SAM(0.2),
    )
    # With plain SGD both forms are the same update.
    other = fam.run(fam.WSAM(0.2, 0.8, decouple=not decouple), problem, w0, 3)
    tiny.assert_weights_close(other, expected, rtol=1e-12, atol=1e-12)


def test_wsam_momentum_coupled_and_decoupled_match_their_oracles():
    results = {}
    for decouple in (True, False):
        results[decouple], _, _ = _check(
            ks.WSAM(rho=0.2, gamma=0.8, decouple=decouple),
            fam.WSAM(rho=0.2, gamma=0.8, decouple=decouple),
            steps=3,
            optimizer=keras.optimizers.SGD(LR, momentum=0.9),
            oracle_opt=fam.SGD(0.9),
            baseline=fam.SAM(0.2),
        )
    _assert_differs(results[True], results[False], "the coupled form")


def test_wsam_decoupled_correction_uses_this_steps_rate():
    schedule = SCHEDULES.PiecewiseConstantDecay([0, 1], [0.1, 0.04, 0.2])
    lr = fam.piecewise_constant([0, 1], [0.1, 0.04, 0.2])
    expected, w0, problem = _check(
        ks.WSAM(rho=0.2, gamma=0.8),
        fam.WSAM(rho=0.2, gamma=0.8),
        steps=3,
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        oracle_opt=fam.SGD(0.9),
        lr=lr,
        baseline=fam.SAM(0.2),
    )
    # The next step's rate in the correction would be a different update.
    shifted = fam.run(fam.WSAM(0.2, 0.8), problem, w0, 3, fam.SGD(0.9),
                      lambda t: lr(t + 1))
    _assert_differs(expected, shifted, "the update with the next step's rate")


def test_wsam_gamma_half_is_sam():
    x, y, problem = _problem()
    wsam = _model(ks.WSAM(rho=0.2, gamma=0.5))
    sam = _model(ks.SAM(rho=0.2))
    w0 = tiny.weights_of(sam)
    tiny.assert_weights_close(_fit(wsam, x, y, 3), _fit(sam, x, y, 3), **EXACT)
    expected = fam.run(fam.SAM(0.2), problem, w0, 3)
    tiny.assert_weights_close(tiny.weights_of(wsam), expected)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 3), "SGD")


# =================================================================== FriendlySAM


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_friendly_sam_matches_oracle(momentum):
    _check(
        ks.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6),
        fam.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6),
        steps=4,
        optimizer=keras.optimizers.SGD(LR, momentum=momentum),
        oracle_opt=fam.SGD(momentum),
        baseline=fam.SAM(0.2),
    )


def test_friendly_sam_sigma_zero_is_sam():
    x, y, problem = _problem()
    friendly = _model(ks.FriendlySAM(rho=0.2, sigma=0.0, lmbda=0.6))
    sam = _model(ks.SAM(rho=0.2))
    w0 = tiny.weights_of(sam)
    tiny.assert_weights_close(_fit(friendly, x, y, 4), _fit(sam, x, y, 4), **EXACT)
    expected = fam.run(fam.SAM(0.2), problem, w0, 4)
    tiny.assert_weights_close(tiny.weights_of(friendly), expected)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 4), "SGD")


def _snapshot(model):
    return (
        [np.array(v) for v in model.trainable_variables],
        [np.array(v) for v in model.method.variables],
        [np.array(v) for v in model.optimizer.variables],
    )


def _assert_same_snapshot(before, after):
    for group_before, group_after in zip(before, after):
        assert len(group_before) == len(group_after)
        for b, a in zip(group_before, group_after):
            np.testing.assert_array_equal(a, b)


def test_friendly_sam_nan_batch_leaves_weights_and_state_unchanged():
    x, y, problem = _problem()
    model = _model(ks.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6),
                   keras.optimizers.SGD(LR, momentum=0.9))
    w0 = tiny.weights_of(model)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    assert len(model.method.variables) > 0
    before = _snapshot(model)
    x_bad = x.copy()
    x_bad[2, 1] = np.nan
    model.train_on_batch(x_bad, y)  # skipped
    _assert_same_snapshot(before, _snapshot(model))
    assert int(model.optimizer.iterations) == 2
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    expected = fam.run(fam.FriendlySAM(0.2, 0.9, 0.6), problem, w0, 4, fam.SGD(0.9))
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    _assert_differs(expected, fam.run(fam.SAM(0.2), problem, w0, 4, fam.SGD(0.9)))


def test_friendly_sam_first_applied_step_is_the_first_step():
    """A skipped first batch changes nothing, so the first applied step is
    still the first step ever (`m = g`, `e = ρ·ĝ`)."""
    x, y, problem = _problem()
    model = _model(ks.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6))
    w0 = tiny.weights_of(model)
    x_bad = x.copy()
    x_bad[0, 0] = np.nan
    model.train_on_batch(x_bad, y)
    assert int(model.optimizer.iterations) == 0
    np.testing.assert_array_equal(tiny.weights_of(model)[0], w0[0])
    for _ in range(3):
        model.train_on_batch(x, y)
    expected = fam.run(fam.FriendlySAM(0.2, 0.9, 0.6), problem, w0, 3)
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    _assert_differs(expected, fam.run(fam.SAM(0.2), problem, w0, 3))


# =================================================================== LookSAM


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_look_sam_matches_oracle(momentum):
    oracle = fam.LookSAM(rho=0.2, k=3, alpha=0.7)
    _check(
        ks.LookSAM(rho=0.2, k=3, alpha=0.7),
        oracle,
        steps=7,  # SAM steps 0, 3, 6
        optimizer=keras.optimizers.SGD(LR, momentum=momentum),
        oracle_opt=fam.SGD(momentum),
        baseline=fam.SAM(0.2),
    )
    assert oracle.passes == 7 + 3


def test_look_sam_k_one_is_sam():
    x, y, problem = _problem()
    look = _model(ks.LookSAM(rho=0.2, k=1, alpha=0.7))
    sam = _model(ks.SAM(rho=0.2))
    w0 = tiny.weights_of(sam)
    tiny.assert_weights_close(_fit(look, x, y, 3), _fit(sam, x, y, 3), **EXACT)
    expected = fam.run(fam.SAM(0.2), problem, w0, 3)
    tiny.assert_weights_close(tiny.weights_of(look), expected)
    tiny.assert_weights_close(expected, fam.run(fam.LookSAM(0.2, 1, 0.7), problem, w0, 3),
                              rtol=1e-12, atol=1e-12)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 3), "SGD")


def test_look_sam_refuses_interval():
    with pytest.raises(ValueError, match="interval"):
        model = _model(ks.LookSAM(rho=0.2, k=3, alpha=0.7, interval=2))
        model.train_on_batch(*tiny.data(n=16))


# =================================================================== ESAM


def test_esam_matches_oracle():
    oracle = fam.ESAM(rho=0.3, gamma=0.5)
    _check(
        ks.ESAM(rho=0.3, beta=1.0, gamma=0.5),
        oracle,
        steps=3,
        baseline=fam.SAM(0.3),
    )
    assert [len(s) for s in oracle.selections] == [8, 8, 8]


def test_esam_beta_below_one_is_seeded_and_differs_from_beta_one():
    x, y, _ = _problem()
    runs = [
        _fit(_model(ks.ESAM(rho=0.3, beta=0.5, gamma=0.5, seed=3)), x, y, 3)
        for _ in range(2)
    ]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert all(np.all(np.isfinite(w)) for w in runs[0])
    full = _fit(_model(ks.ESAM(rho=0.3, beta=1.0, gamma=0.5)), x, y, 3)
    _assert_differs(runs[0], full, "beta=1")


def test_esam_beta_one_gamma_one_is_sam():
    x, y, problem = _problem()
    esam = _model(ks.ESAM(rho=0.3, beta=1.0, gamma=1.0))
    sam = _model(ks.SAM(rho=0.3))
    w0 = tiny.weights_of(sam)
    tiny.assert_weights_close(_fit(esam, x, y, 3), _fit(sam, x, y, 3), **EXACT)
    expected = fam.run(fam.SAM(0.3), problem, w0, 3)
    tiny.assert_weights_close(tiny.weights_of(esam), expected)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 3), "SGD")


# =================================================================== Momentum-SAM


def test_momentum_sam_sgd_matches_torch_convention_oracle():
    x, y, problem = _problem()
    model = _model(ks.MomentumSAM(rho=0.3), keras.optimizers.SGD(LR, momentum=0.9))
    w0 = tiny.weights_of(model)
    expected = fam.momentum_sam_sgd_torch(problem, w0, 4, LR, 0.9, 0.3)
    tiny.assert_weights_close(_fit(model, x, y, 4), expected)
    # The Keras-convention oracle (perturbation along −velocity) agrees.
    keras_convention = fam.run(fam.MomentumSAM(0.3), problem, w0, 4, fam.SGD(0.9))
    tiny.assert_weights_close(keras_convention, expected, rtol=1e-9, atol=1e-9)
    # Neither plain momentum SGD nor a perturbation along the velocity.
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 4, fam.SGD(0.9)),
                    "momentum SGD")
    _assert_differs(expected, fam.momentum_sam_sgd_torch(problem, w0, 4, LR, 0.9, -0.3),
                    "the downhill perturbation")


def test_momentum_sam_adam_matches_oracle():
    x, y, problem = _problem()
    lr = 0.01
    model = _model(ks.MomentumSAM(rho=0.3), keras.optimizers.Adam(lr))
    w0 = tiny.weights_of(model)
    expected = fam.run(fam.MomentumSAM(0.3), problem, w0, 3, fam.Adam(), lr)
    tiny.assert_weights_close(_fit(model, x, y, 3), expected)
    _assert_differs(expected, fam.run(fam.Plain(), problem, w0, 3, fam.Adam(), lr), "Adam")


def test_adam_oracle_is_keras_adam():
    """The oracle's Adam is Keras's (checks the oracle, not the library)."""
    x, y, problem = _problem()
    net = tiny.mlp()
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    w0 = tiny.weights_of(net)
    net.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    expected = fam.run(fam.Plain(), problem, w0, 3, fam.Adam(), 0.01)
    tiny.assert_weights_close(tiny.weights_of(net), expected)


def test_momentum_sam_needs_momentum():
    x, y, _ = _problem()
    model = _model(ks.MomentumSAM(rho=0.3), keras.optimizers.SGD(LR))
    with pytest.raises(ValueError, match="momentum"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


# =================================================================== SAM-ON

LN_PATHS = ["hidden/kernel", "hidden/bias", "norm/gamma", "norm/beta",
            "head/kernel", "head/bias"]
NORMALIZATION = [False, False, True, True, False, False]
HEAD_KERNEL = [False, False, False, False, True, False]


def _ln_net(seed=11):
    init = keras.initializers
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, name="hidden",
                               kernel_initializer=init.GlorotNormal(seed),
                               bias_initializer=init.RandomNormal(seed=seed + 1)),
            keras.layers.LayerNormalization(
                name="norm",
                gamma_initializer=init.RandomUniform(0.5, 1.5, seed=seed + 2),
                beta_initializer=init.RandomNormal(stddev=0.3, seed=seed + 3),
            ),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(3, name="head",
                               kernel_initializer=init.GlorotNormal(seed + 4),
                               bias_initializer=init.RandomNormal(seed=seed + 5)),
        ],
        name="ln_net",
    )


def _ln_problem():
    x, y = tiny.data(n=16)
    return x, y, fam.LayerNormProblem(x, y, epsilon=1e-3)


def test_layer_norm_oracle_gradient_is_exact():
    """The oracle's LayerNorm backward pass against central differences and
    its forward pass against Keras (checks the oracle, not the library)."""
    x, y, problem = _ln_problem()
    net = _ln_net()
    assert net.layers[1].epsilon == problem.epsilon
    w = tiny.weights_of(net)
    assert [v.path.split("/", 1)[1] for v in net.trainable_variables] == LN_PATHS
    np.testing.assert_allclose(
        net.predict(x, verbose=0),
        problem._forward(w, problem.x)[3], rtol=1e-5, atol=1e-6,
    )
    for examples in (None, np.array([1, 4, 5, 9])):
        numeric = fam.finite_difference_grad(lambda v: problem.loss(v, examples), w)
        tiny.assert_weights_close(problem.grad(w, examples), numeric, rtol=1e-6, atol=1e-8)


def _sam_on_case(method, oracle, mask, steps=3, momentum=0.0):
    x, y, problem = _ln_problem()
    return _check(
        method, oracle, steps,
        optimizer=keras.optimizers.SGD(LR, momentum=momentum),
        oracle_opt=fam.SGD(momentum),
        net=_ln_net(), problem=problem, x=x, y=y,
        baseline=fam.SAM(oracle.rho),
    )


def test_sam_on_normalization_matches_oracle():
    _sam_on_case(
        ks.SAM(rho=0.3, perturbed_variables="normalization"),
        fam.SAM(0.3, mask=NORMALIZATION),
        NORMALIZATION,
    )


def test_sam_on_callable_selects_the_head_kernel():
    _sam_on_case(
        ks.SAM(rho=0.3, perturbed_variables=lambda v: v.path.endswith("head/kernel")),
        fam.SAM(0.3, mask=HEAD_KERNEL),
        HEAD_KERNEL,
    )


def test_perturbed_variables_all_is_sam():
    x, y, _ = _problem()
    tiny.assert_weights_close(
        _fit(_model(ks.SAM(rho=0.3, perturbed_variables="all")), x, y, 3),
        _fit(_model(ks.SAM(rho=0.3)), x, y, 3),
        **EXACT,
    )


# SAM-ON on every method: tests/methods/test_contract.py (perturbation
# compared with the unrestricted rule on a masked gradient).
def test_normalization_without_normalization_layer_is_refused():
    with pytest.raises(ValueError, match="perturbed_variables"):
        model = _model(ks.SAM(rho=0.3, perturbed_variables="normalization"))
        model.train_on_batch(*tiny.data(n=16))


# =================================================================== interval


def test_sam_interval_matches_oracle():
    _check(
        ks.SAM(rho=0.3, interval=3),
        fam.SAM(0.3, interval=3),
        steps=6,  # second passes at steps 0 and 3
        baseline=fam.SAM(0.3),
    )


def test_gsam_interval_matches_oracle():
    _, w0, problem = _check(
        ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4, interval=2),
        fam.GSAM(0.3, 0.1, 0.4, interval=2),
        steps=4,
        baseline=fam.GSAM(0.3, 0.1, 0.4),
    )


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_interval_matches_oracle(decouple):
    _check(
        ks.WSAM(rho=0.3, gamma=0.8, decouple=decouple, interval=2),
        fam.WSAM(0.3, 0.8, decouple=decouple, interval=2),
        steps=4,
        optimizer=keras.optimizers.SGD(LR, momentum=0.9),
        oracle_opt=fam.SGD(0.9),
        baseline=fam.WSAM(0.3, 0.8, decouple=decouple),
    )


def test_esam_interval_matches_oracle():
    _check(
        ks.ESAM(rho=0.3, beta=1.0, gamma=0.5, interval=2),
        fam.ESAM(0.3, 0.5, interval=2),
        steps=4,
        baseline=fam.ESAM(0.3, 0.5),
    )


# =================================================================== saved state


@pytest.mark.parametrize(
    "make, oracle, schedule, lr, before",
    [
        # The largest rate seen (0.2, at step 1) must survive the reload.
        (lambda: ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
         lambda: fam.GSAM(0.3, 0.1, 0.4),
         lambda: SCHEDULES.PiecewiseConstantDecay([0, 1, 2], [0.1, 0.2, 0.05, 0.15]),
         fam.piecewise_constant([0, 1, 2], [0.1, 0.2, 0.05, 0.15]), 2),
        (lambda: ks.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6),
         lambda: fam.FriendlySAM(0.2, 0.9, 0.6), lambda: LR, LR, 2),
        # g_v of step 0 is used by steps 1 and 2, after the reload.
        (lambda: ks.LookSAM(rho=0.2, k=3, alpha=0.7),
         lambda: fam.LookSAM(0.2, 3, 0.7), lambda: LR, LR, 1),
    ],
    ids=["gsam-seen-max", "friendly-sam", "look-sam"],
)
def test_method_state_survives_save_and_load(tmp_path, make, oracle, schedule, lr, before):
    x, y, problem = _problem()
    model = _model(make(), keras.optimizers.SGD(schedule()))
    w0 = tiny.weights_of(model)
    _fit(model, x, y, before)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.method) is type(model.method)
    assert loaded.method.get_config() == model.method.get_config()
    loaded.fit(x, y, batch_size=len(x), epochs=4 - before, shuffle=False, verbose=0)
    expected = fam.run(oracle(), problem, w0, 4, lr=lr)
    tiny.assert_weights_close(tiny.weights_of(loaded), expected)
    # Restarting the method's state at the reload would be a different run.
    restarted = fam.run(oracle(), problem, fam.run(oracle(), problem, w0, before, lr=lr),
                        4 - before, lr=lambda t: (lr(t + before) if callable(lr) else lr))
    _assert_differs(expected, restarted, "a run whose method state restarts")


# =================================================================== clipping

CLIPPED_METHODS = {
    "sam": (lambda: ks.SAM(rho=0.2), lambda: fam.SAM(0.2), 0.0),
    "gsam": (lambda: ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
             lambda: fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4), 0.0),
    "wsam-coupled": (lambda: ks.WSAM(rho=0.2, gamma=0.8, decouple=False),
                     lambda: fam.WSAM(0.2, 0.8, decouple=False), 0.9),
    "wsam-decoupled": (lambda: ks.WSAM(rho=0.2, gamma=0.8),
                       lambda: fam.WSAM(0.2, 0.8), 0.9),
    "friendlysam": (lambda: ks.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6),
                    lambda: fam.FriendlySAM(rho=0.2, sigma=0.9, lmbda=0.6), 0.9),
    "looksam": (lambda: ks.LookSAM(rho=0.2, k=2, alpha=0.7),
                lambda: fam.LookSAM(rho=0.2, k=2, alpha=0.7), 0.0),
    "esam": (lambda: ks.ESAM(rho=0.3, beta=1.0, gamma=0.5),
             lambda: fam.ESAM(rho=0.3, gamma=0.5), 0.0),
    "momentumsam": (lambda: ks.MomentumSAM(rho=0.3), lambda: fam.MomentumSAM(0.3), 0.9),
}


@pytest.mark.parametrize(
    "name, clip",
    [(name, {"clipnorm": 0.01 if name == "esam" else 0.05}) for name in CLIPPED_METHODS]
    + [("sam", {"global_clipnorm": 0.05}), ("sam", {"clipvalue": 0.01})],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_clipping_applies_to_the_descent_gradient_only(name, clip):
    """Keras's clipping clips what the optimizer is handed (the descent
    direction); the ascent (perturbation, eigenvector, EMAs of the method)
    always uses the unclipped gradient (davda54/sam#32, #64)."""
    make, oracle, momentum = CLIPPED_METHODS[name]
    x, y, problem = _problem()
    model = _model(make(), keras.optimizers.SGD(LR, momentum=momentum, **clip))
    w0 = tiny.weights_of(model)
    steps = 3
    expected = fam.run(oracle(), problem, w0, steps, fam.Clipped(fam.SGD(momentum), **clip))
    tiny.assert_weights_close(_fit(model, x, y, steps), expected)
    # Clipping is active, and clipping the ascent too would be another step.
    _assert_differs(expected, fam.run(oracle(), problem, w0, steps, fam.SGD(momentum)),
                    "the unclipped run")
    if name == "momentumsam" or "global_clipnorm" in clip:
        # No ascent gradient (Momentum-SAM), or a clip that keeps the
        # direction of a normalised ascent: nothing to tell apart.
        return
    clipped_ascent = fam.ClippedAscent(problem, fam.Clipped(None, **clip))
    _assert_differs(
        expected,
        fam.run(oracle(), clipped_ascent, w0, steps, fam.Clipped(fam.SGD(momentum), **clip)),
        "a run whose ascent gradient is clipped too",
    )


# =================================================================== rate changes


def test_gsam_rho_follows_reduce_lr_on_plateau():
    """`ReduceLROnPlateau` assigns the optimizer's rate between epochs; GSAM's
    ρ_t follows the rate of each step (lr_max: the largest seen)."""
    x, y, problem = _problem()
    model = _model(ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4))
    w0 = tiny.weights_of(model)
    # min_delta larger than any change: every epoch after the first is a
    # plateau, and the rate halves after it (History logs the rate the
    # epoch used).
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9, min_lr=0.0)
    history = model.fit(x, y, batch_size=len(x), epochs=4, shuffle=False, verbose=0,
                        callbacks=[plateau])
    rates = [float(r) for r in history.history["learning_rate"]]
    np.testing.assert_allclose(rates, [LR, LR, LR / 2, LR / 4], rtol=1e-6)
    oracle = fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4)
    expected = fam.run(oracle, problem, w0, 4, fam.SGD(), lambda t: rates[t])
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    np.testing.assert_allclose(oracle.rhos, [0.3, 0.3, 0.2, 0.15], rtol=1e-6)
    _assert_differs(expected, fam.run(fam.SAM(0.3), problem, w0, 4, fam.SGD(),
                                      lambda t: rates[t]), "SAM at ρ_max")
