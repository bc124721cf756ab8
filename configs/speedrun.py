"""Time to accuracy: SpeedNet (fashion_jax/models/speed_net.py) at batch 128, Muon on its
convolution kernels and Adam on the rest at 4e-3, 0.3 epochs of warm-up and cosine decay to zero,
label smoothing 0.1, random flips, a weight average over half an epoch with precise BatchNorm,
validation with flip test-time augmentation, 4 epochs, the last one kept.

Launch:
  python run_train.py --config=configs/speedrun.py --workdir=runs/speedrun
  python run_eval.py --workdirs=runs/speedrun --output_dir=eval/speedrun --config.tta=flip
Time it over seeds against configs/adam.py: python bench/speedrun.py --recipes=speedrun,adam
Result (bench/README.md, "Second sitting", 5 seeds, 2-core Intel Xeon, AVX-512): 98.97% +- 0.06
val, 99.05% +- 0.04 test, 98.87% +- 0.09 control; 98.85% val (the study's) first reached after
198 +- 27 s (epoch 3 in four seeds, 4 in one), 263 s from start to exit. With AVX2 code on the
same CPU (bench/README.md, "Third sitting"): 99.00% +- 0.07 val, 98.86% +- 0.06 control, 362 +- 67 s
to 98.85% val.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "speed_net"
    config.model.stem = "patch"
    config.model.stem_features = 32
    config.model.whiten_stem_images = 0
    config.model.block_features = (32, 64, 128)
    config.model.convs_per_block = 2
    config.model.pooling = "flatten"
    config.model.dense_units = 0
    config.model.bn_momentum = 0.9
    config.model.dropout_rate = 0.0
    config.batch_size = 128
    config.num_epochs = 4
    # Muon on the convolution kernels, Adam on the rest (training/optim.py).
    config.optimizer.name = "muon"
    config.optimizer.learning_rate = 4e-3
    config.optimizer.reference_batch_size = 128  # The batch the rate was chosen at.
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.3
    config.optimizer.decay_examples = 0  # To zero at the end of num_epochs.
    config.loss.label_smoothing = 0.1
    config.augment.flip = True
    config.val_tta = "flip"  # run_eval.py: --config.tta=flip.
    config.ema_horizon_epochs = 0.5
    config.bn_recalibration_batches = 20
    config.early_stopping.patience = 100
    config.early_stopping.restore_best = False  # The last epoch: the schedule ends there.
    config.checkpoint.every_steps = 100000  # Epoch ends only: an epoch takes under a minute.
    config.log_every_steps = 50
    return config
