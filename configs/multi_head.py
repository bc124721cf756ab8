"""One network, one head per product attribute (configs/adam.py's Adam, weight average and
precise BN, the study's CNN), on the same split as the single-head runs.

  python run_train.py --config=configs/multi_head.py --workdir=runs/multi_head
  python run_eval.py --workdirs=runs/multi_head --output_dir=eval/multi_head

masterCategory stays the primary head (merge map, stratified split identical to the single-head
runs, early-stopping accuracy); in the other heads classes with fewer than 20 images are folded
into "Other" (see <workdir>/heads.json). The loss is the sum of the heads' cross-entropies.
Result: not trained to the end on its own; configs/audit_fold.py trains it (with augmentation
and a cosine schedule) on three quarters of the train rows, see docs/results.md.
"""

from configs import adam

HEADS = ("masterCategory", "subCategory", "articleType", "gender", "baseColour", "season", "usage")


def get_config():
    config = adam.get_config()
    config.data.head_columns = HEADS
    config.data.other_min_count = 20
    config.loss.head_weights = (1.0,) * len(HEADS)
    return config
