"""A run's base optimizer: SGD or AdamW, its schedule and its weight decay.

Weight decay is *coupled* L2 (`weight_decay / 2 · ‖W‖²` on kernels, added to
the loss by `architectures.build`, so it enters the SAM perturbation) with
`optimizer="sgd"`, and *decoupled* (`keras.optimizers.AdamW`, also on
kernels only) with `optimizer="adamw"`. The learning rate follows a cosine
decay to 0 over the whole run (or stays constant), after an optional linear
warm-up from 0.
"""

import keras


def learning_rate_schedule(config, steps_per_epoch):
    """The learning rate as a float or a `LearningRateSchedule` of the step.

    Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 over
    the remaining steps (`schedule="cosine"`) or the peak rate
    (`"constant"`).
    """
    c = config.resolved()
    total = c.epochs * steps_per_epoch
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    if c.schedule == "constant" and warmup == 0:
        return c.learning_rate
    # CosineDecay with alpha=1 decays from the peak to the peak: constant.
    alpha = 1.0 if c.schedule == "constant" else 0.0
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(
            c.learning_rate, decay_steps=total, alpha=alpha
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total - warmup),
        alpha=alpha,
        warmup_target=c.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(config, steps_per_epoch):
    """The base optimizer of `config` (SGD with momentum, or AdamW).

    SGD's weight decay is not here: it is the coupled L2 penalty of the
    architecture (`architecture_kwargs`). AdamW decays kernels only, like
    the coupled penalty (biases and BatchNorm parameters are excluded).
    """
    c = config.resolved()
    learning_rate = learning_rate_schedule(c, steps_per_epoch)
    if c.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=c.momentum)
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=c.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def architecture_kwargs(config):
    """Keyword arguments of `architectures.build`: the coupled L2 for SGD."""
    c = config.resolved()
    return {"weight_decay": c.weight_decay if c.optimizer == "sgd" else 0.0}
