"""Bad configuration of the methods, the tracker and `SharpnessAwareModel`.

Every argument of every registered method (its own, `SharpnessMethod`'s
options and the tracker's), of `EigenvectorTracker`, and of
`SharpnessAwareModel.compile` gets one bad value: the error must be of the
right type and its message must name the argument and show the value. The
arguments are read from the registry and the signatures, so a new method or
argument without a bad value in `BAD` fails here. Constructors only: nothing
is traced. Elsewhere: `SharpnessAwareModel`'s `model`, `method` and
`perturbation_scope` (tests/test_model.py::test_bad_arguments), wrapping a
`SharpnessAwareModel` (::test_wrapping_a_sharpness_aware_model_is_refused), a
method or tracker shared by two models
(tests/test_method_interface.py::test_a_tracker_or_method_serves_one_model).
Keras's own layer arguments (`name`, `dtype`) are Keras's to check.
"""

import inspect

import keras

import keras_eigensam as ks
from keras_eigensam.methods import eigenvector_tracker
from keras_eigensam.methods import registry
from tests import tiny
from tests.bad_values import assert_each_raises

#: One bad value per argument name: `(value, error, pattern)`; the pattern
#: names the argument and shows the value.
BAD = {
    "rho": (-1.0, ValueError, r"`rho` must be a float >= 0.0. Received: rho=-1.0"),
    "tracker": ("yes", TypeError, r"`tracker` must be .*Received: tracker='yes'"),
    "perturbed_variables": (
        None, ValueError, r"`perturbed_variables` must be .*Received: perturbed_variables=None"
    ),
    "interval": (0, ValueError, r"`interval` must be an integer >= 1. Received: interval=0"),
    "refresh_every": (
        0, ValueError, r"`refresh_every` must be an integer >= 1. Received: refresh_every=0"
    ),
    "num_matvecs": (
        0, ValueError, r"`num_matvecs` must be an integer >= 1. Received: num_matvecs=0"
    ),
    "power_iterations": (
        2.5, TypeError, r"`power_iterations` must be an integer. Received: power_iterations=2.5"
    ),
    "which": ("middle", ValueError, r"`which` must be one of .*Received: which='middle'"),
    "hessian_training": (
        "yes", TypeError, r"`hessian_training` must be a bool. Received: hessian_training='yes'"
    ),
    "hvp_mode": ("exact", ValueError, r"`hvp_mode` must be one of .*Received: hvp_mode='exact'"),
    "hessian_batch_size": (
        0, ValueError,
        r"`hessian_batch_size` must be an integer >= 1. Received: hessian_batch_size=0",
    ),
    "hessian_microbatch_size": (
        0, ValueError,
        r"`hessian_microbatch_size` must be an integer >= 1. Received: "
        r"hessian_microbatch_size=0",
    ),
    "curvature": (
        "fisher", ValueError, r"`curvature` must be one of .*Received: curvature='fisher'"
    ),
    "lanczos_basis_dtype": (
        "float16", ValueError,
        r"`lanczos_basis_dtype` must be one of .*Received: lanczos_basis_dtype='float16'",
    ),
    "seed": ("0", TypeError, r"`seed` must be an integer. Received: seed='0'"),
    "track_eigen": ("yes", TypeError, r"`track_eigen` must be a bool. Received: track_eigen='yes'"),
    "eta": (-0.01, ValueError, r"`eta` must be a float >= 0.0. Received: eta=-0.01"),
    "alpha": (-0.1, ValueError, r"`alpha` must be a float >= 0.0. Received: alpha=-0.1"),
    "correction": (
        "paper", ValueError, r"`correction` must be one of .*Received: correction='paper'"
    ),
    "rho_max": (-0.1, ValueError, r"`rho_max` must be a float >= 0.0. Received: rho_max=-0.1"),
    "rho_min": (-0.1, ValueError, r"`rho_min` must be a float >= 0.0. Received: rho_min=-0.1"),
    "lr_max": (-1.0, ValueError, r"`lr_max` must be a float >= 0.0. Received: lr_max=-1.0"),
    "lr_min": ("0", TypeError, r"`lr_min` must be a number. Received: lr_min='0'"),
    "gamma": (1.5, ValueError, r"`gamma` must be a float <= 1.0. Received: gamma=1.5"),
    "decouple": ("yes", TypeError, r"`decouple` must be a bool. Received: decouple='yes'"),
    "sigma": (-1.0, ValueError, r"`sigma` must be a float >= 0.0. Received: sigma=-1.0"),
    "lmbda": (1.5, ValueError, r"`lmbda` must be a float <= 1.0. Received: lmbda=1.5"),
    "k": (0, ValueError, r"`k` must be an integer >= 1. Received: k=0"),
    "beta": (0.0, ValueError, r"`beta` must be a float > 0.0. Received: beta=0.0"),
}

#: Where a method's argument has another domain than `BAD`'s entry.
BAD_FOR = {
    ("xsam", "alpha"): (2.5, ValueError, r"`alpha` must be a float <= 2.0. Received: alpha=2.5"),
    ("esam", "gamma"): (0.0, ValueError, r"`gamma` must be a float > 0.0. Received: gamma=0.0"),
    ("gsam", "rho"): (0.1, TypeError, r"takes no `rho`. Received: rho=0.1"),
}


def _arguments(cls):
    """Every keyword `cls` takes (its own, the base class's, the tracker's)."""
    own = [p for p in inspect.signature(cls).parameters if p != "kwargs"]
    base = [p for p in inspect.signature(ks.SharpnessMethod).parameters if p != "kwargs"]
    return list(dict.fromkeys(own + base + list(eigenvector_tracker.ARGUMENTS)))


def _method_case(name, argument):
    cls = registry.get(name).cls
    value, error, match = BAD_FOR.get((name, argument), BAD[argument])
    kwargs = {argument: value}
    own = inspect.signature(cls).parameters
    if argument in eigenvector_tracker.ARGUMENTS and argument not in own:
        # Tracker arguments alone are refused for asking for no tracker; ask
        # for one, so that the value itself is checked.
        kwargs["tracker"] = True
    return f"{cls.__name__}({argument}={value!r})", lambda: cls(**kwargs), error, match


def test_every_argument_of_every_method():
    arguments = {a for n in registry.names() for a in _arguments(registry.get(n).cls)}
    assert not arguments - set(BAD), f"add a bad value for {sorted(arguments - set(BAD))}"
    assert_each_raises([
        _method_case(name, argument)
        for name in registry.names()
        for argument in _arguments(registry.get(name).cls)
    ])


def test_every_argument_of_the_tracker():
    arguments = list(inspect.signature(ks.EigenvectorTracker).parameters)
    assert arguments == list(eigenvector_tracker.ARGUMENTS)
    cases = []
    for argument in arguments:
        value, error, match = BAD[argument]
        cases.append((
            f"EigenvectorTracker({argument}={value!r})",
            lambda kwargs={argument: value}: ks.EigenvectorTracker(**kwargs),
            error,
            match,
        ))
    cases.append((
        "both names of num_matvecs",
        lambda: ks.EigenvectorTracker(num_matvecs=3, power_iterations=2),
        ValueError,
        r"`num_matvecs` or its former name `power_iterations`, not both. "
        r"Received: num_matvecs=3, power_iterations=2",
    ))
    assert_each_raises(cases)


def test_combinations_of_arguments():
    cases = [
        (
            "GSAM(rho_min > rho_max)",
            lambda: ks.GSAM(rho_max=0.05, rho_min=0.1),
            ValueError,
            r"`rho_min` must not exceed `rho_max`.*Received: rho_min=0.1, rho_max=0.05",
        ),
        (
            "tracker object and tracker arguments",
            lambda: ks.XSAM(tracker=ks.EigenvectorTracker(), num_matvecs=3),
            ValueError,
            r"not both. Received: tracker=<.*EigenvectorTracker.*> and num_matvecs=3",
        ),
        (
            "a bfloat16 Lanczos basis with power iteration",
            lambda: ks.EigenSAM(which="magnitude", lanczos_basis_dtype="bfloat16"),
            ValueError,
            r"power iteration \(which='magnitude'\) keeps none. Received: "
            r"which='magnitude', lanczos_basis_dtype='bfloat16'",
        ),
        (
            "tracker arguments without a tracker",
            lambda: ks.ASAM(refresh_every=10),
            ValueError,
            r"pass `tracker=True`.*Received: tracker=None, refresh_every=10",
        ),
    ]
    cases += [
        (
            f"{entry.cls.__name__}(tracker=False)",
            lambda cls=entry.cls: cls(tracker=False),
            ValueError,
            r"needs the top eigenvector.*Received: tracker=False",
        )
        for entry in registry.entries()
        if entry.cls.requires_tracker
    ]
    assert_each_raises(cases)


def test_model_and_compile_arguments():
    def compiled(**kwargs):
        model = ks.SharpnessAwareModel(tiny.mlp())
        model.compile(**{"optimizer": "sgd", "loss": "mse", **kwargs})

    cases = [
        (
            "method is a class",
            lambda: ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM),
            TypeError,
            r"`method` must be a keras_eigensam method object.*Received: method=<class "
            r"'keras_eigensam.methods.sam.SAM'>",
        ),
        (
            "method is a tracker",
            lambda: ks.SharpnessAwareModel(tiny.mlp(), method=ks.EigenvectorTracker()),
            TypeError,
            r"`method` must be .*Received: method=<.*EigenvectorTracker.*> \(of type "
            r"EigenvectorTracker\)",
        ),
        (
            "compile(steps_per_execution=0)",
            lambda: compiled(steps_per_execution=0),
            ValueError,
            r"`steps_per_execution` must be an integer >= 1. Received: steps_per_execution=0",
        ),
        (
            "compile(steps_per_execution='2')",
            lambda: compiled(steps_per_execution="2"),
            TypeError,
            r"`steps_per_execution` must be an integer. Received: steps_per_execution='2'",
        ),
        (
            "compile(jit_compile='yes')",
            lambda: compiled(jit_compile="yes"),
            TypeError,
            r"`jit_compile` must be True, False or 'auto'. Received: jit_compile='yes'",
        ),
        (
            "compile(run_eagerly=1)",
            lambda: compiled(run_eagerly=1),
            TypeError,
            r"`run_eagerly` must be a bool. Received: run_eagerly=1",
        ),
        (
            "compile(auto_scale_loss='no')",
            lambda: compiled(auto_scale_loss="no"),
            TypeError,
            r"`auto_scale_loss` must be a bool. Received: auto_scale_loss='no'",
        ),
        # Keras's own check, named by Keras.
        (
            "compile(optimizer=3)",
            lambda: compiled(optimizer=3),
            ValueError,
            r"Could not interpret optimizer identifier: 3",
        ),
    ]
    assert_each_raises(cases)
    # The checks pass what Keras takes, positionally too.
    model = ks.SharpnessAwareModel(tiny.mlp())
    model.compile(keras.optimizers.SGD(0.1), "mse", None, None, None, False, 2, "auto", True)
    assert model.steps_per_execution == 2
