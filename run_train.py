"""Train a fashion_jax model.

  python run_train.py --config=configs/adam.py --workdir=runs/adam [--config.field=value ...]

Running the same command again on a workdir with checkpoints resumes from the latest one.
One run per workdir (a second is refused, naming the first's host and process id). On SIGTERM
(a scheduler's preemption) it saves at the current step and exits with code 143; the same
command resumes from there.
Multi-process: add --distributed (launcher environment) or --coordinator_address=host:port
--num_processes=N --process_id=i, with the same --workdir on a shared filesystem.
"""

import os
import sys

from fashion_jax import launch

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fashion_jax import errors  # noqa: E402
from fashion_jax import logging_setup  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize(), detecting the cluster from the launcher "
    "(SLURM, Open MPI, Kubernetes, TPU) for values not given below.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    100,
    "Multi-process: a process silent this long is taken as dead and the others stop (JAX's "
    "default). A collective notices a dead process at once; this bounds the wait of the others "
    "at a checkpoint's barrier.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from fashion_jax.training import config_checks
    from fashion_jax.training import parallel
    from fashion_jax.training import train

    logging_setup.quiet_library_logs()
    try:
        config_checks.check_train_config(
            FLAGS.config, FLAGS.workdir
        )  # Before any data, device or compile work.
        parallel.initialize_distributed(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            auto=FLAGS.distributed,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        )
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except errors.PeerLostError as e:
        print(f"run_train.py: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(
            1
        )  # Not sys.exit: JAX's exit handlers would wait for the dead process, then abort.
    except errors.PreemptedError as e:
        print(f"run_train.py: {e}", file=sys.stderr)
        sys.exit(errors.PREEMPTED_EXIT_CODE)
    except errors.UserError as e:
        sys.exit(f"run_train.py: {e}")


if __name__ == "__main__":
    app.run(main)
