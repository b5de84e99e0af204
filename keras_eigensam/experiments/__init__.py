"""The experiment harness: training runs and comparisons of the methods.

What the scripts and the Colab notebook do, importable:

- `config`: `TrainConfig` (one run's settings), its choices, defaults and
  `run_name`; no TensorFlow of its own.
- `runner`: `run(config)` trains and writes a run directory.
- `comparison`: `compare` runs several methods over seeds and tabulates them.
- `strategies`: the `tf.distribute` strategies and who writes what.
- `optimizers`: the base optimizer, its schedule and weight decay.
- `curvature`: the callbacks and the plot of `curvature=True`.
- `results`: `results.json`, versions, device, the run's files.
- `data`, `architectures`: the datasets and networks of the experiments.
- `plotting`: curvature and spectral-density figures.

Example:

```python
from keras_eigensam import experiments

config = experiments.TrainConfig(method="eigensam", method_args={"alpha": 0.1})
results = experiments.run(config)
```
"""

from keras_eigensam.experiments import architectures
from keras_eigensam.experiments import comparison
from keras_eigensam.experiments import config
from keras_eigensam.experiments import curvature
from keras_eigensam.experiments import data
from keras_eigensam.experiments import optimizers
from keras_eigensam.experiments import plotting
from keras_eigensam.experiments import results
from keras_eigensam.experiments import runner
from keras_eigensam.experiments import strategies
from keras_eigensam.experiments.comparison import compare
from keras_eigensam.experiments.comparison import comparison_markdown
from keras_eigensam.experiments.comparison import configs_for_methods
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments.config import TrainConfig
from keras_eigensam.experiments.config import run_name
from keras_eigensam.experiments.plotting import plot_curvature
from keras_eigensam.experiments.runner import run
from keras_eigensam.experiments.strategies import describe as describe_strategy
from keras_eigensam.experiments.strategies import make_strategy
