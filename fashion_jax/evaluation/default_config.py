r"""run_eval.py's configuration: every evaluation, report and prediction option, in one place.

run_eval.py loads this file by default; override any field on the command line, e.g.
  python run_eval.py --workdirs=runs/adam --output_dir=eval/adam \
      --config.evaluators=single,soup --config.evals.soup.last_epochs=5 --config.subsets=val,test
or copy it and pass --config=my_eval.py. Lists are comma-separated strings. Each evaluator is
built from its own section, config.evals.<name> (as big_vision's config.evals); every value is
checked before a checkpoint is read or a kernel compiled (fashion_jax/evaluation/config_checks.py).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.checkpoint = "best"  # Of every workdir: best (by the monitored metric), latest, a step.
    config.subsets = "val,test,control"  # Subsets of the saved split.
    # Evaluators by name, each configured by config.evals.<name>; auto: single, ensemble (with
    # two or more workdirs) and soup.
    config.evaluators = "auto"
    config.batch_size = 256  # Inference batch.
    # The dataset folder; "": $FASHION_DATA_DIR, the folder the run recorded, data/ in the
    # checkout, ../shared/data, kagglehub (fashion_jax/data/locate.py).
    config.data_dir = ""
    config.head = ""  # Multi-head runs: one head, or "" for every head (plus heads.md).
    config.tta = "none"  # Test-time augmentation: none, flip, flip_shift (fashion_jax/models).
    config.progress_bar = True  # Drawn only on a terminal.
    # Multi-head runs: label columns that form a hierarchy, coarse to fine (every fine class
    # belongs to one coarse class). Used for the consistency check of heads.md, the consistent
    # labels of --predict and the contradicting-labels check of the audit.
    config.hierarchy = "masterCategory,subCategory,articleType"

    config.report = ml_collections.ConfigDict()
    config.report.ece_bins = 15  # Confidence bins of the expected calibration error.
    # Selective prediction: the review threshold is the lowest top-1 probability whose accepted
    # val images reach this precision; coverage and precision are then reported on every subset.
    config.report.target_precision = 0.995
    config.report.gallery_size = 24  # Misclassified images per gallery PNG.
    config.report.confidence_level = 0.95  # Of every interval in the report.
    config.report.bootstrap_samples = 1000  # Resamples of the images for macro F1 and recall.
    config.report.bootstrap_seed = 0
    # Published numbers to show beside ours, for the label column and classes they describe (a
    # JSON file like fashion_jax/evaluation/study_2020.json); "": that file; "none": no comparison.
    config.report.reference_file = ""
    # Models of other evaluations to test every model here against (McNemar, same images): their
    # folders in those output dirs (e.g. eval/study/ensemble_of_adam_sgd), comma-separated; each
    # holds <subset>_predictions.csv, written for every detailed model.
    config.report.compare_with = ""

    config.evals = ml_collections.ConfigDict()
    config.evals.single = ml_collections.ConfigDict()  # Each workdir's checkpoint on its own.
    config.evals.ensemble = ml_collections.ConfigDict()  # The mean of predicted probabilities.
    config.evals.ensemble.weights = ""  # One per workdir, e.g. "0.6,0.4"; "": equal.
    config.evals.soup = ml_collections.ConfigDict()  # Averaged parameters (Wortsman et al. 2022).
    # workdirs: each workdir's --config.checkpoint; last_epochs: the epoch-end checkpoints kept in
    # each workdir; auto: last_epochs for one workdir, else workdirs.
    config.evals.soup.ingredients = "auto"
    config.evals.soup.last_epochs = 0  # With last_epochs: the last K (0: all kept).
    config.evals.soup.kinds = "uniform,greedy"
    # Training batches that recompute a soup's BatchNorm statistics (0: keep the averaged ones).
    config.evals.soup.bn_batches = 100
    config.evals.soup.bn_batch_size = 0  # 0: the training batch size.

    # Label errors in the catalogue (cleanlab's confident learning on out-of-sample
    # probabilities: give the cross-fitting runs of configs/audit_fold.py as --workdirs).
    config.evals.audit = ml_collections.ConfigDict()
    config.evals.audit.gallery_size = 24  # Top rows per head shown with their photos.
    config.evals.audit.max_rows = 0  # Rows of audit.csv per kind and head; 0: all.
    # A row contradicts the hierarchy when its coarse label is one that its fine label has in
    # at most this share of the training rows.
    config.evals.audit.contradiction_share = 0.02

    # With --predict (classify new photos) and --export.
    config.predict = ml_collections.ConfigDict()
    config.predict.combine = "auto"  # single, ensemble, uniform_soup, greedy_soup; auto: single
    # for one workdir, else ensemble.
    config.predict.top_k = 3  # Labels and probabilities per image and head.
    # How a photo of another aspect ratio becomes the model's 60x80 input: "stretch" it, or "pad"
    # it to 3:4 with its border colour first (see docs/results.md for both on square photos).
    config.predict.resize = "stretch"
    # needs_review is 1 where the top-1 probability is below this (e.g. the report's review
    # threshold); negative: no needs_review column.
    config.predict.review_threshold = -1.0
    return config
