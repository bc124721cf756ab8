"""The (weighted) mean of the runs' predicted probabilities."""

from fashion_jax import errors
from fashion_jax.evaluation.evaluators import base
from fashion_jax.inference import predictor


def weights(section, num_runs: int):
    """config.evals.ensemble.weights as normalised numbers, one per run ("": equal)."""
    text = section.weights.strip() if isinstance(section.weights, str) else section.weights
    flag = base.flag("ensemble", "weights")
    try:
        values = [float(w) for w in text.split(",")] if isinstance(text, str) and text else text
        return predictor.normalized_weights(values, num_runs, flag)
    except ValueError:
        raise errors.ConfigError(
            f"{flag}={section.weights}: give {num_runs} non-negative numbers, one per workdir, "
            "not all zero, e.g. 0.6,0.4 ({e})."
        ) from None


@base.register
class Ensemble(base.Evaluator):
    name = "ensemble"

    @classmethod
    def check_section(cls, section, num_runs: int) -> None:
        weights(section, num_runs)

    def run(self, ctx):
        member_weights = weights(self.section, len(ctx.checkpoints))
        members = [c.name for c in ctx.checkpoints]
        log_probs = {
            s: predictor.mix(
                [ctx.checkpoint_log_probs(c, s) for c in ctx.checkpoints], member_weights
            )
            for s in ctx.subsets
        }
        yield base.Entry(
            "ensemble (" + " + ".join(members) + ")",
            "ensemble",
            log_probs,
            {"members": members, "weights": [float(w) for w in member_weights]},
        )
