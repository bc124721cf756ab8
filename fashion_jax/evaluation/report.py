"""What a person reads after run_eval.py: report.json (every number), report.md (the tables,
beside the seed study's numbers), per model and subset a confusion-matrix CSV and PNG, a gallery
of misclassified images and a reliability diagram, and a short summary table for stdout.

Each detailed model also gets a temperature and a review threshold (the lowest top-1 probability
whose accepted images reach --target_precision), both fitted on val and applied to every subset.
"""

import datetime
import json
import os
import re

import numpy as np
import pandas as pd

from fashion_jax import restore
from fashion_jax.evaluation import calibration
from fashion_jax.evaluation import figures
from fashion_jax.evaluation import metrics

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# The seed study's published numbers (control subset), shown beside ours.
SEED_REFERENCE = {
    "control_accuracy": {"Model 1 (Adam)": 0.9876, "Model 2 (SGD)": 0.9858,
                         "averaged predictions": 0.9903},
    "free_items_recall": 0.15,
    "macro_f1": 0.84,
}
SEED_MODEL_BY_OPTIMIZER = {"adam": "Model 1 (Adam)", "sgd": "Model 2 (SGD)"}
FREE_ITEMS = "Free Items"
FIT_SUBSET = "val"   # Temperature and review threshold are fitted here.


def build(ctx, entries: list, evaluator_names: list) -> dict:
    """Every number of the evaluation as one JSON-able dict (no files written)."""
    results, slugs = [], set()
    for entry in entries:
        slug = _unique_slug(entry.name, slugs)
        results.append({
            "name": entry.name, "kind": entry.kind, "slug": slug, "detailed": entry.detailed,
            "details": entry.details, "seed_counterpart": _seed_counterpart(entry),
            "metrics": {subset: metrics.evaluate(log_probs, ctx.labels(subset), ctx.class_names,
                                                 ctx.options.ece_bins, entry.detailed,
                                                 top_classes=ctx.top_classes)
                        for subset, log_probs in entry.log_probs.items()}})
        if entry.detailed:
            results[-1].update(_calibration_and_selective(ctx, entry))
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": [{"name": c.run.name, "workdir": c.run.workdir, "step": c.step, "epoch": c.epoch,
                  "optimizer": c.run.optimizer,
                  "initialisation": restore.init_identity(c.run.config)} for c in ctx.checkpoints],
        "checkpoint": ctx.options.checkpoint, "subsets": list(ctx.options.subsets),
        "evaluators": evaluator_names, "class_names": ctx.class_names, "head": ctx.head,
        "ece_bins": ctx.options.ece_bins, "target_precision": ctx.options.target_precision,
        "tta": ctx.options.tta,
        "results": results,
        "seed_reference": SEED_REFERENCE, "warnings": list(ctx.warnings)}


def _calibration_and_selective(ctx, entry) -> dict:
    """Temperature and review threshold fitted on val, then applied to each evaluated subset."""
    labels = {subset: ctx.labels(subset) for subset in entry.log_probs}
    temperature = threshold = skipped = None
    if FIT_SUBSET in entry.log_probs:
        fit_on = (entry.log_probs[FIT_SUBSET], labels[FIT_SUBSET])
        temperature = calibration.fit_temperature(*fit_on)
        threshold = calibration.threshold_for_precision(
            *fit_on, ctx.options.target_precision)["threshold"]
    else:
        skipped = (f"{FIT_SUBSET} is not among --subsets, so no temperature or review threshold "
                   "was fitted")
    return {
        "calibration": {
            "fitted_on": None if skipped else FIT_SUBSET, "temperature": temperature,
            "skipped": skipped,
            "subsets": {s: calibration.calibration_summary(lp, labels[s], temperature,
                                                           ctx.options.ece_bins)
                        for s, lp in entry.log_probs.items()}},
        "selective": {
            "fitted_on": None if skipped else FIT_SUBSET,
            "target_precision": ctx.options.target_precision, "threshold": threshold,
            "skipped": skipped,
            "subsets": {} if skipped else {
                s: calibration.selective_metrics(lp, labels[s], threshold)
                for s, lp in entry.log_probs.items()}}}


def write(output_dir: str, report: dict, ctx, entries: list):
    """Writes report.json, report.md, and the CSVs and PNGs of every detailed entry."""
    os.makedirs(output_dir, exist_ok=True)
    for result, entry in zip(report["results"], entries):
        if entry.detailed:
            result["files"] = _write_entry_files(output_dir, result, entry, ctx)
    with open(os.path.join(output_dir, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output_dir, REPORT_MD), "w") as f:
        f.write(markdown(report))


def _write_entry_files(output_dir, result, entry, ctx) -> dict:
    folder = os.path.join(output_dir, result["slug"])
    os.makedirs(folder, exist_ok=True)
    files, names = {}, ctx.class_names
    for subset, log_probs in entry.log_probs.items():
        paths = {kind: os.path.join(folder, f"{subset}_{kind}")
                 for kind in ("confusion.csv", "confusion.png", "misclassified.png",
                              "reliability.png")}
        matrix = result["metrics"][subset]["confusion_matrix"]
        pd.DataFrame(matrix, index=pd.Index(names, name="true \\ predicted"),
                     columns=names).to_csv(paths["confusion.csv"], float_format="%.6f")
        title = f"{entry.name} - {subset}"
        figures.plot_confusion_matrix(matrix, names, paths["confusion.png"], title)
        data = ctx.data.subset(subset)
        wrong = metrics.most_confident_mistakes(log_probs, data.labels, ctx.options.gallery_size)
        predicted = log_probs.argmax(-1)
        confidence = np.exp(log_probs.max(-1))
        captions = [f"id {data.ids[i]}\ntrue: {names[data.labels[i]]}\n"
                    f"pred: {names[predicted[i]]} ({confidence[i]:.2f})" for i in wrong]
        figures.plot_misclassified(
            data.images[wrong], captions, paths["misclassified.png"],
            f"{title}: {int((predicted != data.labels).sum())} misclassified of "
            f"{len(data.labels)} (most confident first)")
        _plot_reliability(result, subset, paths["reliability.png"], title)
        files[subset] = {k: os.path.relpath(p, output_dir) for k, p in paths.items()}
    return files


def _plot_reliability(result, subset, path, title):
    numbers = result["calibration"]["subsets"][subset]
    curves = {f"uncalibrated (ECE {numbers['ece']:.4f})": numbers["reliability"]["before"]}
    if "after" in numbers["reliability"]:
        curves[f"temperature {result['calibration']['temperature']:.3f} (ECE "
               f"{numbers['ece_scaled']:.4f})"] = numbers["reliability"]["after"]
    figures.plot_reliability(curves, path, f"{title}: reliability")


# ------------------------------------------------------------------------------------------------
# Markdown and stdout.
# ------------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [f"# Evaluation report ({report['created']})", "",
             f"Checkpoint: `{report['checkpoint']}`; subsets: {', '.join(report['subsets'])}; "
             f"evaluators: {', '.join(report['evaluators'])}; classes: "
             f"{', '.join(report['class_names'])}; ECE with {report['ece_bins']} bins; test-time "
             f"augmentation: {report.get('tta', 'none')}.", "",
             _table(["run", "workdir", "step", "epoch", "optimizer", "initialisation"],
                    [[r["name"], f"`{r['workdir']}`", r["step"], _or_dash(r["epoch"]),
                      r["optimizer"], r["initialisation"]] for r in report["runs"]])]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    for subset in report["subsets"]:
        top5 = any("top5_accuracy" in r["metrics"][subset] for r in report["results"])
        lines += ["", f"## Results on {subset}", "", _table(
            ["model", "kind", "accuracy"] + ["top-5 accuracy"] * top5
            + ["loss", "ECE", "macro F1", "images"],
            [[r["name"], r["kind"], _pct(m["accuracy"])]
             + [_pct(m.get("top5_accuracy"))] * top5
             + [f"{m['loss']:.4f}", f"{m['ece']:.4f}", f"{m['macro_f1']:.3f}", m["count"]]
             for r in _distinct(report["results"]) for m in [r["metrics"][subset]]])]
    lines += _seed_section(report) + _ensemble_section(report) + _soup_section(report)
    lines += _calibration_section(report) + _selective_section(report)
    lines += _details_section(report)
    return "\n".join(lines) + "\n"


def summary_table(report: dict) -> str:
    """Accuracy per model and subset, as plain text for stdout."""
    subsets = report["subsets"]
    width = max([len(r["name"]) for r in report["results"]] + [5])
    lines = [f"{'model':<{width}}  {'kind':<16}" + "".join(f"{s:>10}" for s in subsets)]
    for r in report["results"]:
        lines.append(f"{r['name']:<{width}}  {r['kind']:<16}" + "".join(
            f"{_pct(r['metrics'][s]['accuracy']):>10}" for s in subsets))
    selective = [r for r in report["results"] if "selective" in r]
    if selective:
        lines.append(f"Review threshold (top-1 probability; {FIT_SUBSET} precision >= "
                     f"{_pct(report['target_precision'])}; usable as --review_threshold):")
    for r in selective:
        sel = r["selective"]
        if sel["skipped"] or sel["threshold"] is None:
            lines.append(f"  {r['name']}: " + (sel["skipped"] or "no threshold reaches it"))
            continue
        lines.append(f"  {r['name']}: {sel['threshold']!r}; coverage (precision): " + ", ".join(
            f"{s} {_pct(m['coverage'])} ({_pct(m['precision'])})"
            for s, m in sel["subsets"].items()))
    return "\n".join(lines)


def _calibration_section(report) -> list:
    rows = [r for r in report["results"] if "calibration" in r]
    if not rows:
        return []
    subsets = report["subsets"]
    lines = ["", "## Calibration: temperature scaling", "",
             f"The temperature T minimises the log-loss of softmax(log p / T) on {FIT_SUBSET}; "
             f"ECE ({report['ece_bins']} bins) and log-loss before -> after dividing by T.", "",
             _table(["model", "T"] + [f"{s} ECE" for s in subsets] + [f"{s} loss" for s in subsets],
                    [[r["name"], _num(r["calibration"]["temperature"], ".3f")]
                     + [_before_after(r["calibration"]["subsets"][s], "ece") for s in subsets]
                     + [_before_after(r["calibration"]["subsets"][s], "loss") for s in subsets]
                     for r in rows])]
    skipped = sorted({r["calibration"]["skipped"] for r in rows if r["calibration"]["skipped"]})
    return lines + ["", "Skipped: " + "; ".join(skipped) + "."] * bool(skipped)


def _selective_section(report) -> list:
    rows = [r for r in report["results"] if "selective" in r]
    if not rows:
        return []
    subsets = report["subsets"]
    lines = ["", "## Selective prediction: review threshold", "",
             "A prediction is accepted when its top-1 probability (uncalibrated, as written by "
             f"`--predict`) is at least the threshold: the lowest one whose accepted {FIT_SUBSET} "
             f"images reach precision {_pct(report['target_precision'])}. Coverage is the share "
             "of images accepted, precision the accuracy among them; pass the threshold as "
             "`--review_threshold` to flag the rest for review.", "",
             _table(["model", "threshold"] + [f"{s} coverage (precision)" for s in subsets],
                    [[r["name"], _num(r["selective"]["threshold"], "")] + [
                        f"{_pct(m['coverage'])} ({_pct(m['precision'])})"
                        if m else "-" for s in subsets for m in [r["selective"]["subsets"].get(s)]]
                     for r in rows])]
    notes = sorted({r["selective"]["skipped"] for r in rows if r["selective"]["skipped"]})
    notes += [f"{r['name']}: no threshold reaches precision {_pct(report['target_precision'])} "
              f"on {FIT_SUBSET}; nothing is accepted" for r in rows
              if not r["selective"]["skipped"] and r["selective"]["threshold"] is None]
    return lines + ["", "Note: " + "; ".join(notes) + "."] * bool(notes)


def _seed_section(report) -> list:
    if "control" not in report["subsets"]:
        return []
    seed = report["seed_reference"]
    rows = []
    for r in _distinct(report["results"]):
        m = r["metrics"]["control"]
        counterpart = r["seed_counterpart"]
        rows.append([r["name"], _pct(m["accuracy"]),
                     f"{_pct(seed['control_accuracy'][counterpart])} ({counterpart})"
                     if counterpart else "-",
                     f"{m['recall'][FREE_ITEMS]:.2f}" if FREE_ITEMS in m["recall"] else "-",
                     f"{m['macro_f1']:.2f}"])
    return ["", "## Compared with the seed study (control subset)", "",
            f"Seed: Model 1 (Adam) {_pct(seed['control_accuracy']['Model 1 (Adam)'])}, Model 2 "
            f"(SGD) {_pct(seed['control_accuracy']['Model 2 (SGD)'])}, averaged predictions "
            f"{_pct(seed['control_accuracy']['averaged predictions'])}; Free Items recall "
            f"{seed['free_items_recall']:.2f}; macro F1 {seed['macro_f1']:.2f}.", "",
            _table(["model", "control accuracy", "seed accuracy",
                    f"{FREE_ITEMS} recall (seed {seed['free_items_recall']:.2f})",
                    f"macro F1 (seed {seed['macro_f1']:.2f})"], rows)]


def _ensemble_section(report) -> list:
    lines = []
    for r in report["results"]:
        if r["kind"] != "ensemble":
            continue
        members = {x["name"]: x for x in report["results"] if x["kind"] == "single"}
        rows = [[name, f"{w:.3f}"] + [_pct(members[name]["metrics"][s]["accuracy"])
                                      if name in members else "-" for s in report["subsets"]]
                for name, w in zip(r["details"]["members"], r["details"]["weights"])]
        rows.append([f"**{r['name']}**", "1.000"] + [
            f"**{_pct(r['metrics'][s]['accuracy'])}**" for s in report["subsets"]])
        lines += ["", "## Ensemble (mean of predicted probabilities) beside its members", "",
                  _table(["model", "weight"] + [f"{s} accuracy" for s in report["subsets"]],
                         rows)]
    return lines


def _soup_section(report) -> list:
    rows = [r for r in report["results"] if r["kind"].endswith("soup")
            or r["kind"] == "soup ingredient"]
    if not rows:
        return []
    # Ingredients are chosen on val; show it even when it is not among --subsets.
    extra_val = "val" not in report["subsets"]
    lines = ["", "## Soups (parameter averaging) beside their ingredients", "", _table(
        ["model", "kind"] + ["val accuracy"] * extra_val
        + [f"{s} accuracy" for s in report["subsets"]],
        [[r["name"], r["kind"]] + [_pct(r["details"].get("val_accuracy"))] * extra_val
         + [_pct(r["metrics"][s]["accuracy"]) for s in report["subsets"]] for r in rows])]
    for r in rows:
        details = r["details"]
        if r["kind"] == "uniform soup":
            lines += ["", f"{r['name']}: validation accuracy {_pct(details['val_accuracy'])} "
                      f"with recomputed BatchNorm statistics, "
                      f"{_pct(details['val_accuracy_with_averaged_batch_norm_statistics'])} "
                      "with the ingredients' statistics averaged."]
        if r["kind"] == "greedy soup":
            lines += ["", f"{r['name']}: ingredients tried best first (validation accuracy); "
                      "each kept only if the soup's validation accuracy did not drop.", "",
                      _table(["ingredient", "its val accuracy", "soup val accuracy with it",
                              "kept"],
                             [[s["ingredient"], _pct(s["ingredient_val_accuracy"]),
                               _pct(s["soup_val_accuracy"]), "yes" if s["added"] else "no"]
                              for s in details["steps"]])]
    bn = rows[-1]["details"].get("batch_norm_recalibration")
    if bn:
        lines += ["", "BatchNorm recalibration: " + (
            f"{bn['batches']} batches of {bn['batch_size']} training images."
            if bn["batches"] else "off (averaged statistics).")]
    return lines


def _details_section(report) -> list:
    lines = ["", "## Per model and subset"]
    for r in report["results"]:
        if not r["detailed"]:
            continue
        for subset, m in r["metrics"].items():
            files = r.get("files", {}).get(subset, {})
            rows = [[name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}",
                     v["support"]] for name, v in m["classification_report"].items()]
            lines += ["", f"### {r['name']} on {subset}: accuracy {_pct(m['accuracy'])}, loss "
                      f"{m['loss']:.4f}, ECE {m['ece']:.4f}", "",
                      _table(["class", "precision", "recall", "F1", "support"], rows)]
            if files:
                lines += ["", f"Confusion matrix ([CSV]({files['confusion.csv']})):", "",
                          f"![confusion matrix]({files['confusion.png']})", "",
                          f"![misclassified]({files['misclassified.png']})", "",
                          f"![reliability diagram]({files['reliability.png']})"]
    return lines


def _distinct(results: list) -> list:
    """Results without soup ingredients that repeat another row (e.g. a run's best checkpoint)."""
    names = {r["name"] for r in results if r["kind"] != "soup ingredient"}
    return [r for r in results if r["kind"] != "soup ingredient" or r["name"] not in names]


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _before_after(numbers: dict, key: str) -> str:
    if numbers[f"{key}_scaled"] is None:
        return f"{numbers[key]:.4f}"
    return f"{numbers[key]:.4f} -> {numbers[f'{key}_scaled']:.4f}"


def _or_dash(value):
    return "-" if value is None else value


def _unique_slug(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


def _seed_counterpart(entry):
    if entry.kind == "single":
        return SEED_MODEL_BY_OPTIMIZER.get(entry.details.get("optimizer"))
    if entry.kind == "ensemble" and len(entry.details.get("members", [])) > 1:
        return "averaged predictions"
    return None
