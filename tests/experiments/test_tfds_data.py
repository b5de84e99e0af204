"""Tests of `keras_eigensam.experiments.tfds_data`: reading, and the opt-in download.

No network: a fake TFDS builder stands in for `tfds.builder` (its
`download_and_prepare` writes a marker file, slowly), and one test runs the
real builder with a `download_and_prepare` that fails.
"""

import os
import threading
import time
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_eigensam.experiments import data
from keras_eigensam.experiments import tfds_data

NUM_EXAMPLES = 6


class _FakeBuilder:
    """A TFDS builder whose data is prepared when a marker file exists."""

    def __init__(self, name, data_dir, fake):
        self.data_dir_root = data_dir
        self._marker = os.path.join(data_dir, name, "prepared")
        self._fake = fake

    def is_prepared(self):
        return os.path.exists(self._marker)

    def download_and_prepare(self):
        self._fake.prepares.append(threading.get_ident())
        if self._fake.error is not None:
            raise self._fake.error
        time.sleep(self._fake.prepare_seconds)
        os.makedirs(os.path.dirname(self._marker), exist_ok=True)
        with open(self._marker, "w"):
            pass

    def as_dataset(self, split, as_supervised, shuffle_files, read_config):
        assert self.is_prepared(), "not prepared"
        images = np.zeros((NUM_EXAMPLES, 32, 32, 3), np.uint8)
        labels = np.arange(NUM_EXAMPLES, dtype=np.int64)
        return tf.data.Dataset.from_tensor_slices((images, labels))


@pytest.fixture
def fake_tfds(monkeypatch, tmp_path):
    """`tfds.builder` makes `_FakeBuilder`s; `prepares` records their downloads."""
    fake = types.SimpleNamespace(
        prepares=[], prepare_seconds=0.0, error=None, data_dir=str(tmp_path)
    )
    monkeypatch.setattr(
        tfds, "builder", lambda name, data_dir=None: _FakeBuilder(name, data_dir, fake)
    )
    return fake


def test_default_does_not_download_and_says_how_to_get_the_data(fake_tfds):
    with pytest.raises(data.DatasetUnavailableError) as e:
        data.load("cifar10", "train", 2, training=True, data_dir=fake_tfds.data_dir)
    message = str(e.value)
    assert "download=True" in message and "--download" in message
    assert "`tfds build cifar10 --data_dir=DIR`" in message
    assert "pass data_dir=DIR" in message
    assert f"Received: data_dir={fake_tfds.data_dir!r}" in message
    assert fake_tfds.prepares == []


def test_download_prepares_once_then_reads(fake_tfds):
    for _ in range(2):
        ds, info = data.load(
            "cifar10", "test", 2, training=False, data_dir=fake_tfds.data_dir,
            download=True,
        )
        assert info.num_examples == NUM_EXAMPLES
        assert [int(x.shape[0]) for x, _ in ds] == [2, 2, 2]
    # The second load found it prepared: no second download.
    assert len(fake_tfds.prepares) == 1
    assert os.path.exists(os.path.join(fake_tfds.data_dir, "cifar10.lock"))


def test_concurrent_callers_prepare_once(fake_tfds):
    fake_tfds.prepare_seconds = 0.3
    start = threading.Barrier(3)
    counts, errors = [], []

    def load():
        try:
            start.wait()
            _, count = tfds_data.read(
                "cifar10", "train", data_dir=fake_tfds.data_dir, download=True
            )
            counts.append(count)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert counts == [NUM_EXAMPLES] * 3
    assert len(fake_tfds.prepares) == 1


def test_failed_download_with_the_real_builder_says_why_and_how_else(
    monkeypatch, tmp_path
):
    # The real builder (its is_prepared and data_dir_root), its download
    # replaced by one that fails as it does without network.
    calls = []

    def no_network(self, **kwargs):
        calls.append(self.name)
        raise ConnectionError("no route\nto host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(data.DatasetUnavailableError) as e:
        tfds_data.read("svhn_cropped", "train", data_dir=str(tmp_path), download=True)
    assert calls == ["svhn_cropped"]
    assert os.path.exists(tmp_path / "svhn_cropped.lock")
    message = str(e.value)
    assert f"Downloading TFDS dataset 'svhn_cropped' into {tmp_path} failed" in message
    assert "(no route to host)" in message and "tfds build svhn_cropped" in message
    assert isinstance(e.value.__cause__, ConnectionError)


def test_download_must_be_a_bool_and_offline_datasets_ignore_it(fake_tfds):
    with pytest.raises(TypeError, match="`download` must be a bool.*download='yes'"):
        data.load("digits", "train", 8, training=True, download="yes")
    with pytest.raises(TypeError, match="download=1"):
        tfds_data.read("cifar10", "train", download=1)
    _, info = data.load("digits", "test", 8, training=False, download=True)
    assert info.num_examples == 360 and fake_tfds.prepares == []
