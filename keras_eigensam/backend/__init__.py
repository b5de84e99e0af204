"""The TensorFlow-specific part of the library core, behind one seam.

Everything the core needs from TensorFlow itself (gradient tapes,
`ForwardAccumulator`, `tf.distribute` replica contexts and conditionals,
`IndexedSlices`, summary writing) lives in the modules of this package; the
rest of `keras_eigensam` (outside `experiments/`, whose `tf.data` pipelines
may use TensorFlow) is written with `keras.ops` and `keras.tree` and calls in
here. A JAX backend would be a sibling package with the same functions.
"""
