"""run_eval.py's evaluation: reports, ensembles, soups, BatchNorm recalibration, read-only use.

Expected numbers are computed here independently (orbax restore, flax apply, sklearn), from the
tiny workdirs of tests/tiny_runs.py.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as sk_metrics

from fashion_jax import checkpointing
from fashion_jax import image_cache
from fashion_jax import models
from fashion_jax import optim
from fashion_jax import restore
from fashion_jax import train
from fashion_jax.evaluation import context
from fashion_jax.evaluation import evaluators
from fashion_jax.evaluation import predictor
from fashion_jax.evaluation import runner
from fashion_jax.evaluation import soup
from tests import tiny_runs
from tests.conftest import REPO_ROOT, tiny_config
from tests.tiny_runs import best_step, own_probabilities, own_state


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return tiny_runs.train_once(tmp_path_factory)


# ---- Independent reference computations ------------------------------------------------------

def own_subset(runs, subset):
    """(images uint8, labels) of a subset, read from split.csv and the JPEGs directly."""
    split = pd.read_csv(runs["adam"] / "split.csv")
    rows = split[split["subset"] == subset]
    classes = json.loads((runs["adam"] / "summary.json").read_text())["class_names"]
    images = np.stack([image_cache.load_image(runs["data"] / "images" / f"{i}.jpg", 80, 60)
                       for i in rows["id"]])
    return images, rows["label"].map(classes.index).to_numpy(), classes


def own_ece(probabilities, labels, bins=15):
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.sum() / len(labels) * abs(correct[inside].mean()
                                                      - confidence[inside].mean())
    return total


# ---- The whole report, and the workdirs left untouched ----------------------------------------

def test_report_holds_the_numbers_and_leaves_checkpoints_untouched(runs, tmp_path):
    workdirs = [runs["adam"], runs["sgd"]]
    before = [tiny_runs.folder_digest(w) for w in workdirs]
    options = context.EvalOptions(evaluators=("single", "ensemble", "soup"), batch_size=16,
                                  bn_batches=2, gallery_size=4)
    out = tmp_path / "eval"
    runner.evaluate([str(w) for w in workdirs], options, str(out))
    assert [tiny_runs.folder_digest(w) for w in workdirs] == before

    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    by_kind = {}
    for result in report["results"]:
        by_kind.setdefault(result["kind"], []).append(result)
    assert sorted(by_kind) == ["ensemble", "greedy soup", "single", "soup ingredient",
                               "uniform soup"]
    adam, sgd = by_kind["single"]
    assert adam["details"]["step"] == best_step(runs["adam"])
    model, adam_variables = own_state(runs["adam"], best_step(runs["adam"]))
    _, sgd_variables = own_state(runs["sgd"], best_step(runs["sgd"]))
    for subset in ("val", "test", "control"):
        images, labels, classes = own_subset(runs, subset)
        p_adam = own_probabilities(model, adam_variables, images)
        p_sgd = own_probabilities(model, sgd_variables, images)
        got = adam["metrics"][subset]
        assert got["count"] == len(labels)
        assert got["accuracy"] == pytest.approx((p_adam.argmax(1) == labels).mean())
        assert got["loss"] == pytest.approx(-np.log(p_adam[np.arange(len(labels)), labels]).mean(),
                                            rel=1e-4)
        assert got["ece"] == pytest.approx(own_ece(p_adam, labels), abs=1e-5)
        assert got["macro_f1"] == pytest.approx(sk_metrics.f1_score(
            labels, p_adam.argmax(1), average="macro", labels=range(4), zero_division=0))
        matrix = sk_metrics.confusion_matrix(labels, p_adam.argmax(1), labels=range(4),
                                             normalize="true")
        csv = pd.read_csv(out / adam["files"][subset]["confusion.csv"], index_col=0)
        assert list(csv.columns) == classes
        np.testing.assert_allclose(csv.to_numpy(), np.nan_to_num(matrix), atol=1e-6)
        support = {c: int((labels == n).sum()) for n, c in enumerate(classes)}
        assert {c: got["classification_report"][c]["support"] for c in classes} == support

        mean = (p_adam + p_sgd) / 2
        ensemble = by_kind["ensemble"][0]["metrics"][subset]
        assert ensemble["accuracy"] == pytest.approx((mean.argmax(1) == labels).mean())
        assert ensemble["loss"] == pytest.approx(
            -np.log(mean[np.arange(len(labels)), labels]).mean(), rel=1e-4)
        assert f"| {adam['name']} | single | {100 * got['accuracy']:.2f}% |" in markdown

    for result in report["results"]:
        for files in result.get("files", {}).values():
            for name in ("confusion.png", "misclassified.png"):
                with Image.open(out / files[name]) as image:
                    assert image.format == "PNG" and image.width > 100
    assert len(by_kind["soup ingredient"]) == 2   # Two workdirs: one checkpoint each.
    assert "98.76%" in markdown and "99.03%" in markdown
    assert not any("different initialisations" in w for w in report["warnings"])


def test_checkpoint_selection_by_best_latest_or_step(runs):
    run = restore.open_run(str(runs["adam"]))
    lines = (runs["adam"] / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert restore.select_step(run, "best") == min(history, key=lambda r: r["val_loss"])["step"]
    assert restore.select_step(run, "latest") == history[-1]["step"]
    assert restore.select_step(run, str(history[0]["step"])) == history[0]["step"]
    assert restore.epoch_end_steps(run) == {r["step"]: r["epoch"] for r in history}
    with pytest.raises(restore.RestoreError, match="best, latest or one of the steps"):
        restore.select_step(run, "12345")


# ---- Ensembles ---------------------------------------------------------------------------------

def test_ensemble_of_one_model_equals_the_model(runs):
    ctx = runner.build_context([str(runs["adam"])], context.EvalOptions(
        subsets=("val", "test"), batch_size=16))
    single, = evaluators.EVALUATORS["single"](ctx)
    ensemble, = evaluators.EVALUATORS["ensemble"](ctx)
    for subset in ("val", "test"):
        np.testing.assert_allclose(ensemble.log_probs[subset], single.log_probs[subset], atol=1e-6)

    both = runner.build_context([str(runs["adam"]), str(runs["sgd"])], context.EvalOptions(
        subsets=("test",), batch_size=16, ensemble_weights=(1.0, 0.0)))
    weighted, = evaluators.EVALUATORS["ensemble"](both)
    np.testing.assert_allclose(weighted.log_probs["test"], single.log_probs["test"], atol=1e-6)
    assert weighted.details["weights"] == [1.0, 0.0]


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(runs):
    ctx = runner.build_context([str(runs["adam"])], context.EvalOptions(
        subsets=("val",), batch_size=16, tta="flip"))
    single, = evaluators.EVALUATORS["single"](ctx)
    checkpoint = ctx.checkpoints[0]
    images, _, _ = own_subset(runs, "val")
    expected = (own_probabilities(checkpoint.run.model, checkpoint.variables, images)
                + own_probabilities(checkpoint.run.model, checkpoint.variables,
                                    images[:, :, ::-1])) / 2
    np.testing.assert_allclose(np.exp(single.log_probs["val"]), expected, atol=1e-5)
    plain = own_probabilities(checkpoint.run.model, checkpoint.variables, images)
    assert np.abs(plain - expected).max() > 1e-4  # The mirror changes the prediction.
    mixture = runner._predictor(ctx, "single")[0]
    np.testing.assert_allclose(np.exp(mixture(images[:5])), expected[:5], atol=1e-5)
    with pytest.raises(context.EvalError, match="--tta=rotate"):
        context.EvalOptions(tta="rotate")


# ---- Soups -----------------------------------------------------------------------------------

def test_uniform_soup_of_identical_parameters_equals_them(runs):
    run = restore.open_run(str(runs["adam"]))
    checkpoint = restore.load_checkpoint(run, restore.select_step(run, "best"))
    averaged = soup.average_variables([checkpoint.variables] * 3)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(averaged),
                 jax.device_get(checkpoint.variables))
    images, _, _ = own_subset(runs, "val")
    np.testing.assert_array_equal(
        predictor.predict_array(run.model, averaged, images, 16),
        predictor.predict_array(run.model, checkpoint.variables, images, 16))

    other = restore.load_checkpoint(run, min(restore.epoch_end_steps(run)))  # Epoch 1.
    mixed = jax.device_get(soup.average_variables([checkpoint.variables, other.variables]))
    expected = jax.tree.map(lambda a, b: (np.float64(a) + b) / 2,
                            *jax.device_get([checkpoint.variables, other.variables]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), mixed, expected)


def test_greedy_soup_keeps_only_ingredients_that_do_not_lower_validation_accuracy():
    trees = [{"w": np.array([w], np.float32)} for w in (1.0, 2.0, 9.0, 1.0)]
    accuracy_of = lambda variables: 1.0 - abs(float(variables["w"][0]) - 1.5) / 10  # noqa: E731
    result = soup.greedy_soup(["a", "b", "c", "d"], trees, [0.8, 0.9, 0.7, 0.8], accuracy_of,
                              recalibrate=lambda v: v)
    # b (0.9) first; + a: w=1.5 -> 1.0, kept; + d: w=1.33 -> 0.98, dropped; + c: w=4 -> dropped.
    assert result.details["ingredients"] == ["b", "a"]
    assert [s["added"] for s in result.details["steps"]] == [True, True, False, False]
    assert float(result.variables["w"][0]) == pytest.approx(1.5)
    ties = soup.greedy_soup(["a", "b"], trees[:2], [0.5, 0.5], lambda v: 0.5, lambda v: v)
    assert ties.details["ingredients"] == ["a", "b"]   # Not dropping is enough to be kept.


def test_greedy_soup_is_never_worse_on_validation_than_its_best_ingredient(runs):
    before = tiny_runs.folder_digest(runs["adam"])
    ctx = runner.build_context([str(runs["adam"]), str(runs["sgd"])], context.EvalOptions(
        soup_ingredients="last_epochs", soups=("greedy",), batch_size=16, bn_batches=2))
    ingredients, accuracies, (greedy,) = soup.cook(ctx, ("greedy",))
    assert tiny_runs.folder_digest(runs["adam"]) == before
    assert [c.epoch for c in ingredients] == [1, 2, 3, 1, 2]
    images, labels, _ = own_subset(runs, "val")
    own = [(own_probabilities(c.run.model, jax.device_get(c.variables), images).argmax(1)
            == labels).mean() for c in ingredients]
    assert accuracies == pytest.approx(own)
    soup_accuracy = (own_probabilities(ingredients[0].run.model, jax.device_get(greedy.variables),
                                       images).argmax(1) == labels).mean()
    assert soup_accuracy == pytest.approx(greedy.details["val_accuracy"])
    assert soup_accuracy >= max(own)
    assert greedy.details["ingredients"][0] == ingredients[int(np.argmax(own))].name


def test_batch_norm_recalibration_changes_statistics_and_keeps_parameters(runs):
    run = restore.open_run(str(runs["adam"]))
    checkpoint = restore.load_checkpoint(run, restore.select_step(run, "best"))
    images, _, _ = own_subset(runs, "train")
    images = images[:32]
    recalibrated = jax.device_get(soup.recalibrate_batch_norm(
        run.model, checkpoint.variables, images, batch_size=16))
    original = jax.device_get(checkpoint.variables)
    jax.tree.map(np.testing.assert_array_equal, recalibrated["params"], original["params"])
    assert not np.allclose(recalibrated["batch_stats"]["BatchNorm_0"]["mean"],
                           original["batch_stats"]["BatchNorm_0"]["mean"])

    # The first BatchNorm normalises relu(first convolution): its statistics, batch by batch.
    _, captured = run.model.apply(original, images.astype(np.float32) / 255.0, train=False,
                                  capture_intermediates=True, mutable=["intermediates"])
    features = np.maximum(np.asarray(captured["intermediates"]["Conv3x3Valid_0"]["__call__"][0],
                                     np.float64), 0)
    halves = (features[:16], features[16:])
    np.testing.assert_allclose(recalibrated["batch_stats"]["BatchNorm_0"]["mean"],
                               np.mean([h.mean((0, 1, 2)) for h in halves], 0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(recalibrated["batch_stats"]["BatchNorm_0"]["var"],
                               np.mean([h.var((0, 1, 2)) for h in halves], 0),
                               rtol=1e-3, atol=1e-6)


def test_soup_refuses_other_architectures_and_class_lists(runs):
    run = restore.open_run(str(runs["adam"]))
    checkpoint = restore.load_checkpoint(run, restore.select_step(run, "best"))
    wide_config = dict(run.model_config, dense_units=64)
    wide_model = models.create_model(ml_collections.ConfigDict(wide_config), 4)
    wide = restore.Checkpoint(dataclasses.replace(run, model_config=wide_config, name="wide"),
                              1, 1, restore.model_shapes(wide_model, (80, 60, 3)))
    with pytest.raises(soup.SoupError, match="model.dense_units=32 vs 64"):
        soup.check_compatible([checkpoint, wide])
    renamed = restore.Checkpoint(dataclasses.replace(run, class_names=("a", "b", "c", "d")),
                                 1, 1, checkpoint.variables)
    with pytest.raises(soup.SoupError, match="class lists differ"):
        soup.check_compatible([checkpoint, renamed])


def test_soup_warns_when_ingredients_start_from_different_initialisations(runs):
    options = context.EvalOptions(soups=("uniform",), batch_size=16, bn_batches=0)
    ctx = runner.build_context([str(runs["adam"]), str(runs["sgd"])], options)
    soup.cook(ctx, ("uniform",))
    assert not any("different initialisations" in w for w in ctx.warnings)
    config = ml_collections.ConfigDict(ctx.checkpoints[1].run.config.to_dict())
    config.init_seed = 7
    ctx.checkpoints[1].run = dataclasses.replace(ctx.checkpoints[1].run, config=config)
    soup.cook(ctx, ("uniform",))
    assert any("different initialisations" in w and "init_seed 7" in w for w in ctx.warnings)


def test_init_checkpoint_starts_training_from_a_runs_parameters(runs):
    config = tiny_config(runs["data"], init_checkpoint=str(runs["adam"]),
                         init_checkpoint_step="latest")
    lr = optim.create_learning_rate_fn(config.optimizer)
    state = train.create_train_state(config, models.create_model(config.model, 4), lr,
                                     (80, 60, 3))
    _, expected = own_state(runs["adam"], checkpointing.create_manager(
        str(runs["adam"]), read_only=True).latest_step())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), expected["params"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats),
                 expected["batch_stats"])
    assert int(state.step) == 0
    narrow = models.create_model(ml_collections.ConfigDict(dict(config.model, dense_units=16)), 4)
    with pytest.raises(restore.RestoreError, match="Dense_0"):
        restore.load_init_variables(str(runs["adam"]), "best",
                                    like=restore.model_shapes(narrow, (80, 60, 3)))


def test_resuming_a_run_does_not_read_its_init_checkpoint_again(runs, tmp_path):
    source = tmp_path / "init_source"
    shutil.copytree(runs["adam"], source)
    workdir = tmp_path / "from_init"
    config = tiny_config(runs["data"], init_checkpoint=str(source), num_epochs=1,
                         **{"data.cache_dir": str(runs["cache"])})
    train.train_and_evaluate(config, str(workdir))
    shutil.rmtree(source)  # Gone: a resume must take everything from its own checkpoints.
    config.num_epochs = 2
    summary = train.train_and_evaluate(config, str(workdir))
    assert summary["epochs_run"] == 2


# ---- Refusals and the command line -----------------------------------------------------------

def test_refuses_workdirs_with_different_splits_or_classes(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["adam"], moved)
    split = pd.read_csv(moved / "split.csv")
    split.loc[split.index[split["subset"] == "val"][0], "subset"] = "test"
    split.to_csv(moved / "split.csv", index=False)
    with pytest.raises(runner.EvalError, match="split.csv.*differ"):
        runner.build_context([str(runs["adam"]), str(moved)], context.EvalOptions())

    renamed = tmp_path / "renamed"
    shutil.copytree(runs["adam"], renamed)
    metadata = renamed / "checkpoints" / "metadata" / "_ROOT_METADATA"
    content = json.loads(metadata.read_text())
    content["custom_metadata"]["class_names"][0] = "Bags"
    metadata.write_text(json.dumps(content))
    with pytest.raises(runner.EvalError, match="classes.*Bags"):
        runner.build_context([str(runs["adam"]), str(renamed)], context.EvalOptions())
    with pytest.raises(runner.EvalError, match="inside the training workdir"):
        runner.evaluate([str(runs["adam"])], context.EvalOptions(), str(runs["adam"] / "eval"))


def test_command_line_reports_and_fails_only_when_no_photo_is_readable(runs, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = tmp_path / "cli"
    evaluate = subprocess.run(
        [sys.executable, "run_eval.py", f"--workdirs={runs['adam']}", "--evaluators=single",
         "--subsets=test", f"--output_dir={out}", "--batch_size=16", "--progress_bar=false"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    accuracy = json.loads((out / "report.json").read_text())["results"][0]["metrics"]["test"][
        "accuracy"]
    assert f"{100 * accuracy:.2f}%" in evaluate.stdout

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_bytes(b"not a jpeg")
    (unreadable / "b.png").write_bytes(b"")
    predictions = tmp_path / "predictions.csv"
    predict = subprocess.run(
        [sys.executable, "run_eval.py", f"--workdirs={runs['adam']}", f"--predict={unreadable}",
         f"--output={predictions}", "--progress_bar=false"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert predict.returncode != 0
    assert "no image" in predict.stderr
    rows = pd.read_csv(predictions)
    assert len(rows) == 2 and rows["error"].notna().all()
