"""Compiling a Python function into one TensorFlow graph: `tf.function`,
conditionals, and the order of work that does not depend on other work."""

import tensorflow as tf


def function(fn, jit_compile=False):
    """`fn` as a `tf.function` (with XLA if `jit_compile`), retracing little.

    Create one per object that owns it: TensorFlow's retracing warning is
    keyed on the Python function, and a fresh one is expected to trace.
    """
    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)


def switch(index, branches):
    """`branches[index]()` for an integer scalar tensor `index`: a graph
    conditional that runs only the branch taken."""
    return tf.switch_case(tf.cast(index, tf.int32), branches)


def after(dependencies, tensors):
    """`tensors` (a list), read only once every tensor of `dependencies` is
    computed: orders work that does not depend on them by data, such as a
    pass that would otherwise run alongside another and keep both passes'
    activations alive at once (eagerly, where everything runs in order, the
    same tensors). Without dependencies, `tensors` themselves (no op is
    added: the train step calls it on every step, with or without a
    tracker)."""
    dependencies = list(dependencies)
    if not dependencies:
        return list(tensors)
    with tf.control_dependencies(dependencies):
        return [tf.identity(t) for t in tensors]
