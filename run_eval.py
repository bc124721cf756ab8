"""Evaluate trained fashion_jax workdirs, or classify new photos with them.

Evaluate (checkpoints are read, never written; outputs go to --output_dir):
  python run_eval.py --workdirs=runs/adam,runs/sgd --output_dir=eval/adam_sgd
  python run_eval.py --workdirs=runs/multi_head --output_dir=eval/multi_head  # every head
  python run_eval.py --workdirs=runs/adam --evaluators=single,soup --soup_last_epochs=5 \
      --subsets=val,test --checkpoint=latest --output_dir=eval/adam_soup

Predict (one model, the ensemble of several, or a soup):
  python run_eval.py --workdirs=runs/adam --predict=new_photos/ --output=predictions.csv
  python run_eval.py --workdirs=runs/adam,runs/sgd --predict=list.csv --predict_with=ensemble \
      --output=predictions.csv --top_k=3 --review_threshold=0.98
"""

import sys

from fashion_jax import launch

if __name__ == "__main__":
  launch.maybe_reexec_with_tcmalloc()

import logging  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from fashion_jax import logging_setup  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdirs", [], "Training workdirs: --workdirs=a,b or repeated.")
flags.DEFINE_string("checkpoint", "best", "Which checkpoint of each workdir: best, latest or a "
                    "step number.")
flags.DEFINE_list("subsets", ["val", "test", "control"], "Subsets of the saved split to evaluate.")
flags.DEFINE_list("evaluators", ["auto"], "Evaluators by name: single, ensemble, soup; auto: "
                  "single, ensemble (with 2+ workdirs) and soup.")
flags.DEFINE_string("output_dir", None, "Folder for report.json, report.md and the PNGs.")
flags.DEFINE_list("ensemble_weights", [], "One weight per workdir (normalised); default equal.")
flags.DEFINE_enum("soup_ingredients", "auto", ["auto", "workdirs", "last_epochs"],
                  "Soup ingredients: each workdir's --checkpoint, or the epoch-end checkpoints "
                  "kept in each workdir; auto: last_epochs for one workdir, else workdirs.")
flags.DEFINE_integer("soup_last_epochs", 0, "last_epochs: use the last K (0: all kept).")
flags.DEFINE_list("soups", ["uniform", "greedy"], "Soups to make: uniform, greedy.")
flags.DEFINE_integer("bn_batches", 100, "Training batches that recompute a soup's BatchNorm "
                     "statistics (0: keep the averaged statistics).")
flags.DEFINE_integer("bn_batch_size", 0, "Batch size of that recalibration; 0: the training one.")
flags.DEFINE_integer("batch_size", 256, "Inference batch size.")
flags.DEFINE_integer("ece_bins", 15, "Confidence bins of the expected calibration error.")
flags.DEFINE_float("target_precision", 0.995, "Selective prediction: the review threshold is "
                   "the lowest top-1 probability whose accepted val images reach this precision; "
                   "coverage and precision are then reported on every subset.")
flags.DEFINE_integer("gallery_size", 24, "Misclassified images per gallery PNG.")
flags.DEFINE_string("data_dir", "", "Dataset folder; default: the training config's, else "
                    "$FASHION_DATA_DIR.")
flags.DEFINE_string("predict", None, "Classify new photos: a folder or a CSV with a 'path' column.")
flags.DEFINE_string("output", "predictions.csv", "With --predict: the CSV to write.")
flags.DEFINE_enum("predict_with", "auto", ["auto", "single", "ensemble", "uniform_soup",
                                           "greedy_soup"],
                  "With --predict: auto is single for one workdir, else ensemble.")
flags.DEFINE_integer("top_k", 3, "With --predict: labels and probabilities per image.")
flags.DEFINE_float("review_threshold", None, "With --predict: add a needs_review column, 1 where "
                   "the top-1 probability is below this (e.g. the report's review threshold).")
flags.DEFINE_bool("progress_bar", True, "Show progress bars.")
flags.DEFINE_enum("tta", "none", ["none", "flip"], "Test-time augmentation: flip averages the "
                  "probabilities of each image and its mirror image (for runs trained with "
                  "--config.augment.flip).")
flags.DEFINE_string("head", "", "Multi-head runs: evaluate this head only (default: every head, "
                    "each in <output_dir>/<head>/, plus heads.md and the hierarchy check).")


class _DropReadOnlyNotes(logging.Filter):
  """Orbax warns on every read-only open, which is how the evaluator always opens checkpoints."""

  def filter(self, record):
    return not ("read only" in str(record.msg) or "read_only=True" in str(record.msg))


def options_from_flags():
  from fashion_jax.evaluation import context
  try:
    weights = tuple(float(w) for w in FLAGS.ensemble_weights)
  except ValueError:
    raise app.UsageError(f"--ensemble_weights={','.join(FLAGS.ensemble_weights)}: give numbers, "
                         "e.g. --ensemble_weights=0.6,0.4") from None
  return context.EvalOptions(
      checkpoint=FLAGS.checkpoint, subsets=tuple(FLAGS.subsets),
      evaluators=tuple(FLAGS.evaluators),
      ensemble_weights=weights,
      soup_ingredients=FLAGS.soup_ingredients, soup_last_epochs=FLAGS.soup_last_epochs,
      soups=tuple(FLAGS.soups), bn_batches=FLAGS.bn_batches, bn_batch_size=FLAGS.bn_batch_size,
      batch_size=FLAGS.batch_size, ece_bins=FLAGS.ece_bins,
      target_precision=FLAGS.target_precision, gallery_size=FLAGS.gallery_size,
      head=FLAGS.head, tta=FLAGS.tta,
      data_dir=FLAGS.data_dir, progress_bar=FLAGS.progress_bar)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from fashion_jax.evaluation import predict
  from fashion_jax.evaluation import report
  from fashion_jax.evaluation import runner
  from fashion_jax.evaluation import soup
  from fashion_jax.restore import RestoreError
  from fashion_jax.styles import DataError
  logging_setup.quiet_library_logs()
  absl_logging.get_absl_handler().addFilter(_DropReadOnlyNotes())
  workdirs = [w for value in FLAGS.workdirs for w in value.split(",") if w.strip()]
  try:
    options = options_from_flags()
    if FLAGS.predict:
      counts = runner.predict(workdirs, options, FLAGS.predict, FLAGS.output,
                              FLAGS.predict_with, FLAGS.top_k, FLAGS.review_threshold)
      print(f"{FLAGS.output}: {counts.predicted} images predicted, {counts.failed} could not "
            "be read.")
      if counts.exit_code:
        sys.exit(f"run_eval.py: no image of {FLAGS.predict} could be read.")
      return
    if not FLAGS.output_dir:
      raise app.UsageError("Pass --output_dir for the report (or --predict to classify photos).")
    result = runner.evaluate(workdirs, options, FLAGS.output_dir)
    if "results" in result:
      print(report.summary_table(result))
      print(f"Report: {FLAGS.output_dir}/{report.REPORT_MD}")
    else:  # A multi-head run: one report per head.
      for head, head_report in result.items():
        print(f"== {head} ==\n{report.summary_table(head_report)}")
      print(f"Reports: {FLAGS.output_dir}/<head>/{report.REPORT_MD}; per-head summary and "
            f"hierarchy: {FLAGS.output_dir}/heads.md")
  except (DataError, RestoreError, runner.EvalError, soup.SoupError, predict.InputError) as e:
    sys.exit(f"run_eval.py: {e}")


if __name__ == "__main__":
  app.run(main)
