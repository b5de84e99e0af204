"""The optimizer's moving average of the weights (`use_ema=True`) under an
update made outside the optimizer (a decoupled step)."""

from keras import ops

from keras_eigensam.backend import distribute
from keras_eigensam.methods.context import inner_optimizer


def move_average_by(optimizer, deltas, finite):
    """Moves `optimizer`'s EMA of the weights as if `w ← w − deltas` had
    been part of its update, where `finite`; nothing without `use_ema`.

    Keras averages inside `apply`, before a decoupled update:
    `average ← m·average + (1 − m)·w` (`m = 0` at the first step), so
    subtracting `δ` from `w` afterwards subtracts `(1 − m)·δ` from what the
    average should be. `deltas` are in the order of the optimizer's
    variables (the model's trainable variables); call after `apply`.
    """
    optimizer = inner_optimizer(optimizer)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages:
        return
    pairs = [(a, d) for a, d in zip(averages, deltas) if a is not None]
    first = ops.equal(optimizer.iterations, 1)  # counted already
    weight = ops.where(first, 1.0, 1.0 - float(optimizer.ema_momentum))
    distribute.assign_sub_if(
        [a for a, _ in pairs], [d * ops.cast(weight, d.dtype) for _, d in pairs], finite
    )
