"""report.md and the stdout summary, from report.json's dict (report.build)."""

from fashion_jax.evaluation import markdown as md_lib

FIT_SUBSET = "val"


def markdown(report: dict) -> str:
    lines = [
        f"# Evaluation report ({report['created']})",
        "",
        f"Checkpoint: `{report['checkpoint']}`; subsets: {', '.join(report['subsets'])}; "
        f"evaluators: {', '.join(report['evaluators'])}; classes: "
        f"{', '.join(report['class_names'])}; ECE with {report['ece_bins']} bins; test-time "
        f"augmentation: {report.get('tta', 'none')}.",
        "",
        md_lib.table(
            ["run", "workdir", "step", "epoch", "optimizer", "initialisation"],
            [
                [
                    r["name"],
                    f"`{r['workdir']}`",
                    r["step"],
                    md_lib.or_dash(r["epoch"]),
                    r["optimizer"],
                    r["initialisation"],
                ]
                for r in report["runs"]
            ],
        ),
    ]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    level = md_lib.pct(report["confidence_level"], "")
    for subset in report["subsets"]:
        top5 = any("top5_accuracy" in r["metrics"][subset] for r in report["results"])
        lines += [
            "",
            f"## Results on {subset}",
            "",
            md_lib.table(
                ["model", "kind", f"accuracy [{level}% interval]"]
                + ["top-5 accuracy"] * top5
                + ["loss", "ECE", f"macro F1 [{level}% interval]", "images"],
                [
                    [
                        r["name"],
                        r["kind"],
                        md_lib.pct_interval(m["accuracy"], m["intervals"]["accuracy"]),
                    ]
                    + [md_lib.pct(m.get("top5_accuracy"))] * top5
                    + [
                        f"{m['loss']:.4f}",
                        f"{m['ece']:.4f}",
                        md_lib.num_interval(m["macro_f1"], m["intervals"]["macro_f1"]),
                        m["count"],
                    ]
                    for r in _distinct(report["results"])
                    for m in [r["metrics"][subset]]
                ],
            ),
        ]
    lines += _reference_section(report) + _ensemble_section(report) + _soup_section(report)
    lines += _calibration_section(report) + _selective_section(report)
    lines += _paired_section(report) + _details_section(report)
    return "\n".join(lines) + "\n"


def summary_table(report: dict) -> str:
    """Accuracy per model and subset, as plain text for stdout."""
    subsets = report["subsets"]
    width = max([len(r["name"]) for r in report["results"]] + [5])
    lines = [f"{'model':<{width}}  {'kind':<16}" + "".join(f"{s:>10}" for s in subsets)]
    for r in report["results"]:
        lines.append(
            f"{r['name']:<{width}}  {r['kind']:<16}"
            + "".join(f"{md_lib.pct(r['metrics'][s]['accuracy']):>10}" for s in subsets)
        )
    selective = [r for r in report["results"] if "selective" in r]
    if selective:
        lines.append(
            f"Review threshold (top-1 probability; {FIT_SUBSET} precision >= "
            f"{md_lib.pct(report['target_precision'])}; usable as --review_threshold):"
        )
    for r in selective:
        sel = r["selective"]
        if sel["skipped"] or sel["threshold"] is None:
            lines.append(f"  {r['name']}: " + (sel["skipped"] or "no threshold reaches it"))
            continue
        lines.append(
            f"  {r['name']}: {sel['threshold']!r}; coverage (precision): "
            + ", ".join(
                f"{s} {md_lib.pct(m['coverage'])} ({md_lib.pct(m['precision'])})"
                for s, m in sel["subsets"].items()
            )
        )
    return "\n".join(lines)


def _calibration_section(report) -> list:
    rows = [r for r in report["results"] if "calibration" in r]
    if not rows:
        return []
    subsets = report["subsets"]
    lines = [
        "",
        "## Calibration: temperature scaling",
        "",
        f"The temperature T minimises the log-loss of softmax(log p / T) on {FIT_SUBSET}; "
        f"ECE ({report['ece_bins']} bins) and log-loss before -> after dividing by T.",
        "",
        md_lib.table(
            ["model", "T"] + [f"{s} ECE" for s in subsets] + [f"{s} loss" for s in subsets],
            [
                [r["name"], md_lib.num(r["calibration"]["temperature"], ".3f")]
                + [_before_after(r["calibration"]["subsets"][s], "ece") for s in subsets]
                + [_before_after(r["calibration"]["subsets"][s], "loss") for s in subsets]
                for r in rows
            ],
        ),
    ]
    skipped = sorted({r["calibration"]["skipped"] for r in rows if r["calibration"]["skipped"]})
    return lines + ["", "Skipped: " + "; ".join(skipped) + "."] * bool(skipped)


def _selective_section(report) -> list:
    rows = [r for r in report["results"] if "selective" in r]
    if not rows:
        return []
    subsets = report["subsets"]
    lines = [
        "",
        "## Selective prediction: review threshold",
        "",
        "A prediction is accepted when its top-1 probability (uncalibrated, as written by "
        f"`--predict`) is at least the threshold: the lowest one whose accepted {FIT_SUBSET} "
        f"images reach precision {md_lib.pct(report['target_precision'])}. Coverage is the share "
        "of images accepted, precision the accuracy among them; pass the threshold as "
        "`--review_threshold` to flag the rest for review.",
        "",
        md_lib.table(
            ["model", "threshold"] + [f"{s} coverage (precision)" for s in subsets],
            [
                [r["name"], md_lib.num(r["selective"]["threshold"], "")]
                + [
                    f"{md_lib.pct(m['coverage'])} ({md_lib.pct(m['precision'])})" if m else "-"
                    for s in subsets
                    for m in [r["selective"]["subsets"].get(s)]
                ]
                for r in rows
            ],
        ),
    ]
    notes = sorted({r["selective"]["skipped"] for r in rows if r["selective"]["skipped"]})
    notes += [
        f"{r['name']}: no threshold reaches precision {md_lib.pct(report['target_precision'])} "
        f"on {FIT_SUBSET}; nothing is accepted"
        for r in rows
        if not r["selective"]["skipped"] and r["selective"]["threshold"] is None
    ]
    return lines + ["", "Note: " + "; ".join(notes) + "."] * bool(notes)


def _reference_section(report) -> list:
    """Our numbers beside the published reference's, on its subset, only when it describes the
    same label column and classes (report.reference_for); each of ours with its interval, so a
    reader sees whether the reference number lies inside it."""
    reference = report.get("reference")
    if not reference or reference["subset"] not in report["subsets"]:
        return []
    subset = reference["subset"]
    recall_classes = list(reference.get("recall", {}))
    rows = []
    for r in _distinct(report["results"]):
        m = r["metrics"][subset]
        counterpart = r["reference_counterpart"]
        rows.append(
            [
                r["name"],
                md_lib.pct_interval(m["accuracy"], m["intervals"]["accuracy"]),
                f"{md_lib.pct(reference['accuracy'][counterpart])} ({counterpart})"
                if counterpart
                else "-",
            ]
            + [
                md_lib.num_interval(m["recall"][c], m["intervals"]["recall"][c], ".2f")
                for c in recall_classes
            ]
            + [md_lib.num_interval(m["macro_f1"], m["intervals"]["macro_f1"], ".2f")]
        )
    level = md_lib.pct(report["confidence_level"], "")
    return [
        "",
        f"## Compared with the {reference['name']} ({subset} subset)",
        "",
        f"{reference['name']} ({reference['citation']}): "
        + ", ".join(f"{k} {md_lib.pct(v)}" for k, v in reference["accuracy"].items())
        + "; "
        + "".join(f"{c} recall {v:.2f}; " for c, v in reference.get("recall", {}).items())
        + f"macro F1 {reference['macro_f1']:.2f}. Ours with {level}% intervals: a reference "
        "number inside an interval is not a difference this test can see.",
        "",
        md_lib.table(
            ["model", f"{subset} accuracy", "reference accuracy"]
            + [f"{c} recall (ref. {reference['recall'][c]:.2f})" for c in recall_classes]
            + [f"macro F1 (ref. {reference['macro_f1']:.2f})"],
            rows,
        ),
    ]


def _paired_section(report) -> list:
    """McNemar's exact test of every two models on each subset's images."""
    lines = []
    tested = list(report.get("paired_tests", {}).items()) + [
        (f"{subset}, against other evaluations", tests)
        for subset, tests in report.get("paired_tests_with_other_evaluations", {}).items()
    ]
    for subset, tests in tested:
        if not tests:
            continue
        lines += [
            "",
            f"### {subset}",
            "",
            md_lib.table(
                ["A", "B", "only A right", "only B right", "A - B (points)", "p (exact)"],
                [
                    [
                        t["a"],
                        t["b"],
                        t["only_a_correct"],
                        t["only_b_correct"],
                        f"{100 * t['accuracy_difference']:+.2f}",
                        f"{t['p_value']:.3g}",
                    ]
                    for t in tests
                ],
            ),
        ]
    if not lines:
        return []
    return [
        "",
        "## Paired tests (McNemar, exact)",
        "",
        "Both models classify the same images; only the images exactly one of them gets right "
        "tell them apart. p is the two-sided probability of a split at least this uneven if "
        "both were equally accurate (p >= 0.05: no difference shown).",
    ] + lines


def _ensemble_section(report) -> list:
    lines = []
    for r in report["results"]:
        if r["kind"] != "ensemble":
            continue
        members = {x["name"]: x for x in report["results"] if x["kind"] == "single"}
        rows = [
            [name, f"{w:.3f}"]
            + [
                md_lib.pct(members[name]["metrics"][s]["accuracy"]) if name in members else "-"
                for s in report["subsets"]
            ]
            for name, w in zip(r["details"]["members"], r["details"]["weights"])
        ]
        rows.append(
            [f"**{r['name']}**", "1.000"]
            + [f"**{md_lib.pct(r['metrics'][s]['accuracy'])}**" for s in report["subsets"]]
        )
        lines += [
            "",
            "## Ensemble (mean of predicted probabilities) beside its members",
            "",
            md_lib.table(["model", "weight"] + [f"{s} accuracy" for s in report["subsets"]], rows),
        ]
    return lines


def _soup_section(report) -> list:
    rows = [
        r for r in report["results"] if r["kind"].endswith("soup") or r["kind"] == "soup ingredient"
    ]
    if not rows:
        return []
    # Ingredients are chosen on val; show it even when it is not among --subsets.
    extra_val = "val" not in report["subsets"]
    lines = [
        "",
        "## Soups (parameter averaging) beside their ingredients",
        "",
        md_lib.table(
            ["model", "kind"]
            + ["val accuracy"] * extra_val
            + [f"{s} accuracy" for s in report["subsets"]],
            [
                [r["name"], r["kind"]]
                + [md_lib.pct(r["details"].get("val_accuracy"))] * extra_val
                + [md_lib.pct(r["metrics"][s]["accuracy"]) for s in report["subsets"]]
                for r in rows
            ],
        ),
    ]
    for r in rows:
        details = r["details"]
        if r["kind"] == "uniform soup":
            lines += [
                "",
                f"{r['name']}: validation accuracy {md_lib.pct(details['val_accuracy'])} "
                f"with recomputed BatchNorm statistics, "
                f"{md_lib.pct(details['val_accuracy_with_averaged_batch_norm_statistics'])} "
                "with the ingredients' statistics averaged.",
            ]
        if r["kind"] == "greedy soup":
            lines += [
                "",
                f"{r['name']}: ingredients tried best first (validation accuracy); "
                "each kept only if the soup's validation accuracy did not drop.",
                "",
                md_lib.table(
                    ["ingredient", "its val accuracy", "soup val accuracy with it", "kept"],
                    [
                        [
                            s["ingredient"],
                            md_lib.pct(s["ingredient_val_accuracy"]),
                            md_lib.pct(s["soup_val_accuracy"]),
                            "yes" if s["added"] else "no",
                        ]
                        for s in details["steps"]
                    ],
                ),
            ]
    bn = rows[-1]["details"].get("batch_norm_recalibration")
    if bn:
        lines += [
            "",
            "BatchNorm recalibration: "
            + (
                f"{bn['batches']} batches of {bn['batch_size']} training images."
                if bn["batches"]
                else "off (averaged statistics)."
            ),
        ]
    return lines


def _details_section(report) -> list:
    lines = ["", "## Per model and subset"]
    for r in report["results"]:
        if not r["detailed"]:
            continue
        for subset, m in r["metrics"].items():
            files = r.get("files", {}).get(subset, {})
            rows = [
                [
                    name,
                    f"{v['precision']:.3f}",
                    md_lib.num_interval(v["recall"], m["intervals"]["recall"].get(name)),
                    f"{v['f1']:.3f}",
                    v["support"],
                ]
                for name, v in m["classification_report"].items()
            ]
            lines += [
                "",
                f"### {r['name']} on {subset}: accuracy "
                f"{md_lib.pct_interval(m['accuracy'], m['intervals']['accuracy'])} "
                f"({m['correct']} of {m['count']} images), loss {m['loss']:.4f}, ECE {m['ece']:.4f}",
                "",
                md_lib.table(["class", "precision", "recall [interval]", "F1", "support"], rows),
            ]
            if files:
                lines += [
                    "",
                    f"Confusion matrix ([CSV]({files['confusion.csv']})):",
                    "",
                    f"![confusion matrix]({files['confusion.png']})",
                    "",
                    f"![misclassified]({files['misclassified.png']})",
                    "",
                    f"![reliability diagram]({files['reliability.png']})",
                ]
    return lines


def _distinct(results: list) -> list:
    """Results without soup ingredients that repeat another row (e.g. a run's best checkpoint)."""
    names = {r["name"] for r in results if r["kind"] != "soup ingredient"}
    return [r for r in results if r["kind"] != "soup ingredient" or r["name"] not in names]


def _before_after(numbers: dict, key: str) -> str:
    if numbers[f"{key}_scaled"] is None:
        return f"{numbers[key]:.4f}"
    return f"{numbers[key]:.4f} -> {numbers[f'{key}_scaled']:.4f}"
