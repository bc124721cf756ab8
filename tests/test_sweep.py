"""bench/sweep.py: variants parsed before any run, accuracies read per head, the mean and spread
over seeds, and one tiny multi-head sweep on the real photos (val only)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import load_script
from tests.conftest import requires_real_data


def load_sweep():
    return load_script("bench/sweep.py")


def test_variants_are_parsed_and_bad_ones_refused_naming_the_flag():
    bench = load_sweep()
    variants = bench.parse_variants(
        ["base=configs/speedrun.py", "long=configs/speedrun.py --config.num_epochs=8"]
    )
    assert variants == {
        "base": ("configs/speedrun.py", []),
        "long": ("configs/speedrun.py", ["--config.num_epochs=8"]),
    }
    for bad, message in [
        ("configs/speedrun.py", "expected <name>="),
        ("x=configs/missing.py", "no config file configs/missing.py"),
        ("x=configs/speedrun.py --num_epochs=8", "are not --config"),
        ("x=configs/speedrun.py --config.seed=1", "--config.seed is set by --seeds"),
    ]:
        with pytest.raises(bench.app.UsageError, match=message):
            bench.parse_variants([bad])
    with pytest.raises(bench.app.UsageError, match="given twice"):
        bench.parse_variants(["a=configs/tiny.py", "a=configs/adam.py"])
    with pytest.raises(bench.app.UsageError, match="at least one"):
        bench.parse_variants([])
    assert bench.parse_subsets(["val", "test"]) == ["val", "test"]
    with pytest.raises(bench.app.UsageError, match="--subsets=val,holdout: choose among"):
        bench.parse_subsets(["val", "holdout"])


def test_a_variant_is_never_scored_on_a_subset_it_trains_on():
    bench = load_sweep()
    refused = [
        # train_subsets set in the config file:
        ("r=configs/best_multi_head_refit.py", ["val"], "on val .*--subsets=test,control\\.$"),
        (
            "r=configs/best.py --config.data.train_subsets=('train','val','test')",
            ["test"],
            "on test .*--subsets=control\\.$",
        ),
        (
            "r=configs/best.py --config.data.train_subsets=('test','train')",
            ["val", "test"],
            "on test ",
        ),
    ]
    for variant, subsets, named in refused:
        with pytest.raises(bench.app.UsageError, match=f"--variant=r trains {named}"):
            bench.check_held_out(bench.parse_variants([variant]), subsets)
    accepted = [
        ("r=configs/best_multi_head_refit.py", ["test"]),
        ("r=configs/best.py --config.data.train_subsets=('train','val','test')", ["control"]),
        ("r=configs/best.py", ["val", "test"]),
    ]
    for variant, subsets in accepted:
        bench.check_held_out(bench.parse_variants([variant]), subsets)
    # ml_collections reads train,val as ('train,val',), which training would refuse: refused here.
    with pytest.raises(
        bench.app.UsageError, match=r"train_subsets=\('train,val',\): give \"train\""
    ):
        bench.check_held_out(
            bench.parse_variants(["r=configs/best.py --config.data.train_subsets=train,val"]),
            ["val"],
        )
    # An override training could not apply is refused here too, naming the variant's file.
    for bad in ("--config.data.no_such_field=1", "--config.num_epochs=eight"):
        with pytest.raises(bench.app.UsageError, match=f"configs/best.py {bad}: training would"):
            bench.check_held_out(bench.parse_variants([f"r=configs/best.py {bad}"]), ["val"])


def test_the_summary_is_each_heads_mean_and_spread_over_seeds():
    bench = load_sweep()
    runs = [
        {
            "variant": "a",
            "accuracy": {"masterCategory": {"val": v}, "gender": {"val": g}},
            "train_seconds": t,
            "wall_seconds": t + 10,
        }
        for v, g, t in [(0.99, 0.90, 100.0), (0.98, 0.92, 120.0), (0.985, 0.91, 110.0)]
    ]
    row = bench.summarise(runs)["a"]
    assert row["masterCategory/val"] == "0.9850 +- 0.0050 (n=3)"
    assert row["gender/val"] == "0.9100 +- 0.0100 (n=3)"
    assert row["train_seconds"] == "110.0000 +- 10.0000 (n=3)"


def test_reports_give_accuracy_top_classes_and_master_macro_f1():
    bench = load_sweep()

    def report(head, **extra):
        metrics = {"val": {"accuracy": 0.9, "macro_f1": 0.8, **extra}}
        return {"label_column": head, "results": [{"kind": "single", "metrics": metrics}]}

    assert bench.report_scores(report("masterCategory")) == {
        "masterCategory": {"val": 0.9},
        "masterCategory macro F1": {"val": 0.8},
    }
    top = {"top_classes_accuracy": 0.95, "top_classes_num_classes": 20}
    assert bench.report_scores(report("articleType", **top)) == {
        "articleType": {"val": 0.9},
        "articleType top20": {"val": 0.95},
    }


@requires_real_data
def test_a_tiny_multi_head_sweep_reports_every_head_on_val_only(tmp_path):
    variant = (
        "mh=configs/tiny.py --config.num_epochs=1 --config.checkpoint.every_steps=1000 "
        "--config.data.head_columns=('masterCategory','gender')"
    )
    result = subprocess.run(
        [
            sys.executable,
            "bench/sweep.py",
            f"--variant={variant}",
            "--seeds=1",
            "--max_rows=300",
            f"--root={tmp_path / 'runs'}",
            f"--output={tmp_path / 'sweep.json'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads((tmp_path / "sweep.json").read_text())
    (run,) = out["runs"]
    assert run["epochs"] == 1 and run["train_seconds"] > 0
    assert set(run["accuracy"]) == {"masterCategory", "masterCategory macro F1", "gender"}
    for head, subsets in run["accuracy"].items():
        assert list(subsets) == ["val"], head  # Control is not looked at.
        assert 0.0 <= subsets["val"] <= 1.0
    assert set(out["summary"]["mh"]) == {
        "masterCategory/val",
        "masterCategory macro F1/val",
        "gender/val",
        "train_seconds",
        "wall_seconds",
    }
