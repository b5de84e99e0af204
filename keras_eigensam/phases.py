"""Phase programs: under XLA, one compiled program per phase of a method's step.

A method whose step branches on schedules (an eigenvector refresh every
`refresh_every` steps, LookSAM's SAM step every `k`, an `interval`) has
phases: the combinations of its `schedules()` that are due or not. With
`jit_compile=True` on one device, `SharpnessAwareModel` compiles one XLA
program per phase that occurs, each with its branches decided while
tracing, and a graph conditional outside XLA picks the program for the
step: XLA on CPU runs the convolution gradients inside a conditional 5–50×
slower than outside one (an in-step refresh of a ResNet took minutes). The
step computed is the same; a program is compiled the first time its phase
occurs. A refresh whose Hessian products loop over micro-batches
(`hessian_microbatch_size`) is compiled without XLA, which runs convolution
gradients inside a loop slowly too (6× on small_cnn).
"""

import functools

from keras import ops

from keras_eigensam.backend import tracing
from keras_eigensam.methods.context import inner_optimizer
from keras_eigensam.methods.context import schedule_due


def schedules(model):
    """The method's schedules that vary from step to step in `model`'s fit,
    sorted: `(period, first_micro_batch)` pairs."""
    accumulating = (
        getattr(inner_optimizer(model.optimizer), "gradient_accumulation_steps", None) or 1
    ) > 1
    return sorted(
        (period, first and accumulating)
        for period, first in model.method.schedules()
        if period != 1 or (first and accumulating)
    )


def compiled_by_phase(model):
    """Whether `model`'s train step is one XLA program per phase."""
    return (
        bool(model.jit_compile)
        and not model.run_eagerly
        and model._distribute_strategy is None
        and (bool(schedules(model)) or _needs_graph(model.method, {}))
    )


def micro_batch(optimizer):
    """This batch's position in its optimizer step's window: `0` without
    gradient accumulation; with it, the number of micro-batches the
    optimizer has accumulated since its last update (skipped batches never
    reach the optimizer, so they are not counted)."""
    inner = inner_optimizer(optimizer)
    steps = getattr(inner, "gradient_accumulation_steps", None)
    if not steps:
        return 0
    return ops.mod(inner._iterations, steps)


def run(model, data, programs, train_step):
    """`train_step(data, phase=...)` of this step's phase, through the
    program compiled for it (created in `programs`, keyed by the phase's
    bits, the first time the phase occurs)."""
    phase_schedules = schedules(model)
    step, position = model.optimizer.iterations, micro_batch(model.optimizer)
    index = 0
    for i, schedule in enumerate(phase_schedules):
        due = schedule_due(step, position, *schedule)
        index += (2**i) * ops.cast(due, "int32")

    def program(bits):
        if bits not in programs:
            phase = {s: bool(bits >> i & 1) for i, s in enumerate(phase_schedules)}
            programs[bits] = tracing.function(
                functools.partial(train_step, phase=phase),
                jit_compile=not _needs_graph(model.method, phase),
            )
        return functools.partial(programs[bits], data)

    return tracing.switch(index, [program(b) for b in range(2 ** len(phase_schedules))])


def _needs_graph(method, phase):
    """Whether a step of `phase` refreshes the eigenvector over micro-batches
    (`hessian_microbatch_size`), a `tf.while_loop` of convolution gradients,
    which XLA on CPU runs about 6× slower than TensorFlow does (measured on
    small_cnn): such a step is compiled without XLA."""
    tracker = method.tracker
    if tracker is None or tracker.hessian_microbatch_size is None:
        return False
    return tracker.refresh_every == 1 or any(
        due for (period, _), due in phase.items() if period == tracker.refresh_every
    )
