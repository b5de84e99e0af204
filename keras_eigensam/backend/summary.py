"""TensorBoard scalars, written with `tf.summary` alone.

The scalars carry the scalar plugin's metadata (what
`tensorboard.summary.scalar` writes), so TensorBoard shows them as scalars
without this library depending on the `tensorboard` package.
"""

import math

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_eigensam import validation


def _scalar_metadata():
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return metadata


class ScalarWriter:
    """Writes scalar summaries to one event-file directory, opened lazily.

    Args:
        log_dir: Directory of the event files; created on the first write.

    Example:

    ```python
    writer = ScalarWriter("logs/hessian")
    writer.write(step=10, values={"hessian_top_eigenvalue": 3.2})
    writer.close()
    ```
    """

    def __init__(self, log_dir):
        self.log_dir = validation.check_path("log_dir", log_dir)
        self._writer = None
        self._metadata = _scalar_metadata()

    def write(self, step, values):
        """Writes `values` (tag → float) at `step`; non-finite values are skipped."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, value in values.items():
                if math.isfinite(value):
                    tf.summary.write(
                        tag,
                        tf.constant(value, tf.float32),
                        step=step,
                        metadata=self._metadata,
                    )

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
