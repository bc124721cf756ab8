"""Defaults shared by every config, each field with its meaning: the 2020 study's data, model
and training loop (its Model 1's optimizer; configs/adam.py adds what makes it better).

Launch:
  python run_train.py --config=configs/default.py --workdir=runs/default
Any field can be overridden, e.g. --config.optimizer.learning_rate=5e-4 --config.batch_size=64.
The learning-rate decay is given in examples, so it covers the same images at any batch size, and
the rate follows the batch size by optimizer.batch_scaling (both logged at start-up).
Result: the study's Model 1 recipe; see configs/adam.py's docstring for it and its improvements.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0  # Shuffling and dropout.
    config.init_seed = ml_collections.config_dict.placeholder(int)  # Parameters; None -> seed.
    # Or start from a training workdir's parameters and BatchNorm statistics (fresh optimizer state),
    # e.g. so that several runs share one initialisation and can be souped (run_eval.py).
    config.init_checkpoint = ""
    config.init_checkpoint_step = "best"  # "best", "latest" or a step number of init_checkpoint.

    config.data = ml_collections.ConfigDict()
    # "": $FASHION_DATA_DIR, data/ in the checkout, ../shared/data, kagglehub (data/locate.py).
    config.data.data_dir = ""
    config.data.cache_dir = ""  # Decoded images; "": $FASHION_CACHE_DIR or ~/.cache/fashion_jax.
    config.data.label_column = "masterCategory"
    config.data.merge_map = {"Home": "Free Items", "Sporting Goods": "Free Items"}
    config.data.min_class_count = 0  # Rows of rarer classes are skipped (and reported).
    config.data.split_fractions = (0.7, 0.1, 0.1, 0.1)  # train, val, test, control.
    config.data.split_seed = 0  # Keep it fixed across models that are to be compared or ensembled.
    config.data.image_height = 80
    config.data.image_width = 60
    config.data.max_rows = 0  # >0: a stratified slice of about this many rows, for smoke runs.
    # Several heads (one network, one output per column; see configs/multi_head.py). The first must
    # be label_column (merge map, split stratification, early-stopping accuracy); in the others,
    # classes with fewer than other_min_count rows are folded into "Other" (written to heads.json)
    # and rows without a value are left out of that head's loss only.
    config.data.head_columns = ()
    config.data.other_min_count = 0
    # Class imbalance: "uniform" (a permutation per epoch), or draw each epoch's images with
    # replacement with probability ~ 1/count ("class_balanced") or 1/sqrt(count) ("sqrt") of the
    # primary label's class.
    config.data.sampling = "uniform"
    # Cross-fitting (out-of-sample predictions for train rows, e.g. for run_eval.py's audit): with
    # num_folds = K >= 2 the train rows are split into K stratified folds and this run trains on
    # all but `fold`; val, test and control are unchanged. One run per fold (0 .. K-1).
    config.data.num_folds = 0
    config.data.fold = 0
    # The subsets this run trains on. ("train", "val") refits a chosen recipe on train and val
    # (one more 1/8 of the labelled images) for the model to ship: its val numbers are then not
    # held out, so compare such runs on test; control is never trained on.
    config.data.train_subsets = ("train",)

    config.model = ml_collections.ConfigDict()
    config.model.name = "seed_cnn"
    config.model.filters = (32, 64, 128)
    config.model.dense_units = 1024
    config.model.dropout_rate = 0.02
    config.model.bn_momentum = 0.99
    config.model.bn_epsilon = 1e-3
    # CPU: the native direct kernel where it builds, else Winograd/im2col; accelerators: XLA (cuDNN).
    config.model.conv_impl = "auto"
    config.model.dtype = "float32"  # "bfloat16": compute in bf16, parameters/optimizer in float32.

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # adam, sgd, rmsprop or muon (Muon on conv kernels, Adam else).
    # The rate tuned at reference_batch_size (the study's 32), moved to --config.batch_size B by
    # batch_scaling: "linear" (x B/32; Goyal et al. 2017, for SGD), "sqrt" (x sqrt(B/32); Malladi
    # et al. 2022, for Adam-type optimizers), "auto" (linear for sgd, sqrt for adam and rmsprop)
    # or "none". reference_batch_size=0: no scaling. The rate used is logged at start-up.
    config.optimizer.learning_rate = 1e-3
    config.optimizer.reference_batch_size = 32
    config.optimizer.batch_scaling = "auto"
    # "exponential" (the study's: lr * decay_rate ** (step / decay); no decay: constant) or
    # "cosine" (warm-up, then cosine decay to 0 at the decay's end; no decay: at num_epochs' end).
    config.optimizer.schedule = "exponential"
    # Every length is given in steps, epochs or examples, at most one of the three (0 = not set);
    # epochs and examples mean the same images at any batch size (fashion_jax/training/lengths.py).
    config.optimizer.warmup_steps = 0  # cosine only.
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.warmup_examples = 0
    config.optimizer.decay_steps = 0
    config.optimizer.decay_epochs = 0.0
    config.optimizer.decay_examples = 320_000  # The study's 10,000 steps at batch 32.
    config.optimizer.decay_rate = 0.9
    config.optimizer.staircase = False
    config.optimizer.beta1 = 0.9
    config.optimizer.beta2 = 0.999
    config.optimizer.eps = 1e-7  # Keras' default for Adam and RMSprop.
    config.optimizer.momentum = 0.0
    config.optimizer.nesterov = False
    config.optimizer.rho = 0.9
    # On kernels only (not biases, not BatchNorm): decoupled for adam (AdamW), else added to the
    # gradient as an L2 penalty. 0 = none, as in the study.
    config.optimizer.weight_decay = 0.0

    # Training-time augmentation inside the jitted step (fashion_jax/data/augment.py); off in the study.
    config.augment = ml_collections.ConfigDict()
    config.augment.flip = False  # Mirror left-right with probability 1/2.
    config.augment.max_shift = 0  # Shift by up to this many pixels in y and x (edges repeated).
    # Probability that a photo gets a box of its batch neighbour, both labels weighed by area.
    config.augment.cutmix = 0.0

    config.loss = ml_collections.ConfigDict()
    config.loss.head_weights = ()  # One per head of data.head_columns; default 1 each.
    # Per-class weights on the training loss: "none", "balanced" (N / (C * count), as
    # scikit-learn) or "sqrt" (its square root). Validation loss stays unweighted.
    config.loss.class_weighting = "none"
    # Training targets (1 - e) one-hot + e uniform for every head (0: plain cross-entropy).
    config.loss.label_smoothing = 0.0
    # Knowledge distillation (fashion_jax/training/distill.py): workdirs of finished runs with
    # the same heads and split, whose ensemble's predictions on the training images become
    # targets with weight distill_weight (the labels keep 1 - distill_weight), softened by
    # distill_temperature; their checkpoint ("best", "latest" or a step) and test-time
    # augmentation.
    config.loss.distill_teachers = ()
    config.loss.distill_weight = 0.5
    config.loss.distill_temperature = 1.0
    config.loss.distill_checkpoint = "latest"
    config.loss.distill_tta = "flip"

    config.batch_size = 32
    config.eval_batch_size = 256
    # Test-time augmentation of the validation after each epoch: "none" or "flip" (the mean of
    # each photo's and its mirror's probabilities; for --config.augment.flip models).
    config.val_tta = "none"
    config.num_epochs = 50
    # "auto": keep the uint8 training and validation images on the accelerator (not on CPU) and run
    # steps_per_dispatch steps per call with lax.scan (0: 50 on accelerators; always 1 on host data);
    # precise BN and validation then run there too, one compiled loop each.
    config.data_on_device = "auto"
    config.steps_per_dispatch = 0
    # Compiled steps are kept on disk (JAX's persistent compilation cache), so a second run of the
    # same model and shapes, or a resumed one, does not compile again: "" = jax_compilation/ in
    # $FASHION_CACHE_DIR or ~/.cache/fashion_jax, "none" = off, else that folder.
    config.compilation_cache_dir = ""

    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.monitor = "val_loss"  # Or "train_loss", as the study did.
    config.early_stopping.patience = 3
    config.early_stopping.restore_best = True
    # > 0: also stop after the first epoch whose val accuracy reaches this (time to accuracy).
    config.early_stopping.target_accuracy = 0.0

    # >0: at every epoch end, recompute BatchNorm running statistics on this many training batches
    # ("precise BN") before validating and saving; 0: keep the running averages (as the study did).
    config.bn_recalibration_batches = 0
    # A horizon (e.g. ema_horizon_examples=64_000) also keeps a (bias-corrected) moving average of
    # the parameters, updated every step with decay 1 - 1/horizon in steps; it is what is
    # validated, early-stopped on, restored and evaluated (needs bn_recalibration_batches > 0 for
    # its BatchNorm statistics). Or ema_decay: the per-step decay itself (e.g. 0.9995; not with a
    # horizon); ema_decay=0 turns the average off whatever the horizon.
    config.ema_horizon_steps = 0
    config.ema_horizon_epochs = 0.0
    config.ema_horizon_examples = 0
    config.ema_decay = ml_collections.config_dict.placeholder(float)

    # Bookkeeping, not the result, so in steps (epochs or examples are accepted too).
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500  # Plus one at every epoch end.
    config.checkpoint.every_epochs = 0.0
    config.checkpoint.every_examples = 0
    config.checkpoint.keep_epochs = 5  # Last K epoch-end checkpoints kept (soup ingredients).

    config.log_every_steps = 100
    # >0: a jax.profiler trace of this many training steps (e.g. 10), from the end of the first
    # (compiling) dispatch, into <workdir>/profile (TensorBoard's profile plugin, XProf or
    # Perfetto; fashion_jax/training/profiling.py); traced steps run slower. 0: no trace.
    config.profile_steps = 0
    config.log_every_epochs = 0.0
    config.log_every_examples = 0
    config.progress_bar = True
    return config
