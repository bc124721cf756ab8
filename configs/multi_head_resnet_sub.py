"""configs/multi_head_resnet_aug.py aimed at subCategory (issue 5's 96% bar): its loss counts
twice, and every head trains on label-smoothed targets (0.1), validation loss staying the plain
cross-entropy.

  python run_train.py --config=configs/multi_head_resnet_sub.py --workdir=runs/multi_head_sub
  python run_eval.py --workdirs=runs/multi_head_sub --output_dir=eval/multi_head_sub
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
