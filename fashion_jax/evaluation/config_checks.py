"""Every check of run_eval.py's configuration (default_config.py), run before any checkpoint is
read, any image decoded or any kernel compiled. Each evaluator checks its own section."""

import glob
import os

from fashion_jax import errors
from fashion_jax.data import dataset
from fashion_jax.data import image_cache
from fashion_jax.inference import predictor

CHECKPOINT_CHOICES = ("best", "latest", "<step number>")
COMBINE_CHOICES = ("auto", "single", "ensemble", "uniform_soup", "greedy_soup")
PREDICTIONS_SUFFIX = "_predictions.csv"  # <subset>_predictions.csv, per detailed model.


def names(value) -> tuple:
    """A comma-separated config string (or a sequence) as a tuple of stripped, non-empty names."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if str(p).strip())


def check_eval_config(config, num_workdirs: int, predicting: bool = False) -> None:
    """Raises ConfigError for the first unknown name, out-of-range value or impossible mix."""
    if num_workdirs < 1:
        raise errors.ConfigError(
            "Pass at least one training workdir with --workdirs (e.g. --workdirs=runs/adam)."
        )
    checkpoint = str(config.checkpoint).strip().lower()
    if checkpoint not in ("best", "latest") and not checkpoint.isdigit():
        errors.check_choice("--config.checkpoint", config.checkpoint, CHECKPOINT_CHOICES)
    subsets = names(config.subsets)
    if not subsets:
        raise errors.ConfigError(
            f"--config.subsets is empty; choose among {', '.join(dataset.SUBSETS)}."
        )
    for subset in subsets:
        errors.check_choice("--config.subsets", subset, dataset.SUBSETS)
    errors.check_choice("--config.tta", config.tta, predictor.TTA_MODES)
    _at_least(1, batch_size=config.batch_size)
    _at_least(1, **{"report.ece_bins": config.report.ece_bins})
    _at_least(0, **{"report.gallery_size": config.report.gallery_size})
    _at_least(1, **{"report.bootstrap_samples": config.report.bootstrap_samples})
    for field in ("target_precision", "confidence_level"):
        value = config.report[field]
        if not 0 < value < 1 and not (field == "target_precision" and value == 1):
            raise errors.ConfigError(
                f"--config.report.{field}={value} must be a probability in (0, 1), e.g. 0.95."
            )
    for folder in names(config.report.compare_with):
        if not glob.glob(os.path.join(folder, "*" + PREDICTIONS_SUFFIX)):
            raise errors.ConfigError(
                f"--config.report.compare_with: {folder} holds no *{PREDICTIONS_SUFFIX}; give the "
                "folder of one model in another evaluation's --output_dir (run_eval.py writes "
                "one per detailed model)."
            )
    from fashion_jax.evaluation import evaluators  # Here: the evaluators use names() above.

    if predicting:
        _check_predict(config.predict, num_workdirs)
        for name in _needed_for_predict(config.predict, num_workdirs):
            evaluators.check_section(name, config.evals[name], num_workdirs)
    else:
        evaluators.check(config, num_workdirs)


def _check_predict(section, num_workdirs: int) -> None:
    errors.check_choice("--config.predict.combine", section.combine, COMBINE_CHOICES)
    if section.combine == "single" and num_workdirs != 1:
        raise errors.ConfigError(
            f"--config.predict.combine=single needs one workdir, got {num_workdirs}; use "
            "ensemble, uniform_soup or greedy_soup, or pass one --workdirs."
        )
    _at_least(1, **{"predict.top_k": section.top_k})
    errors.check_choice("--config.predict.resize", section.resize, image_cache.RESIZE_MODES)
    if section.review_threshold > 1:
        raise errors.ConfigError(
            f"--config.predict.review_threshold={section.review_threshold} must be a "
            "probability in [0, 1] (e.g. the review threshold of report.md), or negative for none."
        )


def _needed_for_predict(section, num_workdirs: int) -> tuple:
    """The evaluator sections whose options --predict uses."""
    combine = section.combine
    if combine == "auto":
        combine = "single" if num_workdirs == 1 else "ensemble"
    return ("soup",) if combine.endswith("_soup") else (combine,)


def _at_least(minimum: int, **values) -> None:
    for flag, value in values.items():
        if value < minimum:
            raise errors.ConfigError(f"--config.{flag}={value} must be at least {minimum}.")
