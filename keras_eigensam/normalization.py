"""Which trainable variables are normalisation parameters (SAM-ON's
`perturbed_variables="normalization"`, `StepContext.is_normalization`)."""

import keras

#: Layers whose parameters count as normalisation parameters.
NORMALIZATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "UnitNormalization",
    )
    if hasattr(keras.layers, name)
)


def normalization_flags(model, variables):
    """Per variable of `variables`: does it belong to one of `model`'s
    normalisation layers (at any depth)?"""
    owners = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer._trainable_variables:
            owners[id(variable)] = layer
    return [isinstance(owners.get(id(v)), NORMALIZATION_LAYERS) for v in variables]
