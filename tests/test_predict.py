"""Classifying new photos with run_eval.py --predict: odd files, CSV input, streaming."""

import jax
import numpy as np
import pandas as pd
from PIL import Image
import pytest

from fashion_jax import errors
from fashion_jax.data import image_cache
from fashion_jax.inference import classifier
from fashion_jax.inference import predict_files
from tests import tiny_runs
from tests.tiny_runs import best_step
from tests.tiny_runs import own_probabilities
from tests.tiny_runs import own_state


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return tiny_runs.train_once(tmp_path_factory)


def noisy(colour, height=80, width=60, seed=0):
    rng = np.random.default_rng(seed)
    return (
        (np.array(colour, np.float32) + rng.normal(0, 30, (height, width, 3)))
        .clip(0, 255)
        .astype(np.uint8)
    )


def write_odd_folder(folder):
    """Photos of every awkward kind, plus a file that is not an image at all."""
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(noisy((40, 200, 40))).save(folder / "good.jpg", quality=90)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    Image.fromarray(noisy((40, 40, 200), seed=1)).save(folder / "png_named.jpg", format="PNG")
    Image.fromarray(noisy((200, 200, 40), seed=2)[..., 0], mode="L").save(
        folder / "nested" / "gray.jpg"
    )
    Image.fromarray(noisy((200, 40, 40), 3000, 2000, seed=3)).save(folder / "huge.jpg")
    (folder / "notes.txt").write_text("not a photo; skipped by extension")
    return ["corrupt.jpg", "good.jpg", "huge.jpg", "png_named.jpg", "nested/gray.jpg"]


def test_predicts_a_folder_with_corrupt_renamed_gray_and_huge_files(runs, tmp_path):
    folder = tmp_path / "photos"
    names = write_odd_folder(folder)
    output = tmp_path / "out" / "predictions.csv"
    clf = classifier.load_classifier(str(runs["adam"]), batch_size=4, resize="stretch")
    counts = predict_files.predict_files(str(folder), clf, str(output), top_k=2)
    assert (counts.predicted, counts.failed, counts.exit_code) == (4, 1, 0)

    rows = pd.read_csv(output, keep_default_na=False)
    assert list(rows.columns) == [
        "path",
        "top1_label",
        "top1_probability",
        "top2_label",
        "top2_probability",
        "error",
    ]
    assert [str(p)[len(str(folder)) + 1 :] for p in rows["path"]] == names
    rows = rows.set_index(rows["path"].map(lambda p: p[len(str(folder)) + 1 :]))
    assert "Error" in rows.loc["corrupt.jpg", "error"]  # E.g. "OSError: Truncated File Read"
    assert rows.loc["corrupt.jpg", "top1_label"] == ""
    readable = rows.drop(index="corrupt.jpg")
    assert (readable["error"] == "").all()
    assert (readable["top1_probability"] >= readable["top2_probability"]).all()

    model, variables = own_state(runs["adam"], best_step(runs["adam"]))
    classes = ["Accessories", "Apparel", "Footwear", "Personal Care"]
    for name in readable.index:
        image = image_cache.load_image(folder / name, 80, 60)
        expected = own_probabilities(model, jax.device_get(variables), image[None])[0]
        top = np.argsort(-expected)[:2]
        assert list(readable.loc[name, ["top1_label", "top2_label"]]) == [classes[k] for k in top]
        np.testing.assert_allclose(
            readable.loc[name, ["top1_probability", "top2_probability"]].astype(float),
            expected[top],
            atol=2e-6,
        )


def test_predicts_paths_listed_in_a_csv(runs, tmp_path):
    Image.fromarray(noisy((40, 200, 40))).save(tmp_path / "good.jpg")
    listing = tmp_path / "list.csv"
    pd.DataFrame(
        {"id": [1, 2, 3], "path": ["good.jpg", str(tmp_path / "good.jpg"), "missing.jpg"]}
    ).to_csv(listing, index=False)
    output = tmp_path / "predictions.csv"
    clf = classifier.load_classifier(str(runs["adam"]), batch_size=4)
    counts = predict_files.predict_files(str(listing), clf, str(output), top_k=1)
    rows = pd.read_csv(output, keep_default_na=False)
    assert (counts.predicted, counts.failed) == (2, 1)
    assert rows.loc[0, "top1_label"] == rows.loc[1, "top1_label"] != ""
    assert "No such file" in rows.loc[2, "error"]

    pd.DataFrame({"file": ["good.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(errors.InputError, match="no 'path' column"):
        predict_files.predict_files(str(tmp_path / "bad.csv"), clf, str(output))


def test_paths_are_read_and_decoded_one_batch_ahead_only(runs, tmp_path):
    Image.fromarray(noisy((40, 40, 200))).save(tmp_path / "x.jpg")
    pulled = []

    def paths():
        for n in range(21):
            pulled.append(n)
            yield str(tmp_path / "x.jpg")

    clf = classifier.load_classifier(str(runs["adam"]), batch_size=4)
    predictions = clf.predict_iter(paths())
    first = next(predictions)
    assert len(pulled) <= 2 * 4  # The batch being predicted and the one being decoded.
    assert first.error is None and first.source == str(tmp_path / "x.jpg")
    rest = list(predictions)
    assert len(pulled) == 21 and len(rest) == 20
    assert len({p.heads[clf.heads[0]].label for p in [first, *rest]}) == 1
