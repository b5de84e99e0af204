"""The method interface (`SharpnessMethod`, `StepContext`), shown by small methods.

Each method here is defined in the test, not in the library: it is what a
contributor would write for LookSAM-, ESAM- or FriendlySAM-like rules. Every
step is checked against a float64 NumPy oracle of the same rule.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_eigensam as ks
from keras_eigensam import linalg
from tests import numpy_reference as ref
from tests import tiny

LR = 0.1


class SAMEveryK(ks.SharpnessMethod):
    """SAM on steps `step % k == 0`, one plain pass on the others (Composer's
    interval SAM; LookSAM's schedule)."""

    def __init__(self, rho=0.05, k=3, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.k = k

    def perturbation(self, context):
        return linalg.scale(context.grads, self.rho / (context.grad_norm + 1e-12))

    def descent(self, context):
        due = ops.equal(ops.mod(context.step, self.k), 0)
        return context.cond(
            due,
            lambda: context.gradient_at(self.perturbation(context)),
            lambda: context.grads,
        )

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class SAMOnFirstHalf(ks.SharpnessMethod):
    """The second pass on the first half of the batch only (ESAM's data
    selection, with a fixed selection)."""

    def perturbation(self, context):
        return linalg.scale(context.grads, self.rho / (context.grad_norm + 1e-12))

    def descent(self, context):
        return context.gradient_at(self.perturbation(context), examples=ops.arange(8))


class EMAPerturbation(ks.SharpnessMethod):
    """Perturbs along an EMA of the gradients (FriendlySAM-like state)."""

    def __init__(self, rho=0.05, decay=0.5, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.decay = decay

    def build_state(self, variable_shapes):
        super().build_state(variable_shapes)
        self.ema = [self.add_state(f"ema_{i}", s) for i, s in enumerate(variable_shapes)]
        self.count = self.add_state("count", (), dtype="int64")

    def perturbation(self, context):
        new = [
            self.decay * m.value + (1 - self.decay) * g
            for m, g in zip(self.ema, context.grads)
        ]
        for variable, value in zip(self.ema, new):
            context.assign(variable, value)
        context.assign(self.count, self.count.value + 1)
        return linalg.scale(new, self.rho / (linalg.global_norm(new) + 1e-12))


class Recorder(ks.SharpnessMethod):
    """Stores what the context says, to check it; SAM's update."""

    def build_state(self, variable_shapes):
        super().build_state(variable_shapes)
        self.lr = self.add_state("lr", ())
        self.step = self.add_state("step", (), dtype="int64")
        self.loss = self.add_state("loss", ())
        self.momentum = [self.add_state(f"m_{i}", s) for i, s in enumerate(variable_shapes)]

    def perturbation(self, context):
        context.assign(self.lr, context.learning_rate)
        context.assign(self.step, context.step)
        context.assign(self.loss, context.loss)
        momentum = context.momentum()
        for variable, value in zip(self.momentum, momentum):
            context.assign(variable, value)
        return linalg.scale(context.grads, self.rho / (context.grad_norm + 1e-12))


def _model(method, optimizer=None, **compile_kwargs):
    model = ks.SharpnessAwareModel(tiny.mlp(), method=method)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), loss="mse", **compile_kwargs)
    return model


def _sam_step(w, x, y, rho):
    return ref.sam_sgd_step(w, x, y, LR, lambda g, _: ref.sam_perturbation(g, None, rho))


def _plain_step(w, x, y):
    _, g = ref.mlp_loss_and_grad(w, x, y)
    return [wi - LR * gi for wi, gi in zip(w, g)]


# --------------------------------------------------- 1. the method decides its passes


# Built-in methods with a conditional pass (`interval`, LookSAM) run under
# XLA and MirroredStrategy in tests/methods/test_contract.py.
@pytest.mark.parametrize("steps_per_execution, jit_compile", [(3, False)])
def test_second_pass_skipped_on_off_steps_matches_numpy(steps_per_execution, jit_compile):
    x, y = tiny.data(n=8)
    model = _model(
        SAMEveryK(rho=0.2, k=3),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    w = w_sam = tiny.weights_of(model)
    steps = 6
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
    model.fit(dataset, epochs=1, verbose=0)
    for step in range(steps):
        w = _sam_step(w, x, y, 0.2) if step % 3 == 0 else _plain_step(w, x, y)
        w_sam = _sam_step(w_sam, x, y, 0.2)
    tiny.assert_weights_close(tiny.weights_of(model), w)
    # Off-steps differ from SAM steps, or the test could not fail.
    assert tiny.max_difference(w, w_sam) > 1e-4


def test_second_pass_on_part_of_the_batch_matches_numpy():
    x, y = tiny.data(n=16)
    model = _model(SAMOnFirstHalf(rho=0.3))
    w0 = tiny.weights_of(model)
    model.train_on_batch(x, y)
    _, g = ref.mlp_loss_and_grad(w0, x, y)
    e = ref.sam_perturbation(g, None, 0.3)
    _, g_half = ref.mlp_loss_and_grad([w + ei for w, ei in zip(w0, e)], x[:8], y[:8])
    expected = [w - LR * gi for w, gi in zip(w0, g_half)]
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    assert tiny.max_difference(expected, _sam_step(w0, x, y, 0.3)) > 1e-4


# ------------------------------------- 2. state is written under the finiteness guard


def test_method_state_follows_numpy_and_survives_a_nan_batch():
    x, y = tiny.data(n=8)
    model = _model(EMAPerturbation(rho=0.2, decay=0.5))
    w = tiny.weights_of(model)
    ema = [np.zeros_like(wi) for wi in w]

    def step(w, ema):
        _, g = ref.mlp_loss_and_grad(w, x, y)
        ema = [0.5 * m + 0.5 * gi for m, gi in zip(ema, g)]
        e = ref.sam_perturbation(ema, None, 0.2)
        _, g_s = ref.mlp_loss_and_grad([wi + ei for wi, ei in zip(w, e)], x, y)
        return [wi - LR * gi for wi, gi in zip(w, g_s)], ema

    model.train_on_batch(x, y)
    w, ema = step(w, ema)
    state = [np.array(v) for v in model.method.variables]
    x_bad = x.copy()
    x_bad[2, 1] = np.nan
    model.train_on_batch(x_bad, y)  # skipped: no state write either
    for before, after in zip(state, model.method.variables):
        np.testing.assert_array_equal(np.array(after), before)
    assert int(model.method.count) == 1
    model.train_on_batch(x, y)
    w, ema = step(w, ema)
    tiny.assert_weights_close(tiny.weights_of(model), w)
    tiny.assert_weights_close([np.array(v, "float64") for v in model.method.ema], ema)
    assert int(model.method.count) == 2


# ------------------------------------------------------ 3. what the context carries


def test_context_carries_rate_step_loss_and_momentum():
    x, y = tiny.data(n=8)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.02])
    model = _model(Recorder(rho=0.1), keras.optimizers.SGD(schedule, momentum=0.9))
    w = tiny.weights_of(model)
    velocity = [np.zeros_like(wi) for wi in w]
    for step, lr in enumerate([0.1, 0.1, 0.02]):  # boundaries are inclusive
        model.train_on_batch(x, y)
        method = model.method
        assert int(method.step) == step
        np.testing.assert_allclose(float(method.lr), lr, rtol=1e-6)
        loss, g = ref.mlp_loss_and_grad(w, x, y)
        np.testing.assert_allclose(float(method.loss), loss, rtol=1e-5)
        # The momentum read before this step's update, pointing uphill.
        tiny.assert_weights_close(
            [np.array(v, "float64") for v in method.momentum],
            [-v for v in velocity],
        )
        e = ref.sam_perturbation(g, None, 0.1)
        _, g_s = ref.mlp_loss_and_grad([wi + ei for wi, ei in zip(w, e)], x, y)
        velocity = [0.9 * v - lr * gi for v, gi in zip(velocity, g_s)]
        w = [wi + v for wi, v in zip(w, velocity)]
    tiny.assert_weights_close(tiny.weights_of(model), w)


def test_context_marks_normalization_variables():
    seen = {}

    class Flags(ks.SAM):
        def perturbation(self, context):
            seen["flags"] = context.is_normalization
            seen["paths"] = [v.path for v in context.variables]
            return super().perturbation(context)

    net = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(4),
        keras.layers.BatchNormalization(),
        keras.layers.LayerNormalization(),
        keras.layers.Dense(3),
    ])
    model = ks.SharpnessAwareModel(net, method=Flags())
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(*tiny.data(n=8))
    expected = ["normalization" in p for p in seen["paths"]]
    assert list(seen["flags"]) == expected
    assert sum(expected) == 4  # gamma and beta of both layers


def test_momentum_is_none_without_a_momentum_slot():
    seen = {}

    class Reads(ks.SAM):
        def perturbation(self, context):
            seen["momentum"] = context.momentum()
            return super().perturbation(context)

    model = _model(Reads(), keras.optimizers.SGD(0.1))
    model.train_on_batch(*tiny.data(n=8))
    assert seen["momentum"] is None
    model = _model(Reads(), keras.optimizers.Adam(0.01))
    model.train_on_batch(*tiny.data(n=8))
    assert len(seen["momentum"]) == 4


# ------------------------------------------------------- 4. the tracker is composed


@pytest.mark.parametrize(
    "method",
    [
        lambda: ks.SAM(tracker=ks.EigenvectorTracker(refresh_every=2, seed=0)),
        lambda: SAMEveryK(rho=0.1, k=2, tracker=True, refresh_every=2),
    ],
    ids=["sam-tracker-object", "custom-method"],
)
def test_any_method_tracks_and_logs_the_eigenvector(method):
    x, y = tiny.data(n=8)
    model = _model(method())
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for name in ks.methods.eigenvector_tracker.METRIC_NAMES:
        assert name in history.history
    assert int(model.method.tracker.num_refreshes) == 2  # steps 0 and 2
    assert all(np.isfinite(history.history["top_eigenvalue"]))


def test_a_tracker_or_method_serves_one_model():
    tracker = ks.EigenvectorTracker()
    first, second = ks.SAM(tracker=tracker), ks.SAM(tracker=tracker)
    _model(first).train_on_batch(*tiny.data(n=8))
    with pytest.raises(ValueError, match="one method only"):
        _model(second).train_on_batch(*tiny.data(n=8))
    method = ks.SAM()
    _model(method).train_on_batch(*tiny.data(n=8))
    with pytest.raises(ValueError, match="already belongs to another model"):
        _model(method).train_on_batch(*tiny.data(n=8))


def test_tracker_object_and_arguments_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        ks.EigenSAM(tracker=ks.EigenvectorTracker(), refresh_every=3)
    with pytest.raises(TypeError, match="tracker"):
        ks.SAM(tracker="yes")


def test_a_hook_of_release_0_1_is_refused_not_ignored():
    with pytest.raises(TypeError, match=r"\['descent_gradient'\].*`descent\(context\)`"):

        class Old(ks.SharpnessMethod):  # noqa: F841
            def descent_gradient(self, context, perturbed_grads):
                return perturbed_grads


def test_skipped_step_logs_no_metric():
    x, y = tiny.data(n=16)
    x[3, 0] = np.nan  # the first of two batches
    model = _model(ks.SAM(track_eigen=True, refresh_every=1, seed=0))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for name in ks.methods.eigenvector_tracker.METRIC_NAMES:
        assert np.isfinite(history.history[name][0]), name


def test_refresh_once_per_optimizer_step_under_gradient_accumulation():
    x, y = tiny.data(n=32)
    model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.EigenSAM(refresh_every=2, seed=0))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=4), loss="mse"
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 8 micro-batches, 2 steps
    assert int(model.optimizer.iterations) == 2
    assert int(model.method.tracker.num_refreshes) == 1  # at step 0 only
