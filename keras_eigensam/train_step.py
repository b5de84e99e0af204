"""The SAM-family train step of `SharpnessAwareModel`: first pass, the
method's descent, the finiteness guard and the commit (see the model's
docstring for the outline and `keras_eigensam.phases` for the per-phase
XLA programs that call it)."""

import keras
from keras import ops

from keras_eigensam import batch_loss
from keras_eigensam import linalg
from keras_eigensam import normalization
from keras_eigensam import phases
from keras_eigensam import weight_average
from keras_eigensam.backend import autodiff
from keras_eigensam.backend import distribute
from keras_eigensam.backend import tracing
from keras_eigensam.methods.context import StepContext
from keras_eigensam.methods.context import gather_examples


def train_step(model, data, phase=None):
    """One step of `model` (a built `SharpnessAwareModel`, its method state
    built and its set-up checked) on `data`; `phase` fixes the method's
    schedules. Returns the logs of `model.compute_metrics`."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    num_replicas = distribute.num_replicas_in_sync()
    variables = model.trainable_variables
    state_variables = model._state_variables()
    # `loss_scale` is the Python number 1.0 without loss scaling; every
    # raw gradient is `loss_scale / num_replicas · ∇(replica mean loss)`
    # since Keras divides each replica's loss by the replica count.
    loss_scale = model.optimizer.scale_loss(1.0)
    to_true_scale = num_replicas / loss_scale

    weights = [v.value for v in variables]

    def gradient_at(perturbation, examples):
        xs, ys, weights_ = x, y, sample_weight
        if examples is not None:
            xs, ys, weights_ = (
                gather_examples(t, examples) for t in (x, y, sample_weight)
            )
        perturbed = linalg.add(weights, perturbation)

        # Second pass, on perturbed values: it writes no variable, and
        # reads the state from before the first pass, so dropout replays
        # its masks.
        def second_pass():
            with keras.StatelessScope(
                state_mapping=list(zip(variables, perturbed)),
                collect_losses=True,
            ):
                y_pred_ = model._forward(xs, training=True)
                loss_ = model._loss(xs, ys, y_pred_, weights_)
            return model.optimizer.scale_loss(loss_), loss_

        _, loss_, raw = autodiff.value_aux_and_gradient(
            second_pass, perturbed, watch=True
        )
        # A finite gradient of a non-finite loss must not be applied.
        poison = ops.where(
            ops.isfinite(ops.cast(loss_, "float32")), 1.0, float("nan")
        )
        return _scaled(raw, to_true_scale * poison)

    first_pred = []

    def example_losses(perturbation):
        if perturbation is None:
            y_pred_ = first_pred[0]
        else:
            with keras.StatelessScope(
                state_mapping=list(zip(variables, linalg.add(weights, perturbation))),
                collect_losses=True,
            ):
                y_pred_ = model._forward(x, training=True)
        return batch_loss.example_losses(model, x, y, y_pred_, sample_weight)

    context = StepContext(
        step=model.optimizer.iterations,
        micro_batch=phases.micro_batch(model.optimizer),
        loss=None,
        variables=variables,
        weights=weights,
        grads=None,
        is_normalization=normalization.normalization_flags(model, variables),
        optimizer=model.optimizer,
        num_replicas=num_replicas,
        gradient_at=gradient_at,
        with_hessian=batch_loss.hessian_runner(model, x, y, sample_weight),
        all_reduce_mean=distribute.all_reduce_mean,
        cond=ops.cond,
        example_losses=example_losses,
        phase=phase,
    )
    first_perturbation = model.method.first_pass_perturbation(context)
    context.first_pass_perturbation = first_perturbation
    # The eigenvector refresh, if due, before the first pass, which waits
    # for it: nothing of the step is alive during the refresh's products
    # but the weights, where after the first pass its gradient would be.
    refreshed = []
    if model.method.tracker is not None:
        refreshed = model.method.tracker.refresh(context)

    # First pass. Its state writes (BatchNormalization statistics, RNG
    # states) are held back and applied only if the step is finite.
    # Mapping each variable to its own value keeps it differentiable and
    # lets weight regularisers read it inside the scope.
    def first_pass():
        values = tracing.after(refreshed, [v.value for v in variables])
        if first_perturbation is not None:
            values = linalg.add(values, first_perturbation)
        with keras.StatelessScope(
            state_mapping=list(zip(variables, values)), collect_losses=True
        ) as scope:
            y_pred = model._forward(x, training=True)
            loss = model._loss(x, y, y_pred, sample_weight)
        return model.optimizer.scale_loss(loss), (loss, y_pred, scope)

    _, (loss, y_pred, first_scope), raw_grads = autodiff.value_aux_and_gradient(
        first_pass, variables
    )
    first_pred.append(y_pred)
    state_updates = [
        (v, first_scope.get_current_value(v))
        for v in state_variables
        if first_scope.get_current_value(v) is not None
    ]
    if model.perturbation_scope == "global":
        grads = _scaled(distribute.all_reduce_sum(raw_grads), 1.0 / loss_scale)
    else:
        grads = _scaled(raw_grads, to_true_scale)
    true_loss = ops.cast(loss, "float32") * num_replicas
    context.grads = grads
    context.loss = true_loss
    descent = _scaled(model.method.descent(context), 1.0 / to_true_scale)

    # Apply, only if the descent gradient and the first-pass loss are
    # finite on every replica; the same rule for every optimizer.
    finite = distribute.all_replicas_true(
        ops.logical_and(linalg.all_finite(descent), ops.isfinite(true_loss))
    )
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        # The loss-scale optimizer skips non-finite steps and lowers its
        # scale itself, judging by the gradients (of one replica): make
        # them non-finite everywhere when the step is not finite.
        descent = _scaled(descent, ops.where(finite, 1.0, float("nan")))
        model.optimizer.apply(descent, variables)
    else:
        distribute.apply_gradients_if(model.optimizer, descent, variables, finite)
    if context.decoupled is not None:
        distribute.assign_sub_if(variables, context.decoupled, finite)
        weight_average.move_average_by(model.optimizer, context.decoupled, finite)
    for variable, value in state_updates + context.staged:
        variable.assign(ops.where(finite, value, variable.value))

    # The loss of applied steps only: a skipped batch does not make the
    # epoch's logged loss NaN.
    batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
    model._loss_tracker.update_state(
        ops.where(finite, true_loss, 0.0),
        sample_weight=ops.where(finite, batch_size, 0),
    )
    # Each replica adds its share, so the sum counts the step once.
    model.skipped_steps.update_state(
        ops.where(finite, 0.0, 1.0 / num_replicas)
    )
    # A skipped step logs nothing (its metrics may be NaN, and a refresh
    # it computed was not committed).
    metrics = model.method.step_metrics(context)
    for tracker in model.method_metrics:
        tracker.update_state(
            ops.where(finite, metrics[tracker.name], 0.0),
            sample_weight=ops.where(finite, 1.0, 0.0),
        )
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _scaled(xs, factor):
    """`factor · xs`, skipping the pass over the weights when factor is 1."""
    if isinstance(factor, (int, float)) and factor == 1.0:
        return xs
    return linalg.scale(xs, factor)
