"""Multi-head runs in run_eval.py: which heads, the most common classes of a fine head, a
summary table over heads, and how the master/sub/article predictions fit the catalogue hierarchy.

Each head is evaluated like a single-head run (report.json/report.md in <output_dir>/<head>/);
this module adds <output_dir>/heads.json and heads.md on top.
"""

import json
import os

import numpy as np
import pandas as pd

from fashion_jax import saved_runs
from fashion_jax.data import dataset
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import hierarchy
from fashion_jax.evaluation import markdown as md_lib
from fashion_jax.evaluation import report as report_lib
from fashion_jax.evaluation import statistics

TOP_CLASSES = 20  # Published numbers for this dataset use the 20 most common article types.
HEADS_JSON, HEADS_MD = "heads.json", "heads.md"


def heads_to_evaluate(run: saved_runs.Run, head_flag: str) -> list | None:
    """None for a single-head run; else --config.head ("" or "all": every head)."""
    if not run.heads:
        if head_flag and head_flag != "all":
            saved_runs.with_head(run, head_flag)  # Raises: a single-head run has no heads.
        return None
    if head_flag in ("", "all"):
        return list(run.heads)
    saved_runs.with_head(run, head_flag)  # Raises for an unknown head.
    return [head_flag]


def top_class_indices(split: pd.DataFrame, class_names, count: int = TOP_CLASSES):
    """Indices of the `count` classes with the most training images ("Other" excluded), or
    None when the head has no more classes than that."""
    if len(class_names) <= count:
        return None
    train = split.loc[(split["subset"] == "train") & (split["label"] != dataset.OTHER), "label"]
    counts = train.value_counts()
    ranked = sorted(counts.index, key=lambda name: (-counts[name], name))[:count]
    return sorted(list(class_names).index(name) for name in ranked)


def label_matrix(split: pd.DataFrame, run: saved_runs.Run, heads) -> np.ndarray:
    """split.csv's head columns as class indices [N, len(heads)], -1 where a row has no value."""
    return np.stack(
        [
            split[h].map({c: i for i, c in enumerate(run.heads[h])}).fillna(-1).to_numpy(np.int64)
            for h in heads
        ],
        axis=1,
    )


def hierarchy_heads(run: saved_runs.Run, hierarchy_config) -> list:
    """The levels of --config.hierarchy (coarse to fine) that the run has as heads."""
    return [h for h in config_checks.names(hierarchy_config) if h in (run.heads or {})]


def hierarchy_evaluation(evaluation, config, output_dir: str | None = None) -> dict | None:
    """Consistency of the independent per-head predictions with the label combinations seen in
    training, and accuracy of the consistent decoding, per subset (None without 2+ levels), for
    the first workdir's checkpoint; its predictions come from the store the reports used.

    With `output_dir`, each level's decoded predictions are written as a model of their own,
    <output_dir>/<head>/consistent_<checkpoint>/<subset>_predictions.csv, in the format of the
    reports' predictions, so that --config.report.compare_with can pair other models with them.
    """
    checkpoint, split = evaluation.checkpoints[0], evaluation.splits[0]
    run = checkpoint.run
    heads = hierarchy_heads(run, config.hierarchy)
    if len(heads) < 2:
        return None
    allowed = hierarchy.allowed_combinations(
        label_matrix(split[split["subset"] == "train"], run, heads)
    )
    folder = "consistent_" + report_lib.folder_name(checkpoint.name)
    result = {
        "heads": heads,
        "checkpoint": checkpoint.name,
        "allowed_combinations": int(len(allowed)),
        "predictions_folder": folder if output_dir else None,
        "subsets": {},
    }
    for subset in config_checks.names(config.subsets):
        rows = split[split["subset"] == subset]
        predicted = evaluation.store(checkpoint, subset)
        log_probs = [predicted[h] for h in heads]
        labels = label_matrix(rows, run, heads)
        decoded = hierarchy.decode_consistent(log_probs, allowed)
        result["subsets"][subset] = report = hierarchy.hierarchy_report(
            log_probs, labels, allowed, heads, decoded=decoded
        )
        for h, head in enumerate(heads):
            report["heads"][head].update(
                _decoded_intervals(labels[:, h], decoded[:, h], run.heads[head], config.report)
            )
            if output_dir:
                _write_decoded(
                    os.path.join(
                        output_dir, head, folder, subset + config_checks.PREDICTIONS_SUFFIX
                    ),
                    rows["id"].to_numpy(),
                    head,
                    np.asarray(run.heads[head]),
                    labels[:, h],
                    decoded[:, h],
                    log_probs[h],
                )
    return result


def _decoded_intervals(labels, decoded, class_names, report_config) -> dict:
    """The decoded level as a model of its own, on the rows with a label: accuracy's Wilson
    interval, macro F1 and per-class recall with their bootstrap intervals (as the reports')."""
    labelled = labels >= 0
    labels, decoded = labels[labelled], decoded[labelled]
    if not len(labels):
        nan = float("nan")
        return {
            "decoded_accuracy_interval": (nan, nan),
            "decoded_macro_f1": nan,
            "decoded_macro_f1_interval": (nan, nan),
            "decoded_recall": {},
        }
    recall, macro_f1 = statistics.recall_and_macro_f1(
        statistics.confusion_counts(labels, decoded, len(class_names))
    )
    sure = report_lib.intervals(labels, decoded, class_names, report_config)
    return {
        "decoded_accuracy_interval": sure["accuracy"],
        "decoded_macro_f1": macro_f1,
        "decoded_macro_f1_interval": sure["macro_f1"],
        "decoded_recall": {
            name: {"value": float(r), "interval": sure["recall"][name]}
            for name, r in zip(class_names, recall)
        },
    }


def _write_decoded(path, ids, head, class_names, labels, decoded, log_probs):
    """The rows with a `head` label: id, label, the decoded class and the head's own probability
    of it."""
    labelled = labels >= 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    probability = np.exp(np.take_along_axis(log_probs, decoded[:, None], 1)[:, 0])
    report_lib.write_predictions(
        path,
        ids[labelled],
        head,
        class_names[labels[labelled]],
        class_names[decoded[labelled]],
        probability[labelled],
    )


def consistent_columns(run: saved_runs.Run, split: pd.DataFrame, hierarchy_config):
    """For --predict: (column names, function of a batch's {head: log-probs} -> rows of the
    consistent labels of the hierarchy's levels), or None when the run lacks two of them."""
    heads = hierarchy_heads(run, hierarchy_config)
    if len(heads) < 2:
        return None
    allowed = hierarchy.allowed_combinations(
        label_matrix(split[split["subset"] == "train"], run, heads)
    )

    def decode(log_probs: dict):
        indices = hierarchy.decode_consistent([log_probs[h] for h in heads], allowed)
        return [[run.heads[h][i] for h, i in zip(heads, row)] for row in indices]

    return tuple(f"consistent_{h}" for h in heads), decode


def summary(reports: dict, hierarchy_result: dict | None) -> dict:
    """Per head and detailed entry: accuracy, macro F1, top-5 and top-20-class accuracy."""
    rows = []
    for head, report in reports.items():
        for result in report["results"]:
            if not result["detailed"]:
                continue
            for subset, numbers in result["metrics"].items():
                rows.append(
                    {
                        "head": head,
                        "classes": len(report["class_names"]),
                        "model": result["name"],
                        "subset": subset,
                        "images": numbers["count"],
                        "accuracy": numbers["accuracy"],
                        "accuracy_interval": numbers["intervals"]["accuracy"],
                        "macro_f1": numbers["macro_f1"],
                        "macro_f1_interval": numbers["intervals"]["macro_f1"],
                        "top5_accuracy": numbers.get("top5_accuracy"),
                        "top20_class_accuracy": numbers.get("top_classes_accuracy"),
                        "top20_class_images": numbers.get("top_classes_count"),
                        "top20_class_interval": statistics.wilson_interval(
                            round(numbers["top_classes_accuracy"] * numbers["top_classes_count"]),
                            numbers["top_classes_count"],
                            report["confidence_level"],
                        )
                        if numbers.get("top_classes_count")
                        else None,
                    }
                )
    return {"rows": rows, "hierarchy": hierarchy_result}


def write(output_dir: str, result: dict):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, HEADS_JSON), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, HEADS_MD), "w") as f:
        f.write(markdown(result))


def markdown(result: dict) -> str:
    def pct(value):
        return md_lib.pct(value, "")

    lines = [
        "# Per-head results",
        "",
        "Each head's full report is in <head>/report.md. Accuracy and macro F1 with their "
        "intervals (Wilson; bootstrap over images). Top-20: images of the 20 classes with the most "
        'training images ("Other" excluded), argmax over those 20, with a Wilson interval.',
        "",
        md_lib.table(
            [
                "head",
                "classes",
                "model",
                "subset",
                "images",
                "accuracy %",
                "macro F1",
                "top-5 %",
                "top-20-class % (images)",
            ],
            [
                [
                    r["head"],
                    r["classes"],
                    r["model"],
                    r["subset"],
                    r["images"],
                    md_lib.pct_interval(r["accuracy"], r["accuracy_interval"]).replace("%", ""),
                    md_lib.num_interval(r["macro_f1"], r["macro_f1_interval"]),
                    pct(r["top5_accuracy"]),
                    f"{md_lib.pct_interval(r['top20_class_accuracy'], r['top20_class_interval'])}"
                    f" ({r['top20_class_images']})".replace("%", "")
                    if r["top20_class_accuracy"] is not None
                    else "-",
                ]
                for r in result["rows"]
            ],
        ),
    ]
    h = result.get("hierarchy")
    if h:
        lines += [
            "",
            f"## Hierarchy ({' > '.join(h['heads'])}), {h['checkpoint']}",
            "",
            f"{h['allowed_combinations']} label combinations occur in training. "
            "Independent: each head's argmax; decoded: the allowed combination with the "
            "highest summed log-probability. The paired test is McNemar's exact test of the two "
            "on the same images."
            + (
                f" Each level's decoded predictions: <head>/{h['predictions_folder']}/ "
                "(for --config.report.compare_with)."
                if h.get("predictions_folder")
                else ""
            ),
            "",
            md_lib.table(
                [
                    "subset",
                    "inconsistent (independent) %",
                    "exact combination independent %",
                    "decoded %",
                ]
                + [
                    f"{x} indep. / decoded % (only indep. : only decoded right, p)"
                    for x in h["heads"]
                ],
                [
                    [
                        subset,
                        pct(s["independent_inconsistency_rate"]),
                        pct(s["independent_exact_match"]),
                        pct(s["decoded_exact_match"]),
                    ]
                    + [
                        f"{pct(s['heads'][x]['independent_accuracy'])} / "
                        f"{pct(s['heads'][x]['decoded_accuracy'])} "
                        f"({s['heads'][x]['only_independent_correct']} : "
                        f"{s['heads'][x]['only_decoded_correct']}, "
                        f"{s['heads'][x]['p_value']:.2g})"
                        for x in h["heads"]
                    ]
                    for subset, s in h["subsets"].items()
                ],
            ),
            "",
            "The decoded levels as models of their own (recall per class: heads.json):",
            "",
            md_lib.table(
                ["subset", "head", "images", "decoded accuracy %", "decoded macro F1"],
                [
                    [
                        subset,
                        x,
                        s["heads"][x]["count"],
                        md_lib.pct_interval(
                            s["heads"][x]["decoded_accuracy"],
                            s["heads"][x]["decoded_accuracy_interval"],
                        ).replace("%", ""),
                        md_lib.num_interval(
                            s["heads"][x]["decoded_macro_f1"],
                            s["heads"][x]["decoded_macro_f1_interval"],
                        ),
                    ]
                    for subset, s in h["subsets"].items()
                    for x in h["heads"]
                ],
            ),
        ]
    return "\n".join(lines) + "\n"
