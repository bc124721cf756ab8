"""A smoke run that shows an install learns: 1,000 photos (about 200 per class), a narrow seed
CNN, three epochs.

Launch:
  python run_train.py --config=configs/tiny.py --workdir=/tmp/fashion_tiny
Result: 75% val accuracy on 85 photos (always answering the largest class: about 20%), in 35 s
of training on 2 CPU cores (AMD EPYC, AVX2; 40 s in all). tests/test_end_to_end.py checks that
it ends above 50%.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.max_rows = 1000
    config.model.filters = (16, 16, 16)
    config.model.dense_units = 64
    # BatchNorm's running statistics must catch up within ~60 steps.
    config.model.bn_momentum = 0.9
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 3
    config.checkpoint.every_steps = 5
    config.log_every_steps = 5
    return config
