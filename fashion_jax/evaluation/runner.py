"""The glue run_eval.py calls: open runs read-only, run the evaluators, write the reports.

`Evaluation` opens the workdirs (metadata only), checks that they can be compared, picks each
run's checkpoint and holds the data and prediction store that every head's context shares.
Nothing is restored until an evaluator asks for predictions.
"""

import dataclasses
import os

from absl import logging
import pandas as pd

from fashion_jax import errors
from fashion_jax import logging_setup
from fashion_jax import saved_runs
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import context as context_lib
from fashion_jax.evaluation import data as data_lib
from fashion_jax.evaluation import evaluators as evaluators_lib
from fashion_jax.evaluation import heads as heads_lib
from fashion_jax.evaluation import report as report_lib
from fashion_jax.evaluation.evaluators import audit


class Evaluation:
    """The runs of --workdirs, one checkpoint each, with their shared split, data and store."""

    def __init__(self, workdirs: list, config):
        if len({os.path.realpath(w) for w in workdirs}) != len(workdirs):
            raise errors.EvalError(f"--workdirs lists a workdir twice: {workdirs}.")
        self.config = config
        self.runs = [
            saved_runs.open_run(w, name)
            for w, name in zip(workdirs, saved_runs.short_names(workdirs))
        ]
        self.splits = [saved_runs.read_split(run) for run in self.runs]
        difference = data_lib.check_same_split(self.runs, self.splits)
        if difference:
            raise errors.EvalError(
                f"The workdirs cannot be compared or combined: {difference}. Evaluate them in "
                "separate run_eval.py calls."
            )
        self.checkpoints = []
        for run in self.runs:
            step = saved_runs.select_step(run, config.checkpoint)
            self.checkpoints.append(saved_runs.checkpoint_at(run, step))
            logging.info("%s: checkpoint %s -> step %d", run.workdir, config.checkpoint, step)
        self.data = data_lib.EvalData(
            self.runs[0],
            self.splits[0],
            config.data_dir,
            logging_setup.progress_bars_wanted(config.progress_bar),
        )
        subsets = config_checks.names(config.subsets)
        missing = sorted(set(subsets) - set(self.data.subset_names()))
        if missing:
            raise errors.EvalError(
                f"--config.subsets={config.subsets}: the saved split has no {missing}; choose "
                f"among {self.data.subset_names()}."
            )
        # Val too: temperatures, review thresholds and soups are fitted on it.
        self.store = context_lib.PredictionStore(config, self.data, (*subsets, "val"))

    def context(self, head: str | None = None) -> context_lib.Context:
        """The runs seen through `head` (multi-head runs; None: the run's only or first head)."""
        runs, checkpoints, split, data = self.runs, self.checkpoints, self.splits[0], self.data
        if head is not None:
            runs = [saved_runs.with_head(run, head) for run in runs]
            checkpoints = [dataclasses.replace(c, run=r) for c, r in zip(checkpoints, runs)]
            split = data_lib.head_split(split, head)
            data = data_lib.EvalData(runs[0], split, images_from=self.data)
        ctx = context_lib.Context(runs, checkpoints, data, self.config, self.store)
        ctx.top_classes = heads_lib.top_class_indices(split, ctx.class_names)
        return ctx


def evaluate(workdirs: list, config, output_dir: str) -> dict:
    """Runs the chosen evaluators and writes the report into `output_dir`; returns report.json.

    Multi-head runs: one report per head (--config.head, default all) in <output_dir>/<head>/,
    plus heads.json/heads.md (per-head table, hierarchy consistency); returns {head: report}.
    """
    check_output_dir(output_dir, workdirs)
    evaluation = Evaluation(workdirs, config)
    evaluation.data.dataset_dir()  # A missing dataset is reported before any checkpoint is read.
    heads = heads_lib.heads_to_evaluate(evaluation.runs[0], config.head)
    if heads is None:
        return _evaluate_context(evaluation.context(), config, output_dir)
    reports = {
        head: _evaluate_context(evaluation.context(head), config, os.path.join(output_dir, head))
        for head in heads
    }
    _combine_audits(output_dir, heads)
    hierarchy_result = heads_lib.hierarchy_evaluation(evaluation, config, output_dir)
    heads_lib.write(output_dir, heads_lib.summary(reports, hierarchy_result))
    logging.info("Wrote %s and %s in %s", heads_lib.HEADS_JSON, heads_lib.HEADS_MD, output_dir)
    return reports


def _evaluate_context(ctx: context_lib.Context, config, output_dir: str) -> dict:
    names = evaluators_lib.resolve(config.evaluators, len(ctx.runs))
    evaluators = [evaluators_lib.build(name, config) for name in names]
    entries = []
    for name, evaluator in zip(names, evaluators):
        logging.info("Evaluator %s ...", name)
        entries += list(evaluator.run(ctx))
    report = report_lib.build(ctx, entries, names)
    extra = [line for e in evaluators for line in e.write_files(ctx, output_dir)]
    report_lib.write(output_dir, report, ctx, entries, extra)
    logging.info("Wrote %s and %s in %s", report_lib.REPORT_JSON, report_lib.REPORT_MD, output_dir)
    return report


def _combine_audits(output_dir: str, heads: list):
    """A multi-head audit: every head's audit.csv in one, <output_dir>/audit.csv."""
    parts = [os.path.join(output_dir, h, audit.AUDIT_CSV) for h in heads]
    parts = [p for p in parts if os.path.exists(p)]
    if parts:
        pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in parts]).to_csv(
            os.path.join(output_dir, audit.AUDIT_CSV), index=False
        )


def check_output_dir(output_dir: str, workdirs: list):
    """Outputs never go into a training workdir."""
    output_dir = os.path.realpath(output_dir)
    for workdir in workdirs:
        workdir = os.path.realpath(workdir)
        if output_dir == workdir or output_dir.startswith(workdir + os.sep):
            raise errors.EvalError(
                f"The output {output_dir} is inside the training workdir {workdir}, "
                "which the evaluator never writes to; choose another --output_dir "
                "or --output."
            )
