"""Training augmentation and normalisation of the experiments' input pipelines.

`data.load(..., augment=...)` applies these when `training=True`:

| `augment`       | what it does                                              |
|-----------------|-----------------------------------------------------------|
| `"none"`        | nothing                                                   |
| `"standard"`    | zero-pad and random-crop back to size (4 pixels; 1 for    |
|                 | `digits`), plus a horizontal flip for `cifar10`,          |
|                 | `cifar100` and `fashion_mnist` but not for the digit      |
|                 | datasets (a mirrored digit is another symbol).            |
|                 | `mnist1d` gets no augmentation: its generator already     |
|                 | translates, shears, scales and adds noise.                |
| `"cutout"`      | `"standard"`, then `keras_cv.layers.RandomCutout`: a      |
|                 | square of half the image side (16×16 on CIFAR) centred    |
|                 | anywhere in the image and clipped at its border, filled   |
|                 | after normalisation with 0 (the dataset mean), as in      |
|                 | DeVries & Taylor (2017).                                  |
| `"randaugment"` | `"standard"`, then `keras_cv.layers.RandAugment` with     |
|                 | keras-cv's default policy before normalisation.           |

The standard augmentation works per example (`augment_examples`, before
batching) with stateless image ops seeded from `tf.data.Dataset.random`, so
the same seed gives the same augmentation in every run. Cutout and
RandAugment work per batch (`augment_and_normalise_batches`, with the
normalisation) and keep their own random state: Cutout runs sequentially and
is reproducible for a given seed; RandAugment is not reproducible across
runs, because several of keras-cv 0.9's RandAugment operations sample their
magnitudes with TensorFlow's global random ops.
"""

import tensorflow as tf

from keras_eigensam import install

NAMES = ("none", "standard", "cutout", "randaugment")
#: The augmentations made of keras-cv layers (images only).
KERAS_CV = ("cutout", "randaugment")

_CUTOUT_FRACTION = 0.5


def to_unit_float(image):
    """Images in [0, 1] (uint8 ones are divided by 255), signals as they are."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def augment_examples(ds, spec, augment, seed, rerandomize=True):
    """Per-example conversion to float and the standard augmentation.

    Args:
        ds: Unbatched `(image, label)` examples.
        spec: The dataset's `pad` (pixels of the pad-and-crop, 0 for none),
            `flip` (random horizontal flips) and `input_shape`.
        augment: One of `NAMES`; all but `"none"` apply the standard
            augmentation.
        seed: Seed of the per-example seeds.
        rerandomize: Draw new per-example seeds at every iteration of the
            dataset (one epoch per iteration), else the same ones (one
            dataset per epoch, its seed the epoch's). Defaults to `True`.
    """
    if augment == "none" or not (spec.pad or spec.flip):
        return ds.map(
            lambda image, label: (to_unit_float(image), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    # One random int64 per example, different in every epoch but the same in
    # every run: the seeds of the stateless image ops.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize)

    def standard(example, example_seed):
        image, label = example
        image = to_unit_float(image)
        if spec.pad:
            pad = spec.pad
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.stateless_random_crop(
                image, spec.input_shape, seed=tf.stack([example_seed, 0])
            )
        if spec.flip:
            image = tf.image.stateless_random_flip_left_right(
                image, seed=tf.stack([example_seed, 1])
            )
        return image, label

    return tf.data.Dataset.zip(ds, seeds).map(
        standard, num_parallel_calls=tf.data.AUTOTUNE
    )


def augment_and_normalise_batches(ds, spec, augment, seed, mean, std):
    """Per-batch keras-cv augmentation (`KERAS_CV`) and normalisation.

    Images are normalised with the per-channel `mean` and `std`;
    RandAugment runs before (on [0, 1] images), Cutout after (its fill, 0,
    is then the dataset mean).
    """
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    before, after = None, None
    if augment == "randaugment":
        rand_augment = _keras_cv_layers().RandAugment(
            value_range=(0, 1), seed=_keras_cv_seed(seed)
        )
        if spec.input_shape[-1] == 1:
            # keras-cv's policy converts colours and needs RGB; every op of the
            # policy maps grey to grey, so averaging the channels loses nothing.
            def before(images):
                rgb = tf.image.grayscale_to_rgb(images)
                return tf.reduce_mean(rand_augment(rgb), axis=-1, keepdims=True)

        else:
            before = rand_augment
    elif augment == "cutout":
        after = _keras_cv_layers().RandomCutout(
            # A (min, max) pair: a fixed size. A single float would draw the
            # size uniformly from [0, fraction].
            height_factor=(_CUTOUT_FRACTION, _CUTOUT_FRACTION),
            width_factor=(_CUTOUT_FRACTION, _CUTOUT_FRACTION),
            fill_mode="constant",
            fill_value=0.0,
            seed=_keras_cv_seed(seed),
        )

    def transform(images, labels):
        if before is not None:
            images = before(images)
        images = (images - mean) / std
        if after is not None:
            images = after(images)
        return images, labels

    # keras-cv layers draw from a stateful generator: call them in order, so
    # that the draws (and thus the batches) do not depend on thread timing.
    stateful = before is not None or after is not None
    return ds.map(transform, num_parallel_calls=None if stateful else tf.data.AUTOTUNE)


def _keras_cv_layers():
    try:
        import keras_cv
    except ImportError as e:
        raise install.missing_extra("keras-cv", "Cutout and RandAugment") from e
    return keras_cv.layers


def _keras_cv_seed(seed):
    # keras-cv 0.9 layers treat a falsy seed as "no seed" and then draw from
    # TensorFlow's global generator: never pass them 0.
    return seed + 1
