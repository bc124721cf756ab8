r"""Soup ingredients: short fine-tunes of one shared start, each with other hyper-parameters
(Wortsman et al. 2022's recipe: one pre-trained start, a sweep of fine-tunes, then uniform and
greedy soups of their weights).

The start is a full multi-head SmallResNet run (configs/multi_head_resnet_sub.py, 12 epochs):
  python run_train.py --config=configs/multi_head_resnet_sub.py --workdir=runs/start \
      --config.num_epochs=12 --config.early_stopping.patience=12
Each ingredient i (0-5) is one job, so a cluster array job maps task i to ingredient i:
  python run_train.py --config=configs/finetune.py:3 --workdir=runs/finetune_3
  # SLURM: --config=configs/finetune.py:$SLURM_ARRAY_TASK_ID --workdir=runs/finetune_$SLURM_ARRAY_TASK_ID
Then the soups and ensembles, greedy ingredients chosen on val:
  python run_eval.py --workdirs=runs/finetune_0,runs/finetune_1,runs/finetune_2,runs/finetune_3,\
runs/finetune_4,runs/finetune_5 --output_dir=eval/soups --config.checkpoint=latest

Every ingredient starts from the start's last checkpoint (--config.init_checkpoint,
--config.init_checkpoint_step) with a fresh optimizer, a short warm-up and a cosine decay to 0.
Results: docs/results.md, "Soups of fine-tunes".
"""

from configs import multi_head_resnet_sub

# (learning rate, max shift, label smoothing, class weighting, seed, epochs) per ingredient.
# One epoch (921 steps) each, two for the last, so the whole sweep runs in about an hour on a
# 2-core CPU; on a GPU, longer fine-tunes are a flag away (--config.num_epochs).
SWEEP = (
    (5e-4, 4, 0.1, "none", 1, 1),
    (1e-3, 4, 0.1, "none", 2, 1),
    (2e-4, 4, 0.1, "none", 3, 1),
    (5e-4, 2, 0.0, "none", 4, 1),
    (5e-4, 4, 0.1, "sqrt", 5, 1),
    (5e-4, 6, 0.2, "none", 6, 2),
)


def get_config(ingredient: str = "0"):
    index = int(ingredient)
    if not 0 <= index < len(SWEEP):
        raise ValueError(
            f"--config=configs/finetune.py:{ingredient}: choose an ingredient 0-{len(SWEEP) - 1}."
        )
    learning_rate, max_shift, smoothing, weighting, seed, epochs = SWEEP[index]
    config = multi_head_resnet_sub.get_config()
    config.init_checkpoint = "runs/start"
    config.init_checkpoint_step = "latest"
    config.seed = seed
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = 300
    config.augment.max_shift = max_shift
    config.loss.label_smoothing = smoothing
    config.loss.class_weighting = weighting
    config.num_epochs = epochs
    config.early_stopping.patience = epochs
    config.checkpoint.keep_epochs = epochs
    return config
