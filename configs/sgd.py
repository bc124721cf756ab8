"""Model 2 of the 2020 study: plain SGD (no momentum), exponential decay from 1e-2, batch 32.

The decay is given in examples (configs/default.py: 320,000, the study's 10,000 steps at batch 32),
so at another --config.batch_size B it covers the same images, and the learning rate follows the
linear rule, 1e-2 * B / 32.

Launch:
  python run_train.py --config=configs/sgd.py --workdir=runs/sgd
Result (docs/results.md): early stop after 12 epochs (best 9), 98.38% val, 98.41% test, 98.36%
control, 5,049 s of training on 2 shared CPU cores.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-2
    config.optimizer.momentum = 0.0
    config.optimizer.batch_scaling = "linear"  # As "auto" chooses for sgd (Goyal et al. 2017).
    return config
