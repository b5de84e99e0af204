"""Bad configuration of the callbacks: every constructor argument.

Every argument of `HessianEigenvalueMonitor`, `SharpnessMonitor` and
`EigenAlignmentLogger` is either given one bad value here (the error must
have the right type and name the argument and the value received, at
construction, not at the first measurement) or listed in `ELSEWHERE` with
the test that does it; `test_every_argument_is_accounted_for` keeps the
lists complete. No model is built.
"""

import inspect

from keras_eigensam import callbacks
from tests import tiny
from tests.bad_values import assert_each_raises
from tests.bad_values import assert_tests_exist

CLASSES = ("HessianEigenvalueMonitor", "SharpnessMonitor", "EigenAlignmentLogger")

_HESSIAN_BAD = "callbacks/test_hessian_eigenvalue_monitor.py::test_bad_arguments"
_HESSIAN_CHOICES = (
    "callbacks/test_hessian_eigenvalue_monitor.py::test_bad_curvature_which_and_trace_method"
)
_SCHEDULES = "callbacks/test_base.py::test_bad_schedules"

#: `(class, argument)` checked by another test.
ELSEWHERE = {
    ("HessianEigenvalueMonitor", "data"): "callbacks/test_base.py::test_empty_probe_data",
    ("SharpnessMonitor", "data"): "callbacks/test_base.py::test_probe_data_of_wrong_type",
    **{("HessianEigenvalueMonitor", a): _SCHEDULES for a in ("every", "every_n_epochs")},
    **{("SharpnessMonitor", a): _SCHEDULES for a in ("every", "every_n_epochs")},
    **{
        ("HessianEigenvalueMonitor", a): _HESSIAN_BAD
        for a in ("top_k", "method", "hvp_mode", "num_matvecs", "plot_density", "trace")
    },
    **{
        ("HessianEigenvalueMonitor", a): _HESSIAN_CHOICES
        for a in ("curvature", "which", "trace_method", "trace_matvecs")
    },
    **{
        ("SharpnessMonitor", a): "callbacks/test_sharpness_monitor.py::test_bad_arguments"
        for a in ("rho", "measures", "num_samples")
    },
    ("EigenAlignmentLogger", "every"): (
        "callbacks/test_eigen_alignment_logger.py::test_alignment_logger_schedule_arguments"
    ),
}


def _cases():
    data = tiny.data()

    def hessian(**kwargs):
        return lambda: callbacks.HessianEigenvalueMonitor(data, **kwargs)

    def sharpness(**kwargs):
        return lambda: callbacks.SharpnessMonitor(data, **kwargs)

    loss = (TypeError, r"`loss` must be a Keras loss, the name of one, or a callable "
            r"`loss\(y_true, y_pred\)`. Received: loss=3")
    return [
        ("HessianEigenvalueMonitor", "density", hessian(density="yes"),
         TypeError, r"`density` must be a bool. Received: density='yes'"),
        ("HessianEigenvalueMonitor", "training", hessian(training=None),
         TypeError, r"`training` must be a bool. Received: training=None"),
        ("HessianEigenvalueMonitor", "loss", hessian(loss=3), *loss),
        ("HessianEigenvalueMonitor", "tol", hessian(tol=0.0),
         ValueError, r"`tol` must be a float > 0.0. Received: tol=0.0"),
        ("HessianEigenvalueMonitor", "density_matvecs", hessian(density_matvecs=3),
         ValueError, r"`density_matvecs` must be an integer >= 4. Received: density_matvecs=3"),
        ("HessianEigenvalueMonitor", "density_probes", hessian(density_probes=0),
         ValueError, r"`density_probes` must be an integer >= 1. Received: density_probes=0"),
        ("HessianEigenvalueMonitor", "batch_size", hessian(batch_size=0),
         ValueError, r"`batch_size` must be an integer >= 1. Received: batch_size=0"),
        ("HessianEigenvalueMonitor", "density_dir", hessian(density=True, density_dir=3),
         TypeError, r"`density_dir` must be a path .*Received: density_dir=3"),
        ("HessianEigenvalueMonitor", "log_dir", hessian(log_dir=["logs"]),
         TypeError, r"`log_dir` must be a path .*Received: log_dir=\['logs'\]"),
        ("HessianEigenvalueMonitor", "seed", hessian(seed=-1),
         ValueError, r"`seed` must be an integer >= 0. Received: seed=-1"),
        ("HessianEigenvalueMonitor", "every_n_steps", hessian(every_n_steps=0),
         ValueError, r"`every_n_steps` must be an integer >= 1. Received: every_n_steps=0"),
        ("SharpnessMonitor", "ascent_steps", sharpness(ascent_steps=0),
         ValueError, r"`ascent_steps` must be an integer >= 1. Received: ascent_steps=0"),
        ("SharpnessMonitor", "step_size", sharpness(step_size=-1.0),
         ValueError, r"`step_size` must be a float > 0.0. Received: step_size=-1.0"),
        ("SharpnessMonitor", "loss", sharpness(loss="nope"),
         ValueError, r"`loss` must be a Keras loss.*Received: loss='nope'"),
        ("SharpnessMonitor", "log_dir", sharpness(log_dir=3),
         TypeError, r"`log_dir` must be a path .*Received: log_dir=3"),
        ("SharpnessMonitor", "seed", sharpness(seed="0"),
         TypeError, r"`seed` must be an integer. Received: seed='0'"),
        ("EigenAlignmentLogger", "log_dir", lambda: callbacks.EigenAlignmentLogger(log_dir=3),
         TypeError, r"`log_dir` must be a path .*Received: log_dir=3"),
        ("EigenAlignmentLogger", "every_n_steps",
         lambda: callbacks.EigenAlignmentLogger(every_n_steps=0),
         ValueError, r"`every_n_steps` must be an integer >= 1. Received: every_n_steps=0"),
    ]


def test_every_argument_is_accounted_for():
    here = {(name, argument) for name, argument, *_ in _cases()}
    everything = {
        (name, argument)
        for name in CLASSES
        for argument in inspect.signature(getattr(callbacks, name)).parameters
    }
    assert not here & set(ELSEWHERE), "checked twice"
    assert not everything - here - set(ELSEWHERE), sorted(everything - here - set(ELSEWHERE))
    assert not (here | set(ELSEWHERE)) - everything, "stale entries"
    assert_tests_exist(ELSEWHERE.values())


def test_every_argument_names_the_bad_value():
    assert_each_raises([
        (f"{name}({argument})", make, error, match)
        for name, argument, make, error, match in _cases()
    ])
