"""`EigenvectorTracker`: the top Hessian eigenvector, refreshed inside the train step.

Eigen-SAM and X-SAM need `v`, the top eigenvector of the Hessian of the
training loss, and any other method can track it to report how its
perturbation aligns with it. A tracker owns that estimate (non-trainable
float32 variables of the method that holds it, identical on every replica,
saved with the model), refreshes it on a schedule inside the compiled step,
and computes the per-step curvature metrics.
"""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import tracing
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.lanczos import BASIS_DTYPES
from keras_eigensam.hessian.lanczos import lanczos_top_eigenpair
from keras_eigensam.hessian.power_iteration import power_iteration

WHICH = ("largest", "magnitude")

#: The matrices whose top eigenvector a tracker can follow.
CURVATURES = ("hessian", "ggn")

#: Names of the per-step metrics, fixed (they appear in History).
METRIC_NAMES = ("top_eigenvalue", "eigen_alignment", "grad_eigen_cosine")

#: The constructor arguments, also accepted by every method's constructor.
ARGUMENTS = (
    "refresh_every",
    "num_matvecs",
    "power_iterations",
    "which",
    "hessian_training",
    "hvp_mode",
    "seed",
    "hessian_batch_size",
    "hessian_microbatch_size",
    "curvature",
    "lanczos_basis_dtype",
)


class EigenvectorTracker:
    """Top Hessian eigenvector estimate, refreshed on a schedule.

    The refresh runs when `optimizer.iterations % refresh_every == 0` (the
    first at step 0), as a graph conditional inside the train step, so the
    schedule is exact with `steps_per_execution > 1`, `jit_compile=True`,
    after a restart and under any strategy. It spends `num_matvecs`
    Hessian-vector products of the loss on the current global batch
    (all-reduced over replicas, at true scale in float32), warm-started from
    the previous estimate:

    ```
    which="largest":   Lanczos (full reorthogonalisation) from v_prev;
                       v, λ = the Ritz pair of largest λ (λ_max, algebraic)
    which="magnitude": power iteration, v ← Hv/‖Hv‖ num_matvecs times;
                       λ = <v, Hv> (the eigenvalue of largest |λ|)
    ```

    The papers mean λ_max, the largest eigenvalue, and so does the default.
    Power iteration (the Eigen-SAM and X-SAM reference codes' algorithm)
    converges to the eigenvalue of largest magnitude, which early in
    training is often a negative one: then the tracked vector points along
    the most negative curvature. `"magnitude"` keeps that behaviour. The
    logged `top_eigenvalue` is signed, so which one was found is visible.

    A refresh whose result is not finite or zero keeps the previous estimate
    and is counted in `num_failed_refreshes` instead of `num_refreshes`; a
    refresh on a step that is then skipped (non-finite) changes nothing.
    The estimate is read normalised to unit norm, so `v` is a unit vector
    from the first step on, before any refresh.

    Args:
        refresh_every: Optimizer steps between refreshes. Defaults to `100`
            (Eigen-SAM's reference; X-SAM's reference refreshes every 5).
        num_matvecs: Hessian-vector products per refresh (Lanczos steps,
            at least 2, or power iterations). Defaults to `5`.
        power_iterations: Former name of `num_matvecs`, accepted for
            configurations saved by keras-eigensam 0.1; with it `which`
            defaults to `"magnitude"`, 0.1's algorithm. Defaults to `None`.
        which: `"largest"` (λ_max) or `"magnitude"` (largest |λ|, the
            reference codes' power iteration). Defaults to `None`:
            `"largest"` (`"magnitude"` with `power_iterations`).
        hessian_training: If `False`, the Hessian is that of the model in
            inference mode (BatchNormalization on moving statistics, dropout
            off), as in the Eigen-SAM reference code; if `True`, in training
            mode (batch statistics). Defaults to `False`.
        hvp_mode: `"reverse_over_reverse"` (forward and first backward pass
            recorded once, one backward pass per product) or
            `"forward_over_backward"`. Defaults to `"reverse_over_reverse"`
            (see `benchmarks/hessian.md`).
        seed: Seed of the Gaussian initial vector. Defaults to `None`.
        hessian_batch_size: If set, the Hessian is that of the loss on the
            first `hessian_batch_size` examples of the global batch (with `R`
            replicas, the first `ceil(hessian_batch_size / R)` of each
            replica's shard; the whole batch if it is smaller), a random
            sub-batch since batches are shuffled. A refresh then costs about
            that fraction of a whole-batch one in time, less in memory (not
            proportionally: parameter-sized vectors remain), for a noisier
            estimate: ResNet-18, batch 32, half the batch: 4.4 SGD steps
            instead of 9.1, peak 3.3× a SAM step's instead of 4.9×
            (`benchmarks/steps_refresh.md`); digits, half: median |cos| to
            the converged eigenvector 0.97 instead of 0.99
            (`benchmarks/eigenvector.md`), but ResNet-18 on digits, where
            the top eigenvalue is barely separated (|λ2/λ1| ≈ 0.88): half
            0.41, a quarter 0.68, against 0.97 with the whole batch
            (`benchmarks/eigenvector_resnet18.md`): check the quality on
            your model before using it.
            Defaults to `None`: the whole batch, as the reference codes.
        hessian_microbatch_size: If set, every product is accumulated over
            micro-batches of this many examples (of each replica's shard),
            computed one after the other: the same Hessian (exactly, for a
            loss that is a mean over examples and a model in inference
            mode; with `hessian_training=True` BatchNormalization takes
            statistics per micro-batch), with the activations of one
            micro-batch alive instead of the whole batch's, each product
            recomputing its forward and backward passes instead of replaying
            one recorded pass. The memory setting for large batches (see
            `keras_eigensam.hessian.make_microbatched_hvp`); under XLA the
            refresh step is compiled without it (XLA on CPU runs the loop's
            convolution gradients slowly). ResNet-18, batch 128,
            micro-batches of 16: refresh-step peak 1.25× a SAM step's
            instead of 4.6× (tensors alive), the refresh 1.4× as long
            (`benchmarks/steps_memory_b128.md`,
            `benchmarks/steps_microbatch_b128.md`); batch 32, micro-batches
            of 8: 2.8× instead of 4.8× (what remains is mostly
            parameter-sized vectors, the Lanczos basis among them), the
            refresh about 2.3× as long (`benchmarks/steps_microbatch.md`);
            batch 64, micro-batches of 16: 1.92× instead of 3.97×
            (`benchmarks/steps_lanczos_bfloat16.md`). With
            `curvature="ggn"` the products are accumulated the same way,
            also exactly: ResNet-18, batch 64, micro-batches of 16:
            refresh-step peak 1.19× a SAM step's instead of 2.06×
            (X-SAM 1.23×), a refresh 6.4 SGD steps with XLA and 8.6
            without instead of 4.7 and 6.4
            (`benchmarks/steps_ggn_microbatch.md`); batch 128: 1.06×
            instead of 1.93×, in the same time
            (`benchmarks/steps_ggn_microbatch_b128.md`).
            Defaults to `None`: one recorded pass over the whole (Hessian)
            batch.
        curvature: `"hessian"`, or `"ggn"`: the top eigenvector of the
            generalized Gauss-Newton matrix `Jᵀ ∇²_f L J` instead (split at
            the model's output, which must be one tensor; positive
            semi-definite for a convex loss such as cross-entropy on logits;
            see `keras_eigensam.hessian.GGNOperator`). Its products take
            first derivatives only, one forward pass with a forward-mode JVP
            and one backward pass each, so a refresh keeps no second
            backward pass's activations. The GGN drops the Hessian's term in
            the model's own second derivatives, so its top eigenvector
            approximates the Hessian's, closely where the top eigenvalue is
            dominated by the Gauss-Newton part (usual for cross-entropy):
            check it on your model. ResNet-18, batch 64: a refresh costs
            4.7–5.6 SGD steps with XLA instead of 8.1–9.3 (6.4–7.6 instead
            of 9.8–10.7 without), its step peaks at 2.06× a SAM step's
            instead of 4.17× (`benchmarks/steps_ggn.md`,
            `benchmarks/steps_ggn_microbatch.md`; the peaks from the
            latter, measured with the refresh before the first pass), and
            X-SAM's tracked vector keeps a
            median |cos| of 0.93 to the Hessian's converged top
            eigenvector against 0.95 with Hessian products
            (`benchmarks/eigenvector_resnet18_ggn.md`). `hvp_mode` does
            not apply; `hessian_microbatch_size` accumulates the products
            over micro-batches as for the Hessian. Defaults to
            `"hessian"`, the papers' matrix.
        lanczos_basis_dtype: `"float32"`, or `"bfloat16"`: Lanczos
            (`which="largest"`) keeps its basis between products rounded to
            bfloat16, half the memory of `num_matvecs − 1` parameter-sized
            vectors at the refresh's peak, while products, coefficients and
            the Ritz vector's sum stay float32 (see
            `keras_eigensam.hessian.lanczos.lanczos_top_eigenpair`). On a
            2000×2000 test matrix the rounding moves the Ritz value by 1e-5
            relative and the vector's |cos| to the eigenvector by 4e-7.
            It pays where the products' activations are small, with
            micro-batches: ResNet-18, batch 64, refresh-step peak with
            micro-batches of 16 1.83× a SAM step's instead of 1.92×, and
            with `curvature="ggn"` too 1.16×, about where an Eigen-SAM
            step without a refresh peaks
            (`benchmarks/steps_lanczos_bfloat16.md`; another run: 738 →
            674 and 465 → 427 MiB); whole-batch, where the recorded double
            pass dominates, the difference is within run-to-run noise
            (3.97× → 4.10× there, 1588 → 1510 MiB in the other run). The
            refresh takes as long, and X-SAM's tracked vector on ResNet-18
            keeps a median |cos| of 0.98 to the converged eigenvector
            (0.965 with float32 in the same run, within the 0.02 that runs
            differ by: `benchmarks/eigenvector_resnet18_bfloat16.md`).
            Defaults to `"float32"`.

    Raises:
        ValueError: if an argument is out of range or unknown.

    Example:

    ```python
    tracker = EigenvectorTracker(refresh_every=20, num_matvecs=8)
    model = SharpnessAwareModel(net, method=SAM(rho=0.05, tracker=tracker))
    ```

    Reference:
        - [Luo et al., 2024](https://arxiv.org/abs/2501.12666) (Eigen-SAM)
        - [Golub & Van Loan, Matrix Computations, §10.1](
          https://jhupbooks.press.jhu.edu/title/matrix-computations) (Lanczos)
    """

    def __init__(
        self,
        refresh_every=100,
        num_matvecs=5,
        power_iterations=None,
        which=None,
        hessian_training=False,
        hvp_mode=DEFAULT_HVP_MODE,
        seed=None,
        hessian_batch_size=None,
        hessian_microbatch_size=None,
        curvature="hessian",
        lanczos_basis_dtype="float32",
    ):
        self.refresh_every = validation.check_int(
            "refresh_every", refresh_every, minimum=1
        )
        if power_iterations is not None:
            # keras-eigensam 0.1's name and algorithm: configurations saved
            # by it resume with power iteration.
            if num_matvecs != 5:
                raise ValueError(
                    "Pass `num_matvecs` or its former name `power_iterations`, "
                    f"not both. Received: num_matvecs={num_matvecs}, "
                    f"power_iterations={power_iterations}"
                )
            num_matvecs = validation.check_int(
                "power_iterations", power_iterations, minimum=1
            )
            which = "magnitude" if which is None else which
        self.num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
        self.which = validation.check_choice(
            "which", "largest" if which is None else which, WHICH
        )
        if self.which == "largest" and self.num_matvecs < 2:
            # One product gives Lanczos the Rayleigh quotient of the start
            # vector and nothing to move it with: the vector would never
            # change.
            raise ValueError(
                "`num_matvecs` must be >= 2 with which='largest': Lanczos needs "
                "two products to move its estimate (with one, the vector would "
                "never change). For one product per refresh pass which='magnitude' "
                f"(one power iteration). Received: num_matvecs={self.num_matvecs}"
            )
        self.hessian_training = validation.check_bool(
            "hessian_training", hessian_training
        )
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if hessian_batch_size is not None:
            hessian_batch_size = validation.check_int(
                "hessian_batch_size", hessian_batch_size, minimum=1
            )
        self.hessian_batch_size = hessian_batch_size
        if hessian_microbatch_size is not None:
            hessian_microbatch_size = validation.check_int(
                "hessian_microbatch_size", hessian_microbatch_size, minimum=1
            )
        self.hessian_microbatch_size = hessian_microbatch_size
        self.curvature = validation.check_choice("curvature", curvature, CURVATURES)
        if self.curvature == "ggn" and self.hvp_mode != DEFAULT_HVP_MODE:
            raise ValueError(
                "`hvp_mode` sets how Hessian-vector products are computed; with "
                "curvature='ggn' it does not apply. Received: curvature='ggn', "
                f"hvp_mode={self.hvp_mode!r}"
            )
        self.lanczos_basis_dtype = validation.check_choice(
            "lanczos_basis_dtype", lanczos_basis_dtype, BASIS_DTYPES
        )
        if self.which == "magnitude" and self.lanczos_basis_dtype != "float32":
            raise ValueError(
                "`lanczos_basis_dtype` sets how Lanczos (which='largest') keeps "
                "its basis; power iteration (which='magnitude') keeps none. "
                f"Received: which='magnitude', lanczos_basis_dtype="
                f"{self.lanczos_basis_dtype!r}"
            )
        if seed is not None:
            seed = validation.check_int("seed", seed)
        self.seed = seed
        self.vector = None
        self.eigenvalue = None
        self.num_refreshes = None
        self.num_failed_refreshes = None
        self._owner = None

    def get_config(self):
        return {
            "refresh_every": self.refresh_every,
            "num_matvecs": self.num_matvecs,
            "which": self.which,
            "hessian_training": self.hessian_training,
            "hvp_mode": self.hvp_mode,
            "seed": self.seed,
            "hessian_batch_size": self.hessian_batch_size,
            "hessian_microbatch_size": self.hessian_microbatch_size,
            "curvature": self.curvature,
            "lanczos_basis_dtype": self.lanczos_basis_dtype,
        }

    def build(self, layer, variable_shapes):
        """Creates the state as weights of `layer` (the owning method).

        The order of the weights is that of keras-eigensam 0.1 (vector,
        `top_eigenvalue`, `num_refreshes`) plus what was added since, so
        files saved by 0.1 load.
        """
        if self._owner is not None and self._owner is not layer:
            raise ValueError(
                "An `EigenvectorTracker` can belong to one method only. "
                f"Received: a tracker already used by {self._owner.name!r}, "
                f"passed to {layer.name!r}; create one tracker per method."
            )
        self._owner = layer
        # `only_first_replica`: every replica computes the same vector from
        # all-reduced products; take one copy rather than average copies.
        self.vector = [
            layer.add_state(
                f"eigenvector_{i}",
                shape,
                initializer=_normal(None if self.seed is None else self.seed + i),
            )
            for i, shape in enumerate(variable_shapes)
        ]
        self.eigenvalue = layer.add_state("top_eigenvalue", ())
        self.num_refreshes = layer.add_state("num_refreshes", (), dtype="int64")
        self.num_failed_refreshes = layer.add_state(
            "num_failed_refreshes", (), dtype="int64"
        )

    def values(self, after=()):
        """The current estimate, normalised to unit norm (list of tensors),
        read once every tensor of `after` is computed."""
        unit, _ = linalg.normalize(tracing.after(after, [v.value for v in self.vector]))
        return unit

    def refresh(self, context):
        """Refreshes the estimate if this step is on the schedule.

        Stages the new state through `context.assign` and returns the vector
        that this step uses (refreshed or not), also kept as
        `context.memo("eigenvector")`.
        """
        due = context.on_schedule(self.refresh_every, first_micro_batch=True)
        current = self.values()
        previous = self.eigenvalue.value
        if isinstance(due, bool) and not due:
            # A step compiled for a phase without a refresh: nothing changes,
            # so nothing is written (a write is a pass over the weights).
            context.memo("eigenvector", lambda: current)
            context.memo("eigenvalue", lambda: previous)
            return current

        def compute(matvec):
            if self.which == "magnitude":
                eigenvalue, vector = power_iteration(
                    matvec, current, self.num_matvecs, final_update=True
                )
            else:
                # `current` is a unit vector: the first basis vector itself.
                eigenvalue, vector = lanczos_top_eigenpair(
                    matvec, current, self.num_matvecs, unit_start=True,
                    basis_dtype=self.lanczos_basis_dtype,
                )
            norm = linalg.global_norm(vector)
            ok = ops.logical_and(
                ops.logical_and(ops.isfinite(eigenvalue), ops.isfinite(norm)),
                norm > 0,
            )
            # The previous estimate, read again once the new one is
            # computed rather than held through every product (a
            # parameter-sized copy fewer at the refresh's peak).
            kept = self.values(after=vector)
            vector = [ops.where(ok, v, c) for v, c in zip(vector, kept)]
            return vector, ops.where(ok, eigenvalue, previous), ok

        vector, eigenvalue, ok = context.with_hessian(
            due,
            compute,
            (current, previous, ops.convert_to_tensor(False)),
            training=self.hessian_training,
            mode=self.hvp_mode,
            examples=self.hessian_batch_size,
            microbatch_size=self.hessian_microbatch_size,
            curvature=self.curvature,
        )
        for variable, value in zip(self.vector, vector):
            context.assign(variable, value)
        context.assign(self.eigenvalue, eigenvalue)
        succeeded = ops.cast(ops.logical_and(due, ok), "int64")
        failed = ops.cast(ops.logical_and(due, ops.logical_not(ok)), "int64")
        context.assign(self.num_refreshes, self.num_refreshes.value + succeeded)
        context.assign(
            self.num_failed_refreshes, self.num_failed_refreshes.value + failed
        )
        context.memo("eigenvector", lambda: vector)
        context.memo("eigenvalue", lambda: eigenvalue)
        return vector

    def schedules(self):
        """The refresh schedule, as `SharpnessMethod.schedules` pairs."""
        return {(self.refresh_every, True)}

    def refresh_steps(self, first_step, num_steps):
        """The optimizer steps among `first_step … first_step + num_steps − 1`
        at which the eigenvector is refreshed (a `range`)."""
        first = -(-first_step // self.refresh_every) * self.refresh_every
        return range(first, first_step + num_steps, self.refresh_every)

    def schedule_warning(self, first_step, num_steps):
        """A message when a run of `num_steps` optimizer steps from
        `first_step` refreshes at most once, else `None`.

        The logged `top_eigenvalue` is the eigenvalue of the last refresh, so
        in such a run it is one number, computed at one step, for the whole
        run; `model.fit` warns with this message.
        """
        refreshes = self.refresh_steps(first_step, num_steps)
        if num_steps <= 1 or len(refreshes) > 1:
            return None
        when = f"once, at step {refreshes[0]}" if len(refreshes) else "never"
        return (
            f"The eigenvector is refreshed every refresh_every={self.refresh_every} "
            f"optimizer steps, so in this fit (steps {first_step} to "
            f"{first_step + num_steps - 1}) it is refreshed {when}: the logged "
            "`top_eigenvalue` is the eigenvalue of the last refresh, not of the "
            "current weights. Lower `refresh_every` to follow the curvature "
            "during this run, or log it with "
            "`keras_eigensam.callbacks.HessianEigenvalueMonitor`."
        )

    def grad_cosine(self, context):
        """Signed `cos(g, v)` for this step."""
        return context.memo(
            "grad_eigen_cosine",
            lambda: linalg.inner(context.grads, context.memo("eigenvector", self.values))
            / (context.grad_norm + linalg.EPSILON),
        )

    def note_perturbation(self, context, grad_coefficient, vector_coefficient):
        """Records that this step's perturbation is `e = a·g + b·v` (`a`
        `grad_coefficient`, `b` `vector_coefficient`, `v` the unit
        eigenvector), so `metrics` takes `cos(e, v)` from scalars known
        already instead of two more passes over the weights:

        ```
        <e, v> = a·<g, v> + b        ‖e‖² = a²‖g‖² + 2ab·<g, v> + b²
        ```

        A method calls it from `perturbation` on the step's own context (a
        restricted view keeps it to itself, where the formula does not hold).
        """
        norm = context.grad_norm
        along = self.grad_cosine(context) * (norm + linalg.EPSILON)  # <g, v>
        a, b = grad_coefficient, vector_coefficient
        inner = a * along + b
        squared = a * a * norm * norm + 2.0 * a * b * along + b * b
        context.memo(
            "perturbation_eigen_cosine",
            lambda: inner / (ops.sqrt(ops.maximum(squared, 0.0)) + linalg.EPSILON),
        )

    def metrics(self, context, perturbation):
        """`top_eigenvalue`, `eigen_alignment` (|cos(e, v)|), `grad_eigen_cosine`.

        Both cosines are absolute values, since the sign of an eigenvector is
        arbitrary; `top_eigenvalue` is the signed eigenvalue of the last
        refresh (at step `t − t mod refresh_every`), not of the current
        weights: between refreshes it stays the same, and `History` holds
        its mean over the epoch's steps.
        """
        vector = context.memo("eigenvector", self.values)
        return {
            "top_eigenvalue": context.memo("eigenvalue", lambda: self.eigenvalue.value),
            "eigen_alignment": ops.abs(
                context.memo(
                    "perturbation_eigen_cosine", lambda: linalg.cosine(perturbation, vector)
                )
            ),
            "grad_eigen_cosine": ops.abs(self.grad_cosine(context)),
        }


def _normal(seed):
    return keras.initializers.RandomNormal(seed=seed)
