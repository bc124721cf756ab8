"""A seconds-long smoke run: a few hundred images, a narrow model, two epochs.

Launch:
  python run_train.py --config=configs/tiny.py --workdir=/tmp/fashion_tiny
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.max_rows = 400
  config.model.filters = (8, 8, 8)
  config.model.dense_units = 32
  config.batch_size = 16
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.checkpoint.every_steps = 5
  config.log_every_steps = 5
  return config
