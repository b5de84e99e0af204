"""`SharpnessMethod`: the interface every sharpness-aware method implements.

`SharpnessAwareModel.train_step` takes the first forward-backward pass and
hands the method a `StepContext`; the method returns the descent gradient:

```
tracker.refresh(ctx)         v, if the method tracks it          (model)
# First pass                 g = ∇L_B(w)                         (model)
d = method.descent(ctx)      e.g. ctx.gradient_at(e), ctx.cond   (method)
# Apply                      w ← optimizer(w, d) if d is finite   (model)
#                            and the staged state writes with it
```

The default `descent` is SAM's shape, `self.perturbed_gradient(ctx)` (the
gradient at `w + self.perturbation(ctx)`), so most methods define
`perturbation` only. A method that decides its passes itself (LookSAM skips
the second pass on most steps, ESAM takes it on part of the batch) overrides
`descent`; one that knows its perturbation before any pass (momentum-SAM)
overrides `first_pass_perturbation` and takes one pass.

Two options apply to every method's perturbation, handled here:
`perturbed_variables` (SAM-ON: perturb only normalisation layers, or any
chosen variables) and `interval` (the second pass only every `interval`
steps, the first-pass gradient standing in for it otherwise).

A method is a Keras layer that is never called: being a layer is what makes
its state (created in `build_state` with `add_state`) part of the model, so it
is saved with `model.save`, restored by checkpoints and `BackupAndRestore`, and
mirrored across replicas when the model is built under a strategy. State is
written only through `ctx.assign`, which the model commits only if the step
is finite.
"""

import keras

from keras_eigensam import validation
from keras_eigensam.methods import eigenvector_tracker
from keras_eigensam.methods.eigenvector_tracker import EigenvectorTracker

#: Hooks of keras-eigensam 0.1, replaced by `perturbation`/`descent`.
_REMOVED_HOOKS = (
    "descent_gradient",
    "update_state",
    "modifies_descent_gradient",
    "eigen_alignment",
)


class SharpnessMethod(keras.layers.Layer):
    """Base class of the sharpness-aware methods.

    Subclasses implement `perturbation` (and keep SAM's two passes) or
    `descent` (and decide the passes), and may override `build_state` (to
    create state with `add_state`). The math should live in pure functions
    over lists of tensors so it can be tested against NumPy on its own.

    Every method can track the top Hessian eigenvector and log
    `top_eigenvalue`, `eigen_alignment` and `grad_eigen_cosine` every step:
    pass `tracker=EigenvectorTracker(...)`, or `tracker=True` with any of the
    tracker's arguments (`refresh_every`, `num_matvecs`, `which`,
    `hessian_training`, `hvp_mode`, `seed`). Methods that need the
    eigenvector (`requires_tracker`) always have one, built from those
    arguments.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05`.
        tracker: An `EigenvectorTracker`, `True` for a default one, or
            `None`. Defaults to `None`.
        perturbed_variables: Which trainable variables are perturbed:
            `"all"`, `"normalization"` (the parameters of normalisation
            layers only: SAM-ON, Mueller et al., NeurIPS 2023,
            https://arxiv.org/abs/2306.04226), or a callable taking a
            variable and returning a bool. The rule then computes its
            perturbation from the gradient (and momentum) of the selected
            variables only, zero elsewhere, so norms are over the selection;
            the descent rule is unchanged. Defaults to `"all"`.
        interval: Take the second pass only on steps with
            `iterations % interval == 0`; on the others the first-pass
            gradient stands in for the perturbed one, so the step is the
            base optimizer's at one pass (MosaicML Composer's SAM
            `interval`). The perturbation rule still runs every step, so
            state it keeps (FriendlySAM's EMA, GSAM's largest rate) is
            updated on skipped passes too. Defaults to `1` (every step).
        **kwargs: The tracker's arguments (see `EigenvectorTracker`) and
            `keras.layers.Layer` arguments (e.g. `name`).
    """

    #: Whether the rule needs the eigenvector (then a tracker is built).
    requires_tracker = False
    #: The tracker's `refresh_every` when the method builds it.
    default_refresh_every = 100
    #: Whether the rule is right under `gradient_accumulation_steps > 1`,
    #: where each micro-batch takes the method's step at the window's
    #: weights and the optimizer averages their descent gradients: false for
    #: updates that are not such a mean (a normalisation of the averaged
    #: gradient, per-step state that would advance per micro-batch, a
    #: decoupled update outside the optimizer), which are refused.
    supports_gradient_accumulation = True
    #: Whether the `interval` option applies (methods with their own
    #: schedule of passes, or a single pass, refuse it).
    supports_interval = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        removed = sorted(set(vars(cls)) & set(_REMOVED_HOOKS))
        if removed:
            raise TypeError(
                f"{cls.__name__} defines {removed}, hooks of keras-eigensam 0.1 "
                "that no longer exist, so they would be ignored. Override "
                "`perturbation(context)` or `descent(context)` instead, and "
                "write state with `context.assign` (see `SharpnessMethod`)."
            )

    def __init__(
        self, rho=0.05, tracker=None, perturbed_variables="all", interval=1, **kwargs
    ):
        tracker_kwargs = {
            name: kwargs.pop(name)
            for name in eigenvector_tracker.ARGUMENTS
            if name in kwargs
        }
        super().__init__(**kwargs)
        self.rho = validation.check_number("rho", rho, minimum=0.0)
        self.perturbed_variables = _check_perturbed_variables(perturbed_variables)
        self.interval = validation.check_int("interval", interval, minimum=1)
        if self.interval != 1 and not self.supports_interval:
            raise ValueError(
                f"{type(self).__name__} decides its own passes, so it takes no "
                f"`interval`. Received: interval={interval!r}"
            )
        self.tracker = _make_tracker(
            tracker, tracker_kwargs, self.requires_tracker, self.default_refresh_every
        )
        self.state_built = False
        # Never called, so never built by Keras; its state comes from
        # `build_state`.
        self.built = True

    @property
    def metric_names(self):
        """Names of the scalars `step_metrics` returns, logged every step."""
        return eigenvector_tracker.METRIC_NAMES if self.tracker is not None else ()

    def add_state(
        self,
        name,
        shape,
        dtype="float32",
        initializer="zeros",
        aggregation="only_first_replica",
    ):
        """Creates one non-trainable state variable of the method.

        `aggregation` says how replica-local writes combine under a
        strategy: `"only_first_replica"` for values that are identical on
        every replica (computed from all-reduced quantities or the step),
        `"mean"` to average per-replica values (an EMA of per-replica
        gradients). Defaults to `"only_first_replica"`.
        """
        return self.add_weight(
            shape=shape,
            initializer=initializer,
            dtype=dtype,
            trainable=False,
            aggregation=aggregation,
            name=name,
        )

    def build_state(self, variable_shapes):
        """Creates the method's state for variables of `variable_shapes`.

        Called by the owning model once its weights exist (in the
        distribution strategy's scope, so the variables are mirrored).
        `variable_shapes` is a list of shapes, one per trainable variable of
        the model, in `model.trainable_variables` order. Subclasses create
        their variables with `add_state` and call
        `super().build_state(variable_shapes)` first.
        """
        if self.tracker is not None:
            self.tracker.build(self, variable_shapes)
        self.state_built = True

    def _lock_state(self):
        # A method's state is shaped after the model's weights, which may be
        # created after the method itself; it is added by `build_state`.
        pass

    def perturbation(self, context):
        """Returns the perturbation `e` (list of tensors shaped like weights)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `perturbation(context)` "
            "or `descent(context)`."
        )

    def first_pass_perturbation(self, context):
        """The perturbation to take the first pass at, or `None` (at `w`).

        Called before the first pass (`context.grads` is `None`). Methods
        whose perturbation needs no gradient of this step (momentum-SAM)
        return it, and their `descent` returns `context.grads`: one pass.
        """
        return None

    def descent(self, context):
        """Returns the descent gradient handed to the optimizer (true scale).

        The default is SAM's: the gradient at `w + perturbation(context)`.
        """
        return self.perturbed_gradient(context)

    def perturbed_gradient(self, context, examples=None):
        """`g_s`, the gradient at `w + step_perturbation(context)`.

        On steps the `interval` option skips, no pass is taken and the
        first-pass gradient `context.grads` is returned instead. `examples`
        is passed to `context.gradient_at` (a subset of the batch).
        """
        perturbation = self.step_perturbation(context)
        if self.interval == 1:
            return context.gradient_at(perturbation, examples)
        return context.cond(
            self.second_pass_due(context),
            lambda: context.gradient_at(perturbation, examples),
            lambda: list(context.grads),
        )

    def second_pass_due(self, context):
        """Whether this step takes the second pass (`interval`): a boolean
        scalar tensor, or a Python bool (see `StepContext.on_schedule`)."""
        return context.on_schedule(self.interval)

    def schedules(self):
        """The schedules this method's step branches on, as
        `(period, first_micro_batch)` pairs of `StepContext.on_schedule`.

        Under XLA the model compiles one program per combination of them
        that occurs (a schedule with period 1 is always due and adds none),
        so the program has no conditional around a pass: XLA on CPU runs the
        convolutions of a conditional branch 5–50× slower. A method that
        branches on its own period adds it here; an undeclared schedule is
        still right, only a graph conditional.
        """
        found = set()
        if self.interval != 1:
            found.add((self.interval, False))
        if self.tracker is not None:
            found.update(self.tracker.schedules())
        return found

    def step_perturbation(self, context):
        """`perturbation(context)`, computed once per step (memoised), with
        `perturbed_variables` applied."""

        def compute():
            if self.perturbed_variables == "all":
                return self.perturbation(context)
            selected = self._selected_variables(context)
            view = context.restricted(selected)
            return view._restrict(self.perturbation(view))

        return context.memo("perturbation", compute)

    def _selected_variables(self, context):
        if self.perturbed_variables == "normalization":
            selected = list(context.is_normalization)
        else:
            selected = [bool(self.perturbed_variables(v)) for v in context.variables]
        if not any(selected):
            raise ValueError(
                "`perturbed_variables` selects none of the model's trainable "
                f"variables. Received: perturbed_variables={self.perturbed_variables!r}"
                + (
                    " on a model without normalisation layers (BatchNormalization, "
                    "LayerNormalization, GroupNormalization, ...)"
                    if self.perturbed_variables == "normalization"
                    else ""
                )
            )
        return selected
    def step_metrics(self, context):
        """Returns a dict of scalar tensors named as in `metric_names`."""
        if self.tracker is None:
            return {}
        return self.tracker.metrics(context, self.step_perturbation(context))

    def load_own_variables(self, store):
        # Files saved by keras-eigensam 0.1 hold the state variables that
        # existed then, a prefix of today's (new ones are appended).
        variables = self._trainable_variables + self._non_trainable_variables
        if self.tracker is not None and len(store.keys()) == len(variables) - 1:
            # 0.1 had no `num_failed_refreshes`, the last variable.
            for i in range(len(store.keys())):
                variables[i].assign(store[str(i)])
            return
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho})
        if self.perturbed_variables != "all":
            selection = self.perturbed_variables
            if callable(selection):
                selection = keras.saving.serialize_keras_object(selection)
            config["perturbed_variables"] = selection
        if self.interval != 1:
            config["interval"] = self.interval
        if self.tracker is not None:
            config["tracker"] = True
            config.update(self.tracker.get_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        selection = config.get("perturbed_variables")
        if isinstance(selection, dict):
            config["perturbed_variables"] = keras.saving.deserialize_keras_object(
                selection
            )
        return cls(**config)


PERTURBED_VARIABLES = ("all", "normalization")


def _check_perturbed_variables(value):
    if callable(value):
        return value
    if value not in PERTURBED_VARIABLES:
        raise ValueError(
            "`perturbed_variables` must be 'all', 'normalization' or a "
            "callable taking a variable and returning a bool. Received: "
            f"perturbed_variables={value!r}"
        )
    return value


def _make_tracker(tracker, tracker_kwargs, required, default_refresh_every):
    if isinstance(tracker, EigenvectorTracker):
        if tracker_kwargs:
            raise ValueError(
                "Pass either `tracker=EigenvectorTracker(...)` or the tracker's "
                f"arguments, not both. Received: tracker={tracker!r} and "
                + ", ".join(f"{k}={v!r}" for k, v in sorted(tracker_kwargs.items()))
            )
        return tracker
    if tracker is not None and not isinstance(tracker, bool):
        raise TypeError(
            "`tracker` must be an `EigenvectorTracker`, True or None. "
            f"Received: tracker={tracker!r} (of type {type(tracker).__name__})"
        )
    received = ", ".join(f"{k}={v!r}" for k, v in sorted(tracker_kwargs.items()))
    if tracker is False and required:
        raise ValueError(
            "This method needs the top eigenvector, so it cannot run without a "
            "tracker. Received: tracker=False"
        )
    if tracker_kwargs and not (tracker or required):
        raise ValueError(
            "Tracker arguments were given to a method that does not track the "
            "eigenvector: pass `tracker=True` (or `track_eigen=True` to SAM) "
            f"as well. Received: tracker={tracker!r}, {received}"
        )
    if tracker or required:
        tracker_kwargs.setdefault("refresh_every", default_refresh_every)
        return EigenvectorTracker(**tracker_kwargs)
    return None
