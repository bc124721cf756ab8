r"""Cross-fitting for the catalogue audit: fold k of 4 trains a multi-head seed CNN on the train
rows of the other three folds, so its predictions for fold k's rows are out-of-sample; val, test
and control are the usual ones (every fold run predicts them out-of-sample too).

One job per fold (a cluster array job maps task k to fold k):
  python run_train.py --config=configs/audit_fold.py:0 --workdir=runs/audit_fold_0
  ... :1, :2, :3
Then the audit (cleanlab's confident learning on the out-of-sample probabilities, per head):
  python run_eval.py --workdirs=runs/audit_fold_0,runs/audit_fold_1,runs/audit_fold_2,\
runs/audit_fold_3 --config.evaluators=audit --output_dir=eval/audit

What the audit found and costs: docs/results.md, "The catalogue audit".
"""

from configs import multi_head

NUM_FOLDS = 4


def get_config(fold: str = "0"):
    config = multi_head.get_config()
    config.data.num_folds = NUM_FOLDS
    config.data.fold = int(fold)
    config.augment.flip = True
    config.augment.max_shift = 4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 300
    config.optimizer.decay_examples = 0  # No decay length: to zero at the end of num_epochs.
    config.num_epochs = 6
    config.early_stopping.patience = 6
    return config
