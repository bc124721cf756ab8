"""Training: `train.train_and_evaluate(config, workdir)` and its parts.

train.py           the run, as a few named steps
steps.py           the jitted train and eval steps and what runs them over the data
epoch_end.py       precise BN, validation, early stopping, checkpoint, metrics and curves
compilation_cache.py  JAX's persistent compilation cache (compiled steps kept on disk)
state.py           TrainState (BatchNorm statistics, weight average), initialisation
losses.py          cross-entropy of one or several heads, class weights, label smoothing
optim.py           optax schedules and optimizers, the learning rate's batch-size rule
lengths.py         warm-up, decay, weight average, intervals in steps, epochs or examples
batch_norm.py      recomputing BatchNorm statistics ("precise BN", soups)
checkpointing.py   orbax manager: latest, best and last epochs
run_progress.py    epoch history, early stopping, the epoch record
run_files.py       config.json, metrics.jsonl, curves.png, summary.json
metric_writers.py  TensorBoard events and scalars.jsonl (CLU's interface)
config_checks.py   every check of a training config, before any work
parallel.py        the device mesh, shardings, multi-process start-up, transfers
"""
