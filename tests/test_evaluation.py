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
from PIL import Image
import pytest
from sklearn import metrics as sk_metrics

from fashion_jax import errors
from fashion_jax import models
from fashion_jax import saved_runs
from fashion_jax.data import image_cache
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import evaluators
from fashion_jax.evaluation import runner
from fashion_jax.evaluation import statistics
from fashion_jax.evaluation.evaluators import soup
from fashion_jax.inference import classifier
from fashion_jax.inference import predictor
from fashion_jax.training import batch_norm
from fashion_jax.training import checkpointing
from fashion_jax.training import optim
from fashion_jax.training import state as state_lib
from fashion_jax.training import train
from tests import tiny_runs
from tests.conftest import REPO_ROOT
from tests.conftest import eval_config
from tests.conftest import tiny_config
from tests.tiny_runs import best_step
from tests.tiny_runs import own_probabilities
from tests.tiny_runs import own_state


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return tiny_runs.train_once(tmp_path_factory)


def context_of(workdirs, **overrides):
    config = eval_config(**overrides)
    return runner.Evaluation([str(w) for w in workdirs], config).context(), config


def run_evaluator(name, ctx, config):
    return list(evaluators.build(name, config).run(ctx))


# ---- Independent reference computations ------------------------------------------------------


def own_subset(runs, subset):
    """(images uint8, labels) of a subset, read from split.csv and the JPEGs directly."""
    split = pd.read_csv(runs["adam"] / "split.csv")
    rows = split[split["subset"] == subset]
    classes = json.loads((runs["adam"] / "summary.json").read_text())["class_names"]
    images = np.stack(
        [image_cache.load_image(runs["data"] / "images" / f"{i}.jpg", 80, 60) for i in rows["id"]]
    )
    return images, rows["label"].map(classes.index).to_numpy(), classes


def own_ece(probabilities, labels, bins=15):
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += (
                inside.sum() / len(labels) * abs(correct[inside].mean() - confidence[inside].mean())
            )
    return total


# ---- The whole report, and the workdirs left untouched ----------------------------------------


def test_report_holds_the_numbers_and_leaves_checkpoints_untouched(runs, tmp_path):
    workdirs = [runs["adam"], runs["sgd"]]
    before = [tiny_runs.folder_digest(w) for w in workdirs]
    config = eval_config(
        evaluators="single,ensemble,soup",
        batch_size=16,
        **{"evals.soup.bn_batches": 2, "report.gallery_size": 4},
    )
    out = tmp_path / "eval"
    runner.evaluate([str(w) for w in workdirs], config, str(out))
    assert [tiny_runs.folder_digest(w) for w in workdirs] == before

    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    by_kind = {}
    for result in report["results"]:
        by_kind.setdefault(result["kind"], []).append(result)
    assert sorted(by_kind) == [
        "ensemble",
        "greedy soup",
        "single",
        "soup ingredient",
        "uniform soup",
    ]
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
        assert got["loss"] == pytest.approx(
            -np.log(p_adam[np.arange(len(labels)), labels]).mean(), rel=1e-4
        )
        assert got["ece"] == pytest.approx(own_ece(p_adam, labels), abs=1e-5)
        assert got["macro_f1"] == pytest.approx(
            sk_metrics.f1_score(
                labels, p_adam.argmax(1), average="macro", labels=range(4), zero_division=0
            )
        )
        matrix = sk_metrics.confusion_matrix(
            labels, p_adam.argmax(1), labels=range(4), normalize="true"
        )
        csv = pd.read_csv(out / adam["files"][subset]["confusion.csv"], index_col=0)
        assert list(csv.columns) == classes
        np.testing.assert_allclose(csv.to_numpy(), np.nan_to_num(matrix), atol=1e-6)
        support = {c: int((labels == n).sum()) for n, c in enumerate(classes)}
        assert {c: got["classification_report"][c]["support"] for c in classes} == support

        mean = (p_adam + p_sgd) / 2
        ensemble = by_kind["ensemble"][0]["metrics"][subset]
        assert ensemble["accuracy"] == pytest.approx((mean.argmax(1) == labels).mean())
        assert ensemble["loss"] == pytest.approx(
            -np.log(mean[np.arange(len(labels)), labels]).mean(), rel=1e-4
        )
        assert f"| {adam['name']} | single | {100 * got['accuracy']:.2f}% [" in markdown

    for result in report["results"]:
        for files in result.get("files", {}).values():
            for name in ("confusion.png", "misclassified.png"):
                with Image.open(out / files[name]) as image:
                    assert image.format == "PNG" and image.width > 100
    assert len(by_kind["soup ingredient"]) == 2  # Two workdirs: one checkpoint each.
    # The 2020 study described five masterCategory classes; these runs have four: no comparison.
    assert report["reference"] is None and "98.76%" not in markdown
    images, labels, _ = own_subset(runs, "test")
    right_adam = own_probabilities(model, adam_variables, images).argmax(1) == labels
    right_sgd = own_probabilities(model, sgd_variables, images).argmax(1) == labels
    (pair,) = [
        t for t in report["paired_tests"]["test"] if (t["a"], t["b"]) == (adam["name"], sgd["name"])
    ]
    assert pair["only_a_correct"] == (right_adam & ~right_sgd).sum()
    assert pair["only_b_correct"] == (right_sgd & ~right_adam).sum()
    low, high = adam["metrics"]["test"]["intervals"]["accuracy"]
    assert (low, high) == pytest.approx(
        statistics.wilson_interval(int(right_adam.sum()), len(labels), 0.95)
    )
    assert low <= right_adam.mean() <= high
    assert not any("different initialisations" in w for w in report["warnings"])


def test_paired_tests_against_another_evaluations_predictions(runs, tmp_path):
    first = tmp_path / "adam_alone"
    runner.evaluate([str(runs["adam"])], eval_config(evaluators="single"), str(first))
    (adam,) = json.loads((first / "report.json").read_text())["results"]
    predictions = pd.read_csv(first / adam["slug"] / "test_predictions.csv")
    images, labels, classes = own_subset(runs, "test")
    model, adam_variables = own_state(runs["adam"], best_step(runs["adam"]))
    right_adam = own_probabilities(model, adam_variables, images).argmax(1) == labels
    split = pd.read_csv(runs["adam"] / "split.csv")
    assert list(predictions["id"]) == list(split[split["subset"] == "test"]["id"])
    assert list(predictions["label"]) == [classes[n] for n in labels]
    assert ((predictions["predicted"] == predictions["label"]).to_numpy() == right_adam).all()

    second = tmp_path / "sgd_against_adam"
    config = eval_config(
        evaluators="single,soup",
        **{"report.compare_with": str(first / adam["slug"]), "evals.soup.kinds": "uniform"},
    )
    runner.evaluate([str(runs["sgd"])], config, str(second))
    report = json.loads((second / "report.json").read_text())
    _, sgd_variables = own_state(runs["sgd"], best_step(runs["sgd"]))
    right_sgd = own_probabilities(model, sgd_variables, images).argmax(1) == labels
    tests = report["paired_tests_with_other_evaluations"]["test"]
    # Each model once: the single model, the other soup ingredients, the soup.
    names = [t["a"] for t in tests]
    assert len(names) == len(set(names)) >= 3, names
    (test,) = [t for t in tests if t["a"] == report["results"][0]["name"]]
    assert test["b"].startswith(adam["slug"])
    assert test["only_a_correct"] == (right_sgd & ~right_adam).sum()
    assert test["only_b_correct"] == (right_adam & ~right_sgd).sum()
    assert "against other evaluations" in (second / "report.md").read_text()

    other_split = tmp_path / "other_split"
    shutil.copytree(first / adam["slug"], other_split)
    shortened = pd.read_csv(other_split / "test_predictions.csv").iloc[1:]
    shortened.to_csv(other_split / "test_predictions.csv", index=False)
    config = eval_config(evaluators="single", **{"report.compare_with": str(other_split)})
    with pytest.raises(errors.EvalError, match="test_predictions.csv holds"):
        runner.evaluate([str(runs["sgd"])], config, str(tmp_path / "refused"))
    without_control = tmp_path / "without_control"
    shutil.copytree(first / adam["slug"], without_control)
    (without_control / "control_predictions.csv").unlink()
    config = eval_config(
        evaluators="single", subsets="control", **{"report.compare_with": str(without_control)}
    )
    runner.evaluate([str(runs["sgd"])], config, str(tmp_path / "no_control"))
    report = json.loads((tmp_path / "no_control" / "report.json").read_text())
    assert report["paired_tests_with_other_evaluations"] == {}
    assert any("has no control predictions" in w for w in report["warnings"])
    config = eval_config(evaluators="single", **{"report.compare_with": str(tmp_path)})
    with pytest.raises(errors.ConfigError, match="holds no"):
        config_checks.check_eval_config(config, 1)


def test_checkpoint_selection_by_best_latest_or_step(runs):
    run = saved_runs.open_run(str(runs["adam"]))
    lines = (runs["adam"] / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert saved_runs.select_step(run, "best") == min(history, key=lambda r: r["val_loss"])["step"]
    assert saved_runs.select_step(run, "latest") == history[-1]["step"]
    assert saved_runs.select_step(run, str(history[0]["step"])) == history[0]["step"]
    assert saved_runs.epoch_end_steps(run) == {r["step"]: r["epoch"] for r in history}
    with pytest.raises(errors.RestoreError, match="best, latest or one of the steps"):
        saved_runs.select_step(run, "12345")


# ---- Ensembles ---------------------------------------------------------------------------------


def test_ensemble_of_one_model_equals_the_model(runs):
    ctx, config = context_of([runs["adam"]], subsets="val,test", batch_size=16)
    (single,) = run_evaluator("single", ctx, config)
    (ensemble,) = run_evaluator("ensemble", ctx, config)
    for subset in ("val", "test"):
        np.testing.assert_allclose(ensemble.log_probs[subset], single.log_probs[subset], atol=1e-6)

    both, config = context_of(
        [runs["adam"], runs["sgd"]],
        subsets="test",
        batch_size=16,
        **{"evals.ensemble.weights": "1,0"},
    )
    (weighted,) = run_evaluator("ensemble", both, config)
    np.testing.assert_allclose(weighted.log_probs["test"], single.log_probs["test"], atol=1e-6)
    assert weighted.details["weights"] == [1.0, 0.0]


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(runs):
    ctx, config = context_of([runs["adam"]], subsets="val", batch_size=16, tta="flip")
    (single,) = run_evaluator("single", ctx, config)
    checkpoint = ctx.checkpoints[0]
    variables = checkpoint.load()
    images, _, _ = own_subset(runs, "val")
    expected = (
        own_probabilities(checkpoint.run.model, variables, images)
        + own_probabilities(checkpoint.run.model, variables, images[:, :, ::-1])
    ) / 2
    np.testing.assert_allclose(np.exp(single.log_probs["val"]), expected, atol=1e-5)
    plain = own_probabilities(checkpoint.run.model, variables, images)
    assert np.abs(plain - expected).max() > 1e-4  # The mirror changes the prediction.
    clf = classifier.load_classifier([str(runs["adam"])], tta="flip", batch_size=16)
    (head,) = clf.heads
    np.testing.assert_allclose(
        np.exp(clf.log_probabilities(images[:5])[head]), expected[:5], atol=1e-5
    )


# ---- Soups -----------------------------------------------------------------------------------


def copies(trees):
    """A soup loader over in-memory trees: a fresh writable copy per load, like load_copy."""
    return lambda index: jax.tree.map(lambda x: np.array(x, np.float32), trees[index])


def test_uniform_soup_of_identical_parameters_equals_them(runs):
    run = saved_runs.open_run(str(runs["adam"]))
    variables = saved_runs.checkpoint_at(run, saved_runs.select_step(run, "best")).load()
    averaged = soup.uniform_soup([0, 0, 0], copies([variables]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), averaged, variables)
    images, _, _ = own_subset(runs, "val")
    np.testing.assert_allclose(
        predictor.predict_array(run.model, averaged, images, 16),
        predictor.predict_array(run.model, variables, images, 16),
        atol=1e-5,
    )
    other = saved_runs.checkpoint_at(run, min(saved_runs.epoch_end_steps(run))).load()  # Epoch 1.
    mixed = soup.uniform_soup([0, 1], copies([variables, other]))
    expected = jax.tree.map(lambda a, b: (np.float64(a) + b) / 2, variables, other)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), mixed, expected)


class Named:
    def __init__(self, name):
        self.name = name


def test_greedy_soup_keeps_only_ingredients_that_do_not_lower_validation_accuracy():
    trees = [{"w": np.array([w], np.float32)} for w in (1.0, 2.0, 9.0, 1.0)]
    ingredients = [Named(n) for n in "abcd"]
    load = copies({ingredient: tree for ingredient, tree in zip(ingredients, trees)})

    def accuracy_of(variables):
        return 1.0 - abs(float(variables["w"][0]) - 1.5) / 10

    result = soup.greedy_soup(ingredients, load, [0.8, 0.9, 0.7, 0.8], accuracy_of, lambda v: v)
    # b (0.9) first; + a: w=1.5 -> 1.0, kept; + d: w=1.33 -> 0.98, dropped; + c: w=4 -> dropped.
    assert result.details["ingredients"] == ["b", "a"]
    assert [s["added"] for s in result.details["steps"]] == [True, True, False, False]
    assert float(result.variables["w"][0]) == pytest.approx(1.5)
    ties = soup.greedy_soup(ingredients[:2], load, [0.5, 0.5], lambda v: 0.5, lambda v: v)
    assert ties.details["ingredients"] == ["a", "b"]  # Not dropping is enough to be kept.


def test_soups_hold_at_most_two_models_whatever_the_number_of_ingredients():
    """Every loaded tree is tracked by a weak reference to its array: when an ingredient is
    loaded, at most one earlier one may still be alive (the running sum)."""
    import gc
    import weakref

    loaded, peaks = [], []
    rng = np.random.default_rng(0)
    trees = [{"w": rng.normal(size=1000).astype(np.float32)} for _ in range(8)]
    ingredients = [Named(str(n)) for n in range(8)]

    def load(ingredient):
        gc.collect()
        peaks.append(sum(ref() is not None for ref in loaded))
        tree = {"w": trees[ingredients.index(ingredient)]["w"].copy()}
        loaded.append(weakref.ref(tree["w"]))
        return tree

    uniform = soup.uniform_soup(ingredients, load)
    np.testing.assert_allclose(uniform["w"], np.mean([t["w"] for t in trees], 0), atol=1e-6)
    del uniform
    accuracies = list(np.linspace(0.9, 0.8, 8))
    greedy = soup.greedy_soup(ingredients, load, accuracies, lambda v: 1.0, lambda v: v)
    assert len(greedy.details["ingredients"]) == 8
    np.testing.assert_allclose(
        greedy.variables["w"], np.mean([t["w"] for t in trees], 0), atol=1e-6
    )
    assert len(peaks) == 8 + 8 and max(peaks) <= 1


def test_the_greedy_soups_ingredients_are_also_ensembled():
    rng = np.random.default_rng(0)
    log_probs = {
        (name, subset): np.log(rng.dirichlet(np.ones(3), size=5)).astype(np.float32)
        for name in "abc"
        for subset in ("val", "test")
    }

    class Context:
        subsets = ("val", "test")

        def checkpoint_log_probs(self, checkpoint, subset):
            return log_probs[checkpoint.name, subset]

    ingredients = [Named(name) for name in "abc"]
    greedy = soup.Soup("greedy", {}, {"ingredients": ["c", "a"]})
    entry = soup.greedy_members_ensemble(Context(), ingredients, greedy)
    assert entry.kind == "ensemble" and entry.details["members"] == ["c", "a"]
    for subset in ("val", "test"):
        mean = (np.exp(log_probs["a", subset]) + np.exp(log_probs["c", subset])) / 2
        np.testing.assert_allclose(np.exp(entry.log_probs[subset]), mean, rtol=1e-5)
    # Greedy kept one ingredient (the ingredient itself) or all (the ensemble evaluator's).
    for kept in (["b"], ["a", "b", "c"]):
        greedy = soup.Soup("greedy", {}, {"ingredients": kept})
        assert soup.greedy_members_ensemble(Context(), ingredients, greedy) is None


def test_greedy_soup_is_never_worse_on_validation_than_its_best_ingredient(runs):
    before = tiny_runs.folder_digest(runs["adam"])
    ctx, config = context_of(
        [runs["adam"], runs["sgd"]],
        batch_size=16,
        **{"evals.soup.ingredients": "last_epochs", "evals.soup.bn_batches": 2},
    )
    ingredients, accuracies, (greedy,) = soup.cook(ctx, config.evals.soup, ("greedy",))
    assert tiny_runs.folder_digest(runs["adam"]) == before
    assert [c.epoch for c in ingredients] == [1, 2, 3, 1, 2]
    images, labels, _ = own_subset(runs, "val")
    own = [
        (own_probabilities(c.run.model, c.load(), images).argmax(1) == labels).mean()
        for c in ingredients
    ]
    assert accuracies == pytest.approx(own)
    soup_accuracy = (
        own_probabilities(
            ingredients[0].run.model, jax.device_get(greedy.variables), images
        ).argmax(1)
        == labels
    ).mean()
    assert soup_accuracy == pytest.approx(greedy.details["val_accuracy"])
    assert soup_accuracy >= max(own)
    assert greedy.details["ingredients"][0] == ingredients[int(np.argmax(own))].name


def test_batch_norm_recalibration_changes_statistics_and_keeps_parameters(runs):
    run = saved_runs.open_run(str(runs["adam"]))
    original = saved_runs.checkpoint_at(run, saved_runs.select_step(run, "best")).load()
    images, _, _ = own_subset(runs, "train")
    images = images[:32]
    recalibrated = jax.device_get(
        batch_norm.recalibrate_batch_norm(run.model, original, images, batch_size=16)
    )
    jax.tree.map(np.testing.assert_array_equal, recalibrated["params"], original["params"])
    assert not np.allclose(
        recalibrated["batch_stats"]["BatchNorm_0"]["mean"],
        original["batch_stats"]["BatchNorm_0"]["mean"],
    )

    # The first BatchNorm normalises relu(first convolution): its statistics, batch by batch.
    _, captured = run.model.apply(
        original,
        images.astype(np.float32) / 255.0,
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    features = np.maximum(
        np.asarray(captured["intermediates"]["Conv3x3Valid_0"]["__call__"][0], np.float64), 0
    )
    halves = (features[:16], features[16:])
    np.testing.assert_allclose(
        recalibrated["batch_stats"]["BatchNorm_0"]["mean"],
        np.mean([h.mean((0, 1, 2)) for h in halves], 0),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        recalibrated["batch_stats"]["BatchNorm_0"]["var"],
        np.mean([h.var((0, 1, 2)) for h in halves], 0),
        rtol=1e-3,
        atol=1e-6,
    )


def test_soup_refuses_other_architectures_and_class_lists(runs):
    run = saved_runs.open_run(str(runs["adam"]))
    checkpoint = saved_runs.checkpoint_at(run, saved_runs.select_step(run, "best"))
    wide_config = dict(run.model_config, dense_units=64)
    wide_model = models.create_model(ml_collections.ConfigDict(wide_config), 4)
    wide = saved_runs.Checkpoint(
        dataclasses.replace(run, model_config=wide_config, model=wide_model, name="wide"), 1, 1
    )
    with pytest.raises(errors.SoupError, match="model.dense_units=32 vs 64"):
        soup.check_compatible([checkpoint, wide])
    renamed = saved_runs.Checkpoint(
        dataclasses.replace(run, class_names=("a", "b", "c", "d")), 1, 1
    )
    with pytest.raises(errors.SoupError, match="class lists differ"):
        soup.check_compatible([checkpoint, renamed])


def test_soup_warns_when_ingredients_start_from_different_initialisations(runs):
    ctx, config = context_of(
        [runs["adam"], runs["sgd"]], batch_size=16, **{"evals.soup.bn_batches": 0}
    )
    soup.cook(ctx, config.evals.soup, ("uniform",))
    assert not any("different initialisations" in w for w in ctx.warnings)
    run_config = ml_collections.ConfigDict(ctx.checkpoints[1].run.config.to_dict())
    run_config.init_seed = 7
    ctx.checkpoints[1] = dataclasses.replace(
        ctx.checkpoints[1], run=dataclasses.replace(ctx.checkpoints[1].run, config=run_config)
    )
    soup.cook(ctx, config.evals.soup, ("uniform",))
    assert any("different initialisations" in w and "init_seed 7" in w for w in ctx.warnings)


def test_init_checkpoint_starts_training_from_a_runs_parameters(runs):
    config = tiny_config(
        runs["data"], init_checkpoint=str(runs["adam"]), init_checkpoint_step="latest"
    )
    lr = optim.create_learning_rate_fn(config.optimizer)
    state = state_lib.create_train_state(
        config, models.create_model(config.model, 4), lr, (80, 60, 3)
    )
    _, expected = own_state(
        runs["adam"], checkpointing.create_manager(str(runs["adam"]), read_only=True).latest_step()
    )
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), expected["params"])
    jax.tree.map(
        np.testing.assert_array_equal, jax.device_get(state.batch_stats), expected["batch_stats"]
    )
    assert int(state.step) == 0
    narrow = models.create_model(ml_collections.ConfigDict(dict(config.model, dense_units=16)), 4)
    with pytest.raises(errors.RestoreError, match="Dense_0"):
        state_lib.load_init_variables(
            str(runs["adam"]), "best", like=saved_runs.model_shapes(narrow, (80, 60, 3))
        )


def test_resuming_a_run_does_not_read_its_init_checkpoint_again(runs, tmp_path):
    source = tmp_path / "init_source"
    shutil.copytree(runs["adam"], source)
    workdir = tmp_path / "from_init"
    config = tiny_config(
        runs["data"],
        init_checkpoint=str(source),
        num_epochs=1,
        **{"data.cache_dir": str(runs["cache"])},
    )
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
    with pytest.raises(errors.EvalError, match="split.csv.*differ"):
        runner.Evaluation([str(runs["adam"]), str(moved)], eval_config())

    renamed = tmp_path / "renamed"
    shutil.copytree(runs["adam"], renamed)
    metadata = renamed / "checkpoints" / "metadata" / "_ROOT_METADATA"
    content = json.loads(metadata.read_text())
    content["custom_metadata"]["class_names"][0] = "Bags"
    metadata.write_text(json.dumps(content))
    with pytest.raises(errors.EvalError, match="classes.*Bags"):
        runner.Evaluation([str(runs["adam"]), str(renamed)], eval_config())
    with pytest.raises(errors.EvalError, match="inside the training workdir"):
        runner.evaluate([str(runs["adam"])], eval_config(), str(runs["adam"] / "eval"))


def test_command_line_reports_and_fails_only_when_no_photo_is_readable(runs, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = tmp_path / "cli"
    evaluate = subprocess.run(
        [
            sys.executable,
            "run_eval.py",
            f"--workdirs={runs['adam']}",
            "--config.evaluators=single",
            "--config.subsets=test",
            f"--output_dir={out}",
            "--config.batch_size=16",
            "--config.progress_bar=false",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    accuracy = json.loads((out / "report.json").read_text())["results"][0]["metrics"]["test"][
        "accuracy"
    ]
    assert f"{100 * accuracy:.2f}%" in evaluate.stdout

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_bytes(b"not a jpeg")
    (unreadable / "b.png").write_bytes(b"")
    predictions = tmp_path / "predictions.csv"
    predict = subprocess.run(
        [
            sys.executable,
            "run_eval.py",
            f"--workdirs={runs['adam']}",
            f"--predict={unreadable}",
            f"--output={predictions}",
            "--config.progress_bar=false",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predict.returncode != 0
    assert "no image" in predict.stderr
    rows = pd.read_csv(predictions)
    assert len(rows) == 2 and rows["error"].notna().all()
