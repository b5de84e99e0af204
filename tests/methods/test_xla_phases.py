"""Under XLA a scheduled step is one program per phase, with no pass inside
a conditional (`SharpnessAwareModel.make_train_function`).

XLA on CPU runs the convolution gradients of a conditional branch 5–50×
slower than outside one (benchmarks/steps_epyc_avx2.md), so an eigenvector refresh,
LookSAM's SAM step or an `interval` second pass must not sit inside one.
That the steps taken are those of graph mode is checked for every method by
tests/methods/test_contract.py::test_xla_and_steps_per_execution_take_the_same_steps.
"""

import keras
import pytest
import tensorflow as tf

import keras_eigensam as ks
from tests import tiny

CONDITIONALS = {"If", "StatelessIf", "Case", "StatelessCase"}
#: Ops of a forward or backward pass through a dense layer.
PASS_OPS = {"MatMul", "BatchMatMulV2", "BatchMatMulV3"}


def _functions_called(node):
    for key in ("then_branch", "else_branch", "f", "body", "cond"):
        if key in node.attr and node.attr[key].func.name:
            yield node.attr[key].func.name
    if "branches" in node.attr:
        yield from (f.name for f in node.attr["branches"].list.func)


def _ops_reached(names, library, seen):
    """Op types of the library functions `names` and everything they call."""
    ops = set()
    for name in names:
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            ops.add(node.op)
            ops |= _ops_reached(_functions_called(node), library, seen)
    return ops


def _passes_inside_conditionals(concrete):
    graph_def = concrete.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    nodes = list(graph_def.node) + [n for f in library.values() for n in f.node_def]
    found = []
    for node in nodes:
        if node.op in CONDITIONALS:
            inside = _ops_reached(_functions_called(node), library, set())
            if inside & PASS_OPS:
                found.append(node.name)
    return found


@pytest.mark.parametrize(
    "method",
    [
        lambda: ks.EigenSAM(refresh_every=2, seed=0),
        lambda: ks.LookSAM(k=2),
        lambda: ks.ESAM(interval=2, seed=0),
    ],
    ids=["eigensam-refresh", "looksam-k", "esam-interval"],
)
def test_each_phase_is_one_program_without_a_pass_in_a_conditional(method):
    x, y = tiny.data(n=16)
    model = ks.SharpnessAwareModel(tiny.mlp(), method=method())
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=True)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    programs = model._phase_programs
    assert sorted(programs) == [0, 1]  # off and on the schedule, both taken
    for program in programs.values():
        (concrete,) = program._list_all_concrete_functions()
        assert _passes_inside_conditionals(concrete) == []
    # Without XLA the step is one graph, its passes inside conditionals: the
    # check above would see them.
    graph = ks.SharpnessAwareModel(tiny.mlp(), method=method())
    graph.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=False)
    graph.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert graph._phase_programs is None
    batch = (tf.constant(x[:4]), tf.constant(y[:4]))
    concrete = tf.function(graph.train_step).get_concrete_function(batch)
    assert _passes_inside_conditionals(concrete) != []


def test_xla_over_several_devices_in_one_process_is_refused(mirrored_strategy):
    # One XLA program cannot hold variables of several devices; a plain Keras
    # model fails at its first step with an InvalidArgumentError.
    x, y = tiny.data(n=8)
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM())
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=True)
    with pytest.raises(ValueError, match=r"`jit_compile=True`.*MirroredStrategy over 2 devices"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
