"""Tests for `keras_eigensam.experiments.data`.

TFDS datasets are exercised on `tfds.testing.mock_data` (random uint8 images,
no files, no network); `digits` and `mnist1d` are loaded for real.
"""

import random
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_eigensam.experiments import data

TFDS_NAMES = ["cifar10", "cifar100", "fashion_mnist", "svhn_cropped"]


def _epoch(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def _unnormalise(images, info):
    return images * np.asarray(info.std, np.float32) + np.asarray(info.mean, np.float32)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_pipelines_on_mock_data(name):
    spec = data._SPECS[name]
    with tfds.testing.mock_data(num_examples=10):
        train, info = data.load(name, "train", 4, training=True)
        test, test_info = data.load(name, "test", 4, training=False)
        train_x, train_y = _epoch(train)
        test_batches = list(test)
    assert info == data.DatasetInfo(
        name, "train", 10, spec.num_classes, spec.input_shape, spec.mean, spec.std
    )
    assert test_info.split == "test" and test_info.num_examples == 10
    # Training drops the partial batch, evaluation keeps it.
    assert train_x.shape == (8,) + spec.input_shape
    assert [int(x.shape[0]) for x, _ in test_batches] == [4, 4, 2]
    assert train.element_spec[0].dtype == tf.float32
    assert train.element_spec[1].dtype == tf.int32
    assert train.element_spec[0].shape.as_list() == [4] + list(spec.input_shape)
    assert test.element_spec[0].shape.as_list() == [None] + list(spec.input_shape)
    assert np.all((train_y >= 0) & (train_y < spec.num_classes))
    assert np.all(np.isfinite(train_x))


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_tfds_normalisation_uses_the_dataset_statistics(name):
    with tfds.testing.mock_data(num_examples=6):
        test, info = data.load(name, "test", 3, training=False)
        images, labels = _epoch(test)
        raw = list(tfds.load(name, split="test", as_supervised=True))
    raw_images = np.stack([x.numpy() for x, _ in raw]).astype(np.float32) / 255.0
    np.testing.assert_allclose(_unnormalise(images, info), raw_images, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, [int(y) for _, y in raw])


def test_training_pipeline_changes_every_epoch_and_is_reproducible():
    with tfds.testing.mock_data(num_examples=8):
        train, _ = data.load("cifar10", "train", 4, training=True, seed=3)
        first, second = _epoch(train)[0], _epoch(train)[0]
        again, _ = data.load("cifar10", "train", 4, training=True, seed=3)
        other, _ = data.load("cifar10", "train", 4, training=True, seed=4)
        test, _ = data.load("cifar10", "test", 4, training=False)
        test_first, test_second = _epoch(test)[0], _epoch(test)[0]
        test_augmented, _ = data.load("cifar10", "test", 4, training=False, augment="cutout")
        test_augmented = _epoch(test_augmented)[0]
        again_first, again_second = _epoch(again)[0], _epoch(again)[0]
        other_first = _epoch(other)[0]
    assert not np.array_equal(first, second)
    # Same seed, same batches in the same epochs.
    np.testing.assert_array_equal(again_first, first)
    np.testing.assert_array_equal(again_second, second)
    assert not np.array_equal(other_first, first)
    # Evaluation: fixed order, never augmented.
    np.testing.assert_array_equal(test_first, test_second)
    np.testing.assert_array_equal(test_augmented, test_first)


def test_epochs_are_a_function_of_seed_and_epoch():
    """`epochs=`: epoch e's batches (order and augmentation) are the same
    whether the dataset starts at epoch 0 or at e (a resumed run)."""
    with tfds.testing.mock_data(num_examples=12):
        whole, _ = data.load("cifar10", "train", 4, training=True, seed=3, epochs=3)
        resumed, _ = data.load(
            "cifar10", "train", 4, training=True, seed=3, epochs=3, initial_epoch=2
        )
        capped, _ = data.load(
            "cifar10", "train", 4, training=True, seed=3, epochs=3, steps_per_epoch=2
        )
        whole = [x.numpy() for x, _ in whole]
        resumed = [x.numpy() for x, _ in resumed]
        capped = [x.numpy() for x, _ in capped]
    assert len(whole) == 9 and len(resumed) == 3 and len(capped) == 6
    for a, b in zip(whole[6:], resumed):
        np.testing.assert_array_equal(a, b)
    # Epochs differ from each other; a cap keeps each epoch's first batches.
    assert not np.array_equal(whole[0], whole[3])
    np.testing.assert_array_equal(capped[2], whole[3])


def test_no_augmentation_only_reshuffles():
    with tfds.testing.mock_data(num_examples=8):
        train, _ = data.load("cifar10", "train", 8, training=True, augment="none")
        first, second = _epoch(train)[0], _epoch(train)[0]
    assert not np.array_equal(first, second)
    by_sum = lambda x: x[np.argsort(x.reshape(len(x), -1).sum(axis=1))]
    np.testing.assert_array_equal(by_sum(first), by_sum(second))


@pytest.mark.parametrize("name, flip", [("cifar10", True), ("svhn_cropped", False)])
def test_standard_augmentation_is_pad_crop_and_flip(name, flip):
    epochs = 10
    with tfds.testing.mock_data(num_examples=1):
        original, info = data.load(name, "test", 1, training=False)
        original = _unnormalise(_epoch(original)[0][0], info)
        train, _ = data.load(name, "train", 1, training=True, seed=1)
        augmented = [_unnormalise(_epoch(train)[0][0], info) for _ in range(epochs)]
    pad = 4
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
    height, width, _ = original.shape
    candidates = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + height, dx : dx + width]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop[:, ::-1]
    seen = set()
    for image in augmented:
        matches = [
            key
            for key, candidate in candidates.items()
            if np.allclose(image, candidate, rtol=0, atol=1e-5)
        ]
        assert matches, "an augmented image is not a padded crop of the original"
        seen.update(matches)
    assert len({key[:2] for key in seen}) > 1
    assert any(key[2] for key in seen) == flip
    if not flip:
        assert all(not key[2] for key in seen)


def test_cutout_blanks_a_patch_reproducibly():
    with tfds.testing.mock_data(num_examples=4):
        first, _ = data.load("cifar10", "train", 4, training=True, augment="cutout")
        second, _ = data.load("cifar10", "train", 4, training=True, augment="cutout")
        first_epoch, second_epoch = _epoch(first)[0], _epoch(second)[0]
    # A normalised random image has no exact zeros; the cutout patch (up to
    # 16×16, clipped at the border) is filled with 0 = the dataset mean.
    zeros = (first_epoch == 0).reshape(4, -1).sum(axis=1)
    assert np.all(zeros >= 8 * 8 * 3)
    np.testing.assert_array_equal(first_epoch, second_epoch)


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_randaugment_runs_on_colour_and_grey_images(name):
    with tfds.testing.mock_data(num_examples=4):
        train, info = data.load(name, "train", 2, training=True, augment="randaugment")
        images, _ = _epoch(train)
    assert images.shape == (4,) + info.input_shape
    unit = _unnormalise(images, info)
    assert np.all(np.isfinite(unit))
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_digits():
    train, info = data.load("digits", "train", 100, training=True, augment="none")
    test, test_info = data.load("digits", "test", 100, training=False)
    train_x, train_y = _epoch(train)
    test_x, test_y = _epoch(test)
    assert info.num_examples + test_info.num_examples == 1797
    assert (info.num_examples, test_info.num_examples) == (1437, 360)
    assert info.num_classes == 10 and info.input_shape == (8, 8, 1)
    assert train_x.shape == (1400, 8, 8, 1)  # 14 full batches
    assert test_x.shape == (360, 8, 8, 1)
    assert set(np.unique(train_y)) == set(range(10))
    # Statistics from the (whole) train split: zero mean, unit std there.
    everything, _ = _epoch(data.load("digits", "train", 1437, training=False)[0])
    np.testing.assert_allclose(everything.mean(), 0.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(everything.std(), 1.0, rtol=0, atol=1e-5)
    unit = _unnormalise(test_x, test_info)
    assert unit.min() >= -1e-6 and unit.max() <= 1 + 1e-6
    # The standard augmentation shifts by at most one pixel and never flips.
    augmented, _ = _epoch(data.load("digits", "train", 1437, training=True)[0])
    assert augmented.shape == everything.shape
    assert not np.array_equal(np.sort(augmented.ravel()), np.sort(everything.ravel()))


def test_mnist1d_is_generated_offline_and_leaves_global_rngs_alone(no_network):
    data._mnist1d_arrays.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expected_numpy, expected_python = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    train, info = data.load("mnist1d", "train", 500, training=True)
    assert (np.random.rand(), random.random()) == (expected_numpy, expected_python)
    test, test_info = data.load("mnist1d", "test", 500, training=False)
    train_x, train_y = _epoch(train)
    test_x, _ = _epoch(test)
    assert (info.num_examples, test_info.num_examples) == (4000, 1000)
    assert info.input_shape == (40, 1) and info.num_classes == 10
    assert train_x.shape == (4000, 40, 1) and test_x.shape == (1000, 40, 1)
    assert set(np.unique(train_y)) == set(range(10))
    # "standard" leaves mnist1d signals unchanged: the epoch is a permutation
    # of the normalised train split, which has zero mean and unit std.
    plain, _ = _epoch(data.load("mnist1d", "train", 4000, training=False)[0])
    np.testing.assert_array_equal(np.sort(train_x.ravel()), np.sort(plain.ravel()))
    np.testing.assert_allclose(plain.mean(), 0.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(plain.std(), 1.0, rtol=0, atol=1e-5)


def test_global_batch_size_and_replicas():
    ds, _ = data.load("digits", "test", 8, training=False, num_replicas=2)
    assert next(iter(ds))[0].shape[0] == 8
    with pytest.raises(ValueError, match="batch_size=10, num_replicas=3"):
        data.load("digits", "train", 10, training=True, num_replicas=3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="imagenet"), ValueError, "`name` must be one of .*'imagenet'"),
        (dict(name="digits", split="validation"), ValueError, "split='validation'"),
        (dict(augment="mixup"), ValueError, "augment='mixup'"),
        (dict(name="mnist1d", augment="cutout"), ValueError, "augment='cutout'"),
        (dict(batch_size=0), ValueError, "batch_size=0"),
        (dict(num_replicas=0), ValueError, "num_replicas=0"),
        (dict(seed=-1), ValueError, "seed=-1"),
        (dict(training=1), TypeError, "training=1"),
        (dict(drop_remainder="yes"), TypeError, "drop_remainder='yes'"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    arguments = dict(name="digits", split="train", batch_size=8, training=True)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        data.load(**arguments)


def test_unprepared_tfds_dataset_raises_quickly(tmp_path, no_network):
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError, match="tfds build cifar10") as e:
        data.load("cifar10", "train", 8, training=True, data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    assert isinstance(e.value, ValueError)
    assert str(tmp_path) in str(e.value)
    assert "download=True (scripts: --download)" in str(e.value)
    assert "\n" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
