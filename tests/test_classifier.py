"""load_classifier: paths, PIL images and arrays of any size and mode in one call, per-item
errors, and photos as they come (EXIF rotation, transparency, other aspect ratios)."""

import numpy as np
from PIL import Image
import pytest

from fashion_jax import load_classifier
from fashion_jax.data import image_cache
from fashion_jax.inference import classifier
from tests import tiny_runs
from tests.tiny_runs import best_step
from tests.tiny_runs import own_probabilities
from tests.tiny_runs import own_state


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return tiny_runs.train_once(tmp_path_factory)


def photo(height=80, width=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predicts_every_kind_of_input_in_order_with_per_item_errors(runs, tmp_path):
    Image.fromarray(photo()).save(tmp_path / "a.jpg", quality=95)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    inputs = [
        str(tmp_path / "a.jpg"),
        Image.fromarray(photo(seed=1)),
        photo(300, 300, seed=2),  # A square array, any size.
        photo(seed=3)[..., 0],  # Grayscale.
        str(tmp_path / "broken.jpg"),
        np.zeros((80, 60, 3), np.float32),  # Not uint8.
        tmp_path / "missing.jpg",
        {"not": "an image"},
    ]
    clf = load_classifier(str(runs["adam"]), batch_size=4)
    (head,) = clf.heads
    assert clf.class_names[head] == ("Accessories", "Apparel", "Footwear", "Personal Care")
    predictions = clf.predict(inputs, review_threshold=0.99)
    assert [p.source for p in predictions[:2]] == [str(tmp_path / "a.jpg"), "<input 1>"]
    assert [p.error is None for p in predictions] == [True] * 4 + [False] * 4
    assert "float32" in predictions[5].error and "No such file" in predictions[6].error
    assert "dict" in predictions[7].error
    model, variables = own_state(runs["adam"], best_step(runs["adam"]))
    for p, item in zip(predictions[:4], inputs[:4]):
        image = classifier.as_model_input(item, 80, 60, clf.resize)
        expected = own_probabilities(model, variables, image[None])[0]
        got = np.array(list(p.heads[head].probabilities.values()))
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert p.heads[head].label == clf.class_names[head][int(np.argmax(expected))]
        assert p.needs_review == (expected.max() < 0.99)
        assert p.heads[head].top(2)[0] == (p.heads[head].label, p.heads[head].probability)


def test_transparency_goes_on_white():
    rgba = np.zeros((80, 60, 4), np.uint8)  # Hidden colour black, fully transparent...
    rgba[20:60, 15:45] = (200, 30, 30, 255)  # ...but for an opaque red square.
    image = classifier.as_model_input(rgba, 80, 60, "stretch")
    assert (image[0, 0] == 255).all() and (image[40, 30] == (200, 30, 30)).all()
    palette = Image.fromarray(rgba).convert("P")  # A palette image with a transparent index.
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert (classifier.as_model_input(palette, 80, 60, "stretch")[0, 0] == 255).all()


def test_exif_rotation_is_applied(tmp_path):
    wide = photo(60, 80)  # Stored on its side, as a phone writes it, with orientation 6.
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
    Image.fromarray(wide).save(tmp_path / "phone.png", exif=exif)
    loaded = image_cache.load_image(tmp_path / "phone.png", 80, 60)
    upright = np.asarray(Image.fromarray(wide).transpose(Image.Transpose.ROTATE_270))
    assert upright.shape == (80, 60, 3)
    np.testing.assert_array_equal(loaded, upright)


def test_pad_keeps_the_aspect_ratio_with_the_border_colour():
    square = np.full((120, 120, 3), 255, np.uint8)  # A white catalogue shot...
    square[30:90, 30:90] = (10, 120, 10)  # ...with a green square product in it.
    padded = classifier.as_model_input(square, 80, 60, "pad")
    stretched = classifier.as_model_input(square, 80, 60, "stretch")
    green = (padded[..., 1] > 100) & (padded[..., 0] < 60)
    rows, cols = np.flatnonzero(green.any(1)), np.flatnonzero(green.any(0))
    # Padded to 120 wide x 160 high, then halved: the product stays square (30 x 30).
    assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 1
    assert (padded[0] == 255).all() and (padded[-1] == 255).all()  # White bands added.
    green = (stretched[..., 1] > 100) & (stretched[..., 0] < 60)
    rows, cols = np.flatnonzero(green.any(1)), np.flatnonzero(green.any(0))
    assert (rows[-1] - rows[0]) > 1.2 * (cols[-1] - cols[0])  # Stretched: taller than wide.
