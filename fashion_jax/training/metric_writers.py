"""Metric writers with the interface of CLU's (`write_scalars(step, dict)`, `write_hparams`).

Process 0 writes TensorBoard event files (tensorboardX, which needs no TensorFlow) into
<workdir>/tensorboard and one JSON line per `write_scalars` call into <workdir>/scalars.jsonl;
other processes get a writer that writes nothing. `tensorboard --logdir runs/` shows every run
while it trains. Keys are slash-namespaced: train/loss, val/accuracy/subCategory.
"""

import json
import os

TENSORBOARD_DIR = "tensorboard"
SCALARS_FILE = "scalars.jsonl"


class NoOpWriter:
    """What processes other than 0 write: nothing."""

    def write_scalars(self, step: int, scalars: dict):
        pass

    def write_hparams(self, hparams: dict):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class TensorBoardWriter(NoOpWriter):
    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir, flush_secs=30)

    def write_scalars(self, step: int, scalars: dict):
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(value), global_step=int(step))

    def write_hparams(self, hparams: dict):
        """Hyper-parameters in TensorBoard's HParams tab, in this run's own folder (tensorboardX's
        `add_hparams` would start a sub-run)."""
        from tensorboardX.summary import hparams as hparams_summary

        values = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()
        }
        for summary in hparams_summary(values, {}):
            self._writer._get_file_writer().add_summary(summary)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class JsonlWriter(NoOpWriter):
    """One line {"step": s, key: value, ...} per write_scalars call, appended and flushed."""

    def __init__(self, path: str):
        self.path = path

    def write_scalars(self, step: int, scalars: dict):
        with open(self.path, "a") as f:
            f.write(
                json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
            )

    def drop_after(self, step: int):
        """Forgets lines past `step`, so that a resumed run does not repeat what it redoes."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)


class MultiWriter(NoOpWriter):
    def __init__(self, writers: list):
        self.writers = writers

    def write_scalars(self, step: int, scalars: dict):
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def write_hparams(self, hparams: dict):
        for writer in self.writers:
            writer.write_hparams(hparams)

    def flush(self):
        for writer in self.writers:
            writer.flush()

    def close(self):
        for writer in self.writers:
            writer.close()


def create_default_writer(workdir: str, is_main: bool, resumed_step: int = 0) -> NoOpWriter:
    """TensorBoard + JSONL on the main process (scalars.jsonl cut back to `resumed_step`), else
    a writer that writes nothing."""
    if not is_main:
        return NoOpWriter()
    jsonl = JsonlWriter(os.path.join(workdir, SCALARS_FILE))
    jsonl.drop_after(resumed_step)
    return MultiWriter([TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR)), jsonl])


def read_scalars(workdir: str) -> list:
    with open(os.path.join(workdir, SCALARS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]
