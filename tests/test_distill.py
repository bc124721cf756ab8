"""Knowledge distillation (--config.loss.distill_teachers): the loss, the teachers' targets, and
whole runs that distil, on host and device data; teachers that do not fit are refused."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.data import dataset
from fashion_jax.training import distill
from fashion_jax.training import losses
from fashion_jax.training import run_files
from fashion_jax.training import train
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset

HEADS = ("masterCategory", "subCategory", "gender")


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_teacher_targets_mix_into_each_heads_loss_with_weight_and_temperature():
    rng = np.random.default_rng(0)
    sizes, batch = (3, 4), 5
    logits = {h: rng.normal(size=(batch, c)).astype(np.float32) for h, c in zip("ab", sizes)}
    labels = np.array([[0, 1], [2, -1], [1, 3], [0, 0], [2, 2]], np.int32)
    teacher = _log_softmax(rng.normal(size=(batch, sum(sizes)))).astype(np.float32)
    weight, temperature = 0.3, 2.0
    spec = losses.LossSpec(
        heads=("a", "b"),
        multi_head=True,
        head_weights=(1.0, 0.5),
        distill_weight=weight,
        distill_temperature=temperature,
        head_sizes=sizes,
    )
    total, sums = losses.loss_and_metrics(logits, labels, spec, teacher=jnp.asarray(teacher))

    expected, start = np.zeros(batch), 0
    for n, (head, size) in enumerate(zip("ab", sizes)):
        present = labels[:, n] >= 0
        hard = -_log_softmax(logits[head])[np.arange(batch), np.maximum(labels[:, n], 0)]
        targets = np.exp(_log_softmax(teacher[:, start : start + size] / temperature))
        soft = -(targets * _log_softmax(logits[head] / temperature)).sum(-1) * temperature**2
        expected += spec.weight(n) * present * ((1 - weight) * hard + weight * soft)
        start += size
    np.testing.assert_allclose(np.asarray(total), expected, rtol=1e-5)
    # The metrics stay those of the labels: the same as without a teacher.
    _, plain = losses.loss_and_metrics(logits, labels, losses.LossSpec(("a", "b"), multi_head=True))
    assert float(sums["correct/b"]) == float(plain["correct/b"])
    # Evaluation's loss is the plain cross-entropy, whatever the teachers.
    assert spec.for_evaluation().distill_weight == 0.0


def test_a_teacher_that_agrees_with_the_labels_leaves_the_loss_unchanged():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3, 1, 0], jnp.int32)
    one_hot = jnp.where(jax.nn.one_hot(labels, 4) > 0, 0.0, -1e9)  # log of a one-hot
    spec = losses.LossSpec(("label",), distill_weight=1.0, head_sizes=(4,))
    distilled, _ = losses.loss_and_metrics(logits, labels, spec, teacher=one_hot)
    plain, _ = losses.loss_and_metrics(logits, labels, losses.LossSpec(("label",)))
    np.testing.assert_allclose(np.asarray(distilled), np.asarray(plain), rtol=1e-6)
    with pytest.raises(ValueError, match="teacher targets"):
        losses.loss_and_metrics(logits, labels, spec)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """(data folder, root): a trained three-head teacher (root/teacher, also the students'
    undistilled twin: the same config and seed) on a synthetic dataset."""
    root = tmp_path_factory.mktemp("distill")
    data = write_multi_head_dataset(root / "data")
    train.train_and_evaluate(_config(data, root / "cache"), str(root / "teacher"))
    return data, root


def _config(data, cache, **overrides):
    fields = {
        "data.head_columns": HEADS,
        "data.other_min_count": 2,
        "data.cache_dir": str(cache),
        "early_stopping.restore_best": False,
        "augment.flip": True,
    }
    return tiny_config(data, **fields, **overrides)


def test_teacher_targets_are_the_teachers_ensemble_on_every_training_image(teacher_run):
    data_dir, root = teacher_run
    config = _config(data_dir, root / "cache")
    data = dataset.load_data(config.data, None, show_progress=False)
    teacher = str(root / "teacher")
    config.loss.distill_teachers = (teacher,)
    one = distill.teacher_targets(config.loss, data, 64)
    sizes = [len(c) for c in data.heads.values()]
    assert one.shape == (len(data.subsets["train"]), sum(sizes)) and one.dtype == np.float32
    for part in np.split(one, np.cumsum(sizes)[:-1], axis=1):  # A distribution per head.
        np.testing.assert_allclose(np.exp(part).sum(-1), 1.0, rtol=1e-5)
    # An ensemble of the teacher with itself is the teacher; with no TTA it is another target.
    config.loss.distill_teachers = (teacher, teacher)
    np.testing.assert_allclose(distill.teacher_targets(config.loss, data, 64), one, atol=1e-5)
    config.loss.distill_tta = "none"
    assert not np.allclose(distill.teacher_targets(config.loss, data, 64), one, atol=1e-3)


def test_distilling_runs_on_host_and_device_data_alike_and_changes_training(teacher_run, tmp_path):
    data_dir, root = teacher_run
    teacher = (str(root / "teacher"),)
    results = {"plain": (None, run_files.read_metrics(root / "teacher"))}
    for name, overrides in {
        "host": {"loss.distill_teachers": teacher},
        "device": {
            "loss.distill_teachers": teacher,
            "data_on_device": "true",
            "steps_per_dispatch": 2,
        },
    }.items():
        workdir = tmp_path / name
        summary = train.train_and_evaluate(
            _config(data_dir, root / "cache", **overrides), str(workdir)
        )
        results[name] = (summary, run_files.read_metrics(workdir))
    host, device, plain = results["host"], results["device"], results["plain"]
    for a, b in zip(host[1], device[1], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # The teacher's targets enter the training loss (same seed, same batches, another loss).
    assert host[1][0]["train_loss"] != pytest.approx(plain[1][0]["train_loss"], rel=1e-3)


def test_a_teacher_on_other_heads_or_another_split_is_refused(teacher_run, tmp_path):
    data_dir, root = teacher_run
    teacher = root / "teacher"
    single_head = _config(data_dir, root / "cache", **{"loss.distill_teachers": (str(teacher),)})
    single_head.data.head_columns = ()
    with pytest.raises(errors.ConfigError, match="same heads and classes"):
        train.train_and_evaluate(single_head, str(tmp_path / "single"))

    moved = tmp_path / "other_split"  # The teacher, had it trained on one val image too.
    shutil.copytree(teacher, moved)
    split = pd.read_csv(moved / "split.csv", dtype=str, keep_default_na=False)
    first_val = split.index[split["subset"] == "val"][0]
    split.loc[first_val, "subset"] = "train"
    split.to_csv(moved / "split.csv", index=False)
    config = _config(data_dir, root / "cache", **{"loss.distill_teachers": (str(moved),)})
    with pytest.raises(errors.ConfigError, match="this run's .*, 1 are in one set only"):
        train.train_and_evaluate(config, str(tmp_path / "student"))

    config.loss.distill_teachers = (str(tmp_path / "nowhere"),)
    with pytest.raises(errors.ConfigError, match="not the workdir of a finished"):
        train.train_and_evaluate(config, str(tmp_path / "student2"))
    config.loss.distill_teachers = (str(teacher),)
    config.loss.distill_weight = 0.0
    with pytest.raises(errors.ConfigError, match="distill_weight=0.0 must be in"):
        train.train_and_evaluate(config, str(tmp_path / "student3"))


def test_cross_fitted_teachers_give_each_image_the_prediction_of_the_run_that_held_it_out(
    teacher_run,
):
    data_dir, root = teacher_run
    folds = []
    for fold in (0, 1):
        workdir = root / f"fold_{fold}"
        fields = {"data.num_folds": 2, "data.fold": fold, "num_epochs": 1}
        train.train_and_evaluate(_config(data_dir, root / "cache", **fields), str(workdir))
        folds.append(str(workdir))
    config = _config(data_dir, root / "cache")
    data = dataset.load_data(config.data, None, show_progress=False)
    train_ids = data.subsets["train"].ids
    config.loss.distill_teachers = tuple(folds)
    targets = distill.teacher_targets(config.loss, data, 64)
    split = dataset.read_split(folds[0]).set_index("id")
    fold_of = split[dataset.FOLD_COLUMN].reindex(train_ids).astype(int).to_numpy()
    assert set(fold_of) == {0, 1}
    images = data.subsets["train"].images
    for fold, workdir in enumerate(folds):  # Each fold's rows: its own run's prediction alone.
        run = saved_runs.open_run(workdir)
        rows = np.flatnonzero(fold_of == fold)
        own = distill._predict(run, run.manager.latest_step(), images, rows, 64, "flip")
        np.testing.assert_allclose(targets[rows], own, atol=1e-5)

    config.loss.distill_teachers = (folds[0],)
    with pytest.raises(errors.ConfigError, match=r"held out by none .* --config.data.fold=\[1\]"):
        distill.teacher_targets(config.loss, data, 64)
    config.loss.distill_teachers = (folds[0], str(root / "teacher"))
    with pytest.raises(errors.ConfigError, match="mixes fold runs"):
        distill.teacher_targets(config.loss, data, 64)
