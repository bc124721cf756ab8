"""run_eval.py --export: ONNX and jax.export artifacts that run without fashion_jax and give the
classifier's probabilities on real photos (a model, a two-model ensemble, a multi-head run)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fashion_jax.inference import classifier
from fashion_jax.inference import export
from tests import tiny_runs
from tests.conftest import REAL_DATA
from tests.conftest import REPO_ROOT
from tests.conftest import requires_real_data
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset

# The test extra installs the export extra: without it these tests fail here, not skip.
for module in ("jax2onnx", "onnxruntime"):
    __import__(module)

# Run in a fresh interpreter, from a folder outside the repository, importing only jax, numpy
# and onnxruntime: what a serving machine without this project would do.
SERVE = """
import json, sys
import jax, numpy as np, onnxruntime
labels = json.load(open("export/labels.json"))
images = np.load("images.npy")
session = onnxruntime.InferenceSession("export/model.onnx", providers=["CPUExecutionProvider"])
onnx_out = session.run([o["name"] for o in labels["outputs"]], {labels["input"]["name"]: images})
exported = jax.export.deserialize(open("export/model.jax_export", "rb").read())
jax_out = exported.call(images)
expected = np.load("expected.npz")
print(json.dumps({
    "imported_fashion_jax": any(m.startswith("fashion_jax") for m in sys.modules),
    "onnx": max(float(np.abs(o - expected[h]).max()) for o, h in zip(onnx_out, labels["heads"])),
    "jax": max(float(np.abs(np.asarray(o) - expected[h]).max())
               for o, h in zip(jax_out, labels["heads"])),
    "shapes": [list(o.shape) for o in onnx_out],
}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    trained = tiny_runs.train_once(tmp_path_factory)
    from fashion_jax.training import train

    root = tmp_path_factory.mktemp("export_multi_head")
    data = write_multi_head_dataset(root / "data")
    config = tiny_config(
        data,
        num_epochs=1,
        **{
            "data.head_columns": ("masterCategory", "subCategory", "gender"),
            "data.other_min_count": 2,
            "data.cache_dir": str(root / "cache"),
        },
    )
    train.train_and_evaluate(config, str(root / "multi_head"))
    return dict(trained, multi_head=root / "multi_head")


def real_photos():
    paths = sorted((REAL_DATA / "images").glob("*.jpg"))[:7]
    return [str(p) for p in paths]


@requires_real_data
@pytest.mark.parametrize("case", ["single", "ensemble", "multi_head"])
def test_exported_models_match_the_classifier_without_fashion_jax(runs, tmp_path, case):
    workdirs = {
        "single": [runs["adam"]],
        "ensemble": [runs["adam"], runs["sgd"]],
        "multi_head": [runs["multi_head"]],
    }[case]
    tta = "flip_shift" if case == "ensemble" else "none"  # The export averages the same views.
    clf = classifier.load_classifier([str(w) for w in workdirs], tta=tta, batch_size=8)
    written = export.export(clf, str(tmp_path / "export"))
    assert set(written) == {"labels", "onnx", "jax"}
    height, width = clf.image_shape[:2]
    images = np.stack(
        [classifier.as_model_input(p, height, width, clf.resize) for p in real_photos()]
    )
    np.save(tmp_path / "images.npy", images)
    predictions = clf.predict(real_photos())
    expected = {
        h: np.array([list(p.heads[h].probabilities.values()) for p in predictions], np.float32)
        for h in clf.heads
    }
    np.savez(tmp_path / "expected.npz", **expected)
    result = subprocess.run(
        [sys.executable, "-c", SERVE], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert not numbers["imported_fashion_jax"]
    assert numbers["onnx"] <= 1e-4 and numbers["jax"] <= 1e-4, numbers
    assert numbers["shapes"] == [[len(images), len(c)] for c in clf.class_names.values()]
    labels = json.loads((tmp_path / "export" / "labels.json").read_text())
    assert labels["heads"] == list(clf.heads)
    assert labels["class_names"] == {h: list(c) for h, c in clf.class_names.items()}
    assert labels["input"]["shape"] == ["N", 80, 60, 3]


def test_run_eval_exports_from_the_command_line(runs, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "run_eval.py",
            f"--workdirs={runs['adam']},{runs['sgd']}",
            f"--export={tmp_path / 'exported'}",
            "--config.predict.combine=ensemble",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported ensemble of" in result.stdout
    labels = json.loads((tmp_path / "exported" / "labels.json").read_text())
    assert (
        labels["model"].startswith("ensemble of")
        and (tmp_path / "exported" / "model.onnx").exists()
    )
