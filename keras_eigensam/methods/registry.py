"""The list of sharpness-aware methods, by the names the scripts use.

Adding a method is its module, its tests and one `MethodEntry` in `_ENTRIES`:
the training harness (`keras_eigensam.experiments`), the scripts' `--method`
choices and help, `compare.py`, `benchmark.py` and the README's method table
all read this list. Hyperparameters and their defaults come from the class's
constructor signature, never restated here.

Example:

```python
from keras_eigensam.methods import registry

registry.names()                          # ('sam', 'asam', 'eigensam', 'xsam', 'gsam', ...)
registry.defaults("asam")["rho"]          # 0.5, from ASAM.__init__
method = registry.create("eigensam", alpha=0.1, refresh_every=10)
```
"""

import dataclasses
import inspect

from keras_eigensam.methods import eigenvector_tracker
from keras_eigensam.methods.asam import ASAM
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.eigen_sam import EigenSAM
from keras_eigensam.methods.eigenvector_tracker import EigenvectorTracker
from keras_eigensam.methods.esam import ESAM
from keras_eigensam.methods.friendly_sam import FriendlySAM
from keras_eigensam.methods.gsam import GSAM
from keras_eigensam.methods.look_sam import LookSAM
from keras_eigensam.methods.momentum_sam import MomentumSAM
from keras_eigensam.methods.sam import SAM
from keras_eigensam.methods.wsam import WSAM
from keras_eigensam.methods.x_sam import XSAM

_REFRESH = "`num_matvecs` HVPs every `refresh_every` steps"


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Attributes:
        name: The lowercase name scripts and configs use (`--method=sam`).
        cls: The `SharpnessMethod` subclass.
        perturbation: The rule for the perturbation `e` (markdown).
        descent: The gradient handed to the base optimizer (markdown).
        passes: Cost per step in forward-backward passes (markdown).
        reference: Markdown link to the paper.
        summary: A clause for the scripts' `--method` help (no class name,
            no final period).
    """

    name: str
    cls: type
    perturbation: str
    descent: str
    passes: str
    reference: str
    summary: str


_ENTRIES = (
    MethodEntry(
        name="sam",
        cls=SAM,
        perturbation="`ρ g/‖g‖`",
        descent="`∇L(w+e)`",
        passes=f"2 (+ {_REFRESH} with a tracker)",
        reference="[Foret et al., 2021](https://arxiv.org/abs/2010.01412)",
        summary="descend from the worst point of a ρ-ball along the gradient",
    ),
    MethodEntry(
        name="asam",
        cls=ASAM,
        perturbation="`ρ T²g/‖Tg‖`, `T = \\|w\\|+η`",
        descent="`∇L(w+e)`",
        passes="2",
        reference="[Kwon et al., 2021](https://arxiv.org/abs/2102.11600)",
        summary="SAM in weight-scaled coordinates (scale-invariant sharpness)",
    ),
    MethodEntry(
        name="eigensam",
        cls=EigenSAM,
        perturbation="`ρ (ĝ + α sign(<g,v>) v⊥)`",
        descent="`∇L(w+e)`",
        passes=f"2 + {_REFRESH}",
        reference="[Luo et al., 2024](https://arxiv.org/abs/2501.12666)",
        summary="SAM's perturbation tilted toward the top Hessian eigenvector",
    ),
    MethodEntry(
        name="xsam",
        cls=XSAM,
        perturbation="`ρ ĝ`",
        descent="`ĝ_a − α sign(c) c v` (`reference`) or `ĝ_a − α c v` (`projection`)",
        passes=f"2 + {_REFRESH}",
        reference="[Duan, Chen & Guan, 2026](https://arxiv.org/abs/2601.10251)",
        summary="SAM's descent gradient corrected along the top eigenvector",
    ),
    MethodEntry(
        name="gsam",
        cls=GSAM,
        perturbation="`ρ_t ĝ`, `ρ_t` linear in the learning rate",
        descent="`g_s − α g⊥`, `g⊥ = g − <g,ĝ_s> ĝ_s`",
        passes="2",
        reference="[Zhuang et al., 2022](https://arxiv.org/abs/2203.08065)",
        summary="SAM plus an ascent orthogonal to the perturbed gradient (surrogate gap)",
    ),
    MethodEntry(
        name="wsam",
        cls=WSAM,
        perturbation="`ρ ĝ`",
        descent="`a g_s + (1−a) g`, `a = γ/(1−γ)` (or `g`, then `−lr·a(g_s − g)` decoupled)",
        passes="2",
        reference="[Yue et al., 2023](https://arxiv.org/abs/2305.15817)",
        summary="the loss plus a weighted sharpness term",
    ),
    MethodEntry(
        name="friendlysam",
        cls=FriendlySAM,
        perturbation="`ρ d/‖d‖`, `d = g − σ m`, `m` an EMA of `g`",
        descent="`∇L(w+e)`",
        passes="2",
        reference="[Li et al., 2024](https://arxiv.org/abs/2403.12350)",
        summary="SAM's perturbation without the full-gradient component (an EMA)",
    ),
    MethodEntry(
        name="looksam",
        cls=LookSAM,
        perturbation="`ρ ĝ` every `k` steps",
        descent="`g_s` every `k` steps, else `g + α (‖g‖/‖g_v‖) g_v`",
        passes="`(k+1)/k` (1.2 at `k=5`)",
        reference="[Liu et al., 2022](https://arxiv.org/abs/2203.02714)",
        summary="a SAM step every k steps, its orthogonal direction reused in between",
    ),
    MethodEntry(
        name="esam",
        cls=ESAM,
        perturbation="`ρ (m⊙g)/(β‖g‖)`, `m ~ Bernoulli(β)`",
        descent="`∇` of the mean loss of the `γN` examples whose loss rose most",
        passes="1 + a forward + `γ` (≈1.8 at `γ=0.5`)",
        reference="[Du et al., 2022](https://arxiv.org/abs/2110.03141)",
        summary="SAM with random weight perturbation and the sharpest examples only",
    ),
    MethodEntry(
        name="momentumsam",
        cls=MomentumSAM,
        perturbation="`ρ b/‖b‖`, `b` the optimizer's momentum",
        descent="`∇L(w+e)` (the only pass)",
        passes="1",
        reference="[Becker et al., 2024](https://arxiv.org/abs/2401.12033)",
        summary="SAM along the optimizer's momentum, in one pass",
    ),
)
_BY_NAME = {entry.name: entry for entry in _ENTRIES}


def entries():
    """Every `MethodEntry`, in registration order."""
    return _ENTRIES


def names():
    """The registered names, in registration order."""
    return tuple(_BY_NAME)


def get(name):
    """The `MethodEntry` called `name`.

    Raises:
        ValueError: if no method is registered under `name`.
    """
    if name not in _BY_NAME:
        raise ValueError(
            f"`method` must be one of the registered methods {list(_BY_NAME)}. "
            f"Received: method={name!r}"
        )
    return _BY_NAME[name]


def _parameters(callable_):
    """The named parameters of `callable_` (not `**kwargs`)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    signature = inspect.signature(callable_)
    return [p for p in signature.parameters.values() if p.kind in kinds]


def _signature_defaults(callable_):
    return {
        p.name: p.default for p in _parameters(callable_) if p.default is not p.empty
    }


def tracker_defaults(name):
    """The eigenvector tracker's arguments and defaults for method `name`.

    `EigenvectorTracker`'s own defaults, with the method's `refresh_every`
    (Eigen-SAM 100, X-SAM 5). Every method takes these arguments (with
    `tracker=True` where the method does not need the eigenvector).
    """
    # The effective defaults (a default tracker's configuration), in the
    # order of the tracker's signature.
    return EigenvectorTracker(
        refresh_every=get(name).cls.default_refresh_every
    ).get_config()


def defaults(name):
    """`{argument: default}` of the method's constructor, in signature order.

    Methods that always track the top eigenvector (Eigen-SAM, X-SAM) also
    list the tracker's arguments (`tracker_defaults`).
    """
    values = _signature_defaults(get(name).cls)
    if get(name).cls.requires_tracker:
        values.update(tracker_defaults(name))
    return values


def tracks_eigenvector(name, arguments):
    """Whether method `name` built with `arguments` tracks the eigenvector."""
    cls = get(name).cls
    return bool(
        cls.requires_tracker
        or arguments.get("tracker")
        or arguments.get("track_eigen")
    )


def _accepted(name):
    """Every keyword the method's constructor takes."""
    cls = get(name).cls
    named = {p.name for p in _parameters(cls)}
    # `power_iterations` (the former name of `num_matvecs`) is still taken
    # by the constructors but not offered.
    tracker = set(eigenvector_tracker.ARGUMENTS) - {"power_iterations"}
    return named | tracker | {"tracker"} | set(option_defaults(name))


def option_defaults(name):
    """The options every method's base class takes (`perturbed_variables`,
    `interval` where the method supports it), with their defaults."""
    options = {
        key: value
        for key, value in _signature_defaults(SharpnessMethod).items()
        if key not in ("rho", "tracker")
    }
    if not get(name).cls.supports_interval:
        options.pop("interval")
    return options


def check_arguments(name, arguments):
    """Raises if `arguments` holds a key the method's constructor does not take.

    Raises:
        ValueError: naming the unknown keys and the accepted ones.
    """
    split_arguments([name], arguments)


def split_arguments(names, arguments):
    """`{name: the part of arguments its constructor takes}` for each name.

    Lets one set of arguments serve several methods (a comparison's): each
    gets the keys it takes.

    Raises:
        ValueError: if none of the methods takes some key, naming the keys
            and the ones they take.
    """
    accepted = {name: _accepted(name) for name in names}
    everyone = sorted(set().union(*accepted.values()))
    unknown = sorted(set(arguments) - set(everyone))
    if unknown:
        keys = ", ".join(f"`{key}`" for key in unknown)
        if len(names) == 1:
            who = (
                f"Method {names[0]!r} ({get(names[0]).cls.__name__}) takes no "
                f"argument {keys}; its arguments are"
            )
        else:
            who = f"No method of {list(names)} takes {keys}; they take"
        received = ", ".join(f"{key}={arguments[key]!r}" for key in unknown)
        raise ValueError(f"{who} {everyone}. Received: {received}")
    return {
        name: {k: v for k, v in arguments.items() if k in accepted[name]}
        for name in names
    }


def create(name, **kwargs):
    """A new instance of the method called `name`, built with `kwargs`.

    Raises:
        ValueError: if `name` is not registered, a keyword is not a
            constructor argument, or a value is out of range.
    """
    check_arguments(name, kwargs)
    return get(name).cls(**kwargs)


def markdown_table():
    """The README's method table (and a line for the arguments all share)."""
    shared = _shared_defaults()
    lines = [
        "| method | perturbation `e` | descent gradient | passes per step "
        "| defaults | reference |",
        "|---|---|---|---|---|---|",
    ]
    tracker_only = set(eigenvector_tracker.ARGUMENTS) - {"refresh_every", "power_iterations"}
    for entry in _ENTRIES:
        own = {
            k: v
            for k, v in defaults(entry.name).items()
            if k not in shared and k not in tracker_only
        }
        cells = [
            f"`{entry.cls.__name__}` (`{entry.name}`)",
            entry.perturbation,
            entry.descent,
            entry.passes,
            _arguments_markdown(own),
            entry.reference,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if shared:
        lines += ["", f"Every method also takes {_arguments_markdown(shared)}."]
    without_interval = [
        f"`{entry.cls.__name__}`" for entry in _ENTRIES if not entry.cls.supports_interval
    ]
    lines += [
        "",
        "Every method takes `perturbed_variables='all'` (`'normalization'` "
        "perturbs only normalisation layers, SAM-ON; or a callable over "
        "variables) and `interval=1` (the second pass every `interval` steps; "
        f"not {' and '.join(without_interval)}, which schedule their own passes).",
    ]
    tracker = {
        k: v for k, v in tracker_defaults(names()[0]).items() if k in tracker_only
    }
    lines += [
        "",
        "Every method takes the eigenvector tracker's arguments "
        f"({_arguments_markdown(tracker)}; see `EigenvectorTracker`), or "
        "`tracker=EigenvectorTracker(...)`; methods that do not need the "
        "eigenvector track it with `tracker=True`.",
    ]
    return "\n".join(lines) + "\n"


def _shared_defaults():
    """The arguments every method takes with the same default."""
    first, *others = (defaults(name) for name in names())
    return {
        key: value
        for key, value in first.items()
        if all(key in other and other[key] == value for other in others)
    }


def _arguments_markdown(arguments):
    return ", ".join(f"`{key}={value!r}`" for key, value in arguments.items()) or "–"
