"""The glue run_eval.py calls: open runs read-only, evaluate or predict, write the outputs."""

import os
from typing import Optional

from absl import logging

from fashion_jax import restore
from fashion_jax.evaluation import context as context_lib
from fashion_jax.evaluation import data as data_lib
from fashion_jax.evaluation import evaluators as evaluators_lib
from fashion_jax.evaluation import heads as heads_lib
from fashion_jax.evaluation import predict as predict_lib
from fashion_jax.evaluation import predictor
from fashion_jax.evaluation import report as report_lib
from fashion_jax.evaluation import soup as soup_lib

PREDICT_WITH = ("auto", "single", "ensemble", "uniform_soup", "greedy_soup")


EvalError = context_lib.EvalError


def build_context(workdirs: list, options: context_lib.EvalOptions,
                  head: Optional[str] = None,
                  shared_predictions: Optional[context_lib.AllHeadsPredictions] = None
                  ) -> context_lib.Context:
    """Opens each workdir read-only at --checkpoint; the runs must share split and classes.
    Multi-head runs are seen through `head` (default: their first); `shared_predictions` lets
    the contexts of several heads read and predict each checkpoint once."""
    if not workdirs:
        raise EvalError("Pass at least one training workdir with --workdirs.")
    if len(set(os.path.abspath(w) for w in workdirs)) != len(workdirs):
        raise EvalError(f"--workdirs lists a workdir twice: {workdirs}.")
    runs = [restore.open_run(w, name) for w, name in zip(workdirs, restore.short_names(workdirs))]
    splits = [restore.read_split(run) for run in runs]
    if head or runs[0].heads:
        head = head or runs[0].head
        runs = [restore.with_head(run, head) for run in runs]
        splits = [data_lib.head_split(split, head) for split in splits]
    difference = data_lib.check_same_split(runs, splits)
    if difference:
        raise EvalError(f"The workdirs cannot be compared or combined: {difference}. Evaluate "
                        "them in separate run_eval.py calls.")
    load = shared_predictions.load_checkpoint if shared_predictions else restore.load_checkpoint
    checkpoints = []
    for run in runs:
        step = restore.select_step(run, options.checkpoint)
        checkpoints.append(load(run, step))
        logging.info("%s: checkpoint %s -> step %d", run.workdir, options.checkpoint, step)
    data = data_lib.EvalData(runs[0], splits[0], options.data_dir, options.progress_bar)
    ctx = context_lib.Context(runs, checkpoints, data, options, shared_predictions)
    ctx.top_classes = heads_lib.top_class_indices(splits[0], ctx.class_names)
    return ctx


def evaluate(workdirs: list, options: context_lib.EvalOptions, output_dir: str) -> dict:
    """Runs the chosen evaluators and writes the report into `output_dir`; returns report.json.

    Multi-head runs: one report per head (--head, default all) in <output_dir>/<head>/, plus
    heads.json/heads.md (per-head table, hierarchy consistency); returns {head: report}.
    """
    _check_output_dir(output_dir, workdirs)
    if not workdirs:
        raise EvalError("Pass at least one training workdir with --workdirs.")
    first = restore.open_run(workdirs[0])
    heads = heads_lib.heads_to_evaluate(first, options.head)
    if heads is None:
        return _evaluate_head(workdirs, options, output_dir)
    shared_predictions = context_lib.AllHeadsPredictions(options)
    reports = {head: _evaluate_head(workdirs, options, os.path.join(output_dir, head), head,
                                    shared_predictions)
               for head in heads}
    checkpoint = shared_predictions.load_checkpoint(
        first, restore.select_step(first, options.checkpoint))
    hierarchy_result = heads_lib.hierarchy_evaluation(
        checkpoint, restore.read_split(first), options.subsets, options, shared_predictions)
    heads_lib.write(output_dir, heads_lib.summary(reports, hierarchy_result))
    logging.info("Wrote %s and %s in %s", heads_lib.HEADS_JSON, heads_lib.HEADS_MD, output_dir)
    return reports


def _evaluate_head(workdirs: list, options: context_lib.EvalOptions, output_dir: str,
                   head: Optional[str] = None,
                   shared_predictions: Optional[context_lib.AllHeadsPredictions] = None) -> dict:
    ctx = build_context(workdirs, options, head, shared_predictions)
    unknown = sorted(set(options.subsets) - set(ctx.data.subset_names()))
    if unknown or not options.subsets:
        raise EvalError(f"--subsets={','.join(options.subsets)}: choose among "
                        f"{ctx.data.subset_names()}.")
    names = evaluators_lib.resolve(options.evaluators, len(ctx.runs))
    entries = []
    for name in names:
        logging.info("Evaluator %s ...", name)
        entries += list(evaluators_lib.EVALUATORS[name](ctx))
    report = report_lib.build(ctx, entries, names)
    report_lib.write(output_dir, report, ctx, entries)
    logging.info("Wrote %s and %s in %s", report_lib.REPORT_JSON, report_lib.REPORT_MD,
                 output_dir)
    return report


def predict(workdirs: list, options: context_lib.EvalOptions, source: str, output_csv: str,
            predict_with: str = "auto", top_k: int = 3,
            review_threshold: Optional[float] = None) -> predict_lib.PredictionCounts:
    """Classifies the photos of `source` (a folder or CSV) into `output_csv`; with
    `review_threshold`, flags rows whose top-1 probability is below it (needs_review)."""
    if review_threshold is not None and not 0 <= review_threshold <= 1:
        raise EvalError(f"--review_threshold={review_threshold} must be a probability in [0, 1] "
                        "(e.g. the review threshold of report.md).")
    _check_output_dir(os.path.dirname(os.path.abspath(output_csv)), workdirs)
    ctx = build_context(workdirs, options)
    mixture, description = _predictor(ctx, predict_with)
    logging.info("Predicting %s with %s", source, description)
    run = ctx.runs[0]
    counts = predict_lib.predict_files(
        source, mixture, {h: list(c) for h, c in run.heads.items()} if run.heads
        else ctx.class_names, run.image_shape, output_csv,
        batch_size=options.batch_size, top_k=top_k, show_progress=options.progress_bar,
        review_threshold=review_threshold,
        extra_columns=heads_lib.consistent_columns(run, restore.read_split(run))
        if run.heads else None)
    logging.info("Wrote %s: %d images predicted, %d could not be read.", output_csv,
                 counts.predicted, counts.failed)
    return counts


def _predictor(ctx, predict_with: str):
    if predict_with not in PREDICT_WITH:
        raise EvalError(f"--predict_with={predict_with} is unknown; use one of {PREDICT_WITH}.")
    if predict_with == "auto":
        predict_with = "single" if len(ctx.checkpoints) == 1 else "ensemble"
    if predict_with == "single":
        if len(ctx.checkpoints) != 1:
            raise EvalError(f"--predict_with=single needs one workdir, got "
                            f"{len(ctx.checkpoints)}; use ensemble or a soup.")
        checkpoint = ctx.checkpoints[0]
        return (predictor.Mixture([(checkpoint.run.model, checkpoint.variables)],
                                  tta=ctx.options.tta), checkpoint.name)
    if predict_with == "ensemble":
        members = [(c.run.model, c.variables) for c in ctx.checkpoints]
        return (predictor.Mixture(members, ctx.options.ensemble_weights, ctx.options.tta),
                "ensemble of " + ", ".join(c.name for c in ctx.checkpoints))
    kind = predict_with.removesuffix("_soup")
    ingredients, _, soups = soup_lib.cook(ctx, (kind,))
    return (predictor.Mixture([(ingredients[0].run.model, soups[0].variables)],
                              tta=ctx.options.tta),
            f"{kind} soup of " + ", ".join(soups[0].details["ingredients"]))


def _check_output_dir(output_dir: str, workdirs: list):
    """Outputs never go into a training workdir."""
    output_dir = os.path.realpath(output_dir)
    for workdir in workdirs:
        workdir = os.path.realpath(workdir)
        if output_dir == workdir or output_dir.startswith(workdir + os.sep):
            raise EvalError(f"The output {output_dir} is inside the training workdir {workdir}, "
                            "which the evaluator never writes to; choose another --output_dir "
                            "or --output.")
