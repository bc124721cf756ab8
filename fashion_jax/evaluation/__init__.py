"""Evaluating trained workdirs (run_eval.py): models, ensembles, soups, reports, predictions.

  context.py     the runs, their data and a memo of predictions shared by every evaluator
  data.py        a run's saved split, decoded (and cached) subset by subset
  predictor.py   the one jitted predict function, batching, mixing prediction sets
  evaluators.py  the registry: name -> evaluator yielding named prediction sets
  soup.py        parameter averaging: uniform and greedy soups, BatchNorm recalibration
  metrics.py     accuracy, top-k, loss, calibration error, classification report, confusion matrix
  calibration.py temperature scaling, reliability bins, review threshold for a target precision
  figures.py     confusion-matrix heatmaps, misclassified-image galleries, reliability
  report.py      report.json, report.md, CSVs and the stdout summary
  predict.py     classifying a folder or CSV of new photos, streamed in batches
  runner.py      the glue that run_eval.py calls
"""
