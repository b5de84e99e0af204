"""Gradient accumulation (`gradient_accumulation_steps=n`) against NumPy oracles.

The promised semantics (per-micro-batch m-sharpness, see
`SharpnessAwareModel`): each micro-batch takes its method's step on its own
at the window's weights (its own first pass and perturbation; the optimizer
step count and momentum are those of the window), the descent gradients of
the window's `n` micro-batches are averaged and applied once, and
`iterations` counts optimizer steps. A non-finite micro-batch is skipped and
counted in `skipped_steps`; the window completes with the next finite
micro-batches, so every optimizer step averages `n` finite ones. Methods
that cannot be run so are refused (`test_contract.py`), and so are
strategies that synchronise with `merge_call` (here).

Every method that supports accumulation is fitted on six micro-batches of 4
examples, `n = 2`, with NaN in the second (inside window 0) and the fourth
(opening window 1): 2 optimizer steps, 2 skipped micro-batches. The oracle is
`family_reference.run_accumulated` over the four finite micro-batches.
Tolerances: float32 Keras against the float64 oracle, rtol=1e-5, atol=1e-6
(`tiny.RTOL/ATOL`; the model is float32 because GSAM, LookSAM and the
eigenvector tracker do not run in float64 yet); each expected result also differs by more than 1e-4
from the one big-batch step per window, so that per-micro-batch perturbation
is what is checked.
"""

import keras
import numpy as np
import pytest

import keras_eigensam as ks
from keras_eigensam.methods import registry
from tests import family_reference as fam
from tests import numpy_reference as ref
from tests import tiny

LR, MOMENTUM, ACCUMULATION, MICRO = 0.1, 0.9, 2, 4
BAD = (1, 3)  # non-finite micro-batches: inside window 0, opening window 1

#: Per registered name: the Keras method and its oracle (for Eigen-SAM, given
#: the eigenvectors the model used).
CASES = {
    "sam": (lambda: ks.SAM(rho=0.3), lambda: fam.SAM(0.3)),
    "asam": (lambda: ks.ASAM(rho=0.5, eta=0.01), lambda: fam.ASAM(0.5, 0.01)),
    "eigensam": (
        lambda: ks.EigenSAM(rho=0.3, alpha=0.5, refresh_every=1, num_matvecs=12, seed=0),
        lambda vectors: fam.EigenSAM(0.3, 0.5, vectors),
    ),
    "gsam": (
        lambda: ks.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
        lambda: fam.GSAM(rho_max=0.3, rho_min=0.1, alpha=0.4),
    ),
    "wsam": (
        lambda: ks.WSAM(rho=0.3, gamma=0.8, decouple=False),
        lambda: fam.WSAM(0.3, 0.8, decouple=False),
    ),
    # k = 2: step 0 stores the mean g_v of its micro-batches, step 1 reuses it.
    "looksam": (lambda: ks.LookSAM(rho=0.3, k=2, alpha=0.7), lambda: fam.LookSAM(0.3, 2, 0.7)),
    "esam": (lambda: ks.ESAM(rho=0.3, beta=1.0, gamma=0.5), lambda: fam.ESAM(0.3, 0.5)),
    "momentumsam": (lambda: ks.MomentumSAM(rho=0.3), lambda: fam.MomentumSAM(0.3)),
}


def test_every_method_has_an_oracle_case_or_refuses():
    """A registered method that supports accumulation (in some configuration:
    WSAM's coupled form) is checked here; the others refuse it
    (`test_contract.py::test_gradient_accumulation_trains_or_is_refused`)."""
    for name in registry.names():
        if name in CASES:
            assert CASES[name][0]().supports_gradient_accumulation, name
        else:
            assert not registry.create(name).supports_gradient_accumulation, name
    assert set(CASES) <= set(registry.names())


class _Record(keras.callbacks.Callback):
    """After each micro-batch: optimizer steps, refreshes, the eigenvector."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        tracker = self.model.method.tracker
        self.rows.append((
            int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            int(tracker.num_refreshes),
            [np.array(v, "float64") for v in tracker.values()],
        ))


def _micro_batches():
    x, y = tiny.data(n=MICRO * 6)
    x_bad = x.copy()
    for i in BAD:
        x_bad[i * MICRO + 1, 2] = np.nan
    finite = [i for i in range(6) if i not in BAD]
    problems = [
        fam.MLPProblem(x[i * MICRO:(i + 1) * MICRO], y[i * MICRO:(i + 1) * MICRO])
        for i in finite
    ]
    return x_bad, y, problems


def _all_finite(variables):
    return all(np.isfinite(np.array(v)).all() for v in variables)


def _fit(method, x, y, loss_scale=False, callbacks=(), jit_compile=False):
    """Compiles and fits on the six micro-batches; checks what every run
    promises and returns the model and its initial weights."""
    model = ks.SharpnessAwareModel(tiny.mlp(), method=method)
    optimizer = keras.optimizers.SGD(
        LR, momentum=MOMENTUM, gradient_accumulation_steps=ACCUMULATION
    )
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=MICRO, epochs=1, shuffle=False, verbose=0,
                        callbacks=list(callbacks))

    # Optimizer steps, not micro-batches; both bad ones counted.
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2
    assert history.history["skipped_steps"] == [2.0]
    assert np.isfinite(history.history["loss"][0])
    # No NaN reached the weights, the slots, the accumulators or the method's
    # state, and the last window left the accumulators empty.
    assert _all_finite(model.variables + model.method.variables + optimizer.variables)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for accumulator in inner._accumulated_gradients:
        np.testing.assert_array_equal(np.array(accumulator), 0.0)
    return model, w0


@pytest.mark.parametrize(
    "name, jit_compile",
    [(name, False) for name in sorted(CASES)]
    # Under XLA the refresh is a phase of its own (the window's first
    # micro-batch), compiled apart from the other micro-batches.
    + [("eigensam", True)],
)
def test_accumulated_steps_match_oracle_and_skip_non_finite_micro_batches(name, jit_compile):
    make, oracle = CASES[name]
    x, y, problems = _micro_batches()
    method = make()
    record = _Record() if method.tracker is not None else None
    model, w0 = _fit(
        method, x, y, callbacks=[record] if record else [], jit_compile=jit_compile
    )
    if jit_compile:
        assert sorted(model._phase_programs) == [0, 1]

    if name == "eigensam":
        vectors = _check_refresh_once_per_optimizer_step(record, problems, w0)
        method, baseline = oracle(vectors), oracle(vectors)
    else:
        method, baseline = oracle(), oracle()
    expected = fam.run_accumulated(method, problems, w0, ACCUMULATION, fam.SGD(MOMENTUM), LR)
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    if name != "momentumsam":  # its perturbation does not depend on the batch
        whole = [_joined(problems[i:i + ACCUMULATION]) for i in range(0, 4, ACCUMULATION)]
        big_batch = fam.run_accumulated(baseline, whole, w0, 1, fam.SGD(MOMENTUM), LR)
        difference = tiny.max_difference(expected, big_batch)
        assert difference > 1e-4, f"within {difference:.2g} of one big-batch step per window"


def _joined(problems):
    return fam.MLPProblem(np.concatenate([p.x for p in problems]),
                          np.concatenate([p.y for p in problems]))


def _check_refresh_once_per_optimizer_step(record, problems, w0):
    """The eigenvector is refreshed once per optimizer step, on the window's
    first finite micro-batch at the window's weights; returns the vector each
    step used."""
    steps, refreshes, vectors = zip(*record.rows)
    # Micro-batches 0..5: 0 refreshes (step 0), 1 and 3 are skipped, 4
    # refreshes again (step 1), 2 and 5 complete the windows.
    assert list(steps) == [0, 0, 1, 1, 1, 2]
    assert list(refreshes) == [1, 1, 1, 1, 2, 2]
    used = [vectors[0], vectors[4]]
    for later, first in ((2, 0), (3, 0), (5, 4)):  # unchanged within a window
        # (up to float32 rounding: a step without refresh writes back the
        # normalised vector)
        tiny.assert_weights_close(vectors[later], vectors[first], rtol=1e-6, atol=1e-7)
    # The refresh of step t is the top eigenvector (largest eigenvalue) of the
    # Hessian of its first finite micro-batch at w_t.
    for t, v in enumerate(used):
        w_t = fam.run_accumulated(fam.EigenSAM(0.3, 0.5, used), problems[:2 * t], w0,
                                  ACCUMULATION, fam.SGD(MOMENTUM), LR)
        first = problems[2 * t]
        eigenvalues, eigenvectors = np.linalg.eigh(ref.mlp_hessian(w_t, first.x, first.y))
        cosine = abs(ref.flatten(v) @ eigenvectors[:, -1])
        assert cosine > 1 - 1e-4, f"step {t}: |cos| = {cosine}"
        # ... and not that of the window's other micro-batch.
        _, other = np.linalg.eigh(ref.mlp_hessian(w_t, problems[2 * t + 1].x,
                                                  problems[2 * t + 1].y))
        assert abs(ref.flatten(v) @ other[:, -1]) < 0.99
    return used


def test_sam_under_loss_scaling():
    """The other skip path: a `LossScaleOptimizer` skips a non-finite
    micro-batch (and halves its scale) itself."""
    x, y, problems = _micro_batches()
    model, w0 = _fit(ks.SAM(rho=0.3), x, y, loss_scale=True)
    assert float(model.optimizer.dynamic_scale) == 2.0**15 / 4  # halved twice
    expected = fam.run_accumulated(fam.SAM(0.3), problems, w0, ACCUMULATION,
                                   fam.SGD(MOMENTUM), LR)
    tiny.assert_weights_close(tiny.weights_of(model), expected)


def test_strategy_with_merge_call_is_refused(mirrored_strategy):
    """Keras cannot build its accumulation under MirroredStrategy on CPUs (a
    plain Keras model fails with an obscure `merge_call` error): refused."""
    x, y = tiny.data(n=8)
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM())
        model.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2),
                      loss="mse")
    with pytest.raises(ValueError, match=r"merge_call.*gradient_accumulation_steps=2"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
