"""The seed's Model 2: plain SGD (no momentum), exponential decay from 1e-2, batch 32.

Launch:
  python run_train.py --config=configs/sgd.py --workdir=runs/sgd
"""

from configs import default


def get_config():
    config = default.get_config()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-2
    config.optimizer.momentum = 0.0
    return config
