"""Input pipelines for the datasets of the SAM-family experiments.

`load(name, split, batch_size, training=...)` returns a batched
`tf.data.Dataset` of `(images, labels)` and a `DatasetInfo`. Images are
float32 and normalised per channel with the dataset's mean and standard
deviation; labels are int32 class indices.

Two kinds of datasets:

- `cifar10`, `cifar100`, `fashion_mnist` and `svhn_cropped` are read with
  TensorFlow Datasets from `data_dir` (`tfds_data`). Nothing is downloaded
  unless asked: if the dataset is not prepared there, `load` raises
  `DatasetUnavailableError`. Either pass `download=True` (the scripts'
  `--download`), which downloads and prepares it once, workers that start
  together waiting for the one that prepares; or prepare it on a machine
  with network access with `tfds build cifar10 --data_dir=DIR` and pass
  `data_dir=DIR`.
- `digits` (scikit-learn's bundled 8×8×1 handwritten digits, 1,797 images;
  the first 1,437 are the train split and the last 360 the test split) and
  `mnist1d` (generated locally by the `mnist1d` package with its default
  arguments: 4,000 train and 1,000 test signals of shape `(40, 1)`) need no
  files and no network, which makes them the datasets of the tests and of
  quick curvature experiments. Their mean and standard deviation are computed
  from the train split.

The training pipeline is: read → cache (decoded, before any augmentation) →
shuffle (reshuffled every epoch) → augment → batch with the *global* batch
size → [keras-cv augmentation] → normalise → prefetch. Augmentation
(`"none"`, `"standard"`, `"cutout"`, `"randaugment"`: see `augment`) is
applied only when `training=True`.

Randomness: shuffling and the standard augmentation are driven by `seed`
through seeded `tf.data` ops and stateless image ops, so a pipeline with the
same arguments yields the same batches in every run, and a different
augmentation in every epoch. With `epochs=` (what `scripts/train.py` uses)
the batches of epoch *e* depend on `(seed, e)` only, so a run resumed at
epoch *e* in a new process sees what an uninterrupted run sees. The keras-cv
layers of Cutout and RandAugment keep their own random state (see `augment`).
"""

import dataclasses
import functools
import random

import numpy as np
import tensorflow as tf

from keras_eigensam import install
from keras_eigensam import validation
from keras_eigensam.experiments import augment as augment_lib
from keras_eigensam.experiments import tfds_data
# Raised by `load`; it is `data.DatasetUnavailableError` to callers.
from keras_eigensam.experiments.tfds_data import DatasetUnavailableError  # noqa: F401

NAMES = (
    "cifar10",
    "cifar100",
    "fashion_mnist",
    "svhn_cropped",
    "digits",
    "mnist1d",
)
AUGMENTATIONS = augment_lib.NAMES

_TFDS_NAMES = tfds_data.NAMES
_OFFLINE_SPLITS = ("train", "test")
_SHUFFLE_BUFFER = 50_000
# Epoch seeds are `seed · _EPOCH_STRIDE + epoch`: distinct for every
# (seed, epoch) with fewer than a million epochs.
_EPOCH_STRIDE = 1_000_003
_DIGITS_TRAIN_FRACTION = 0.8

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a loaded split.

    Attributes:
        name: The dataset name, one of `NAMES`.
        split: The split that was loaded, e.g. `"train"`.
        num_examples: Number of examples in the split (before batching).
        num_classes: Number of classes.
        input_shape: Shape of one example, e.g. `(32, 32, 3)` or `(40, 1)`.
        mean: Per-channel mean subtracted from the inputs (in [0, 1] units
            for images).
        std: Per-channel standard deviation the inputs are divided by.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    input_shape: tuple
    mean: tuple
    std: tuple


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    input_shape: tuple
    pad: int
    flip: bool
    # Per-channel statistics of the train split in [0, 1] units; `None` for the
    # offline datasets, whose statistics are computed from their arrays.
    mean: tuple = None
    std: tuple = None


_SPECS = {
    # Train-split statistics (the std is the per-pixel std, not the
    # (0.2023, 0.1994, 0.2010) that kuangliu/pytorch-cifar inherited).
    "cifar10": _Spec(
        10, (32, 32, 3), 4, True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": _Spec(
        100, (32, 32, 3), 4, True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    # Garments are left-right symmetric, so flipping keeps the label.
    "fashion_mnist": _Spec(10, (28, 28, 1), 4, True, (0.2860,), (0.3530,)),
    # Digits are not: no flip for SVHN, digits or mnist1d.
    "svhn_cropped": _Spec(
        10, (32, 32, 3), 4, False, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
    "digits": _Spec(10, (8, 8, 1), 1, False),
    "mnist1d": _Spec(10, (40, 1), 0, False),
}


def input_shape(name):
    """The shape of one example of dataset `name`, known without loading it.

    Raises:
        ValueError: if `name` is not one of `NAMES`.
    """
    validation.check_choice("dataset", name, NAMES)
    return _SPECS[name].input_shape


def load(
    name,
    split,
    batch_size,
    *,
    training,
    data_dir=None,
    download=False,
    seed=0,
    num_replicas=1,
    augment="standard",
    cache=True,
    drop_remainder=None,
    epochs=None,
    initial_epoch=0,
    steps_per_epoch=None,
):
    """Builds the input pipeline of one split of a dataset.

    Returns batches of `(images, labels)`: float32 images normalised with the
    dataset's per-channel mean and std, and int32 labels. With
    `training=True` the examples are shuffled (differently in every epoch)
    and augmented as `augment` says; with `training=False` they come in a
    fixed order, unaugmented. Batches have the *global* batch size: under a
    `tf.distribute` strategy with `num_replicas` replicas, each replica gets
    `batch_size // num_replicas` examples.

    Args:
        name: One of `NAMES`: `"cifar10"`, `"cifar100"`, `"fashion_mnist"`,
            `"svhn_cropped"` (TFDS), `"digits"` or `"mnist1d"` (offline).
        split: The split to read: `"train"` or `"test"`; TFDS datasets also
            take any TFDS split string such as `"train[:45000]"` or
            `"extra"`.
        batch_size: Global batch size, an integer >= 1 divisible by
            `num_replicas`.
        training: Whether this is the training pipeline (shuffle and
            augment) or an evaluation one.
        data_dir: Directory of the prepared TFDS datasets; `None` uses TFDS's
            default. Ignored by the offline datasets. Defaults to `None`.
        download: Whether to download and prepare a TFDS dataset that is
            not prepared in `data_dir` (once: concurrent callers wait for
            the one that prepares; see `tfds_data`). Ignored by the offline
            datasets. Defaults to `False`.
        seed: Seed of the shuffling and the augmentation, an integer >= 0.
            Defaults to `0`.
        num_replicas: Number of replicas the global batch is split across.
            Defaults to `1`.
        augment: `"none"`, `"standard"`, `"cutout"` or `"randaugment"` (see
            `keras_eigensam.experiments.augment`); used only when
            `training=True`. Cutout and RandAugment need keras-cv and image
            datasets. Defaults to `"standard"`.
        cache: Whether to cache the decoded examples in memory (before
            augmentation). Defaults to `True`.
        drop_remainder: Whether to drop the last partial batch. `None` drops
            it when training (so every step has the same shape) and keeps it
            otherwise (so evaluation sees every example). Defaults to `None`.
        epochs: With `training=True`: the dataset yields the epochs
            `initial_epoch … epochs − 1` one after the other, each shuffled
            and augmented as a function of `(seed, epoch)` only, so a run
            resumed at an epoch sees the batches an uninterrupted run sees
            (give `model.fit` the `steps_per_epoch`). `None` yields one
            epoch per iteration, reshuffled at every iteration of the
            dataset object. Defaults to `None`.
        initial_epoch: The first epoch, with `epochs`. Defaults to `0`.
        steps_per_epoch: With `epochs`: the batches of each epoch (at most
            its full batches). `None` keeps all. Defaults to `None`.

    Returns:
        A tuple `(dataset, info)`: a batched, prefetched `tf.data.Dataset`
        of `(images, labels)`, and a `DatasetInfo`.

    Raises:
        ValueError: if an argument is out of range, `name` is unknown,
            `batch_size` is not divisible by `num_replicas`, or `augment` is
            `"cutout"`/`"randaugment"` for a dataset that is not made of
            images.
        TypeError: if an argument has the wrong type.
        DatasetUnavailableError: if a TFDS dataset is not prepared in
            `data_dir` and `download=False`, or its download failed (a
            `ValueError`).
        ImportError: if the optional package the dataset or augmentation
            needs is missing (install the `scripts` extra).

    Example:

    ```python
    train_ds, info = keras_eigensam.experiments.data.load(
        "mnist1d", "train", 128, training=True, seed=1)
    test_ds, _ = keras_eigensam.experiments.data.load(
        "mnist1d", "test", 512, training=False)
    model = keras_eigensam.experiments.architectures.build(
        "small_cnn", info.input_shape, info.num_classes)
    ```
    """
    validation.check_choice("name", name, NAMES)
    if not isinstance(split, str):
        raise TypeError(
            f"`split` must be a string such as 'train'. Received: split={split!r}"
        )
    if name not in _TFDS_NAMES:
        validation.check_choice("split", split, _OFFLINE_SPLITS)
    batch_size = validation.check_int("batch_size", batch_size, minimum=1)
    num_replicas = validation.check_int("num_replicas", num_replicas, minimum=1)
    if batch_size % num_replicas:
        raise ValueError(
            "`batch_size` (the global batch size) must be divisible by "
            f"`num_replicas`. Received: batch_size={batch_size}, "
            f"num_replicas={num_replicas}"
        )
    seed = validation.check_int("seed", seed, minimum=0)
    validation.check_bool("training", training)
    validation.check_bool("download", download)
    validation.check_bool("cache", cache)
    validation.check_choice("augment", augment, AUGMENTATIONS)
    if drop_remainder is None:
        drop_remainder = training
    validation.check_bool("drop_remainder", drop_remainder)
    spec = _SPECS[name]
    if augment in augment_lib.KERAS_CV and len(spec.input_shape) != 3:
        raise ValueError(
            f"`augment={augment!r}` needs an image dataset; {name!r} holds "
            f"signals of shape {spec.input_shape}. Use augment='standard' or "
            f"'none'. Received: augment={augment!r}"
        )

    if name in _TFDS_NAMES:
        ds, num_examples = tfds_data.read(
            name,
            split,
            data_dir=data_dir,
            training=training,
            seed=seed,
            download=download,
        )
        mean, std = spec.mean, spec.std
    else:
        arrays = _OFFLINE_LOADERS[name]()
        x, y = arrays[split]
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
        num_examples = len(y)
        mean, std = arrays["mean"], arrays["std"]
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=num_examples,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )

    if cache:
        ds = ds.cache()
    augment = augment if training else "none"
    buffer = max(1, min(num_examples, _SHUFFLE_BUFFER))
    if training and epochs is not None:
        epochs = validation.check_int("epochs", epochs, minimum=1)
        initial_epoch = validation.check_int("initial_epoch", initial_epoch, minimum=0)
        if steps_per_epoch is not None:
            steps_per_epoch = validation.check_int(
                "steps_per_epoch", steps_per_epoch, minimum=1
            )
        examples = ds

        def one_epoch(epoch):
            # Seeds from (seed, epoch) only: the same batches in any process.
            epoch_seed = seed * _EPOCH_STRIDE + epoch
            shuffled = examples.shuffle(
                buffer, seed=epoch_seed, reshuffle_each_iteration=False
            )
            batches = augment_lib.augment_examples(
                shuffled, spec, augment, epoch_seed, rerandomize=False
            ).batch(batch_size, drop_remainder=drop_remainder)
            return batches if steps_per_epoch is None else batches.take(steps_per_epoch)

        epoch_datasets = [one_epoch(e) for e in range(initial_epoch, epochs)]
        if epoch_datasets:
            ds = functools.reduce(lambda a, b: a.concatenate(b), epoch_datasets)
        else:  # every epoch done
            ds = one_epoch(initial_epoch).take(0)
    else:
        if training:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        ds = augment_lib.augment_examples(ds, spec, augment, seed)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = augment_lib.augment_and_normalise_batches(ds, spec, augment, seed, mean, std)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options), info


# ---------------------------------------------------------------------------
# The offline datasets.


def _channel_stats(x):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes, dtype=np.float64), x.std(axis=axes, dtype=np.float64)


def _read_only(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise install.missing_extra("scikit-learn", "Dataset 'digits'") from e
    bunch = load_digits()
    # Pixel values are integers in [0, 16].
    x = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    split_at = int(len(y) * _DIGITS_TRAIN_FRACTION)
    mean, std = _channel_stats(x[:split_at])
    return {
        "train": _read_only(x[:split_at], y[:split_at]),
        "test": _read_only(x[split_at:], y[split_at:]),
        "mean": mean,
        "std": std,
    }


@functools.lru_cache(maxsize=None)
def _mnist1d_arrays():
    try:
        from mnist1d import data as mnist1d_data
    except ImportError as e:
        raise install.missing_extra("mnist1d", "Dataset 'mnist1d'") from e
    # `make_dataset` generates the data from templates (no network, unlike
    # `get_dataset`); it reseeds the global NumPy and `random` generators, so
    # restore them for the caller.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        generated = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x_train = generated["x"].astype(np.float32)[..., np.newaxis]
    x_test = generated["x_test"].astype(np.float32)[..., np.newaxis]
    mean, std = _channel_stats(x_train)
    return {
        "train": _read_only(x_train, generated["y"].astype(np.int64)),
        "test": _read_only(x_test, generated["y_test"].astype(np.int64)),
        "mean": mean,
        "std": std,
    }


_OFFLINE_LOADERS = {"digits": _digits_arrays, "mnist1d": _mnist1d_arrays}
