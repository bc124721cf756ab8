"""Decoding product photos once, in parallel, into a uint8 array cached on disk.

Images are converted to RGB (grayscale, RGBA, CMYK, palette ...; EXIF orientation applied,
transparency on white) and resized to the training size (80 high x 60 wide by default). Files that are missing or fail to decode are reported by id and
reason, never dropped silently. The cache key covers the file names, sizes and modification times
and the target size, so a changed dataset is decoded again instead of being read stale.
"""

from collections.abc import Sequence
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from tqdm import tqdm

CACHE_DIR_ENV = "FASHION_CACHE_DIR"
CACHE_VERSION = 2  # 2: EXIF orientation applied, transparency put on white.
RESIZE_MODES = ("stretch", "pad")
# Refuse to decode anything above this many pixels (decompression-bomb guard, 8x PIL's default).
MAX_IMAGE_PIXELS = 8 * 89_478_485


class ImageDecodeError(ValueError):
    pass


def load_image(path_or_file, height: int, width: int, resize: str = "stretch") -> np.ndarray:
    """Reads one image file of any mode and size as a uint8 [height, width, 3] array (see
    to_model_input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path_or_file) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(
                        f"{image.width}x{image.height} pixels exceeds the "
                        f"{MAX_IMAGE_PIXELS}-pixel limit (decompression-bomb guard)"
                    )
                image.draft("RGB", (width, height))  # JPEG: decode at reduced scale if large.
                return to_model_input(image, height, width, resize)
        except ImageDecodeError:
            raise
        except (
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as e:
            raise ImageDecodeError(f"{type(e).__name__}: {e}") from e


def to_model_input(
    image: Image.Image, height: int, width: int, resize: str = "stretch"
) -> np.ndarray:
    """A PIL image as the model sees it: uint8 [height, width, 3] RGB.

    The camera's EXIF orientation is applied; transparent pixels are put on white (catalogue
    shots are on white; a transparent background's hidden colour is often black); any mode
    becomes RGB. `resize`: "stretch" to height x width regardless of the aspect ratio, or "pad"
    to it first with the photo's border colour (the median of its outermost pixels), so that a
    square or wide photo keeps its proportions.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = image.convert("RGB")
    if resize == "pad":
        image = _pad_to_aspect(image, width / height)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _pad_to_aspect(image: Image.Image, aspect: float) -> Image.Image:
    """`image` centred on a canvas of width / height = `aspect`, filled with its border colour."""
    w, h = image.size
    target_w, target_h = max(w, round(h * aspect)), max(h, round(w / aspect))
    if (target_w, target_h) == (w, h):
        return image
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = tuple(int(c) for c in np.median(border, axis=0))
    canvas = Image.new("RGB", (target_w, target_h), colour)
    canvas.paste(image, ((target_w - w) // 2, (target_h - h) // 2))
    return canvas


@dataclasses.dataclass
class DecodedImages:
    ids: np.ndarray  # int64 [N], the ids whose image decoded
    images: np.ndarray  # uint8 [N, height, width, 3]; a read-only memmap from the cache
    failed: list  # (id, reason) for images that could not be used
    from_cache: bool

    def index_of(self) -> dict:
        return {int(i): n for n, i in enumerate(self.ids)}


def default_cache_dir() -> str:
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "fashion_jax"
    )


def _cache_key(image_dir: str, ids: Sequence[int], height: int, width: int) -> tuple:
    """Hashes what the decoded array depends on; returns (key, {id: path or None})."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{height}x{width}|".encode())
    paths = {}
    for style_id in ids:
        path = os.path.join(image_dir, f"{style_id}.jpg")
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            paths[style_id] = None
            digest.update(f"{style_id}:-|".encode())
            continue
        paths[style_id] = path
        digest.update(f"{style_id}:{stat.st_size}:{stat.st_mtime_ns}|".encode())
    return digest.hexdigest()[:24], paths


def decode_images(
    image_dir: str,
    ids: Sequence[int],
    height: int,
    width: int,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    show_progress: bool = True,
) -> DecodedImages:
    """Returns the decoded images for `ids`, from the disk cache when it matches."""
    ids = [int(i) for i in ids]
    key, paths = _cache_key(image_dir, ids, height, width)
    cache_dir = cache_dir or default_cache_dir()
    array_path = os.path.join(cache_dir, f"images-{key}.npy")
    meta_path = os.path.join(cache_dir, f"images-{key}.json")
    if os.path.exists(array_path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        images = np.load(array_path, mmap_mode="r")  # Read-only; pages load on first use.
        if images.shape[0] == len(meta["ids"]):
            logging.info("Loaded %d decoded images from cache %s", images.shape[0], array_path)
            return DecodedImages(
                np.asarray(meta["ids"], np.int64),
                images,
                [tuple(x) for x in meta["failed"]],
                from_cache=True,
            )
        logging.warning("Cache %s is inconsistent; decoding again.", array_path)

    failed = [(i, "image file missing") for i in ids if paths[i] is None]
    present = [i for i in ids if paths[i] is not None]
    images = np.zeros((len(present), height, width, 3), np.uint8)
    ok = np.zeros(len(present), bool)

    def decode_one(n):
        try:
            images[n] = load_image(paths[present[n]], height, width)
            ok[n] = True
            return None
        except ImageDecodeError as e:
            return (present[n], str(e))

    with concurrent.futures.ThreadPoolExecutor(num_threads or max(2, os.cpu_count())) as pool:
        results = pool.map(decode_one, range(len(present)), chunksize=256)
        for error in tqdm(
            results,
            total=len(present),
            desc="decoding images",
            unit="img",
            disable=not show_progress,
            mininterval=2,
        ):
            if error is not None:
                failed.append(error)
    decoded_ids = np.asarray(present, np.int64)[ok]
    images = images[ok] if not ok.all() else images
    failed.sort()

    os.makedirs(cache_dir, exist_ok=True)
    tmp_array, tmp_meta = array_path + f".tmp{os.getpid()}", meta_path + f".tmp{os.getpid()}"
    with open(tmp_array, "wb") as f:
        np.save(f, images)
    with open(tmp_meta, "w") as f:
        json.dump(
            {
                "ids": decoded_ids.tolist(),
                "failed": failed,
                "image_dir": image_dir,
                "height": height,
                "width": width,
            },
            f,
        )
    os.replace(tmp_array, array_path)
    os.replace(tmp_meta, meta_path)
    # From the file from now on: the decoded copy in memory is freed, and processes of a
    # multi-process run read only the rows they use (host_rows.py).
    images = np.load(array_path, mmap_mode="r")
    logging.info(
        "Decoded %d images (%d failed or missing) into cache %s",
        len(decoded_ids),
        len(failed),
        array_path,
    )
    return DecodedImages(decoded_ids, images, failed, from_cache=False)
