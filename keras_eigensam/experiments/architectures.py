"""Network architectures used in the SAM-family experiments, as functional Keras models.

`build(name, input_shape, num_classes)` returns a `keras.Model` whose output is
the *logits* (no softmax): pair it with
`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.

The CIFAR ResNets follow kuangliu/pytorch-cifar, the code base of the SAM,
ASAM and Eigen-SAM papers: a 3×3 stride-1 stem and no max-pool, unlike the
ImageNet ResNets of `keras.applications` and keras-cv (7×7 stride-2 stem and a
max-pool), which lose most of a 32×32 image in the first two layers. The
WideResNet follows Zagoruyko & Komodakis (pre-activation blocks), as used by
google-research/sam. `cnn6`, `mlp` and `small_cnn` are small networks for
curvature experiments and for the offline datasets of `keras_eigensam.experiments.data`
(`digits`: 8×8×1 images, `mnist1d`: length-40 signals of shape `(40, 1)`).

Conventions shared by every architecture:

- Convolution and hidden dense kernels use He-normal initialisation; the
  logits layer uses Keras's default Glorot-uniform, whose smaller scale keeps
  the initial logits near zero.
- Convolutions followed by BatchNormalization have no bias.
  BatchNormalization uses PyTorch's constants (`momentum=0.9`,
  `epsilon=1e-5`) so that results can be compared with the reference code.
- `weight_decay` adds `weight_decay / 2 · ‖W‖²` for every convolution and
  dense *kernel* to the loss (a coupled L2 penalty, collected in
  `model.losses`), so its gradient is `weight_decay · W`, the same as PyTorch
  `SGD(weight_decay=...)` applied to those kernels. Biases and BatchNorm
  parameters are not decayed.
- Under a mixed-precision dtype policy the logits layer computes in the
  policy's variable dtype (float32), so the loss is taken in float32.
"""

import keras
from keras import layers

from keras_eigensam import validation

NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "wrn28_10",
    "cnn6",
    "mlp",
    "small_cnn",
)

# PyTorch's BatchNorm defaults (momentum 0.1 on the new statistic).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def build(name, input_shape, num_classes, **kwargs):
    """Builds one of the library's architectures as a functional Keras model.

    The model maps a batch of inputs of shape `(batch,) + input_shape` to
    logits of shape `(batch, num_classes)`; it has no softmax. Architecture
    specific options are passed as keyword arguments:

    | name        | input rank | keyword arguments                            |
    |-------------|------------|----------------------------------------------|
    | `resnet18`  | 3 (HWC)    | `weight_decay`                               |
    | `resnet34`  | 3 (HWC)    | `weight_decay`                               |
    | `resnet50`  | 3 (HWC)    | `weight_decay`                               |
    | `wrn28_10`  | 3 (HWC)    | `weight_decay`, `dropout`                    |
    | `cnn6`      | 1, 2 or 3  | `weight_decay`, `width`, `dense_units`       |
    | `mlp`       | any        | `weight_decay`, `hidden_units`               |
    | `small_cnn` | 1, 2 or 3  | `weight_decay`, `filters`                    |

    Inputs of rank 3 are images (height, width, channels) and use 2-D
    convolutions; rank 2 are signals (length, channels) and use 1-D
    convolutions; rank 1 signals of shape `(length,)` get a channel axis added
    first.

    Parameter counts for 10 classes. `model.count_params()` includes the
    non-trainable BatchNorm moving mean and variance (two per channel), which
    PyTorch keeps as buffers rather than parameters; the trainable count is
    the number PyTorch's `sum(p.numel() for p in model.parameters())` gives
    for the reference models:

    ```
    resnet18   32×32×3  11,183,562  (11,173,962 trainable = PyTorch's count)
    resnet34   32×32×3  21,299,146  (21,282,122 trainable)
    resnet50   32×32×3  23,573,962  (23,520,842 trainable)
    wrn28_10   32×32×3  36,497,146  (36,479,194 trainable)
    cnn6       32×32×3   1,116,970
    mlp        8×8×1        26,122;  (40, 1):  23,050
    small_cnn  8×8×1        25,866;  (40, 1):  14,250
    ```

    Args:
        name: One of `NAMES`: `"resnet18"`, `"resnet34"`, `"resnet50"`,
            `"wrn28_10"`, `"cnn6"`, `"mlp"` or `"small_cnn"`.
        input_shape: Shape of one example without the batch axis, e.g.
            `(32, 32, 3)`, `(8, 8, 1)` or `(40, 1)`.
        num_classes: Number of output logits, an integer >= 1.
        **kwargs: Architecture options (see the table above):
            `weight_decay` (float >= 0, coupled L2 on kernels; 0 adds no
            regulariser; defaults to `0.0`), `dropout` (WideResNet dropout
            rate between the two convolutions of a block, in [0, 1);
            defaults to `0.0`), `width` (filters of the first two `cnn6`
            convolutions, the next two have twice as many; defaults to
            `32`), `dense_units` (hidden dense units of `cnn6`; defaults to
            `256`), `hidden_units` (tuple of `mlp` hidden layer widths;
            defaults to `(128, 128)`), `filters` (tuple of `small_cnn`
            convolution widths, with a 2× max-pool after every one but the
            last; defaults to `(16, 32, 64)`).

    Returns:
        A functional `keras.Model` named `name` whose output is the logits.

    Raises:
        ValueError: if `name` is not one of `NAMES`, `input_shape` has a rank
            the architecture does not accept or a non-positive dimension,
            `num_classes` < 1, or an option is out of range.
        TypeError: if an option is not accepted by the architecture or has
            the wrong type.

    Example:

    ```python
    model = keras_eigensam.experiments.architectures.build(
        "resnet18", (32, 32, 3), 10, weight_decay=5e-4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    ```
    """
    validation.check_choice("name", name, NAMES)
    input_shape = _check_input_shape(input_shape)
    num_classes = validation.check_int("num_classes", num_classes, minimum=1)
    return _BUILDERS[name](input_shape, num_classes, **kwargs)


# ---------------------------------------------------------------------------
# Building blocks.


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(
            "`input_shape` must be a tuple of positive integers. "
            f"Received: input_shape={input_shape!r}"
        ) from None
    if not shape:
        raise ValueError(
            "`input_shape` must have at least one dimension. "
            f"Received: input_shape={input_shape!r}"
        )
    for dim in shape:
        validation.check_int("input_shape", dim, minimum=1)
    return tuple(int(dim) for dim in shape)


#: The input ranks (without the batch axis) each architecture takes;
#: absent: any.
INPUT_RANKS = {
    "resnet18": (3,),
    "resnet34": (3,),
    "resnet50": (3,),
    "wrn28_10": (3,),
    "cnn6": (1, 2, 3),
    "small_cnn": (1, 2, 3),
}


def check_input(name, input_shape):
    """Raises a ValueError if architecture `name` cannot take `input_shape`
    (checked before anything is built or written)."""
    if name in INPUT_RANKS:
        _check_rank(name, tuple(input_shape), INPUT_RANKS[name])


def _check_rank(name, input_shape, ranks):
    if len(input_shape) not in ranks:
        raise ValueError(
            f"`input_shape` for {name!r} must have rank {' or '.join(map(str, ranks))} "
            f"(images are (height, width, channels), signals (length, channels)). "
            f"Received: input_shape={input_shape}"
        )


def _regularizer(weight_decay):
    weight_decay = validation.check_number("weight_decay", weight_decay, minimum=0.0)
    # The gradient of (wd / 2)·‖W‖² is wd·W, PyTorch's coupled weight decay.
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None


def _conv(filters, kernel_size, strides, regularizer, name, *, rank=2, use_bias=False):
    conv_cls = layers.Conv2D if rank == 2 else layers.Conv1D
    return conv_cls(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )


def _bn(name):
    return layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )


def _logits(x, num_classes, regularizer):
    # Float32 logits under mixed precision: the softmax cross-entropy is
    # numerically fragile in float16.
    return layers.Dense(
        num_classes,
        kernel_regularizer=regularizer,
        dtype=keras.config.dtype_policy().variable_dtype,
        name="logits",
    )(x)


def _spatial_input(input_shape):
    """Input and the tensor to convolve plus the convolution rank (1 or 2)."""
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    if len(input_shape) == 1:
        x = layers.Reshape(input_shape + (1,), name="add_channel")(x)
    rank = 2 if len(input_shape) == 3 else 1
    return inputs, x, rank


def _max_pool(rank, name):
    pool_cls = layers.MaxPooling2D if rank == 2 else layers.MaxPooling1D
    return pool_cls(2, padding="same", name=name)


# ---------------------------------------------------------------------------
# CIFAR ResNets (kuangliu/pytorch-cifar).


def _basic_block(x, planes, stride, regularizer, name):
    shortcut = x
    y = _conv(planes, 3, stride, regularizer, f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(planes, 3, 1, regularizer, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != planes:
        shortcut = _conv(planes, 1, stride, regularizer, f"{name}_shortcut_conv")(x)
        shortcut = _bn(f"{name}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, planes, stride, regularizer, name):
    expansion = 4
    shortcut = x
    y = _conv(planes, 1, 1, regularizer, f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(planes, 3, stride, regularizer, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(expansion * planes, 1, 1, regularizer, f"{name}_conv3")(y)
    y = _bn(f"{name}_bn3")(y)
    if stride != 1 or x.shape[-1] != expansion * planes:
        shortcut = _conv(
            expansion * planes, 1, stride, regularizer, f"{name}_shortcut_conv"
        )(x)
        shortcut = _bn(f"{name}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _cifar_resnet(name, block, blocks_per_stage, input_shape, num_classes, weight_decay):
    check_input(name, input_shape)
    regularizer = _regularizer(weight_decay)
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = _conv(64, 3, 1, regularizer, "stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (planes, num_blocks) in enumerate(
        zip((64, 128, 256, 512), blocks_per_stage), start=1
    ):
        for index in range(num_blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            x = block(x, planes, stride, regularizer, f"stage{stage}_block{index + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = _logits(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name=name)


def _resnet18(input_shape, num_classes, *, weight_decay=0.0):
    return _cifar_resnet(
        "resnet18", _basic_block, (2, 2, 2, 2), input_shape, num_classes, weight_decay
    )


def _resnet34(input_shape, num_classes, *, weight_decay=0.0):
    return _cifar_resnet(
        "resnet34", _basic_block, (3, 4, 6, 3), input_shape, num_classes, weight_decay
    )


def _resnet50(input_shape, num_classes, *, weight_decay=0.0):
    return _cifar_resnet(
        "resnet50", _bottleneck_block, (3, 4, 6, 3), input_shape, num_classes, weight_decay
    )


# ---------------------------------------------------------------------------
# WideResNet-28-10 (pre-activation; Zagoruyko & Komodakis, xternalz/WideResNet-pytorch).


def _wide_block(x, filters, stride, dropout, regularizer, name):
    equal_in_out = x.shape[-1] == filters and stride == 1
    activated = _bn(f"{name}_bn1")(x)
    activated = layers.ReLU(name=f"{name}_relu1")(activated)
    y = _conv(filters, 3, stride, regularizer, f"{name}_conv1")(activated)
    y = _bn(f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = _conv(filters, 3, 1, regularizer, f"{name}_conv2")(y)
    if equal_in_out:
        shortcut = x
    else:
        # The projection sees the pre-activated input, as in the reference.
        shortcut = _conv(filters, 1, stride, regularizer, f"{name}_shortcut_conv")(
            activated
        )
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _wrn28_10(input_shape, num_classes, *, weight_decay=0.0, dropout=0.0):
    check_input("wrn28_10", input_shape)
    dropout = validation.check_number("dropout", dropout, minimum=0.0, maximum=1.0)
    if dropout >= 1.0:
        raise ValueError(
            f"`dropout` must be a float in [0, 1). Received: dropout={dropout}"
        )
    regularizer = _regularizer(weight_decay)
    depth, widen = 28, 10
    blocks_per_group = (depth - 4) // 6
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = _conv(16, 3, 1, regularizer, "stem_conv")(inputs)
    for group, filters in enumerate((16 * widen, 32 * widen, 64 * widen), start=1):
        for index in range(blocks_per_group):
            stride = 2 if group > 1 and index == 0 else 1
            x = _wide_block(
                x, filters, stride, dropout, regularizer, f"group{group}_block{index + 1}"
            )
    x = _bn("final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = _logits(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name="wrn28_10")


# ---------------------------------------------------------------------------
# Small networks (no BatchNorm, so their Hessian does not depend on the BN mode).


def _cnn6(input_shape, num_classes, *, weight_decay=0.0, width=32, dense_units=256):
    check_input("cnn6", input_shape)
    width = validation.check_int("width", width, minimum=1)
    dense_units = validation.check_int("dense_units", dense_units, minimum=1)
    regularizer = _regularizer(weight_decay)
    inputs, x, rank = _spatial_input(input_shape)
    for stage, filters in enumerate((width, 2 * width), start=1):
        for index in (1, 2):
            name = f"conv{2 * (stage - 1) + index}"
            x = _conv(filters, 3, 1, regularizer, name, rank=rank, use_bias=True)(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = _max_pool(rank, f"pool{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(
        dense_units,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name="dense",
    )(x)
    x = layers.ReLU(name="dense_relu")(x)
    outputs = _logits(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name="cnn6")


def _mlp(input_shape, num_classes, *, weight_decay=0.0, hidden_units=(128, 128)):
    hidden_units = tuple(
        validation.check_int("hidden_units", units, minimum=1) for units in hidden_units
    )
    regularizer = _regularizer(weight_decay)
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = layers.Flatten(name="flatten")(inputs)
    for index, units in enumerate(hidden_units, start=1):
        x = layers.Dense(
            units,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer,
            name=f"dense{index}",
        )(x)
        x = layers.ReLU(name=f"dense{index}_relu")(x)
    outputs = _logits(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name="mlp")


def _small_cnn(input_shape, num_classes, *, weight_decay=0.0, filters=(16, 32, 64)):
    check_input("small_cnn", input_shape)
    filters = tuple(validation.check_int("filters", f, minimum=1) for f in filters)
    if not filters:
        raise ValueError("`filters` must not be empty. Received: filters=()")
    regularizer = _regularizer(weight_decay)
    inputs, x, rank = _spatial_input(input_shape)
    for index, width in enumerate(filters, start=1):
        name = f"conv{index}"
        x = _conv(width, 3, 1, regularizer, name, rank=rank, use_bias=True)(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        if index < len(filters):
            x = _max_pool(rank, f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _logits(x, num_classes, regularizer)
    return keras.Model(inputs, outputs, name="small_cnn")


_BUILDERS = {
    "resnet18": _resnet18,
    "resnet34": _resnet34,
    "resnet50": _resnet50,
    "wrn28_10": _wrn28_10,
    "cnn6": _cnn6,
    "mlp": _mlp,
    "small_cnn": _small_cnn,
}
