"""Model 2 of the 2020 study: plain SGD (no momentum), exponential decay from 1e-2, batch 32.

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
    return config
