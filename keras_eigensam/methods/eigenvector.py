"""The top Hessian eigenvector, tracked inside the compiled train step.

Eigen-SAM and X-SAM need `v`, the top eigenvector of the Hessian of the
training loss, and plain SAM can track it to report how its perturbation
aligns with it. `EigenvectorTracker` owns that estimate: a list of
non-trainable float32 variables shaped like the weights (identical on every
replica, saved with the model), warm-started power iteration on the current
batch every `refresh_every` optimizer steps, and the per-step curvature
metrics.
"""

import keras
from keras import ops

from keras_eigensam import hessian
from keras_eigensam import linalg
from keras_eigensam import validation

HVP_MODES = ("forward_over_backward", "reverse_over_reverse")

#: Names of the per-step metrics, fixed (they appear in History).
METRIC_NAMES = ("top_eigenvalue", "eigen_alignment", "grad_eigen_cosine")


class EigenvectorTracker:
    """Top Hessian eigenvector estimate, refreshed on a schedule.

    The refresh runs when `optimizer.iterations % refresh_every == 0` (the
    first at step 0), as a graph conditional inside the train step, so the
    schedule is exact with `steps_per_execution > 1`, `jit_compile=True`,
    after a restart and under any strategy. It runs `power_iterations`
    Hessian-vector products on the current global batch (all-reduced over
    replicas), warm-started from the previous estimate, each of which updates
    the vector (`v ← Hv/‖Hv‖`, as in the reference code); the Rayleigh quotient
    of the last vector multiplied is kept as `eigenvalue` (the reference
    computes none). A refresh whose result is not finite keeps the previous
    estimate.

    Args:
        refresh_every: Steps between refreshes. Defaults to `100`.
        power_iterations: Hessian-vector products per refresh. Defaults to
            `5`.
        hessian_training: If `False`, the Hessian is that of the model in
            inference mode (BatchNormalization on moving statistics, dropout
            off), as in the Eigen-SAM reference code; if `True`, in training
            mode (batch statistics). Defaults to `False`.
        hvp_mode: `"forward_over_backward"` or `"reverse_over_reverse"`.
            Defaults to `"reverse_over_reverse"`, the faster on CPU (see
            `benchmarks/RESULTS.md`).
        seed: Seed of the Gaussian initial vector. Defaults to `None`.
    """

    def __init__(
        self,
        refresh_every=100,
        power_iterations=5,
        hessian_training=False,
        hvp_mode="reverse_over_reverse",
        seed=None,
    ):
        self.refresh_every = validation.check_int(
            "refresh_every", refresh_every, minimum=1
        )
        self.power_iterations = validation.check_int(
            "power_iterations", power_iterations, minimum=1
        )
        self.hessian_training = validation.check_bool(
            "hessian_training", hessian_training
        )
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if seed is not None:
            seed = validation.check_int("seed", seed)
        self.seed = seed
        self.vector = None
        self.eigenvalue = None
        self.num_refreshes = None

    def get_config(self):
        return {
            "refresh_every": self.refresh_every,
            "power_iterations": self.power_iterations,
            "hessian_training": self.hessian_training,
            "hvp_mode": self.hvp_mode,
            "seed": self.seed,
        }

    def build(self, layer, variable_shapes):
        """Creates the state as weights of `layer` (the owning method)."""
        # `only_first_replica`: every replica computes the same vector from
        # all-reduced products; take one copy rather than average copies.
        self.vector = [
            layer.add_weight(
                shape=shape,
                initializer=keras.initializers.RandomNormal(
                    seed=None if self.seed is None else self.seed + i
                ),
                dtype="float32",
                trainable=False,
                aggregation="only_first_replica",
                name=f"eigenvector_{i}",
            )
            for i, shape in enumerate(variable_shapes)
        ]
        self.eigenvalue = layer.add_weight(
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
            name="top_eigenvalue",
        )
        self.num_refreshes = layer.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="num_refreshes",
        )

    def values(self):
        """The current unit-norm estimate as a list of tensors."""
        return [v.value for v in self.vector]

    def maybe_refresh(self, context):
        """Refreshes the estimate if this step is on the schedule."""
        due = ops.equal(
            ops.mod(ops.cast(context.step, "int64"), self.refresh_every), 0
        )

        def refresh(matvec):
            eigenvalue, vector = hessian.power_iteration(
                matvec, self.values(), self.power_iterations, final_update=True
            )
            ok = ops.logical_and(
                ops.all(ops.isfinite(eigenvalue)), linalg.all_finite(vector)
            )
            for variable, value in zip(self.vector, vector):
                variable.assign(ops.where(ok, value, variable.value))
            self.eigenvalue.assign(ops.where(ok, eigenvalue, self.eigenvalue.value))
            self.num_refreshes.assign_add(ops.cast(1, "int64"))

        context.with_hessian(
            due, refresh, training=self.hessian_training, mode=self.hvp_mode
        )

    def grad_cosine(self, context):
        """Signed `cos(g, v)` for this step (one pass over the weights)."""
        return context.memo(
            "grad_eigen_cosine",
            lambda: linalg.inner(context.grads, self.values())
            / (context.grad_norm + linalg.EPSILON),
        )

    def step_metrics(self, context, perturbation, method):
        """`top_eigenvalue`, `eigen_alignment`, `grad_eigen_cosine`.

        Both cosines are absolute values, since the sign of an eigenvector is
        arbitrary. `method.eigen_alignment` gives `cos(e, v)` from `cos(g, v)`
        where the rule allows, so the metrics add one inner product per step.
        """
        grad_cosine = self.grad_cosine(context)
        alignment = method.eigen_alignment(grad_cosine)
        if alignment is None:
            alignment = linalg.cosine(perturbation, self.values())
        return {
            "top_eigenvalue": self.eigenvalue.value,
            "eigen_alignment": ops.abs(alignment),
            "grad_eigen_cosine": ops.abs(grad_cosine),
        }
