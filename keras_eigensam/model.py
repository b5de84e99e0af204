"""`SharpnessAwareModel`: a `keras.Model` whose `train_step` is a SAM-family update."""

import inspect

import keras
import numpy as np

from keras_eigensam import compile_checks
from keras_eigensam import phases
from keras_eigensam import train_step as train_step_lib
from keras_eigensam import validation
from keras_eigensam.backend import distribute
from keras_eigensam.fit_checks import FitChecks
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import SAM

PERTURBATION_SCOPES = ("replica", "global")


@keras.saving.register_keras_serializable(package="keras_eigensam")
class SharpnessAwareModel(keras.Model):
    """A Keras model trained with a sharpness-aware method inside `fit`.

    Each training step is one first pass, then whatever the method decides
    (SAM and most methods: one second pass on the same batch):

    ```
    v   = tracker.refresh(ctx)           # if the method tracks the eigenvector
    g   = ∇L_B(w)                        # First pass (updates BN statistics)
    d   = method.descent(ctx)            # SAM: ctx.gradient_at(ρ·g/‖g‖),
                                         #   a second pass that writes no
                                         #   variable and replays dropout masks
    w   ← optimizer(w, d) if finite      # Apply, with the method's staged state
    ```

    Second passes run on perturbed *values* in a `keras.StatelessScope`, so
    the weights themselves are never moved away and back: a non-finite
    perturbation cannot corrupt them, BatchNormalization moving statistics
    are updated once per step (by the first pass), and dropout and other
    random layers replay the first pass's random state. A step whose
    first-pass loss or descent gradient (or loss at the perturbed point) is
    not finite on any replica is skipped: no weight, slot, iteration,
    statistic or method state changes, for every optimizer; with a
    `LossScaleOptimizer` the loss scale is lowered as usual.

    Under gradient accumulation (an optimizer with
    `gradient_accumulation_steps=n`) each micro-batch is a step of its own at
    the window's weights, its own first pass, perturbation and descent
    gradient (per-micro-batch m-sharpness, as replicas are under
    `perturbation_scope="replica"`); the optimizer averages the window's `n`
    descent gradients and applies them once, and `iterations` (the `step`
    that schedules such as the eigenvector refresh key on) counts optimizer
    steps. The eigenvector is refreshed once per due step, on the window's
    first micro-batch. A non-finite micro-batch is skipped as above and
    counted in `skipped_steps` (which counts micro-batches); it does not
    reach the accumulator, and the window completes with the next finite
    micro-batches, so every update averages `n` finite ones. Methods whose
    update is not such a mean (X-SAM, FriendlySAM, WSAM's decoupled form)
    and strategies that synchronise with `merge_call` refuse accumulation.

    Use it in either of two ways:

    1. Wrap an existing model (Sequential, functional or subclassed):
       `SharpnessAwareModel(net, method=SAM(rho=0.05))`.
    2. Subclass it and define `call` (and the layers in `__init__`) as for
       any subclassed `keras.Model`, passing `method=` to
       `super().__init__`.

    Args:
        model: The Keras model to train. `None` when subclassing. Defaults to
            `None`.
        method: A `SharpnessMethod` (`SAM`, `ASAM`, `EigenSAM`, `XSAM`, …).
            Defaults to `SAM(rho=0.05)`.
        perturbation_scope: `"replica"` perturbs each replica with its own
            gradient (the SAM paper's m-sharpness, and tf_keras's behaviour);
            `"global"` all-reduces the first-pass gradient first, so the step
            does not depend on the number of replicas (one more all-reduce
            per step). Defaults to `"replica"`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Raises:
        TypeError: if `model` is not a Keras model or `method` is not a
            `SharpnessMethod`.
        ValueError: if `perturbation_scope` is unknown or the model has no
            trainable weights.

    Example:

    ```python
    net = keras.Sequential([keras.Input((64,)),
                            keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    model = SharpnessAwareModel(net, method=SAM(rho=0.05))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3)
    ```

    Reference:
        - [Foret et al., 2021](https://arxiv.org/abs/2010.01412)
    """

    def __init__(
        self, model=None, method=None, perturbation_scope="replica", **kwargs
    ):
        super().__init__(**kwargs)
        if isinstance(model, SharpnessAwareModel):
            raise TypeError(
                "`model` is already a SharpnessAwareModel; wrapping it again "
                "would nest two train steps, of which only the outer one runs. "
                "Wrap the network itself, or change its `method`. Received: "
                f"model={model.name!r} (a SharpnessAwareModel with "
                f"{type(model.method).__name__})"
            )
        if model is not None and not isinstance(model, keras.Model):
            raise TypeError(
                "`model` must be a `keras.Model` (or None when subclassing "
                f"SharpnessAwareModel). Received: model={model!r} "
                f"(of type {type(model).__name__})"
            )
        if method is None:
            method = SAM()
        if not isinstance(method, SharpnessMethod):
            raise TypeError(
                "`method` must be a keras_eigensam method object such as "
                "`keras_eigensam.SAM(rho=0.05)`. Received: "
                f"method={method!r} (of type {type(method).__name__})"
            )
        self.perturbation_scope = validation.check_choice(
            "perturbation_scope", perturbation_scope, PERTURBATION_SCOPES
        )
        self.model = model
        # Steps skipped because they were not finite, summed over the epoch.
        self.skipped_steps = keras.metrics.Sum(name="skipped_steps")
        self._set_method(method)
        if model is not None and model.built:
            self._build_method_state()
            self.built = True

    def _set_method(self, method):
        """Makes `method` this model's method (replacing an unbuilt one)."""
        previous = getattr(self, "method", None)
        if previous is not None:
            if previous.state_built:
                raise ValueError(
                    "The method of a built SharpnessAwareModel cannot be "
                    "replaced: its state is shaped after the model's weights."
                )
            self._tracker.untrack(previous)
            for metric in self.method_metrics:
                self._tracker.untrack(metric)
        self.method = method
        self.method_metrics = [
            keras.metrics.Mean(name=name) for name in method.metric_names
        ]

    def summary(self, *args, **kwargs):
        """The summary of the network (its layers and parameters), then one
        line for the method's state.

        The state (a copy of the weights' shape for an eigenvector, counters,
        EMAs) is saved with the model but is not a parameter: Keras's own
        summary of the wrapping model would count it as non-trainable
        parameters. A subclassed model (no wrapped network) gets Keras's
        summary, then the same line. Arguments are `keras.Model.summary`'s.
        """
        if self.model is not None:
            self.model.summary(*args, **kwargs)
        else:
            super().summary(*args, **kwargs)
        print_fn = kwargs.get("print_fn") or (args[3] if len(args) > 3 else None) or print
        size = sum(int(np.prod(v.shape)) for v in self.method.variables)
        print_fn(
            f"Method state ({type(self.method).__name__}): {size:,} values, saved "
            "with the model, not parameters"
        )

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, with two checks of this model's own.

        - A warning when the eigenvector tracker's schedule refreshes at
          most once in the run (`EigenvectorTracker.schedule_warning`).
        - With `keras.callbacks.TerminateOnNaN` among the callbacks, training
          stops at the first skipped (non-finite) step. The skipped step
          changes nothing and the logged loss is that of applied steps, so
          `TerminateOnNaN` itself would never see a NaN.
        """
        callbacks = kwargs.get("callbacks")
        if isinstance(callbacks, (list, tuple, type(None))):
            callbacks = list(callbacks or [])
            terminate = any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks)
            kwargs["callbacks"] = callbacks + [FitChecks(terminate)]
        return super().fit(*args, **kwargs)

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, with its scalar arguments checked first.

        Keras takes `steps_per_execution="2"` or `0` and fails inside `fit`
        with an unrelated error, and reads `jit_compile="yes"` as true; here
        such values are refused, naming the argument.

        Raises:
            TypeError, ValueError: if `steps_per_execution` is not an integer
                >= 1, `jit_compile` not a bool or `"auto"`, or `run_eagerly`
                or `auto_scale_loss` not a bool.
        """
        arguments = inspect.signature(keras.Model.compile).bind(
            self, *args, **kwargs
        ).arguments
        if "steps_per_execution" in arguments:
            validation.check_int(
                "steps_per_execution", arguments["steps_per_execution"], minimum=1
            )
        for name in ("run_eagerly", "auto_scale_loss"):
            if name in arguments:
                validation.check_bool(name, arguments[name])
        jit_compile = arguments.get("jit_compile", "auto")
        if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
            raise TypeError(
                "`jit_compile` must be True, False or 'auto'. "
                f"Received: jit_compile={jit_compile!r}"
            )
        super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        # Keras does not compile a loaded model whose class overrides
        # `compile`; this `compile` only checks Keras's arguments first, so
        # do what Keras does for its own (a subclass's `compile` still gets
        # Keras's treatment).
        if type(self).compile is not SharpnessAwareModel.compile:
            return super().compile_from_config(config)
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------------ build

    def call(self, inputs, training=None):
        if self.model is None:
            raise NotImplementedError(
                "SharpnessAwareModel was created without `model`: subclass it "
                "and define `call`, or pass the model to wrap as `model=`."
            )
        return self.model(inputs, training=training)

    def _weights_exist(self):
        if self.model is not None:
            return self.model.built
        # A subclass rebuilt by `load_model` has its weights but is not
        # marked built.
        return self.built or bool(self.trainable_variables)

    def _build_method_state(self):
        """Creates the method's (and optimizer's) state once weights exist."""
        owner = getattr(self.method, "_owner_id", None)
        if owner is not None and owner != id(self):
            raise ValueError(
                f"The method {self.method.name!r} already belongs to another "
                "model: a method object holds its model's state (shaped after "
                "its weights), so it cannot serve two models. Create one "
                "method object per model."
            )
        if self.method.state_built:
            return
        variables = self.trainable_variables
        if not variables:
            name = self.model.name if self.model is not None else self.name
            raise ValueError(
                "`model` has no trainable weights, so there is nothing for a "
                f"sharpness-aware method to train. Received: model={name!r} "
                f"with {len(self.weights)} weights, none trainable."
            )
        self.method.build_state([tuple(v.shape) for v in variables])
        self.method._owner_id = id(self)

    def _post_build(self):
        # Keras calls this once the model's own weights exist (after `build`
        # and after the symbolic build `fit` does under a strategy), which is
        # when the method's state can be shaped after them.
        super()._post_build()
        if getattr(self, "method", None) is not None and self._weights_exist():
            self._build_method_state()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds before tracing only under a strategy. Without one,
        # `train_step` would create the optimizer's slots and the method's
        # state while `tf.function` traces it, which makes TensorFlow trace
        # the train function twice: build first instead, as under a
        # strategy.
        if (
            self._distribute_strategy is None
            and self.optimizer is not None
            and not (self._weights_exist() and self.optimizer.built)
        ):
            if iterator is not None:
                for _, _, it in iterator:
                    data_batch = next(it)
                    break
            if data_batch is not None:
                self._symbolic_build(data_batch=data_batch)
                return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def build_from_config(self, config):
        super().build_from_config(config)
        if self._weights_exist():
            self._build_method_state()

    # ------------------------------------------------------------- train step

    def _forward(self, x, training):
        if self._call_has_training_arg:
            return self(x, training=training)
        return self(x)

    def _loss(self, x, y, y_pred, sample_weight):
        return self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )

    def _state_variables(self):
        """Non-trainable variables the forward pass may read or write."""
        own = {id(v) for v in self.method.variables}
        return [v for v in self.non_trainable_variables if id(v) not in own]

    def make_train_function(self, force=False):
        """Keras's train function; under XLA, one program per phase.

        With `jit_compile=True` on one device, a method whose step branches
        on schedules gets one XLA program per phase (see
        `keras_eigensam.phases`). Under a `tf.distribute` strategy (where
        Keras turns XLA off by default) the step is one program, with its
        conditionals inside; with several devices in one process
        (MirroredStrategy) XLA is refused: one program cannot use variables
        on several devices.
        """
        if self.train_function is not None and not force:
            return self.train_function
        devices = distribute.local_device_count(self.distribute_strategy)
        if self.jit_compile and not self.run_eagerly and devices > 1:
            # A plain Keras model fails there too, at its first step, with
            # "Trying to access resource ... located in device".
            raise ValueError(
                "`jit_compile=True` is not supported under a strategy with "
                "several devices in one process: one XLA program cannot use "
                "variables placed on several devices (a known XLA limit), and "
                "Keras's default `jit_compile=\"auto\"` turns XLA off there. "
                f"Received: jit_compile=True with {type(self.distribute_strategy).__name__} "
                f"over {devices} devices; compile with `jit_compile=False`."
            )
        self._phase_programs = None
        if not phases.compiled_by_phase(self):
            return super().make_train_function(force)
        self._phase_programs = {}
        jit_compile = self._jit_compile
        self._jit_compile = False  # Keras's wrapper stays a graph around them
        try:
            return super().make_train_function(force)
        finally:
            self._jit_compile = jit_compile

    def train_step(self, data):
        self._prepare_step(data)
        if getattr(self, "_phase_programs", None) is None:
            return self._train_step(data)
        return phases.run(self, data, self._phase_programs, self._train_step)

    def _prepare_step(self, data):
        if not (self._weights_exist() and self.optimizer.built):
            # Under the default strategy `fit` builds nothing before tracing
            # the first step; build here, as Keras does under a strategy.
            self._symbolic_build(data_batch=data)
        self._build_method_state()
        compile_checks.check_compiled_setup(self)

    def _train_step(self, data, phase=None):
        """One step; `phase` fixes the method's schedules (see
        `make_train_function`)."""
        return train_step_lib.train_step(self, data, phase)

    def test_step(self, data):
        logs = super().test_step(data)
        # The method's per-step metrics describe training steps only.
        for tracker in self.method_metrics + [self.skipped_steps]:
            logs.pop(tracker.name, None)
        return logs

    # ---------------------------------------------------------- serialization

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "method": keras.saving.serialize_keras_object(self.method),
            "perturbation_scope": self.perturbation_scope,
        }
        if self.model is not None:
            config["model"] = keras.saving.serialize_keras_object(self.model)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "method"):
            if key in config and config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        # A subclass that passes `method=` (or `model=`) to
        # `super().__init__` itself, as the README's pattern does, does not
        # take it as an argument: build it without, then restore the saved
        # method if it differs from the one its constructor made (the saved
        # state belongs to the saved method).
        parameters = inspect.signature(cls.__init__).parameters
        own = {
            key: config.pop(key)
            for key in ("model", "method")
            if key in config and key not in parameters
        }
        instance = cls(**config)
        saved = own.get("method")
        if saved is not None and (
            type(saved) is not type(instance.method)
            or saved.get_config() != instance.method.get_config()
        ):
            instance._set_method(saved)
        return instance

    def export(self, filepath, *args, **kwargs):
        """Exports the network for inference (see `keras.Model.export`).

        A wrapping model exports the wrapped network: serving needs its
        inference graph, not the method or the train step. A subclass
        exports itself.
        """
        if self.model is not None:
            return self.model.export(filepath, *args, **kwargs)
        return super().export(filepath, *args, **kwargs)
