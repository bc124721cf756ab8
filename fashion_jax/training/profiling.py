"""--config.profile_steps: a `jax.profiler` trace of a few training steps, in <workdir>/profile.

The trace starts after the process's first dispatch of train steps has finished, so that
compilation (seconds, in one XLA thread) does not crowd out the steps it is for, and stops once at
least `profile_steps` steps have run after it (whole dispatches: on accelerators a dispatch is
steps_per_dispatch steps), after waiting for them to finish. A trace that reaches an epoch end
includes its precise BN and validation. Only the main process traces (processes on one host would
write the same file names).

View it with TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`, then
`tensorboard --logdir <workdir>/profile`) or open the .xplane.pb in XProf; a Perfetto trace
(perfetto_trace.json.gz) is written beside it for https://ui.perfetto.dev.
"""

import os

from absl import logging
import jax

PROFILE_DIR = "profile"


class StepProfiler:
    """Traces `num_steps` training steps (0: nothing) into `log_dir`; the training loop calls
    `after_dispatch` after each dispatch and `stop` at its end."""

    def __init__(self, log_dir: str = "", num_steps: int = 0):
        self.log_dir, self.num_steps = log_dir, num_steps
        self.started_at = None  # The step after which the trace started.
        self.done = not num_steps

    @classmethod
    def for_run(cls, config, workdir: str, is_main: bool) -> "StepProfiler":
        steps = int(config.get("profile_steps", 0)) if is_main else 0
        return cls(os.path.join(workdir, PROFILE_DIR), steps)

    def after_dispatch(self, step: int, outputs) -> None:
        """`step`: the step count after the dispatch whose `outputs` (any arrays) are given."""
        if self.done:
            return
        if self.started_at is None:
            jax.block_until_ready(outputs)  # Compilation and earlier steps stay out of the trace.
            jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
            self.started_at = step
            logging.info(
                "Profiling %d steps from step %d into %s.", self.num_steps, step, self.log_dir
            )
        elif step - self.started_at >= self.num_steps:
            self.stop(outputs)

    def stop(self, outputs=None) -> None:
        """Ends a trace in progress once `outputs` are computed; nothing otherwise."""
        if self.started_at is None or self.done:
            self.done = True
            return
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.done = True
        logging.info("Profile of steps %d onwards written to %s.", self.started_at, self.log_dir)
