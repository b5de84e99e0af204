"""Vector algebra over lists of tensors (one entry per trainable variable).

Every SAM-family rule is written over the flattened vector of all trainable
weights. These helpers treat a list of tensors as that vector without ever
concatenating it, so each rule stays a few lines of `keras.ops` and works for
any model. All functions are pure: they read tensors and return new ones, so
they can be used inside `tf.function`, under `jit_compile=True` and inside a
replica context.
"""

from keras import backend
from keras import ops

#: Added to norms before dividing, as in the SAM reference code.
EPSILON = 1e-12


def inner(xs, ys):
    """Global inner product `<x, y>` summed over all tensors in the lists."""
    return ops.sum(
        ops.stack([ops.sum(ops.multiply(x, y)) for x, y in zip(xs, ys)])
    )


def global_norm(xs):
    """Global L2 norm `‖x‖` over all tensors in the list, overflow-safe.

    `sqrt(Σ x²)`, one pass over the tensors, whenever that sum of squares is
    finite and not tiny (every vector a training step meets); otherwise
    (squaring overflowed to inf for entries above ~1e19 in float32, or
    underflowed for entries below ~1e-19, or the vector is zero) the scaled
    form `m · ‖x / m‖` with `m = max|x|` (LAPACK's `nrm2` idea), under a
    conditional, so a vector of finite entries has a finite norm, non-zero
    unless the vector is zero, however large or small its entries. A vector
    with a NaN or inf entry has a non-finite norm.
    """
    dtype = backend.standardize_dtype(xs[0].dtype)
    # Accumulate in float32 at least: a float16 sum of squares overflows past
    # ~65k entries.
    compute = "float64" if dtype == "float64" else "float32"
    xs = [ops.cast(x, compute) for x in xs]
    squares = inner(xs, xs)
    # Above this, the squares lost to underflow (each below the smallest
    # normal number, ~1e-38 / ~1e-308) change the sum by less than 1e-10
    # relative even for 1e9 entries.
    tiny = 1e-200 if compute == "float64" else 1e-20
    fast = ops.logical_and(ops.isfinite(squares), squares > tiny)
    norm = ops.cond(fast, lambda: ops.sqrt(squares), lambda: _scaled_norm(xs))
    return ops.cast(norm, dtype)


def _scaled_norm(xs):
    """`m · ‖x / m‖` with `m = max|x|`: exact scale for any finite entries."""
    largest = ops.max(ops.stack([ops.max(ops.abs(x)) for x in xs]))
    usable = ops.logical_and(largest > 0, ops.isfinite(largest))
    safe = ops.where(usable, largest, ops.ones_like(largest))
    # Divide: 1/m overflows for a subnormal m.
    scaled = [ops.divide(x, safe) for x in xs]
    return safe * ops.sqrt(inner(scaled, scaled))


def scale(xs, alpha):
    """`alpha · x`, with `alpha` a scalar (Python number or tensor)."""
    return [ops.multiply(x, ops.cast(alpha, x.dtype)) for x in xs]


def add(xs, ys):
    """`x + y`."""
    return [ops.add(x, y) for x, y in zip(xs, ys)]


def add_scaled(xs, ys, alpha):
    """`x + alpha · y` (an axpy)."""
    return [ops.add(x, ops.multiply(ops.cast(alpha, y.dtype), y)) for x, y in zip(xs, ys)]


def multiply(xs, ys):
    """Elementwise `x ⊙ y`."""
    return [ops.multiply(x, y) for x, y in zip(xs, ys)]


def normalize(xs, epsilon=EPSILON):
    """`x / (‖x‖ + epsilon)`; returns `(x̂, ‖x‖)`."""
    norm = global_norm(xs)
    return scale(xs, 1.0 / (norm + epsilon)), norm


def cosine(xs, ys, epsilon=EPSILON):
    """Cosine of the angle between `x` and `y`: `<x, y> / (‖x‖‖y‖ + epsilon)`."""
    return inner(xs, ys) / (global_norm(xs) * global_norm(ys) + epsilon)


def all_finite(xs):
    """Scalar boolean tensor: every entry of every tensor is finite."""
    return ops.all(ops.stack([ops.all(ops.isfinite(x)) for x in xs]))
