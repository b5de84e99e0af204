"""Tests for `keras_eigensam.experiments.architectures`."""

import keras
import numpy as np
import pytest

from keras_eigensam.experiments import architectures

# (name, input_shape, count_params(), trainable): count_params() includes the
# BatchNorm moving mean/variance; the trainable counts of the ResNets and the
# WideResNet are those of the PyTorch reference models (kuangliu/pytorch-cifar,
# xternalz/WideResNet-pytorch) for 10 classes.
PINNED = [
    ("resnet18", (32, 32, 3), 11_183_562, 11_173_962),
    ("resnet34", (32, 32, 3), 21_299_146, 21_282_122),
    ("resnet50", (32, 32, 3), 23_573_962, 23_520_842),
    ("wrn28_10", (32, 32, 3), 36_497_146, 36_479_194),
    ("cnn6", (32, 32, 3), 1_116_970, 1_116_970),
    ("cnn6", (40, 1), 188_458, 188_458),
    ("mlp", (8, 8, 1), 26_122, 26_122),
    ("mlp", (40, 1), 23_050, 23_050),
    ("small_cnn", (8, 8, 1), 25_866, 25_866),
    ("small_cnn", (40, 1), 14_250, 14_250),
    ("small_cnn", (40,), 14_250, 14_250),
]


def _num_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _sgd_step(model, input_shape, num_classes=10):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + tuple(input_shape)).astype("float32")
    y = np.array([0, num_classes - 1])
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    after = [w.numpy() for w in model.trainable_weights]
    return float(loss), before, after


def test_names_cover_every_architecture():
    assert set(architectures.NAMES) == {
        "resnet18", "resnet34", "resnet50", "wrn28_10", "cnn6", "mlp", "small_cnn"
    }
    assert {name for name, *_ in PINNED} == set(architectures.NAMES)


@pytest.mark.parametrize(
    "name, input_shape, total, trainable",
    PINNED,
    ids=[f"{p[0]}-{'x'.join(map(str, p[1]))}" for p in PINNED],
)
def test_parameter_count_and_one_sgd_step(name, input_shape, total, trainable):
    model = architectures.build(name, input_shape, 10)
    assert model.name == name
    assert model.count_params() == total
    assert _num_trainable(model) == trainable
    assert model.output_shape == (None, 10)
    if name in ("resnet34", "resnet50", "wrn28_10"):
        return  # their blocks train in resnet18's step; a step costs seconds
    loss, before, after = _sgd_step(model, input_shape)
    assert np.isfinite(loss)
    # The step changed the weights (checked on the logits kernel).
    assert not np.allclose(before[-1], after[-1], rtol=0, atol=0)


def test_small_models_fit_the_offline_datasets():
    for input_shape in [(8, 8, 1), (40, 1)]:
        for name in ("mlp", "small_cnn"):
            assert architectures.build(name, input_shape, 10).count_params() < 50_000


def test_output_is_logits_not_probabilities():
    model = architectures.build("mlp", (40, 1), 3)
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].activation is keras.activations.linear
    x = np.random.default_rng(1).normal(size=(16, 40, 1)).astype("float32") * 10
    logits = model.predict(x, verbose=0)
    assert not np.allclose(logits.sum(axis=-1), 1.0, rtol=0, atol=1e-3)


def test_resnet_is_cifar_style():
    model = architectures.build("resnet18", (32, 32, 3), 10)
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert stem.filters == 64 and not stem.use_bias
    assert not any(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers)
    # Stride 2 at the first block of stages 2-4, with a projection shortcut.
    for stage, planes in [(2, 128), (3, 256), (4, 512)]:
        conv = model.get_layer(f"stage{stage}_block1_conv1")
        assert conv.strides == (2, 2) and conv.filters == planes
        assert model.get_layer(f"stage{stage}_block1_shortcut_conv").kernel_size == (1, 1)
    names = {l.name for l in model.layers}
    assert "stage1_block1_shortcut_conv" not in names
    assert model.get_layer("stage4_block2_out").output.shape[1:] == (4, 4, 512)
    assert isinstance(stem.kernel_initializer, keras.initializers.HeNormal)


def test_weight_decay_is_coupled_l2_on_kernels():
    weight_decay = 5e-4
    model = architectures.build("mlp", (8, 8, 1), 10, weight_decay=weight_decay)
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) == 3 and len(model.losses) == 3
    expected = weight_decay / 2 * sum(np.sum(np.square(k.numpy())) for k in kernels)
    np.testing.assert_allclose(
        float(keras.ops.sum(model.losses)), expected, rtol=1e-5, atol=0
    )
    assert architectures.build("resnet18", (8, 8, 3), 10).losses == []
    # Every convolution and dense kernel of a BN network is decayed, nothing else.
    model = architectures.build("resnet18", (8, 8, 3), 10, weight_decay=1e-4)
    assert len(model.losses) == sum(
        w.path.endswith("kernel") for w in model.trainable_weights
    )


def test_wrn_dropout():
    model = architectures.build("wrn28_10", (8, 8, 3), 10, dropout=0.3)
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(dropouts) == 12 and all(l.rate == 0.3 for l in dropouts)
    assert architectures.build("wrn28_10", (8, 8, 3), 10).count_params() == 36_497_146
    with pytest.raises(ValueError, match="dropout=1.0"):
        architectures.build("wrn28_10", (8, 8, 3), 10, dropout=1.0)


def test_mixed_precision_logits_are_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = architectures.build("small_cnn", (8, 8, 1), 10)
    assert model.layers[1].compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_unknown_name_raises():
    with pytest.raises(ValueError, match=r"`name` must be one of .*resnet18.*'resnet19'"):
        architectures.build("resnet19", (32, 32, 3), 10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="resnet18", input_shape=(32, 32), num_classes=10), ValueError,
         r"input_shape=\(32, 32\)"),
        (dict(name="mlp", input_shape=(8, 0, 1), num_classes=10), ValueError,
         "input_shape=0"),
        (dict(name="mlp", input_shape=(), num_classes=10), ValueError, "input_shape"),
        (dict(name="mlp", input_shape=(40,), num_classes=0), ValueError, "num_classes=0"),
        (dict(name="mlp", input_shape=(40,), num_classes=10, weight_decay=-1.0),
         ValueError, "weight_decay=-1.0"),
        (dict(name="resnet18", input_shape=(8, 8, 3), num_classes=10, dropout=0.1),
         TypeError, "dropout"),
        (dict(name="small_cnn", input_shape=(8, 8, 1), num_classes=10, filters=(16, 0)),
         ValueError, "filters=0"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        architectures.build(**kwargs)
