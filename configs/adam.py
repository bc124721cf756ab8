"""The seed's Model 1: Adam, exponential decay from 1e-3 (10000 steps, rate 0.9), batch 32, plus
two changes that make its numbers trustworthy and better (the optimizer is the seed's):
a bias-corrected moving average of the weights (decay 0.9995, about two epochs), which is what is
validated, early-stopped on and evaluated, and BatchNorm statistics recomputed for it on 100
training batches at every epoch end.

Launch:
  python run_train.py --config=configs/adam.py --workdir=runs/adam
The seed's recipe exactly (no averaging, running BatchNorm averages):
  python run_train.py --config=configs/adam.py --workdir=runs/adam_seed \
      --config.ema_decay=0 --config.bn_recalibration_batches=0
"""

from configs import default


def get_config():
    config = default.get_config()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.ema_decay = 0.9995
    config.bn_recalibration_batches = 100
    return config
