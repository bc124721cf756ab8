"""run_eval.py on a multi-head run: a report per head with numbers computed here, the per-head
summary and hierarchy check, and --predict with a column group per head."""

import csv
import json

import jax
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.evaluation import heads as heads_lib
from fashion_jax.evaluation import hierarchy
from fashion_jax.evaluation import runner
from fashion_jax.inference import classifier
from fashion_jax.inference import predict_files
from fashion_jax.inference import predictor
from tests.conftest import eval_config
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset

HEADS = ("masterCategory", "subCategory", "articleType", "gender")


@pytest.fixture(scope="module")
def multi_head_run(tmp_path_factory):
    from fashion_jax.training import train

    root = tmp_path_factory.mktemp("multi_head")
    data = write_multi_head_dataset(root / "data")
    for name, seed in (("run", 0), ("other", 1)):  # Same initialisation, other shuffling.
        config = tiny_config(
            data,
            **{
                "data.head_columns": HEADS,
                "data.other_min_count": 2,
                "data.cache_dir": str(root / "cache"),
                "num_epochs": 2,
                "seed": seed,
                "init_seed": 0,
            },
        )
        train.train_and_evaluate(config, str(root / name))
    return root


def _own_log_probs(run, checkpoint, images):
    logits = run.model.apply(checkpoint.load(), images.astype(np.float32) / 255.0, train=False)
    return {h: np.asarray(jax.nn.log_softmax(v), np.float64) for h, v in logits.items()}


def test_every_head_is_reported_with_missing_labels_left_out(multi_head_run, tmp_path, monkeypatch):
    workdir = str(multi_head_run / "run")
    config = eval_config(evaluators="single", batch_size=16, subsets="val,test")
    calls, reads = [], []
    original = predictor.predict_array
    monkeypatch.setattr(
        predictor,
        "predict_array",
        lambda *args, **kwargs: calls.append(args[3:]) or original(*args, **kwargs),
    )
    original_read = saved_runs.load_variables
    monkeypatch.setattr(
        saved_runs,
        "load_variables",
        lambda run, step: reads.append(step) or original_read(run, step),
    )
    reports = runner.evaluate([workdir], config, str(tmp_path / "eval"))
    monkeypatch.undo()
    assert list(reports) == list(HEADS)
    run = saved_runs.open_run(workdir)
    checkpoint = saved_runs.checkpoint_at(run, saved_runs.select_step(run, "best"))
    split = saved_runs.read_split(run)
    # Every head predicted at once on each whole subset (gender's report then leaves rows out);
    # the per-head reports and the hierarchy check share those predictions.
    assert len(calls) == 2 and all(c[1] is None for c in calls)
    assert reads == [checkpoint.step]  # One checkpoint read for all heads and the hierarchy.
    evaluation = runner.Evaluation([workdir], config)
    for subset in ("val", "test"):
        rows = split[split["subset"] == subset]
        log_probs = _own_log_probs(run, checkpoint, evaluation.data.subset(subset).images)
        for head in HEADS:
            labelled = (rows[head] != "").to_numpy()
            truth = rows[head][labelled].map({c: i for i, c in enumerate(run.heads[head])})
            expected = (log_probs[head][labelled].argmax(-1) == truth.to_numpy()).mean()
            numbers = reports[head]["results"][0]["metrics"][subset]
            assert numbers["count"] == labelled.sum()
            assert numbers["accuracy"] == pytest.approx(expected)
        assert (rows["gender"] == "").any()  # The gender head really had rows left out.
    summary = json.loads((tmp_path / "eval" / heads_lib.HEADS_JSON).read_text())
    assert {r["head"] for r in summary["rows"]} == set(HEADS)
    assert summary["hierarchy"]["heads"] == ["masterCategory", "subCategory", "articleType"]
    assert summary["hierarchy"]["subsets"]["val"]["decoded_inconsistency_rate"] == 0
    assert (tmp_path / "eval" / "gender" / "report.md").exists()
    with pytest.raises(errors.RestoreError, match="has the heads"):
        runner.evaluate([workdir], eval_config(head="colour"), str(tmp_path / "e2"))


def test_top_classes_are_the_most_common_training_classes_without_other():
    import pandas as pd

    split = pd.DataFrame(
        {
            "subset": ["train"] * 9 + ["val"] * 5,
            "label": ["a"] * 4 + ["Other"] * 3 + ["b"] * 2 + ["c"] * 5,
        }
    )
    assert heads_lib.top_class_indices(split, ["Other", "a", "b", "c"], count=2) == [1, 2]
    assert heads_lib.top_class_indices(split, ["a", "b"], count=2) is None


def test_predict_writes_a_column_group_per_head_and_a_consistent_triple(multi_head_run, tmp_path):
    workdir = str(multi_head_run / "run")
    images = multi_head_run / "data" / "images"
    clf = classifier.load_classifier([workdir], batch_size=8)
    assert clf.heads == HEADS and clf.consistent_heads == HEADS[:3]
    counts = predict_files.predict_files(
        str(images), clf, str(tmp_path / "predictions.csv"), top_k=2, review_threshold=0.5
    )
    assert counts.predicted == len(list(images.glob("*.jpg")))
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for head in HEADS:
        assert f"{head}_top1_label" in rows[0] and f"{head}_top2_probability" in rows[0]
    run = saved_runs.open_run(workdir)
    split = saved_runs.read_split(run)
    levels = ["masterCategory", "subCategory", "articleType"]
    allowed = hierarchy.allowed_combinations(
        heads_lib.label_matrix(split[split["subset"] == "train"], run, levels)
    )
    decoded = np.array(
        [[run.heads[h].index(row[f"consistent_{h}"]) for h in levels] for row in rows]
    )
    assert hierarchy.is_consistent(decoded, allowed).all()
    assert {row["needs_review"] for row in rows} <= {"0", "1"}


def test_the_decoded_levels_are_written_as_a_model_that_others_are_paired_with(
    multi_head_run, tmp_path
):
    workdir, other = str(multi_head_run / "run"), str(multi_head_run / "other")
    config = eval_config(
        evaluators="single", batch_size=16, subsets="val,test", checkpoint="latest"
    )
    runner.evaluate([workdir], config, str(tmp_path / "eval"))
    summary = json.loads((tmp_path / "eval" / heads_lib.HEADS_JSON).read_text())["hierarchy"]
    run = saved_runs.open_run(workdir)
    split = saved_runs.read_split(run)
    levels = ["masterCategory", "subCategory", "articleType"]
    allowed = hierarchy.allowed_combinations(
        heads_lib.label_matrix(split[split["subset"] == "train"], run, levels)
    )
    folders = {h: tmp_path / "eval" / h / summary["predictions_folder"] for h in levels}
    for subset in ("val", "test"):
        tables = {h: pd.read_csv(folders[h] / f"{subset}_predictions.csv") for h in levels}
        for h in levels:
            numbers = summary["subsets"][subset]["heads"][h]
            table = tables[h]
            assert set(table["label_column"]) == {h} and len(table) == numbers["count"]
            right = (table["predicted"] == table["label"]).mean()
            assert right == pytest.approx(numbers["decoded_accuracy"])
            names = run.heads[h]
            f1 = f1_score(
                table["label"], table["predicted"], labels=names, average="macro", zero_division=0
            )
            assert numbers["decoded_macro_f1"] == pytest.approx(f1)
            low, high = numbers["decoded_macro_f1_interval"]
            assert 0 <= low <= high <= 1
            low, high = numbers["decoded_accuracy_interval"]
            assert low < right < high or right in (0, 1)
        # Rows with all three labels: the decoded triples are combinations seen in training.
        triples = tables["masterCategory"][["id", "predicted"]]
        for h in levels[1:]:
            triples = triples.merge(tables[h][["id", "predicted"]], on="id", suffixes=("", h))
        decoded = np.array(
            [
                [run.heads[h].index(v) for h, v in zip(levels, row)]
                for row in triples.drop(columns="id").itertuples(index=False)
            ]
        )
        assert len(decoded) and hierarchy.is_consistent(decoded, allowed).all()
    # The other run's masterCategory report pairs itself with the decoded predictions.
    paired_config = eval_config(
        evaluators="single",
        batch_size=16,
        subsets="val",
        checkpoint="latest",
        **{"report.compare_with": str(folders["masterCategory"])},
    )
    reports = runner.evaluate([other], paired_config, str(tmp_path / "paired"))
    (test,) = reports["masterCategory"]["paired_tests_with_other_evaluations"]["val"]
    mine = pd.read_csv(next((tmp_path / "paired" / "masterCategory").glob("*/val_predictions.csv")))
    theirs = pd.read_csv(folders["masterCategory"] / "val_predictions.csv")
    both = mine.merge(theirs, on="id", suffixes=("_mine", "_decoded"))
    mine_right = both["predicted_mine"] == both["label_mine"]
    decoded_right = both["predicted_decoded"] == both["label_decoded"]
    assert len(both) == test["images"]
    assert test["only_a_correct"] == int((mine_right & ~decoded_right).sum())
    assert test["only_b_correct"] == int((decoded_right & ~mine_right).sum())


def test_ensemble_and_soups_of_multi_head_runs(multi_head_run, tmp_path):
    workdirs = [str(multi_head_run / "run"), str(multi_head_run / "other")]
    config = eval_config(
        evaluators="single,ensemble,soup",
        batch_size=16,
        subsets="val",
        head="gender",
        **{"evals.soup.bn_batches": 2},
    )
    reports = runner.evaluate(workdirs, config, str(tmp_path / "eval"))
    assert list(reports) == ["gender"]
    results = reports["gender"]["results"]
    assert {r["kind"] for r in results} >= {"single", "ensemble", "uniform soup", "greedy soup"}
    labelled = (
        saved_runs.read_split(saved_runs.open_run(workdirs[0])).query("subset == 'val'")["gender"]
        != ""
    ).sum()
    assert all(r["metrics"]["val"]["count"] == labelled for r in results)
    ctx = runner.Evaluation(workdirs, config).context("gender")
    members = [ctx.checkpoint_log_probs(c, "val") for c in ctx.checkpoints]
    ensemble = next(r for r in results if r["kind"] == "ensemble")
    expected = (
        np.log(np.exp(members[0]) / 2 + np.exp(members[1]) / 2).argmax(-1) == ctx.labels("val")
    ).mean()
    assert ensemble["metrics"]["val"]["accuracy"] == pytest.approx(expected)


def test_the_2020_study_is_shown_only_beside_its_own_label_column(tmp_path, cache_dir):
    """Five masterCategory classes as the study had (Home merged into Free Items): its numbers
    appear in the masterCategory report and in no other head's."""
    from fashion_jax.training import train

    classes = ["Accessories", "Apparel", "Footwear", "Personal Care", "Home"]
    data = write_multi_head_dataset(tmp_path / "data", rows_per_class=12, classes=classes)
    config = tiny_config(data, num_epochs=1, **{"data.head_columns": ("masterCategory", "gender")})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    reports = runner.evaluate(
        [str(tmp_path / "run")],
        eval_config(evaluators="single", batch_size=16, subsets="val,control"),
        str(tmp_path / "eval"),
    )
    assert reports["masterCategory"]["class_names"][3] == "Free Items"
    assert reports["masterCategory"]["reference"]["accuracy"]["Model 1 (Adam)"] == 0.9876
    assert reports["gender"]["reference"] is None
    master = (tmp_path / "eval" / "masterCategory" / "report.md").read_text()
    gender = (tmp_path / "eval" / "gender" / "report.md").read_text()
    assert "## Compared with the 2020 Keras study (control subset)" in master
    assert "98.76%" in master and "Model 1 (Adam)" in master
    assert "Compared with" not in gender and "98.76" not in gender


def test_a_decoded_level_without_labels_in_a_subset_gets_nan_not_an_error():
    report_config = eval_config().report
    empty = heads_lib._decoded_intervals(
        np.full(4, -1), np.zeros(4, int), ["a", "b"], report_config
    )
    assert np.isnan(empty["decoded_macro_f1"]) and np.isnan(empty["decoded_accuracy_interval"][0])
    assert empty["decoded_recall"] == {}
    some = heads_lib._decoded_intervals(
        np.array([0, 1, -1, 1]), np.array([0, 0, 1, 1]), ["a", "b"], report_config
    )
    assert (
        some["decoded_recall"]["a"]["value"] == 1.0 and some["decoded_recall"]["b"]["value"] == 0.5
    )
    assert some["decoded_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
