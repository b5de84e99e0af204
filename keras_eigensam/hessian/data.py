"""The data a curvature operator is defined on: kept in memory or streamed.

`read_batches` reads a probe set once into batches of tensors;
`CurvatureData` turns what a user passes as `data` into the batches one
pass over the data set reads, and guarantees that every pass reads the same
batches: an operator must be the same linear map at every product.
"""

import keras
import numpy as np
from keras import ops

from keras_eigensam import validation
from keras_eigensam.backend import replicas


def num_examples(x):
    """Number of examples in `x` (a tensor or a structure of tensors)."""
    return int(keras.tree.flatten(x)[0].shape[0])


def read_batches(data):
    """Reads probe `data` once into a list of `{"x", "y"[, "sample_weight"]}`.

    `data` is one batch `(x, y)` / `(x, y, sample_weight)` (a tuple), or a
    `tf.data.Dataset` or other iterable of such batches (batches this
    function returned are kept as they are). The batches are kept as
    tensors, so every later measurement sees the same examples.

    Args:
        data: The probe set, as above.

    Returns:
        A list of dicts with tensors under `"x"`, `"y"` and, when given,
        `"sample_weight"`.

    Raises:
        TypeError: if `data` is none of these, or already distributed.
        ValueError: if a batch is malformed, has no targets or no examples,
            or there is no batch.

    Example:

    ```python
    batches = read_batches((x[:128], y[:128]))
    ```
    """
    if replicas.is_distributed_dataset(data):
        raise TypeError(
            "`data` must not be distributed already: pass the undistributed "
            "`tf.data.Dataset`; every batch is split over the replicas where "
            "needed."
        )
    if isinstance(data, tuple):
        raw_batches = [data]
    elif hasattr(data, "__iter__") and not isinstance(data, (dict, str, np.ndarray)):
        raw_batches = data
    else:
        raise TypeError(
            "`data` must be one batch `(x, y)` or `(x, y, sample_weight)` (a "
            "tuple), or a `tf.data.Dataset` or iterable of such batches. "
            f"Received: data of type {type(data).__name__}"
        )
    batches = [read_batch(raw, index) for index, raw in enumerate(raw_batches)]
    if not batches:
        raise ValueError(
            "`data` must not be empty: it must contain at least one batch. "
            f"Received: a {type(data).__name__} with 0 batches"
        )
    return batches


def read_batch(raw, index=0):
    """One batch `(x, y)` / `(x, y, sample_weight)` as a dict of tensors.

    A dict with `"x"` and `"y"` (a batch read already) is returned as it is.

    Raises:
        ValueError: naming batch `index`, if the batch is malformed, has no
            targets or no examples.
    """
    if isinstance(raw, dict) and {"x", "y"} <= set(raw):
        return raw
    if not isinstance(raw, (tuple, list)) or len(raw) not in (2, 3):
        length = f" with {len(raw)} elements" if isinstance(raw, (tuple, list)) else ""
        raise ValueError(
            "Every batch of `data` must be `(x, y)` or `(x, y, "
            f"sample_weight)`. Received: batch {index} of type "
            f"{type(raw).__name__}{length}. Pass a single batch as a "
            "tuple, not a list."
        )
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(raw))
    if y is None:
        raise ValueError(
            f"Every batch of `data` needs targets `y`. Received: batch "
            f"{index} with y=None"
        )
    batch = {
        "x": keras.tree.map_structure(ops.convert_to_tensor, x),
        "y": keras.tree.map_structure(ops.convert_to_tensor, y),
    }
    if sample_weight is not None:
        batch["sample_weight"] = ops.convert_to_tensor(sample_weight)
    if num_examples(batch["x"]) == 0:
        raise ValueError(
            "`data` must not be empty: every batch needs at least one "
            f"example. Received: batch {index} of `data` with 0 examples"
        )
    return batch


class CurvatureData:
    """The batches of a data set, the same at every pass.

    `data` is one of:

    - one batch `(x, y)` or `(x, y, sample_weight)` (a tuple of arrays or
      tensors); with `batch_size` set, the arrays are split into batches of
      `batch_size` examples, the last one partial. Kept in memory.
    - a list of such batches, or an iterator (read once). Kept in memory.
    - a `tf.data.Dataset` or other re-iterable collection of batches:
      *streamed*, read anew at every pass, so only one batch is in memory at
      a time. It must yield the same batches at every pass; this is checked
      at construction by reading it twice and comparing a fingerprint of
      every batch (its size and the sums of `x`, `x²` and `y` in float64),
      and a data set that reshuffles or augments between passes is refused
      (as curvlinops does), since the products would not be of one matrix.
      Build it without `shuffle` (or with a fixed seed and
      `reshuffle_each_iteration=False`) and without random augmentation.

    Args:
        data: As above.
        batch_size: Split an in-memory `(x, y[, sample_weight])` tuple into
            batches of this many examples. `None` keeps it one batch.
            Defaults to `None`.
        check_deterministic: Whether to check that a streamed data set
            yields the same batches twice (one extra pass over the data at
            construction). Defaults to `True`.

    Attributes:
        num_examples: Number of examples in one pass.
        num_batches: Number of batches in one pass.
        streamed: Whether every pass reads `data` anew.

    Raises:
        TypeError: if `data` is none of the above, or already distributed.
        ValueError: if a batch is malformed, `data` is empty, `batch_size`
            is given for anything but a tuple of arrays, or a streamed data
            set yields different batches at two passes.

    Example:

    ```python
    data = CurvatureData((x_train, y_train), batch_size=256)
    for batch in data:  # dicts with "x", "y" (and "sample_weight")
        ...
    ```
    """

    def __init__(self, data, batch_size=None, check_deterministic=True):
        check_deterministic = validation.check_bool("check_deterministic", check_deterministic)
        if replicas.is_distributed_dataset(data):
            raise TypeError(
                "`data` must not be distributed already: pass the undistributed "
                "`tf.data.Dataset`; every batch is split over the replicas "
                "where needed."
            )
        self._source = None
        self._batches = None
        if batch_size is not None:
            batch_size = validation.check_int("batch_size", batch_size, minimum=1)
            if not isinstance(data, tuple):
                raise ValueError(
                    "`batch_size` splits in-memory arrays `(x, y[, "
                    "sample_weight])` (a tuple); a data set is batched already. "
                    f"Received: batch_size={batch_size} with data of type "
                    f"{type(data).__name__}"
                )
            self._batches = _split(read_batch(data), batch_size)
        elif isinstance(data, (tuple, list)) or _is_iterator(data):
            self._batches = read_batches(data)
        elif hasattr(data, "__iter__") and not isinstance(data, (dict, str, np.ndarray)):
            self._source = data
        else:
            read_batches(data)  # raises its TypeError
        self.streamed = self._source is not None
        fingerprints = [_fingerprint(batch) for batch in self]
        if not fingerprints:
            raise ValueError(
                "`data` must not be empty: it must contain at least one batch. "
                f"Received: a {type(data).__name__} with 0 batches"
            )
        if self.streamed and check_deterministic:
            again = [_fingerprint(batch) for batch in self]
            if len(again) != len(fingerprints) or not all(
                np.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(fingerprints, again)
            ):
                raise ValueError(
                    "`data` must yield the same batches at every pass, but two "
                    "passes differ (a shuffled or augmented data set?): the "
                    "products would not be of one matrix. Build the data set "
                    "without `shuffle` and random augmentation, call "
                    "`.cache()` after a fixed shuffle, or pass "
                    "`check_deterministic=False` if the batches differ only by "
                    "round-off. Received: a "
                    f"{type(data).__name__} whose batch fingerprints differ "
                    "between two passes"
                )
        self.num_batches = len(fingerprints)
        self.num_examples = int(sum(f[0] for f in fingerprints))

    def __iter__(self):
        """Yields the batches of one pass, as dicts of tensors."""
        if self._source is None:
            yield from self._batches
            return
        for index, raw in enumerate(self._source):
            yield read_batch(raw, index)

    def first(self):
        """The first batch (to build a model)."""
        return next(iter(self))


def _is_iterator(data):
    return hasattr(data, "__next__") and iter(data) is data


def _split(batch, batch_size):
    n = num_examples(batch["x"])
    batches = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batches.append(
            {key: _slice(value, start, stop) for key, value in batch.items()}
        )
    return batches


def _slice(structure, start, stop):
    return keras.tree.map_structure(lambda t: t[start:stop], structure)


def _fingerprint(batch):
    """`[n, Σx, Σx², Σy, Σy²]` in float64, over every array of the batch."""
    xs = [np.asarray(t, dtype=np.float64) for t in _leaves(batch["x"])]
    ys = [np.asarray(t, dtype=np.float64) for t in _leaves(batch["y"])]
    ws = [np.asarray(batch["sample_weight"], dtype=np.float64)] if "sample_weight" in batch else []
    return np.array(
        [num_examples(batch["x"])]
        + [sum(float(a.sum()) for a in xs), sum(float((a * a).sum()) for a in xs)]
        + [sum(float(a.sum()) for a in ys), sum(float((a * a).sum()) for a in ys)]
        + [sum(float(a.sum()) for a in ws)]
    )


def _leaves(structure):
    return keras.tree.flatten(structure)
