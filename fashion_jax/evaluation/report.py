"""What a person reads after run_eval.py: report.json (every number, each with its interval, and a
paired test of every two models on the same images), report.md (report_markdown.py), per model
and subset a confusion-matrix CSV and PNG, a gallery of misclassified images and a reliability
diagram.

Each detailed model also gets a temperature and a review threshold (the lowest top-1 probability
whose accepted images reach --config.report.target_precision), both fitted on val and applied to every subset.
"""

import datetime
import json
import os
import re

import numpy as np
import pandas as pd

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.evaluation import calibration
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import figures
from fashion_jax.evaluation import metrics
from fashion_jax.evaluation import report_markdown
from fashion_jax.evaluation import statistics

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# The 2020 study's published numbers, with the label column and classes they describe.
DEFAULT_REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_2020.json")
FIT_SUBSET = "val"  # Temperature and review threshold are fitted here.


def build(ctx, entries: list, evaluator_names: list) -> dict:
    """Every number of the evaluation as one JSON-able dict (no files written)."""
    report_config = ctx.config.report
    reference = reference_for(ctx)
    results, slugs = [], set()
    for entry in entries:
        slug = _unique_slug(entry.name, slugs)
        results.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "slug": slug,
                "detailed": entry.detailed,
                "details": entry.details,
                "reference_counterpart": _reference_counterpart(entry, reference),
                "metrics": {
                    subset: _metrics(ctx, log_probs, subset, entry.detailed)
                    for subset, log_probs in entry.log_probs.items()
                },
            }
        )
        if entry.detailed:
            results[-1].update(_calibration_and_selective(ctx, entry))
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": [
            {
                "name": c.run.name,
                "workdir": c.run.workdir,
                "step": c.step,
                "epoch": c.epoch,
                "optimizer": c.run.optimizer,
                "initialisation": saved_runs.init_identity(c.run.config),
            }
            for c in ctx.checkpoints
        ],
        "checkpoint": ctx.config.checkpoint,
        "subsets": list(ctx.subsets),
        "evaluators": evaluator_names,
        "label_column": label_column(ctx),
        "class_names": ctx.class_names,
        "head": ctx.head,
        "ece_bins": report_config.ece_bins,
        "target_precision": report_config.target_precision,
        "confidence_level": report_config.confidence_level,
        "bootstrap_samples": report_config.bootstrap_samples,
        "tta": ctx.config.tta,
        "results": results,
        "paired_tests": _paired_tests(ctx, entries),
        "paired_tests_with_other_evaluations": _tests_against_other_evaluations(ctx, entries),
        "reference": reference,
        "warnings": list(ctx.warnings),
    }


def _metrics(ctx, log_probs, subset: str, detailed: bool) -> dict:
    """metrics.evaluate's numbers plus their intervals (Wilson for accuracy, a seeded bootstrap
    over the images for per-class recall and macro F1)."""
    report_config = ctx.config.report
    labels = ctx.labels(subset)
    numbers = metrics.evaluate(
        log_probs,
        labels,
        ctx.class_names,
        report_config.ece_bins,
        detailed,
        top_classes=ctx.top_classes,
    )
    predictions = log_probs.argmax(-1)
    numbers["correct"] = int((predictions == labels).sum())
    numbers["intervals"] = intervals(labels, predictions, ctx.class_names, report_config)
    return numbers


def intervals(labels, predictions, class_names, report_config) -> dict:
    """How sure a model's numbers are: accuracy's Wilson interval, and macro F1's and each class
    recall's seeded bootstrap interval over the images (--config.report's level and samples)."""
    boot = statistics.bootstrap_intervals(
        labels,
        predictions,
        len(class_names),
        report_config.bootstrap_samples,
        report_config.bootstrap_seed,
        report_config.confidence_level,
    )
    return {
        "accuracy": statistics.wilson_interval(
            int((labels == predictions).sum()), len(labels), report_config.confidence_level
        ),
        "macro_f1": boot["macro_f1"],
        "recall": dict(zip(class_names, boot["recall"])),
    }


def write_predictions(path, ids, label_column, labels, predicted, probability):
    """<subset>_predictions.csv, the per-image file --config.report.compare_with reads: id, the
    label column, the true and predicted class names, the probability given to the prediction."""
    pd.DataFrame(
        {
            "id": ids,
            "label_column": label_column,
            "label": labels,
            "predicted": predicted,
            "probability": probability,
        }
    ).to_csv(path, index=False, float_format="%.6f")


def _distinct_models(entries: list) -> list:
    """The entries without the soup-ingredient rows of models that also have their own row."""
    own_rows = {e.name for e in entries if e.kind != "soup ingredient"}
    return [e for e in entries if e.kind != "soup ingredient"] + [
        e for e in entries if e.kind == "soup ingredient" and e.name not in own_rows
    ]


def _tests_against_other_evaluations(ctx, entries: list) -> dict:
    """{subset: McNemar's exact test of every entry here against every model of
    --config.report.compare_with with this label column, on the same images (matched by id)}."""
    tests = {}
    models = _distinct_models(entries)
    names = np.asarray(ctx.class_names)
    for folder in config_checks.names(ctx.config.report.compare_with):
        for subset in ctx.subsets:
            path = os.path.join(folder, subset + config_checks.PREDICTIONS_SUFFIX)
            if not os.path.exists(path):
                ctx.warn(
                    f"--config.report.compare_with: {folder} has no {subset} predictions "
                    f"({os.path.basename(path)}); its paired tests on {subset} are left out."
                )
                continue
            other = pd.read_csv(path, dtype={"label": str, "predicted": str})
            if set(other.get("label_column", [])) != {label_column(ctx)}:
                continue  # Another head's predictions: compare like with like only.
            data = ctx.data.subset(subset)
            positions = pd.Index(other["id"]).get_indexer(data.ids)
            if (positions < 0).any() or len(other) != len(data.ids):
                raise errors.EvalError(
                    f"--config.report.compare_with: {path} holds {len(other)} {subset} images, "
                    f"of which {int((positions >= 0).sum())} are among this evaluation's "
                    f"{len(data.ids)}; compare models evaluated on the same split and subset."
                )
            other = other.iloc[positions]
            if not (other["label"].to_numpy() == names[data.labels]).all():
                raise errors.EvalError(
                    f"--config.report.compare_with: {path} gives other labels for the same ids; "
                    "compare models of the same label column."
                )
            other_correct = (other["predicted"] == other["label"]).to_numpy()
            name = os.path.basename(os.path.normpath(folder)) + f" ({folder})"
            tests.setdefault(subset, []).extend(
                dict(
                    a=entry.name,
                    b=name,
                    **statistics.mcnemar_exact(
                        entry.log_probs[subset].argmax(-1) == data.labels, other_correct
                    ),
                )
                for entry in models
                if subset in entry.log_probs
            )
    return tests


def _paired_tests(ctx, entries: list) -> dict:
    """{subset: [McNemar's exact test of every pair of distinct entries on the same images]}."""
    entries = _distinct_models(entries)
    tests = {}
    for subset in ctx.subsets:
        labels = ctx.labels(subset)
        correct = [e.log_probs[subset].argmax(-1) == labels for e in entries]
        tests[subset] = [
            dict(
                a=entries[i].name,
                b=entries[j].name,
                **statistics.mcnemar_exact(correct[i], correct[j]),
            )
            for i in range(len(entries))
            for j in range(i + 1, len(entries))
        ]
    return tests


def label_column(ctx) -> str:
    """The styles.csv column this report's classes come from."""
    return ctx.head or ctx.runs[0].config.data.label_column


def reference_for(ctx) -> dict | None:
    """The published reference numbers (--config.report.reference_file) when they describe the
    same label column and classes as this report, else None: only like is compared with like."""
    path = ctx.config.report.reference_file or DEFAULT_REFERENCE
    if path == "none":
        return None
    with open(path) as f:
        reference = json.load(f)
    same = reference["label_column"] == label_column(ctx) and list(reference["classes"]) == list(
        ctx.class_names
    )
    return reference if same else None


def _calibration_and_selective(ctx, entry) -> dict:
    """Temperature and review threshold fitted on val, then applied to each evaluated subset."""
    labels = {subset: ctx.labels(subset) for subset in entry.log_probs}
    temperature = threshold = skipped = None
    if ctx.val_trained_on:
        skipped = (
            f"a run was trained on {FIT_SUBSET}, so no temperature or review threshold was fitted"
        )
    elif FIT_SUBSET in entry.log_probs:
        fit_on = (entry.log_probs[FIT_SUBSET], labels[FIT_SUBSET])
        temperature = calibration.fit_temperature(*fit_on)
        threshold = calibration.threshold_for_precision(
            *fit_on, ctx.config.report.target_precision
        )["threshold"]
    else:
        skipped = f"{FIT_SUBSET} is not among --config.subsets, so no temperature or review threshold was fitted"
    return {
        "calibration": {
            "fitted_on": None if skipped else FIT_SUBSET,
            "temperature": temperature,
            "skipped": skipped,
            "subsets": {
                s: calibration.calibration_summary(
                    lp, labels[s], temperature, ctx.config.report.ece_bins
                )
                for s, lp in entry.log_probs.items()
            },
        },
        "selective": {
            "fitted_on": None if skipped else FIT_SUBSET,
            "target_precision": ctx.config.report.target_precision,
            "threshold": threshold,
            "skipped": skipped,
            "subsets": {}
            if skipped
            else {
                s: calibration.selective_metrics(lp, labels[s], threshold)
                for s, lp in entry.log_probs.items()
            },
        },
    }


def write(output_dir: str, report: dict, ctx, entries: list, extra_lines: tuple = ()):
    """Writes report.json, report.md (with `extra_lines` at the end: sections of evaluators that
    write files of their own), and the CSVs and PNGs of every detailed entry."""
    os.makedirs(output_dir, exist_ok=True)
    for result, entry in zip(report["results"], entries):
        if entry.detailed:
            result["files"] = _write_entry_files(output_dir, result, entry, ctx)
    with open(os.path.join(output_dir, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output_dir, REPORT_MD), "w") as f:
        f.write(
            report_markdown.markdown(report) + "\n".join(extra_lines) + "\n" * bool(extra_lines)
        )


def _write_entry_files(output_dir, result, entry, ctx) -> dict:
    folder = os.path.join(output_dir, result["slug"])
    os.makedirs(folder, exist_ok=True)
    files, names = {}, ctx.class_names
    for subset, log_probs in entry.log_probs.items():
        paths = {
            kind: os.path.join(folder, f"{subset}_{kind}")
            for kind in (
                "confusion.csv",
                "confusion.png",
                "misclassified.png",
                "reliability.png",
                config_checks.PREDICTIONS_SUFFIX[1:],
            )
        }
        matrix = result["metrics"][subset]["confusion_matrix"]
        pd.DataFrame(matrix, index=pd.Index(names, name="true \\ predicted"), columns=names).to_csv(
            paths["confusion.csv"], float_format="%.6f"
        )
        title = f"{entry.name} - {subset}"
        figures.plot_confusion_matrix(matrix, names, paths["confusion.png"], title)
        data = ctx.data.subset(subset)
        wrong = metrics.most_confident_mistakes(
            log_probs, data.labels, ctx.config.report.gallery_size
        )
        predicted = log_probs.argmax(-1)
        confidence = np.exp(log_probs.max(-1))
        write_predictions(
            paths[config_checks.PREDICTIONS_SUFFIX[1:]],
            data.ids,
            label_column(ctx),
            np.asarray(names)[data.labels],
            np.asarray(names)[predicted],
            confidence,
        )
        captions = [
            f"id {data.ids[i]}\ntrue: {names[data.labels[i]]}\n"
            f"pred: {names[predicted[i]]} ({confidence[i]:.2f})"
            for i in wrong
        ]
        figures.plot_misclassified(
            data.images[wrong],
            captions,
            paths["misclassified.png"],
            f"{title}: {int((predicted != data.labels).sum())} misclassified of "
            f"{len(data.labels)} (most confident first)",
        )
        _plot_reliability(result, subset, paths["reliability.png"], title)
        files[subset] = {k: os.path.relpath(p, output_dir) for k, p in paths.items()}
    return files


def _plot_reliability(result, subset, path, title):
    numbers = result["calibration"]["subsets"][subset]
    curves = {f"uncalibrated (ECE {numbers['ece']:.4f})": numbers["reliability"]["before"]}
    if "after" in numbers["reliability"]:
        curves[
            f"temperature {result['calibration']['temperature']:.3f} (ECE "
            f"{numbers['ece_scaled']:.4f})"
        ] = numbers["reliability"]["after"]
    figures.plot_reliability(curves, path, f"{title}: reliability")


def folder_name(name: str) -> str:
    """A model's name as a folder name ("run_seed0@epoch 8" -> "run_seed0_epoch_8")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _unique_slug(name: str, taken: set) -> str:
    base = folder_name(name)
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


def _reference_counterpart(entry, reference: dict | None) -> str | None:
    """Which of the reference's models an entry stands beside: a single run by optimizer, an
    ensemble of two or more by "averaged predictions"."""
    if reference is None:
        return None
    if entry.kind == "single":
        return reference["model_by_optimizer"].get(entry.details.get("optimizer"))
    if entry.kind == "ensemble" and len(entry.details.get("members", [])) > 1:
        return "averaged predictions"
    return None
