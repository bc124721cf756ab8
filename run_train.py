"""Train a fashion_jax model.

  python run_train.py --config=configs/adam.py --workdir=runs/adam [--config.field=value ...]

Running the same command again on a workdir with checkpoints resumes from the latest one.
"""

import sys

from fashion_jax import launch

if __name__ == "__main__":
  launch.maybe_reexec_with_tcmalloc()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fashion_jax import logging_setup  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from fashion_jax import train
  from fashion_jax.styles import DataError
  from fashion_jax.train import NonFiniteLossError
  logging_setup.quiet_library_logs()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (DataError, NonFiniteLossError) as e:
    sys.exit(f"run_train.py: {e}")


if __name__ == "__main__":
  app.run(main)
