"""Each run's chosen checkpoint on its own."""

from fashion_jax.evaluation.evaluators import base


def checkpoint_details(checkpoint) -> dict:
    return {
        "workdir": checkpoint.run.workdir,
        "step": checkpoint.step,
        "epoch": checkpoint.epoch,
        "optimizer": checkpoint.run.optimizer,
    }


@base.register
class Single(base.Evaluator):
    name = "single"

    def run(self, ctx):
        for checkpoint in ctx.checkpoints:
            yield base.Entry(
                checkpoint.name,
                "single",
                {s: ctx.checkpoint_log_probs(checkpoint, s) for s in ctx.subsets},
                checkpoint_details(checkpoint),
            )
