"""Bad configuration of `keras_eigensam.hessian`: every public argument.

Every argument of every public function and class of the toolkit, and of the
operators' methods, is either given one bad value here (the error must have
the right type and name the argument and the value received) or listed in
`ELSEWHERE` with the test that does it, or in `NOT_CHECKED` with the reason;
`test_every_argument_is_accounted_for` keeps the three complete. Nothing is
traced: the operators are built on a two-weight model and never multiply.
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_eigensam import hessian
from tests.bad_values import assert_each_raises
from tests.bad_values import assert_tests_exist


#: The public callables whose arguments are checked, by name.
CALLABLES = {
    name: getattr(hessian, name)
    for name in hessian.__all__
    if callable(getattr(hessian, name))
    and name not in ("CurvatureOperator", "Eigenpairs", "Estimate")  # results, base
}
CALLABLES.update({
    f"CurvatureOperator.{name}": getattr(hessian.CurvatureOperator, name)
    for name in ("matvec", "top_eigenpairs", "trace", "diagonal", "density")
})
OPERATORS = ("HessianOperator", "GGNOperator", "EmpiricalFisherOperator")

_NAMING = "test_bad_arguments_raise_naming_the_argument"
_OPERATOR = f"hessian/test_operator.py::{_NAMING}"
_CONSTRUCTOR = "hessian/test_operator.py::test_bad_constructor_arguments_raise_naming_the_argument"
_HVP = "hessian/test_hvp.py::test_bad_functional_arguments_raise_naming_the_argument"
_TRACE = f"hessian/test_trace.py::{_NAMING}"
_LANCZOS = f"hessian/test_lanczos.py::{_NAMING}"
_LANCZOS_WHICH = "hessian/test_lanczos.py::test_bad_which_and_tol_raise_naming_the_argument"


def _each(name, arguments, where):
    return {(name, argument): where for argument in arguments}


#: `(callable, argument)` checked by another test.
ELSEWHERE = {
    **_each("HessianOperator", ("model", "loss", "data", "training", "hvp_mode"), _CONSTRUCTOR),
    ("CurvatureData", "batch_size"): (
        "hessian/test_data.py::test_batch_size_with_a_dataset_raises_naming_it"
    ),
    ("ProbeLoss", "loss"): "hessian/test_probe.py::test_resolve_loss",
    **_each("hvp", ("vectors", "mode"), _HVP),
    **_each("make_hvp", ("variables", "mode"), _HVP),
    **_each("power_iteration", ("num_matvecs", "tol"), f"hessian/test_power_iteration.py::{_NAMING}"),
    **_each("lanczos_eigenpairs", ("k", "num_matvecs"), _LANCZOS),
    **_each("lanczos_eigenpairs", ("which", "tol"), _LANCZOS_WHICH),
    **_each("hutchinson_trace", ("num_matvecs", "num_parameters"), _TRACE),
    ("hutchpp_trace", "num_matvecs"): "hessian/test_trace.py::test_hutchpp_needs_three_products",
    **_each(
        "spectral_density",
        ("num_matvecs", "num_probes", "num_points", "sigma"),
        f"hessian/test_density.py::{_NAMING}",
    ),
    **_each(
        "sharpness",
        ("rho", "measures", "num_samples", "ascent_steps", "step_size"),
        "hessian/test_sharpness.py::test_bad_arguments",
    ),
    **_each("CurvatureOperator.top_eigenpairs", ("k", "method", "num_matvecs", "tol"), _OPERATOR),
    ("CurvatureOperator.matvec", "vectors"): _OPERATOR,
    ("CurvatureOperator.trace", "num_matvecs"): _OPERATOR,
    ("CurvatureOperator.trace", "method"): "hessian/test_trace.py::test_operator_hutchpp_trace",
    ("CurvatureOperator.density", "num_matvecs"): _OPERATOR,
}

#: `(callable, argument)` without a check of its own, and why.
NOT_CHECKED = {
    ("lanczos_eigenpairs", "dtype"): "any NumPy dtype; NumPy names a bad one",
    ("spectral_density", "dtype"): "any NumPy dtype; NumPy names a bad one",
    ("hvp", "variables"): "checked by shape against `vectors`",
    ("power_iteration", "v0"): "a tensor inside the compiled step: its value is unknown "
    "when the call is traced (the tracker keeps its vector when the result is zero)",
}


def _model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


DATA = (np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))
IDENTITY = lambda v: v  # noqa: E731


def _cases():
    op = hessian.HessianOperator(_model(), "mse", DATA)
    zeros = [np.zeros(v.shape, "float32") for v in op.variables]
    w = tf.Variable([1.0, 2.0])
    loss_fn = lambda: tf.reduce_sum(w**2)  # noqa: E731
    seed = (TypeError, r"`seed` must be an integer. Received: seed='a'")
    cases = [
        ("CurvatureData", "data", lambda: hessian.CurvatureData(3),
         TypeError, r"`data` must be .*Received: data of type int"),
        ("CurvatureData", "check_deterministic",
         lambda: hessian.CurvatureData(DATA, check_deterministic="y"),
         TypeError, r"`check_deterministic` must be a bool. Received: check_deterministic='y'"),
        ("ProbeLoss", "model", lambda: hessian.ProbeLoss("net", "mse", DATA),
         TypeError, r"`model` must be a Keras model or layer. Received: model='net'"),
        ("ProbeLoss", "data", lambda: hessian.ProbeLoss(_model(), "mse", 3),
         TypeError, r"`data` must be .*Received: data of type int"),
        ("ProbeLoss", "training", lambda: hessian.ProbeLoss(_model(), "mse", DATA, training=1),
         TypeError, r"`training` must be a bool. Received: training=1"),
        ("read_batches", "data", lambda: hessian.read_batches("batches"),
         TypeError, r"`data` must be .*Received: data of type str"),
        ("hvp", "loss_fn", lambda: hessian.hvp(3.0, [w], [tf.ones(2)]),
         TypeError, r"`loss_fn` must be a zero-argument function.*Received: loss_fn=3.0"),
        ("make_hvp", "loss_fn", lambda: hessian.make_hvp(loss_fn(), [w]),
         TypeError, r"`loss_fn` must be .*Received: loss_fn=<tf.Tensor"),
        ("make_microbatched_hvp", "loss_fn",
         lambda: hessian.make_microbatched_hvp(3.0, (tf.ones((4, 2)),), [w], 2),
         TypeError, r"`loss_fn` must be a function of a part of the batch.*Received: loss_fn=3.0"),
        ("make_microbatched_hvp", "batch",
         lambda: hessian.make_microbatched_hvp(IDENTITY, (None, tf.constant(1.0)), [w], 2),
         ValueError, r"`batch` must be a structure of tensors .*Received: batch=\(None, <tf.Tensor"),
        ("make_microbatched_hvp", "variables",
         lambda: hessian.make_microbatched_hvp(IDENTITY, (tf.ones((4, 2)),), [], 2),
         ValueError, r"`variables` must not be empty. Received: variables=\[\]"),
        ("make_microbatched_hvp", "microbatch_size",
         lambda: hessian.make_microbatched_hvp(IDENTITY, (tf.ones((4, 2)),), [w], 0),
         ValueError, r"`microbatch_size` must be an integer >= 1. Received: microbatch_size=0"),
        ("make_microbatched_hvp", "mode",
         lambda: hessian.make_microbatched_hvp(IDENTITY, (tf.ones((4, 2)),), [w], 2, mode="fwd"),
         ValueError, r"`mode` must be one of .*Received: mode='fwd'"),
        ("make_ggn_product", "outputs_fn",
         lambda: hessian.make_ggn_product(tf.ones(2), IDENTITY, [w]),
         TypeError, r"`outputs_fn` must be a zero-argument function.*Received: outputs_fn=<tf"),
        ("make_ggn_product", "loss_fn",
         lambda: hessian.make_ggn_product(lambda: w * 1.0, "mse", [w]),
         TypeError, r"`loss_fn` must be a function of the outputs.*Received: loss_fn='mse'"),
        ("make_ggn_product", "variables",
         lambda: hessian.make_ggn_product(lambda: w * 1.0, IDENTITY, []),
         ValueError, r"`variables` must not be empty. Received: variables=\[\]"),
        ("power_iteration", "matvec", lambda: hessian.power_iteration(None, [tf.ones(2)], 3),
         TypeError, r"`matvec` must be a function.*Received: matvec=None"),
        ("power_iteration", "final_update",
         lambda: hessian.power_iteration(IDENTITY, [tf.ones(2)], 3, final_update="y"),
         TypeError, r"`final_update` must be a bool. Received: final_update='y'"),
        ("deflated_power_iteration", "matvec",
         lambda: hessian.deflated_power_iteration(np.eye(2), 1, lambda i: [tf.ones(2)]),
         TypeError, r"`matvec` must be a function.*Received: matvec=array"),
        ("deflated_power_iteration", "k",
         lambda: hessian.deflated_power_iteration(IDENTITY, 0, lambda i: [tf.ones(2)]),
         ValueError, r"`k` must be an integer >= 1. Received: k=0"),
        ("deflated_power_iteration", "start",
         lambda: hessian.deflated_power_iteration(IDENTITY, 1, [tf.ones(2)]),
         TypeError, r"`start` must be a function `index -> v0`. Received: start=\[<tf.Tensor"),
        ("deflated_power_iteration", "num_matvecs",
         lambda: hessian.deflated_power_iteration(IDENTITY, 1, lambda i: [tf.ones(2)], num_matvecs=0),
         ValueError, r"`num_matvecs` must be an integer >= 1. Received: num_matvecs=0"),
        ("deflated_power_iteration", "tol",
         lambda: hessian.deflated_power_iteration(IDENTITY, 1, lambda i: [tf.ones(2)], tol=0.0),
         ValueError, r"`tol` must be a float > 0.0. Received: tol=0.0"),
        ("lanczos_eigenpairs", "matvec", lambda: hessian.lanczos_eigenpairs("H", np.ones(4), 1, 3),
         TypeError, r"`matvec` must be a function.*Received: matvec='H'"),
        ("lanczos_eigenpairs", "start", lambda: hessian.lanczos_eigenpairs(IDENTITY, np.zeros(4), 1, 3),
         ValueError, r"`start` must be a non-zero, finite vector.*Received: start of shape \(4,\) and norm 0.0"),
        ("lanczos_eigenpairs", "rng", lambda: hessian.lanczos_eigenpairs(IDENTITY, np.ones(4), 1, 3, rng=0),
         TypeError, r"`rng` must be a `np.random.Generator` or None. Received: rng=0"),
        ("random_unit_directions", "num_parameters", lambda: hessian.random_unit_directions(0, 2, 0),
         ValueError, r"`num_parameters` must be an integer >= 1. Received: num_parameters=0"),
        ("random_unit_directions", "num_samples", lambda: hessian.random_unit_directions(3, 0, 0),
         ValueError, r"`num_samples` must be an integer >= 1. Received: num_samples=0"),
        ("random_unit_directions", "seed", lambda: hessian.random_unit_directions(3, 2, -1),
         ValueError, r"`seed` must be an integer >= 0. Received: seed=-1"),
        ("sharpness", "objective", lambda: hessian.sharpness(_model()),
         TypeError, r"`objective` must be a `keras_eigensam.hessian.ProbeLoss`.*Received: "
         r"objective=<Sequential.*\(of type Sequential\)"),
        ("sharpness", "seed", lambda: hessian.sharpness(None, seed=-2),
         ValueError, r"`seed` must be an integer >= 0. Received: seed=-2"),
        ("spectral_density", "matvec", lambda: hessian.spectral_density(None, 4),
         TypeError, r"`matvec` must be a function.*Received: matvec=None"),
        ("spectral_density", "num_parameters", lambda: hessian.spectral_density(IDENTITY, 0),
         ValueError, r"`num_parameters` must be an integer >= 1. Received: num_parameters=0"),
        ("spectral_density", "seed", lambda: hessian.spectral_density(IDENTITY, 4, seed="a"), *seed),
        ("CurvatureOperator.top_eigenpairs", "which", lambda: op.top_eigenpairs(which="top"),
         ValueError, r"`which` must be one of .*Received: which='top'"),
        ("CurvatureOperator.top_eigenpairs", "initial", lambda: op.top_eigenpairs(initial=zeros),
         ValueError, r"`initial` must be a non-zero, finite vector.*Received: initial with norm 0.0"),
        ("CurvatureOperator.top_eigenpairs", "seed", lambda: op.top_eigenpairs(seed="a"), *seed),
        ("CurvatureOperator.trace", "seed", lambda: op.trace(seed=1.5),
         TypeError, r"`seed` must be an integer. Received: seed=1.5"),
        ("CurvatureOperator.diagonal", "num_matvecs", lambda: op.diagonal(num_matvecs=0),
         ValueError, r"`num_matvecs` must be an integer >= 1. Received: num_matvecs=0"),
        ("CurvatureOperator.diagonal", "seed", lambda: op.diagonal(seed="a"), *seed),
        ("CurvatureOperator.density", "num_probes", lambda: op.density(num_probes=0),
         ValueError, r"`num_probes` must be an integer >= 1. Received: num_probes=0"),
        ("CurvatureOperator.density", "num_points", lambda: op.density(num_points=1),
         ValueError, r"`num_points` must be an integer >= 2. Received: num_points=1"),
        ("CurvatureOperator.density", "sigma", lambda: op.density(sigma=-1.0),
         ValueError, r"`sigma` must be a float > 0.0. Received: sigma=-1.0"),
        ("CurvatureOperator.density", "seed", lambda: op.density(seed=-1),
         ValueError, r"`seed` must be an integer >= 0. Received: seed=-1"),
    ]
    for name in ("hutchinson_trace", "hutchinson_diagonal", "hutchpp_trace"):
        function = getattr(hessian, name)
        cases += [
            (name, "matvec", lambda f=function: f(np.eye(3), 3),
             TypeError, r"`matvec` must be a function.*Received: matvec=array"),
            (name, "seed", lambda f=function: f(IDENTITY, 3, seed="a"), *seed),
        ]
    cases += [
        ("hutchinson_diagonal", "num_parameters", lambda: hessian.hutchinson_diagonal(IDENTITY, 2.5),
         TypeError, r"`num_parameters` must be an integer. Received: num_parameters=2.5"),
        ("hutchinson_diagonal", "num_matvecs", lambda: hessian.hutchinson_diagonal(IDENTITY, 3, 0),
         ValueError, r"`num_matvecs` must be an integer >= 1. Received: num_matvecs=0"),
        ("hutchpp_trace", "num_parameters", lambda: hessian.hutchpp_trace(IDENTITY, 0),
         ValueError, r"`num_parameters` must be an integer >= 1. Received: num_parameters=0"),
    ]
    for name in OPERATORS:
        cls = getattr(hessian, name)
        if name != "HessianOperator":  # the base class's checks, for each
            cases += [
                (name, "model", lambda cls=cls: cls(3, "mse", DATA),
                 TypeError, r"`model` must be a Keras model or layer. Received: model=3"),
                (name, "loss", lambda cls=cls: cls(_model(), 3, DATA),
                 TypeError, r"`loss` must be a Keras loss.*Received: loss=3"),
                (name, "data", lambda cls=cls: cls(_model(), "mse", [3]),
                 ValueError, r"Every batch of `data` must be .*Received: batch 0 of type int"),
                (name, "training", lambda cls=cls: cls(_model(), "mse", DATA, training="y"),
                 TypeError, r"`training` must be a bool. Received: training='y'"),
            ]
        cases += [
            (name, "batch_size", lambda cls=cls: cls(_model(), "mse", DATA, batch_size=0),
             ValueError, r"`batch_size` must be an integer >= 1. Received: batch_size=0"),
            (name, "jit_compile", lambda cls=cls: cls(_model(), "mse", DATA, jit_compile="y"),
             TypeError, r"`jit_compile` must be a bool. Received: jit_compile='y'"),
            (name, "check_deterministic",
             lambda cls=cls: cls(_model(), "mse", DATA, check_deterministic=None),
             TypeError, r"`check_deterministic` must be a bool. Received: check_deterministic=None"),
        ]
    return cases


def _arguments(function):
    return [
        p for p in inspect.signature(function).parameters if p not in ("self", "kwargs")
    ]


def test_every_argument_is_accounted_for():
    here = {(name, argument) for name, argument, *_ in _cases()}
    everything = {(name, a) for name, f in CALLABLES.items() for a in _arguments(f)}
    assert not here & set(ELSEWHERE), "checked twice"
    missing = everything - here - set(ELSEWHERE) - set(NOT_CHECKED)
    assert not missing, f"give these a bad value: {sorted(missing)}"
    assert not (here | set(ELSEWHERE) | set(NOT_CHECKED)) - everything, "stale entries"
    assert_tests_exist(ELSEWHERE.values())


def test_every_argument_names_the_bad_value():
    assert_each_raises([
        (f"{name}({argument})", make, error, match)
        for name, argument, make, error, match in _cases()
    ])
