"""Multi-head runs in run_eval.py: which heads, the most common classes of a fine head, a
summary table over heads, and how the master/sub/article predictions fit the catalogue hierarchy.

Each head is evaluated like a single-head run (report.json/report.md in <output_dir>/<head>/);
this module adds <output_dir>/heads.json and heads.md on top.
"""

import json
import os
from typing import Optional

import numpy as np
import pandas as pd

from fashion_jax import dataset
from fashion_jax import restore
from fashion_jax.evaluation import data as data_lib
from fashion_jax.evaluation import hierarchy

TOP_CLASSES = 20  # Published numbers for this dataset use the 20 most common article types.
HIERARCHY = ("masterCategory", "subCategory", "articleType")
HEADS_JSON, HEADS_MD = "heads.json", "heads.md"


def heads_to_evaluate(run: restore.Run, head_flag: str) -> Optional[list]:
    """None for a single-head run; else --head ("" or "all": every head)."""
    if not run.heads:
        if head_flag and head_flag != "all":
            restore.with_head(run, head_flag)  # Raises: a single-head run has no heads.
        return None
    if head_flag in ("", "all"):
        return list(run.heads)
    restore.with_head(run, head_flag)  # Raises for an unknown head.
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


def label_matrix(split: pd.DataFrame, run: restore.Run, heads) -> np.ndarray:
    """split.csv's head columns as class indices [N, len(heads)], -1 where a row has no value."""
    return np.stack([split[h].map({c: i for i, c in enumerate(run.heads[h])}).fillna(-1)
                     .to_numpy(np.int64) for h in heads], axis=1)


def hierarchy_evaluation(checkpoint: restore.Checkpoint, split: pd.DataFrame, subsets,
                         options, predictions) -> Optional[dict]:
    """Consistency of the independent per-head predictions with the label combinations seen in
    training, and accuracy of the consistent decoding, per subset (None without 2+ levels).
    `predictions`: a context.AllHeadsPredictions, shared with the per-head reports."""
    run = checkpoint.run
    heads = [h for h in HIERARCHY if h in (run.heads or {})]
    if len(heads) < 2:
        return None
    allowed = hierarchy.allowed_combinations(
        label_matrix(split[split["subset"] == "train"], run, heads))
    data = data_lib.EvalData(run, split, options.data_dir, options.progress_bar)
    result = {"heads": heads, "checkpoint": checkpoint.name,
              "allowed_combinations": int(len(allowed)), "subsets": {}}
    for subset in subsets:
        rows = split[split["subset"] == subset]
        log_probs = predictions(checkpoint, subset, data.subset(subset))
        result["subsets"][subset] = hierarchy.hierarchy_report(
            [log_probs[h] for h in heads], label_matrix(rows, run, heads), allowed, heads)
    return result


def consistent_columns(run: restore.Run, split: pd.DataFrame):
    """For --predict: (column names, function of a batch's {head: log-probs} -> rows of the
    consistent master/sub/article labels), or None when the run lacks two hierarchy heads."""
    heads = [h for h in HIERARCHY if h in (run.heads or {})]
    if len(heads) < 2:
        return None
    allowed = hierarchy.allowed_combinations(
        label_matrix(split[split["subset"] == "train"], run, heads))

    def decode(log_probs: dict):
        indices = hierarchy.decode_consistent([log_probs[h] for h in heads], allowed)
        return [[run.heads[h][i] for h, i in zip(heads, row)] for row in indices]
    return tuple(f"consistent_{h}" for h in heads), decode


def summary(reports: dict, hierarchy_result: Optional[dict]) -> dict:
    """Per head and detailed entry: accuracy, macro F1, top-5 and top-20-class accuracy."""
    rows = []
    for head, report in reports.items():
        for result in report["results"]:
            if not result["detailed"]:
                continue
            for subset, numbers in result["metrics"].items():
                rows.append({"head": head, "classes": len(report["class_names"]),
                             "model": result["name"], "subset": subset,
                             "images": numbers["count"], "accuracy": numbers["accuracy"],
                             "macro_f1": numbers["macro_f1"],
                             "top5_accuracy": numbers.get("top5_accuracy"),
                             "top20_class_accuracy": numbers.get("top_classes_accuracy"),
                             "top20_class_images": numbers.get("top_classes_count")})
    return {"rows": rows, "hierarchy": hierarchy_result}


def write(output_dir: str, result: dict):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, HEADS_JSON), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, HEADS_MD), "w") as f:
        f.write(markdown(result))


def markdown(result: dict) -> str:
    def pct(value):
        return "-" if value is None or value != value else f"{100 * value:.2f}"
    lines = ["# Per-head results", "",
             "Each head's full report is in <head>/report.md. Top-20: images of the 20 classes "
             "with the most training images (\"Other\" excluded), argmax over those 20.", "",
             "| head | classes | model | subset | images | accuracy % | macro F1 | top-5 % | "
             "top-20-class % (images) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        top20 = (f"{pct(r['top20_class_accuracy'])} ({r['top20_class_images']})"
                 if r["top20_class_accuracy"] is not None else "-")
        lines.append(f"| {r['head']} | {r['classes']} | {r['model']} | {r['subset']} | "
                     f"{r['images']} | {pct(r['accuracy'])} | {r['macro_f1']:.3f} | "
                     f"{pct(r['top5_accuracy'])} | {top20} |")
    h = result.get("hierarchy")
    if h:
        lines += ["", f"## Hierarchy ({' > '.join(h['heads'])}), {h['checkpoint']}", "",
                  f"{h['allowed_combinations']} label combinations occur in training. "
                  "Independent: each head's argmax; decoded: the allowed combination with the "
                  "highest summed log-probability.", "",
                  "| subset | inconsistent (independent) % | exact combination independent % | "
                  "decoded % | " + " | ".join(f"{x} indep. / decoded %" for x in h["heads"])
                  + " |", "|---|---|---|---|" + "---|" * len(h["heads"])]
        for subset, s in h["subsets"].items():
            per_head = " | ".join(f"{pct(s['heads'][x]['independent_accuracy'])} / "
                                  f"{pct(s['heads'][x]['decoded_accuracy'])}" for x in h["heads"])
            lines.append(f"| {subset} | {pct(s['independent_inconsistency_rate'])} | "
                         f"{pct(s['independent_exact_match'])} | {pct(s['decoded_exact_match'])}"
                         f" | {per_head} |")
    return "\n".join(lines) + "\n"
