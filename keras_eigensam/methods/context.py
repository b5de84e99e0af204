"""`StepContext`: what a sharpness-aware method sees of one training step."""

import copy

from keras import ops
from keras import tree

from keras_eigensam import linalg


class StepContext:
    """One training step, as a method sees it.

    `SharpnessAwareModel.train_step` builds one per step after the first
    forward-backward pass and hands it to the method, which computes the
    descent gradient from it: it reads the first-pass gradient and the step's
    facts, decides whether (and on which examples) to take a second pass, and
    stages its state writes, which the model commits only if the step is
    finite.

    Attributes:
        step: The optimizer's iteration count before this step's update (an
            integer scalar tensor; under gradient accumulation it counts
            optimizer steps, not micro-batches). Schedules key on it, so
            they survive `steps_per_execution > 1`, restarts and
            `BackupAndRestore`.
        micro_batch: The position of this batch in its optimizer step's
            window under gradient accumulation (an integer scalar tensor,
            `0` to `gradient_accumulation_steps − 1`, counting applied
            micro-batches only: a skipped one does not advance it), or the
            Python int `0` without accumulation.
        first_micro_batch: Whether this batch is the first of its optimizer
            step (`micro_batch == 0`: `True`, or a boolean tensor under
            gradient accumulation, where `step` repeats for each
            micro-batch): once-per-step work such as an eigenvector refresh
            keys on it.
        loss: The first-pass mean loss of this replica's batch, at true scale
            (a float32 scalar tensor).
        variables: The model's trainable variables.
        weights: Their values at the start of the step (list of tensors).
        grads: The first-pass gradient `∇L_B(w)` of the mean loss, at true
            scale (loss scaling and the per-replica `1/num_replicas` factor
            removed). With `perturbation_scope="replica"` it is this
            replica's gradient, with `"global"` the all-reduced one.
        is_normalization: One Python bool per variable: whether it belongs
            to a normalisation layer (BatchNormalization, LayerNormalization,
            GroupNormalization, …), for rules that perturb only those
            (SAM-ON).
        optimizer: The model's optimizer (possibly a `LossScaleOptimizer`).
        num_replicas: The number of replicas in sync (a Python int).
        first_pass_perturbation: The perturbation the first pass was taken
            at (`None`: at `weights`). Methods that know their perturbation
            before any pass (momentum-SAM) set it through
            `SharpnessMethod.first_pass_perturbation`; then `grads` and
            `loss` are those at `weights + first_pass_perturbation`.

    In `SharpnessMethod.first_pass_perturbation` the first pass has not run:
    `grads` and `loss` are `None` there.
    """

    def __init__(
        self,
        *,
        step,
        loss,
        micro_batch=0,
        variables,
        weights,
        grads,
        is_normalization,
        optimizer,
        num_replicas,
        gradient_at,
        with_hessian,
        all_reduce_mean,
        cond,
        example_losses=None,
        phase=None,
    ):
        self.step = step
        self.micro_batch = micro_batch
        self.first_micro_batch = (
            True if isinstance(micro_batch, int) and micro_batch == 0
            else ops.equal(micro_batch, 0)
        )
        self.loss = loss
        self.variables = variables
        self.weights = weights
        self.grads = grads
        self.is_normalization = tuple(is_normalization)
        self.optimizer = optimizer
        self.num_replicas = num_replicas
        self._gradient_at = gradient_at
        self._with_hessian = with_hessian
        self._all_reduce_mean = all_reduce_mean
        self._cond = cond
        self._example_losses = example_losses
        # `{(period, first_micro_batch): bool}` when the step is compiled for
        # one phase of the method's schedules (see `on_schedule`).
        self._phase = dict(phase or {})
        self.first_pass_perturbation = None
        self._memo = {}
        # Shared with `restricted` views: the branch depth, the staged
        # writes and the decoupled step.
        self._shared = {"branch_depth": 0, "staged": [], "decoupled": None}
        self._selected = None

    @property
    def staged(self):
        """The staged `(variable, value)` writes of this step."""
        return self._shared["staged"]

    @property
    def decoupled(self):
        """The staged decoupled direction (see `decoupled_step`), or `None`."""
        return self._shared["decoupled"]

    @property
    def _branch_depth(self):
        return self._shared["branch_depth"]

    # ------------------------------------------------------------ step facts

    @property
    def learning_rate(self):
        """The optimizer's current learning rate (a float scalar tensor).

        With a `LearningRateSchedule` it is the schedule at `step`, so rules
        that follow the rate (GSAM's ρ) see the rate of the update being
        computed; `ReduceLROnPlateau` changes are seen the step after.
        """
        return self.memo(
            "learning_rate",
            lambda: ops.cast(inner_optimizer(self.optimizer).learning_rate, "float32"),
        )

    @property
    def grad_norm(self):
        """`‖grads‖`, computed once per step (most rules need it)."""
        return self.memo("grad_norm", lambda: linalg.global_norm(self.grads))

    def on_schedule(self, period, first_micro_batch=False):
        """Whether this step is on a schedule of period `period`.

        `step % period == 0`, and with `first_micro_batch=True` also the
        first micro-batch of its optimizer step (once-per-step work under
        gradient accumulation). A boolean scalar tensor, or a Python bool
        when it is known while tracing: `period == 1`, or a step compiled
        for one phase of the method's `schedules()` (the XLA path compiles
        one program per phase, so no conditional is left inside it). Use it
        as the predicate of `cond` and `with_hessian`, and declare each
        schedule asked for in `SharpnessMethod.schedules`.
        """
        # Without gradient accumulation every batch is the first of its step.
        accumulating = not isinstance(self.micro_batch, int)
        key = (int(period), bool(first_micro_batch) and accumulating)
        if key in self._phase:
            return self._phase[key]
        return schedule_due(self.step, self.micro_batch, *key)

    def momentum(self):
        """The optimizer's accumulated gradient direction, or `None`.

        One tensor per variable pointing *along* the accumulated gradient
        (uphill, like `grads`), read from the optimizer's slots before this
        step's update:

        - `keras.optimizers.SGD` with `momentum > 0`: minus its velocity
          `m` (Keras stores `m ← μ·m − lr·g`, so `−m = lr·Σ μ^k g`);
        - Adam-family optimizers (`Adam`, `AdamW`, `Nadam`, `Lion`, …) and
          `RMSprop` with momentum: their first moment (`_momentums`), which
          is `+g`-signed; `Adamax`: its first moment `_m`.

        Returns `None` when the optimizer keeps no such slot (SGD without
        momentum, Adagrad, …) or has not been built yet.
        """

        def read():
            optimizer = inner_optimizer(self.optimizer)
            slots = getattr(optimizer, "momentums", None)
            sign = -1.0
            for name in ("_momentums", "_m"):  # Adam family; Adamax
                if not slots:
                    slots, sign = getattr(optimizer, name, None), 1.0
            if not slots:
                return None
            values = []
            for variable in self.variables:
                slot = slots[optimizer._get_variable_index(variable)]
                values.append(ops.multiply(ops.cast(slot.value, "float32"), sign))
            return self._restrict(values)

        return self.memo("momentum", read)

    # ------------------------------------------------------------- passes

    def gradient_at(self, perturbation, examples=None):
        """The gradient `∇L_B(w + e)` of the mean loss, at true scale.

        A forward-backward pass on perturbed weight *values*: no variable is
        written (BatchNormalization statistics are not updated) and dropout
        replays the first pass's masks. It is replica-local (no collective),
        so a method may call it inside `cond` to take the second pass only on
        some steps, and a skipped pass costs nothing.

        Args:
            perturbation: List of tensors shaped like `weights` (`e`).
            examples: Optional integer tensor of indices into this replica's
                batch: the pass runs on those examples only (ESAM-style
                data selection), and the gradient is that of their mean loss.
                Defaults to `None` (the whole batch).

        Returns:
            A list of tensors shaped like `weights`. If the loss at `w + e`
            is not finite, they are NaN, so the step is skipped.
        """
        return self._gradient_at(perturbation, examples)

    def example_losses(self, perturbation=None):
        """The loss of each example of this replica's batch (a vector).

        At `weights + perturbation` (a forward pass, no backward and no
        variable written), or for `None` at the first pass's point (no
        pass). The values are the per-example terms of the mean loss, before
        sample weights (ESAM ranks examples by how much their loss rises
        under the perturbation). They come from the compiled loss, so a
        model whose `compute_loss` ignores `sample_weight` gets zeros.
        """
        if self._example_losses is None:
            raise NotImplementedError("This step cannot compute per-example losses.")
        return self._example_losses(perturbation)

    def with_hessian(
        self, pred, fn, default, *, training=False, mode="reverse_over_reverse",
        examples=None, microbatch_size=None, curvature="hessian",
    ):
        """`fn(matvec)` if the scalar boolean `pred`, else `default`.

        `matvec(vectors)` is the Hessian-vector product of the loss on this
        step's global batch at `weights` (all-reduced, identical on every
        replica), taken at true scale in float32 (no loss scaling), with the
        model in training (`training=True`) or inference mode. `fn` returns
        a structure of tensors shaped like `default`; it must be identical on
        every replica (computed from products), and it may contain
        collectives, so call this outside `cond`. `pred` must be identical on
        every replica too (the step count is). `mode` is the HVP algorithm
        (see `keras_eigensam.hessian.hvp`). With `examples` (an int), the
        loss is that of the first `examples` examples of the global batch:
        the first `ceil(examples / num_replicas)` of each replica's shard.
        With `microbatch_size` (an int), each product is accumulated over
        micro-batches of that many examples of each replica's shard (see
        `keras_eigensam.hessian.make_microbatched_hvp`). With
        `curvature="ggn"`, `matvec` is the product of the generalized
        Gauss-Newton matrix of the loss instead (split at the model's
        output; `mode` does not apply; see
        `keras_eigensam.hessian.make_ggn_product`).
        """
        return self._with_hessian(
            pred, fn, default, training, mode, examples, microbatch_size, curvature
        )

    def all_reduce_mean(self, values):
        """The mean of `values` (a list of tensors) over replicas.

        A collective: call it outside `cond`. Rules that are not linear in
        the gradient (normalisation, projections) apply it to the
        second-pass gradients first, so that the step is that of the global
        batch and does not depend on the number of replicas.
        """
        if self.num_replicas == 1:
            return values
        return self._all_reduce_mean(values)

    def decoupled_step(self, direction):
        """Stages `w ← w − learning_rate · direction` after the optimizer's update.

        A second, plain-SGD update applied on top of the base optimizer's
        (as decoupled weight decay is): WSAM's decoupled sharpness term. It
        is averaged over replicas here (a collective: call it outside
        `cond`) and committed only if the step is finite. Under gradient
        accumulation it would be applied per micro-batch, so methods using
        it refuse accumulation.
        """
        if self._branch_depth:
            raise RuntimeError(
                "`StepContext.decoupled_step` was called inside a `cond` "
                "branch. Return the direction from the branch and call it after."
            )
        direction = self.all_reduce_mean(list(direction))
        self._shared["decoupled"] = linalg.scale(direction, self.learning_rate)

    def restricted(self, selected):
        """A view of this step in which only the `selected` variables exist.

        `selected` is one Python bool per variable. The view's `grads` and
        `momentum()` are zero outside the selection (so norms are over the
        selected variables only); everything else is shared with this
        context, staged writes included. SAM-ON's perturbation is the
        method's rule computed on such a view.
        """
        selected = tuple(bool(s) for s in selected)
        view = copy.copy(self)
        # What does not depend on the gradient is the same in the view: the
        # eigenvector this step uses (refreshed this step: the tracker's
        # variables still hold the previous one until the step commits).
        view._memo = {k: v for k, v in self._memo.items() if k in _UNRESTRICTED_MEMOS}
        view._selected = selected
        view.grads = None if self.grads is None else _masked(self.grads, selected)
        return view

    def _restrict(self, values):
        if self._selected is None or values is None:
            return values
        return _masked(values, self._selected)

    def cond(self, pred, true_fn, false_fn):
        """`true_fn()` if the scalar boolean `pred`, else `false_fn()`.

        A Python bool `pred` picks the branch while tracing; otherwise this is
        a graph conditional (also under XLA and `steps_per_execution > 1`):
        only the branch taken runs. Both branches return the same structure
        of tensors. Branches may call `gradient_at`, but no collective
        (`all_reduce_mean`, `with_hessian`) and no `assign`: return the new
        state from the branch and `assign` it after.
        """
        def branch(fn):
            def run():
                self._shared["branch_depth"] += 1
                try:
                    return fn()
                finally:
                    self._shared["branch_depth"] -= 1

            return run

        if isinstance(pred, bool):  # known while tracing: no conditional
            return branch(true_fn if pred else false_fn)()
        return self._cond(pred, branch(true_fn), branch(false_fn))

    # ----------------------------------------------------- state and memo

    def assign(self, variable, value):
        """Stages `variable ← value`, committed only if the step is finite.

        Method state (an EMA, a stored direction, the eigenvector) is written
        through here, never with `variable.assign`, so a skipped
        (non-finite) step leaves it unchanged. Later stages of the same
        variable in one step replace earlier ones.
        """
        if self._branch_depth:
            raise RuntimeError(
                "`StepContext.assign` was called inside a `cond` branch. "
                "Return the new value from the branch and assign it after."
            )
        self.staged[:] = [(v, x) for v, x in self.staged if v is not variable]
        self.staged.append((variable, ops.cast(value, variable.dtype)))

    def memo(self, key, compute):
        """`compute()` the first time `key` is asked for in this step, then
        the same tensor, so rules and metrics share inner products. Inside a
        `cond` branch the value is computed but not kept (a branch's tensors
        cannot be used outside it)."""
        if key in self._memo:
            return self._memo[key]
        value = compute()
        if not self._branch_depth:
            self._memo[key] = value
        return value


def schedule_due(step, micro_batch, period, first_micro_batch=False):
    """`step % period == 0` (and `micro_batch == 0` if `first_micro_batch`):
    a Python bool where that is known without the step (`period == 1`,
    no gradient accumulation), else a boolean scalar tensor."""
    due = True
    if period != 1:
        due = ops.equal(ops.mod(ops.cast(step, "int64"), period), 0)
    if first_micro_batch and not isinstance(micro_batch, int):
        first = ops.equal(micro_batch, 0)
        due = first if due is True else ops.logical_and(due, first)
    return due


def inner_optimizer(optimizer):
    """The optimizer doing the update (inside a `LossScaleOptimizer`)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


#: Memo entries a restricted view shares with its step (see `restricted`).
_UNRESTRICTED_MEMOS = ("eigenvector", "eigenvalue")


def _masked(values, selected):
    return [v if s else ops.zeros_like(v) for v, s in zip(values, selected)]


def gather_examples(structure, examples):
    """Rows `examples` of every tensor in `structure` (None passes)."""
    if structure is None:
        return None
    return tree.map_structure(lambda t: ops.take(t, examples, axis=0), structure)
