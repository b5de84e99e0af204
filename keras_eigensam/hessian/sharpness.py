"""Sharpness of the loss around the current weights (Wen, Ma & Li, 2023)."""

import numpy as np

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.hessian import probe

#: The sharpness notions `sharpness` can measure.
SHARPNESS_MEASURES = ("ascent", "average", "worst_case")


def random_unit_directions(num_parameters, num_samples, seed):
    """The random directions of the average sharpness.

    ```
    rng = np.random.default_rng(seed)
    for each sample:  z = rng.standard_normal(num_parameters);  yield z / ‖z‖
    ```

    A direction is a flat float64 vector over all trainable weights, in the
    order of `model.trainable_variables`, each variable flattened in C
    order. Drawn one at a time, so only one direction is in memory.

    Args:
        num_parameters: Length of each direction, >= 1.
        num_samples: Number of directions, >= 1.
        seed: Seed of `np.random.default_rng` (`None` or an integer >= 0).

    Returns:
        A generator of `num_samples` unit-norm NumPy arrays.

    Raises:
        TypeError, ValueError: at the call (not at the first draw) if an
            argument has the wrong type or range.

    Example:

    ```python
    directions = list(random_unit_directions(10, num_samples=3, seed=0))
    ```
    """
    num_parameters = validation.check_int("num_parameters", num_parameters, minimum=1)
    num_samples = validation.check_int("num_samples", num_samples, minimum=1)
    # Checked here, not on the first draw: the draws are a generator.
    rng = np.random.default_rng(validation.check_seed("seed", seed))
    return _unit_directions(rng, num_parameters, num_samples)


def _unit_directions(rng, num_parameters, num_samples):
    for _ in range(num_samples):
        z = rng.standard_normal(num_parameters)
        yield z / np.linalg.norm(z)


def check_sharpness_arguments(rho, measures, num_samples, ascent_steps, step_size, seed):
    """Validated `(rho, measures, num_samples, ascent_steps, step_size, seed)`.

    `measures` comes back as a tuple in the order of `SHARPNESS_MEASURES`,
    `step_size=None` as `2.5 * rho / ascent_steps`.

    Raises:
        TypeError: if a number has the wrong type.
        ValueError: if `rho` <= 0, `num_samples` or `ascent_steps` < 1,
            `step_size` <= 0, or `measures` is empty or names an unknown
            measure.
    """
    rho = validation.check_number("rho", rho, minimum=0.0, strict=True)
    if isinstance(measures, str):
        measures = (measures,)
    if not isinstance(measures, (list, tuple)) or not measures:
        raise ValueError(
            f"`measures` must be a non-empty list of {list(SHARPNESS_MEASURES)}. "
            f"Received: measures={measures!r}"
        )
    for measure in measures:
        if measure not in SHARPNESS_MEASURES:
            raise ValueError(
                f"`measures` must contain only {list(SHARPNESS_MEASURES)}. "
                f"Received: measures={measures!r} with unknown {measure!r}"
            )
    measures = tuple(m for m in SHARPNESS_MEASURES if m in measures)
    num_samples = validation.check_int("num_samples", num_samples, minimum=1)
    ascent_steps = validation.check_int("ascent_steps", ascent_steps, minimum=1)
    if step_size is None:
        step_size = 2.5 * rho / ascent_steps
    step_size = validation.check_number("step_size", step_size, minimum=0.0, strict=True)
    seed = validation.check_seed("seed", seed)
    return rho, measures, num_samples, ascent_steps, step_size, seed


def sharpness(
    objective,
    rho=0.05,
    measures=SHARPNESS_MEASURES,
    num_samples=10,
    ascent_steps=5,
    step_size=None,
    seed=0,
):
    """Ascent, average and worst-case sharpness of a loss at its weights.

    With `L` the objective's loss and `ĝ = ∇L(w) / (‖∇L(w)‖ + 1e-12)`:

    ```
    ascent      L(w + ρ ĝ) − L(w)                  (what SAM evaluates)
    average     mean_i L(w + ρ z_i/‖z_i‖) − L(w),  z_i ~ N(0, I)
    worst_case  max_{‖e‖≤ρ} L(w + e) − L(w),       by projected ascent:
        e_0 = ρ ĝ;  e_(t+1) = Π_ρ(e_t + η ∇L(w+e_t)/‖∇L(w+e_t)‖),  t < ascent_steps
        value = max_t L(w + e_t) − L(w)
    ```

    `Π_ρ` scales `e` back onto the ball of radius ρ when it leaves it. The
    worst case starts at the ascent point, so it is never below the ascent
    sharpness. The average uses the `num_samples` directions of
    `random_unit_directions(d, num_samples, seed)`, so with a fixed seed it
    is a function of the weights. Near a minimum, worst-case ≈
    ρ‖g‖ + ρ²λ_max/2 and average ≈ ρ² tr(H) / (2d), d the number of
    parameters.

    Cost, in passes over the objective's data: one gradient for `L(w)` and
    `ĝ`; ascent one forward pass (none extra with `worst_case`); average
    `num_samples` forward passes; worst case `ascent_steps` gradients and
    one forward pass.

    Args:
        objective: The loss, a `keras_eigensam.hessian.ProbeLoss` (or any
            object with `weights()`, `value(values)` and
            `value_and_gradient(values)` over lists of tensors).
        rho: Radius ρ of the perturbation ball, > 0. Defaults to `0.05`.
        measures: Which of `"ascent"`, `"average"`, `"worst_case"` to
            measure. Defaults to all three.
        num_samples: Random directions of the average sharpness, >= 1.
            Defaults to `10`.
        ascent_steps: Projected gradient-ascent steps of the worst case
            (gradients), >= 1. Defaults to `5`.
        step_size: Step η of the worst-case ascent, > 0. `None` uses
            `2.5 * rho / ascent_steps` (the heuristic of Madry et al.).
            Defaults to `None`.
        seed: Seed of the random directions. Defaults to `0`.

    Returns:
        A dict from each measure in `measures` to a Python float.

    Raises:
        TypeError, ValueError: as `check_sharpness_arguments`; TypeError if
            `objective` lacks `weights`, `value` or `value_and_gradient`.

    Example:

    ```python
    objective = hessian.ProbeLoss(model, "mse", (x[:256], y[:256]))
    values = hessian.sharpness(objective, rho=0.05)
    values["worst_case"]
    ```

    Reference:
        - [Wen, Ma & Li, 2023](https://arxiv.org/abs/2211.05729)
        - [Madry et al., 2018](https://arxiv.org/abs/1706.06083)
    """
    rho, measures, num_samples, ascent_steps, step_size, seed = check_sharpness_arguments(
        rho, measures, num_samples, ascent_steps, step_size, seed
    )
    if not all(hasattr(objective, name) for name in ("weights", "value", "value_and_gradient")):
        raise TypeError(
            "`objective` must be a `keras_eigensam.hessian.ProbeLoss` (or an "
            "object with `weights()`, `value(values)` and "
            f"`value_and_gradient(values)`). Received: objective={objective!r} "
            f"(of type {type(objective).__name__})"
        )
    weights = objective.weights()
    at = lambda e: linalg.add(weights, e)  # noqa: E731
    need_gradient = "ascent" in measures or "worst_case" in measures
    if need_gradient:
        base, grads = objective.value_and_gradient(weights)
    else:
        base = objective.value(weights)
    values = {}
    if need_gradient:
        g_hat, _ = linalg.normalize(grads)
        e = linalg.scale(g_hat, np.float64(rho))
        if "worst_case" in measures:
            loss, grads_e = objective.value_and_gradient(at(e))
        else:
            loss = objective.value(at(e))
        if "ascent" in measures:
            values["ascent"] = loss - base
        if "worst_case" in measures:
            best = loss
            for t in range(ascent_steps):
                step = linalg.normalize(grads_e)[0]
                e = _project(linalg.add_scaled(e, step, np.float64(step_size)), rho)
                if t < ascent_steps - 1:
                    loss, grads_e = objective.value_and_gradient(at(e))
                else:
                    loss = objective.value(at(e))
                best = max(best, loss)
            values["worst_case"] = best - base
    if "average" in measures:
        num_parameters = sum(int(np.prod(w.shape)) for w in weights)
        total = 0.0
        for direction in random_unit_directions(num_parameters, num_samples, seed):
            total += objective.value(at(probe.unflatten(rho * direction, weights)))
        values["average"] = total / num_samples - base
    return {measure: float(values[measure]) for measure in measures}


def _project(e, rho):
    """`e` scaled back onto the ball of radius `rho` if it left it."""
    norm = float(linalg.global_norm(e))
    return e if norm <= rho else linalg.scale(e, np.float64(rho / norm))
