"""Decoding odd images, reporting failures, and the on-disk cache."""

import os

import numpy as np
from PIL import Image
import pytest

from fashion_jax.data import image_cache


@pytest.fixture
def odd_images(tmp_path):
    """Images of every mode and size the loader must handle, and some it must reject."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), np.uint8)).save(folder / "1.jpg")
    Image.fromarray(rng.integers(0, 255, (80, 60), np.uint8), "L").save(folder / "2.jpg")
    Image.fromarray(rng.integers(0, 255, (79, 53, 3), np.uint8)).save(folder / "3.jpg")
    Image.new("CMYK", (60, 80), (0, 255, 0, 0)).save(folder / "4.jpg")
    Image.new("RGBA", (30, 40), (255, 0, 0, 128)).save(folder / "5.jpg", format="PNG")
    (folder / "6.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    full = (folder / "1.jpg").read_bytes()
    (folder / "7.jpg").write_bytes(full[: len(full) // 3])  # Truncated JPEG.
    Image.new("P", (60, 80), 3).save(folder / "8.jpg", format="GIF")
    return folder


def test_every_mode_and_size_becomes_rgb_80x60(odd_images):
    for name in ("1", "2", "3", "4", "5", "8"):
        image = image_cache.load_image(odd_images / f"{name}.jpg", 80, 60)
        assert image.shape == (80, 60, 3) and image.dtype == np.uint8, name
    gray = image_cache.load_image(odd_images / "2.jpg", 80, 60)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    cmyk = image_cache.load_image(odd_images / "4.jpg", 80, 60)
    assert cmyk[..., 1].mean() < 60 and cmyk[..., 0].mean() > 200  # Magenta ink -> red+blue.


def test_corrupt_and_truncated_files_raise_a_clear_error(odd_images):
    for name in ("6", "7"):
        with pytest.raises(image_cache.ImageDecodeError):
            image_cache.load_image(odd_images / f"{name}.jpg", 80, 60)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (400, 400)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_cache, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(image_cache.ImageDecodeError, match="decompression-bomb"):
        image_cache.load_image(tmp_path / "big.png", 80, 60)


def test_decode_reports_every_failure_and_caches(odd_images, tmp_path):
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # 9 has no file.
    cache = tmp_path / "cache"
    first = image_cache.decode_images(
        str(odd_images), ids, 80, 60, cache_dir=str(cache), show_progress=False
    )
    assert not first.from_cache
    assert first.ids.tolist() == [1, 2, 3, 4, 5, 8]
    assert first.images.shape == (6, 80, 60, 3)
    failed = dict(first.failed)
    assert set(failed) == {6, 7, 9}
    assert failed[9] == "image file missing"
    np.testing.assert_array_equal(
        first.images[0], image_cache.load_image(odd_images / "1.jpg", 80, 60)
    )

    second = image_cache.decode_images(
        str(odd_images), ids, 80, 60, cache_dir=str(cache), show_progress=False
    )
    assert second.from_cache
    np.testing.assert_array_equal(second.images, first.images)
    assert second.failed == first.failed

    # A changed file invalidates the cache.
    Image.new("RGB", (60, 80), (0, 0, 255)).save(odd_images / "1.jpg")
    os.utime(odd_images / "1.jpg", ns=(1, 1))
    third = image_cache.decode_images(
        str(odd_images), ids, 80, 60, cache_dir=str(cache), show_progress=False
    )
    assert not third.from_cache
    assert third.images[0, ..., 2].mean() > 200
