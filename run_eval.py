r"""Evaluate trained fashion_jax workdirs, or classify new photos with them.

Evaluate (checkpoints are read, never written; outputs go to --output_dir):
  python run_eval.py --workdirs=runs/adam,runs/sgd --output_dir=eval/adam_sgd
  python run_eval.py --workdirs=runs/multi_head --output_dir=eval/multi_head  # every head
  python run_eval.py --workdirs=runs/adam --output_dir=eval/adam_soup \
      --config.evaluators=single,soup --config.evals.soup.last_epochs=5 \
      --config.subsets=val,test --config.checkpoint=latest

Predict (one model, the ensemble of several, or a soup):
  python run_eval.py --workdirs=runs/adam --predict=new_photos/ --output=predictions.csv
  python run_eval.py --workdirs=runs/adam,runs/sgd --predict=list.csv --output=predictions.csv \
      --config.predict.combine=ensemble --config.predict.top_k=3 \
      --config.predict.review_threshold=0.98

Export for serving (ONNX needs pip install -e ".[export]"):
  python run_eval.py --workdirs=runs/adam,runs/sgd --export=exported/adam_sgd \
      --config.predict.combine=ensemble

Every option is a field of the evaluation config (fashion_jax/evaluation/default_config.py),
overridable as --config.<field>=<value>; all are checked before any checkpoint is read.
"""

import os
import sys

from fashion_jax import launch

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fashion_jax import errors  # noqa: E402
from fashion_jax import logging_setup  # noqa: E402

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fashion_jax", "evaluation", "default_config.py"
)

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdirs", [], "Training workdirs: --workdirs=a,b or repeated.")
flags.DEFINE_string("output_dir", None, "Folder for report.json, report.md and the PNGs.")
flags.DEFINE_string("predict", None, "Classify new photos: a folder or a CSV with a 'path' column.")
flags.DEFINE_string("output", "predictions.csv", "With --predict: the CSV to write.")
flags.DEFINE_string(
    "export",
    None,
    "Write the model (or the ensemble or soup of --config.predict.combine) to this folder as "
    "model.onnx, model.jax_export and labels.json, for serving without this repository.",
)
config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Evaluation configuration file.", lock_config=True
)


def _predict_or_export(workdirs, config):
    from fashion_jax.evaluation import runner
    from fashion_jax.inference import classifier
    from fashion_jax.inference import export
    from fashion_jax.inference import predict_files

    outputs = [FLAGS.export] * bool(FLAGS.export)
    if FLAGS.predict:
        outputs.append(os.path.dirname(os.path.abspath(FLAGS.output)))
        predict_files.count_inputs(FLAGS.predict)  # A bad --predict fails before any work.
    for output in outputs:
        runner.check_output_dir(output, workdirs)
    clf = classifier.load_classifier(workdirs, config=config)
    if FLAGS.export:
        written = export.export(clf, FLAGS.export)
        print(f"Exported {clf.description}: " + ", ".join(written.values()))
    if FLAGS.predict:
        review = config.predict.review_threshold
        counts = predict_files.predict_files(
            FLAGS.predict,
            clf,
            FLAGS.output,
            config.predict.top_k,
            logging_setup.progress_bars_wanted(config.progress_bar),
            review if review >= 0 else None,
        )
        print(
            f"{FLAGS.output}: {counts.predicted} images predicted with {clf.description}, "
            f"{counts.failed} could not be read."
        )
        if counts.exit_code:
            raise errors.InputError(f"no image of {FLAGS.predict} could be read.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from fashion_jax import optional_dependencies
    from fashion_jax.evaluation import config_checks
    from fashion_jax.evaluation import report_markdown
    from fashion_jax.evaluation import runner

    logging_setup.quiet_library_logs()
    config = FLAGS.config
    workdirs = [w for value in FLAGS.workdirs for w in value.split(",") if w.strip()]
    try:
        predicting = bool(FLAGS.predict or FLAGS.export)
        if FLAGS.export:
            optional_dependencies.require(["jax2onnx"], "--export (model.onnx)")
        config_checks.check_eval_config(config, len(workdirs), predicting=predicting)
        if not predicting and not FLAGS.output_dir:
            raise errors.ConfigError(
                "Pass --output_dir for the report (or --predict to classify photos, or --export)."
            )
        if predicting:
            _predict_or_export(workdirs, config)
            return
        result = runner.evaluate(workdirs, config, FLAGS.output_dir)
        if "results" in result:
            print(report_markdown.summary_table(result))
            print(f"Report: {FLAGS.output_dir}/report.md")
        else:  # A multi-head run: one report per head.
            for head, head_report in result.items():
                print(f"== {head} ==\n{report_markdown.summary_table(head_report)}")
            print(
                f"Reports: {FLAGS.output_dir}/<head>/report.md; per-head summary and "
                f"hierarchy: {FLAGS.output_dir}/heads.md"
            )
    except errors.UserError as e:
        sys.exit(f"run_eval.py: {e}")


if __name__ == "__main__":
    app.run(main)
