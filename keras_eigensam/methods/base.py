"""The interface every sharpness-aware method implements.

`SharpnessAwareModel.train_step` is the only place where the two passes of a
SAM-family update happen. A method plugs into it through four small hooks:

```
# First pass                 g = ∇L_B(w)                  (model)
method.update_state(ctx)     e.g. refresh an eigenvector  (method, optional)
# Perturb                    e = method.perturbation(ctx) (method)
# Second pass                g_e = ∇L_B(w + e)            (model)
method.descent_gradient(ctx, g_e) -> d                    (method, optional)
# Apply                      w ← optimizer(w, d)          (model)
```

A method is a Keras layer that is never called: being a layer is what makes
its state (Keras variables created in `build_state`) part of the model, so it is
saved with `model.save`, restored by checkpoints and `BackupAndRestore`, and
mirrored across replicas when the model is built under a strategy.
"""

import keras

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.eigenvector import METRIC_NAMES


class StepContext:
    """What a method sees of one training step.

    Attributes:
        step: The optimizer's iteration count before this step's update (an
            integer scalar tensor). Schedules key on it, so they survive
            `steps_per_execution > 1`, restarts and `BackupAndRestore`.
        variables: The model's trainable variables.
        weights: Their values at the start of the step (list of tensors).
        grads: The first-pass gradient `∇L_B(w)` of the mean loss, at true
            scale (loss scaling and the per-replica `1/num_replicas` factor
            removed). With `perturbation_scope="replica"` it is this
            replica's gradient, with `"global"` the all-reduced one.
        with_hessian: A function `with_hessian(pred, fn, *, training, mode)`
            that, when the scalar boolean `pred` is True, calls `fn(matvec)`
            on every replica, where `matvec(vectors)` is the Hessian-vector
            product of the loss on this step's global batch at `weights`
            (all-reduced, identical on every replica). `fn` may write
            variables and returns nothing. `training` picks the model's mode
            for the Hessian, `mode` the HVP algorithm.
    """

    def __init__(self, step, variables, weights, grads, with_hessian=None):
        self.step = step
        self.variables = variables
        self.weights = weights
        self.grads = grads
        self.with_hessian = with_hessian
        self._memo = {}

    @property
    def grad_norm(self):
        """`‖grads‖`, computed once per step (every rule needs it)."""
        return self.memo("grad_norm", lambda: linalg.global_norm(self.grads))

    def memo(self, key, compute):
        """`compute()` the first time `key` is asked for in this step, then
        the same tensor: lets the perturbation and the metrics share inner
        products over all weights instead of recomputing them."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class SharpnessMethod(keras.layers.Layer):
    """Base class of the sharpness-aware methods.

    Subclasses implement `perturbation` and may override `build_state` (to
    create state), `update_state`, `descent_gradient` and `step_metrics`. The math
    should live in pure functions over lists of tensors so it can be tested
    against NumPy on its own.

    Args:
        rho: Radius of the perturbation. `rho=0` makes every method reduce to
            its base optimizer. Defaults to `0.05`.
        eigenvector: An `EigenvectorTracker` if the method tracks the top
            Hessian eigenvector (Eigen-SAM and X-SAM need it; SAM can log
            it), else `None`. Defaults to `None`.
        **kwargs: Passed to `keras.layers.Layer` (e.g. `name`).
    """

    #: Whether the method changes the descent gradient (X-SAM does); if not,
    #: the model hands the second-pass gradient to the optimizer untouched.
    modifies_descent_gradient = False

    def __init__(self, rho=0.05, eigenvector=None, **kwargs):
        super().__init__(**kwargs)
        self.rho = validation.check_number("rho", rho, minimum=0.0)
        self.eigenvector = eigenvector
        self.state_built = False
        # Never called, so never built by Keras; its state comes from
        # `build_state`.
        self.built = True

    @property
    def metric_names(self):
        """Names of the scalars `step_metrics` returns, logged every step."""
        return METRIC_NAMES if self.eigenvector is not None else ()

    def build_state(self, variable_shapes):
        """Creates the method's state for variables of `variable_shapes`.

        Called by the owning model once its weights exist (in the
        distribution strategy's scope, so the variables are mirrored).
        `variable_shapes` is a list of shapes, one per trainable variable of
        the model, in `model.trainable_variables` order. Subclasses create
        their variables with `self.add_weight(..., trainable=False)` and call
        `super().build_state(variable_shapes)` last. The base class has no
        state.
        """
        if self.eigenvector is not None:
            self.eigenvector.build(self, variable_shapes)
        self.state_built = True

    def _lock_state(self):
        # A method's state is shaped after the model's weights, which may be
        # created after the method itself; it is added by `build_state`.
        pass

    def update_state(self, context):
        """Updates the method's own state at the start of a step.

        The base class refreshes the eigenvector estimate when it is due.
        """
        if self.eigenvector is not None:
            self.eigenvector.maybe_refresh(context)

    def perturbation(self, context):
        """Returns the perturbation `e` (list of tensors shaped like weights)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `perturbation(context)`."
        )

    def descent_gradient(self, context, perturbed_grads):
        """Returns the gradient handed to the optimizer.

        `perturbed_grads` is `∇L_B(w + e)` at true scale. The default is SAM's:
        use it as is.
        """
        del context
        return perturbed_grads

    def step_metrics(self, context, perturbation):
        """Returns a dict of scalar tensors named as in `metric_names`."""
        if self.eigenvector is None:
            return {}
        return self.eigenvector.step_metrics(context, perturbation, self)

    def eigen_alignment(self, grad_cosine):
        """`cos(e, v)` as a function of `cos(g, v)`, if the rule gives one.

        Methods whose perturbation lies in the span of `g` and `v` override
        this so the metric costs no pass over the weights; `None` means
        compute the cosine from the perturbation itself.
        """
        del grad_cosine
        return None

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho})
        if self.eigenvector is not None:
            config.update(self.eigenvector.get_config())
        return config
