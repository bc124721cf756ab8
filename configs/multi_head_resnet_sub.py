r"""configs/multi_head_resnet_aug.py with more weight on subCategory: its loss counts twice, and
every head trains on label-smoothed targets (0.1), validation loss staying the plain
cross-entropy. The best single network here, and the start of the soups (configs/finetune.py).

  python run_train.py --config=configs/multi_head_resnet_sub.py --workdir=runs/multi_head_sub
  python run_eval.py --workdirs=runs/multi_head_sub --output_dir=eval/multi_head_sub \
      --config.checkpoint=latest
Result (docs/results.md, run 5; 16 epochs, latest checkpoint, flip TTA): masterCategory 98.98 /
99.29 / 99.10%, subCategory 95.96 / 96.10 / 96.03%, gender 91.73 / 91.82 / 91.30% (val / test
/ control), 4,544 s of training on one CPU core. With --config.num_epochs=12 (the soups' start,
docs/results.md, "Soups of fine-tunes"; best checkpoint, no TTA): masterCategory 98.84 / 99.05 /
99.00%, subCategory 95.86 / 95.70 / 95.60%, gender 90.92 / 90.85 / 90.83%, 11,291 s on one core
of a 2-core AVX2-only EPYC shared with another run.
"""

from configs import multi_head
from configs import multi_head_resnet_aug


def get_config():
    config = multi_head_resnet_aug.get_config()
    config.loss.head_weights = tuple(
        2.0 if head == "subCategory" else 1.0 for head in multi_head.HEADS
    )
    config.loss.label_smoothing = 0.1
    return config
