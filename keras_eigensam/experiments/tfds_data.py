"""The experiments' TensorFlow Datasets: reading them, preparing them on request.

`read` reads a prepared split from `data_dir`. It downloads nothing unless
asked to (`download=True`): a download started from inside a training job is
slow, fails on machines without network, and would otherwise race when
several workers start it at once. Two ways to get the data:

- `download=True` (the scripts' `--download`): `prepare` downloads and
  prepares the dataset once. Processes and threads that start together
  (e.g. the workers of a multi-worker run) take an exclusive lock file,
  `<data_dir>/<name>.lock`; the first prepares, the others wait and then
  find the dataset prepared. The lock is an `fcntl` lock on a local
  `data_dir`; for a remote one (`gs://…`) it lives in the local temporary
  directory, so it serialises the processes of one machine only. (Without
  `fcntl`, on Windows, there is no lock.)
- `tfds build NAME --data_dir=DIR` once on a machine with network access,
  then `data_dir=DIR`.

`data_dir=None` is TFDS's default, `~/tensorflow_datasets` (or
`$TFDS_DATA_DIR`).
"""

import contextlib
import hashlib
import os
import tempfile

import tensorflow as tf
from absl import logging

from keras_eigensam import install
from keras_eigensam import validation

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

NAMES = ("cifar10", "cifar100", "fashion_mnist", "svhn_cropped")


class DatasetUnavailableError(ValueError):
    """Raised when a TFDS dataset is not prepared in `data_dir` (and not downloaded)."""


def read(name, split, *, data_dir=None, training=False, seed=0, download=False):
    """A split's undecorated `(uint8 image, int32 label)` examples, and their count.

    Args:
        name: One of `NAMES`.
        split: A TFDS split string, e.g. `"train"` or `"train[:45000]"`.
        data_dir: Directory of the prepared datasets; `None` is TFDS's
            default. Defaults to `None`.
        training: Shuffle the files (with `seed`). Defaults to `False`.
        seed: Seed of the file shuffling. Defaults to `0`.
        download: Prepare the dataset first if it is not (`prepare`).
            Defaults to `False`.

    Returns:
        A tuple `(dataset, num_examples)`.

    Raises:
        DatasetUnavailableError: if the dataset is not prepared and
            `download=False`, or the download failed.
        ImportError: if tensorflow-datasets is not installed.
    """
    validation.check_choice("name", name, NAMES)
    validation.check_bool("download", download)
    tfds = _tfds(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if download and not builder.is_prepared():
        builder = prepare(name, data_dir=data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    try:
        # `as_dataset` never downloads; it asserts the data is prepared.
        ds = builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=training,
            read_config=read_config,
        )
    except AssertionError:
        raise DatasetUnavailableError(_not_prepared(name, data_dir, builder)) from None
    num_examples = int(ds.cardinality())
    if num_examples < 0:
        num_examples = builder.info.splits[split].num_examples
    ds = ds.map(
        lambda image, label: (image, tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds, num_examples


def prepare(name, *, data_dir=None):
    """Downloads and prepares dataset `name` in `data_dir`, once.

    Safe when several processes or threads call it together: one prepares
    under an exclusive lock, the others wait for the lock and then find the
    dataset prepared. A no-op (no lock) when it is already prepared.

    Args:
        name: One of `NAMES`.
        data_dir: Where to prepare it; `None` is TFDS's default. Defaults to
            `None`.

    Returns:
        The dataset's TFDS builder, prepared.

    Raises:
        DatasetUnavailableError: if the download failed.
        ImportError: if tensorflow-datasets is not installed.
    """
    validation.check_choice("name", name, NAMES)
    tfds = _tfds(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    with _exclusive_lock(_lock_path(name, builder), name):
        # Another process may have prepared it while this one waited.
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        logging.info("Downloading and preparing %s in %s", name, _root(builder))
        try:
            builder.download_and_prepare()
        except (OSError, tfds.download.DownloadError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DatasetUnavailableError(
                f"Downloading TFDS dataset {name!r} into {_root(builder)} failed "
                f"({reason}). Check the network, or run `tfds build {name} "
                "--data_dir=DIR` on a machine with network access and pass "
                f"data_dir=DIR. Received: data_dir={data_dir!r}"
            ) from e
    return builder


def _tfds(name):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise install.missing_extra("tensorflow-datasets", f"Dataset {name!r}") from e
    return tfds


def _root(builder):
    """The directory of all the builder's datasets (`data_dir` or TFDS's default)."""
    return os.fspath(builder.data_dir_root)


def _not_prepared(name, data_dir, builder):
    where = _root(builder) if data_dir is None else data_dir
    if data_dir is None:
        where = f"TFDS's default data_dir ({where})"
    return (
        f"TFDS dataset {name!r} is not prepared in {where}. Either let "
        "keras_eigensam download it: pass download=True (scripts: --download); "
        f"or run `tfds build {name} --data_dir=DIR` on a machine with network "
        f"access, then pass data_dir=DIR. Received: data_dir={data_dir!r}"
    )


def _lock_path(name, builder):
    root = _root(builder)
    if "://" in root:
        # No file locks on remote storage: lock this machine's processes.
        digest = hashlib.sha256(root.encode()).hexdigest()[:16]
        lock = f"keras_eigensam-{name}-{digest}.lock"
        return os.path.join(tempfile.gettempdir(), lock)
    os.makedirs(root, exist_ok=True)
    return os.path.join(root, f"{name}.lock")


@contextlib.contextmanager
def _exclusive_lock(path, name):
    """Holds an exclusive `flock` on `path` (one per open file: threads too)."""
    if fcntl is None:  # pragma: no cover (Windows)
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("Waiting for another process to prepare %s (%s)", name, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
