"""Evaluating trained workdirs (run_eval.py): models, ensembles, soups, audits and reports.

default_config.py  every option of run_eval.py, one section per evaluator
config_checks.py   the checks of that config, before any checkpoint is read
runner.py          opening the workdirs and running the chosen evaluators
context.py         what evaluators share: runs, data, predictions read once per checkpoint
data.py            a run's saved split, decoded subset by subset
evaluators/        single, ensemble, soup, audit: chosen by name, each from its section
metrics.py         accuracy, top-k, loss, calibration error, per-class report
statistics.py      Wilson and bootstrap intervals, McNemar's exact test
calibration.py     temperature scaling, reliability bins, review threshold
heads.py           multi-head runs: which heads, top classes, hierarchy check, heads.md
hierarchy.py       label combinations seen in training, consistent decoding
report.py          report.json and the files of each model; report_markdown.py: report.md
markdown.py        tables and number formats of the reports
figures.py         confusion matrices, galleries of misclassified photos, reliability
"""
