"""The seed's Model 1: Adam, exponential decay from 1e-3 (10000 steps, rate 0.9), batch 32.

Launch:
  python run_train.py --config=configs/adam.py --workdir=runs/adam
"""

from configs import default


def get_config():
  config = default.get_config()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  return config
