"""Finding the dataset: one rule for every entry point.

A dataset folder holds `styles.csv` and `images/`. The places tried, in order:

1. the entry point's flag (`--config.data.data_dir` for training, `--config.data_dir` for
   evaluation);
2. `$FASHION_DATA_DIR`;
   (evaluation then tries the folder the training run recorded, if it still holds the dataset;)
3. `data/fashion-product-images-small` in the checkout (the folder above the package), and in
   the current directory;
4. `../shared/data/fashion-product-images-small` beside the checkout;
5. kagglehub's cache of the Kaggle dataset `paramaggarwal/fashion-product-images-small`
   (`$KAGGLEHUB_CACHE`, default `~/.cache/kagglehub`);
6. a download with kagglehub (`pip install -e ".[kaggle]"`), when it is installed and Kaggle
   credentials exist; it lands in kagglehub's cache, so step 5 finds it next time.

A flag or environment variable that names a folder without the dataset is an error at once, rather
than a silent fall-through to another copy. When nothing is found the message lists every place
tried and the commands that fix it.
"""

import os
import pathlib

from absl import logging

from fashion_jax import errors
from fashion_jax import optional_dependencies

ENV_VARIABLE = "FASHION_DATA_DIR"
KAGGLE_DATASET = "paramaggarwal/fashion-product-images-small"
FOLDER_NAME = "fashion-product-images-small"
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def holds_dataset(folder) -> bool:
    folder = pathlib.Path(folder)
    return (folder / "styles.csv").is_file() and (folder / "images").is_dir()


def _dataset_inside(folder: pathlib.Path, depth: int = 2) -> pathlib.Path | None:
    """`folder` or the first folder below it (to `depth` levels, by name) holding the dataset:
    Kaggle's archive nests it (e.g. myntradataset/)."""
    if holds_dataset(folder):
        return folder
    if depth and folder.is_dir():
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = _dataset_inside(child, depth - 1)
            if found:
                return found
    return None


def kagglehub_cache_dirs() -> list:
    """The version folders of the Kaggle dataset in kagglehub's cache, newest version first."""
    cache = pathlib.Path(
        os.environ.get("KAGGLEHUB_CACHE") or pathlib.Path.home() / ".cache" / "kagglehub"
    )
    versions = cache / "datasets" / KAGGLE_DATASET / "versions"
    if not versions.is_dir():
        return []
    return sorted(
        (p for p in versions.iterdir() if p.is_dir()),
        key=lambda p: int(p.name) if p.name.isdigit() else -1,
        reverse=True,
    )


def _kaggle_credentials_present() -> bool:
    if os.environ.get("KAGGLE_API_TOKEN") or (
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    ):
        return True
    kaggle_dir = pathlib.Path(
        os.environ.get("KAGGLE_CONFIG_DIR") or pathlib.Path.home() / ".kaggle"
    )
    return any((kaggle_dir / name).is_file() for name in ("kaggle.json", "access_token"))


def find_dataset(flag_value: str | None, flag: str, recorded: str | None = None) -> str:
    """The dataset folder (absolute), by the rule in this module's docstring.

    `flag` is the entry point's flag for the folder, named in every message; `recorded` is the
    folder a training run recorded (evaluation), tried after the environment variable.
    """
    tried = []
    found = _find_without_download(flag_value, flag, recorded, tried)
    if found:
        return found
    if not optional_dependencies.is_installed("kagglehub"):
        raise optional_dependencies.MissingDependencyError(
            "The dataset is in none of the places tried, and downloading it needs kagglehub, "
            f"which is not installed: run {optional_dependencies.install_command(['kagglehub'])}, "
            "put a Kaggle API token in ~/.kaggle/kaggle.json and run the same command again, "
            f"or pass {flag}=<folder>. Tried:\n  - "
            + "\n  - ".join(tried)
            + f"\nOr download https://www.kaggle.com/datasets/{KAGGLE_DATASET} and unzip it into "
            f"{CHECKOUT / 'data' / FOLDER_NAME} (styles.csv and images/ directly inside)."
        )
    downloaded = _download(tried)
    if downloaded:
        return downloaded
    raise errors.DataError(
        "Cannot find the Fashion Product Images (Small) dataset (a folder with styles.csv and "
        "images/). Tried:\n  - " + "\n  - ".join(tried) + "\nTo fix, either:\n"
        "  a) put your Kaggle API token in ~/.kaggle/kaggle.json (kaggle.com > Settings > API > "
        "Create New Token) and run the same command again: kagglehub downloads it (about "
        "600 MB, once);\n"
        f"  b) or download https://www.kaggle.com/datasets/{KAGGLE_DATASET}, unzip it into "
        f"{CHECKOUT / 'data' / FOLDER_NAME} (so that styles.csv and images/ are directly inside);\n"
        f"  c) or pass {flag}=<folder> or set {ENV_VARIABLE}=<folder>."
    )


def find_local_dataset() -> str | None:
    """The dataset by the same rule without a flag and without a download ($FASHION_DATA_DIR,
    data/ in the checkout or the current directory, ../shared/data, kagglehub's cache), or None;
    what the tests that need real photos use."""
    return _find_without_download(None, "", None, [])


def _find_without_download(flag_value, flag, recorded, tried: list) -> str | None:
    """Steps 1-5 of the rule: the folder, or None with each place tried appended to `tried`."""
    for source, value in ((flag, flag_value), (f"${ENV_VARIABLE}", os.environ.get(ENV_VARIABLE))):
        if not value:
            tried.append(f"{source}: not set")
            continue
        path = pathlib.Path(value).expanduser().resolve()
        if holds_dataset(path):
            return str(path)
        raise errors.DataError(
            f"{source}={value} does not hold the dataset: {_missing(path)}. Point it at the "
            "folder that contains styles.csv and images/ (for the Kaggle download, the folder "
            "where they were unpacked)."
        )
    if recorded:
        if holds_dataset(recorded):
            return str(pathlib.Path(recorded).resolve())
        tried.append(
            f"{recorded} (recorded by the training run): {_missing(pathlib.Path(recorded))}"
        )
    local = [CHECKOUT / "data" / FOLDER_NAME, pathlib.Path.cwd() / "data" / FOLDER_NAME]
    shared = [CHECKOUT.parent / "shared" / "data" / FOLDER_NAME]
    for path in dict.fromkeys(p.resolve() for p in local + shared):
        if holds_dataset(path):
            return str(path)
        tried.append(f"{path}: {_missing(path)}")
    for version in kagglehub_cache_dirs():
        found = _dataset_inside(version)
        if found:
            return str(found)
        tried.append(f"{version} (kagglehub cache): no styles.csv with images/ inside")
    if not kagglehub_cache_dirs():
        tried.append(f"kagglehub cache: no copy of {KAGGLE_DATASET}")
    return None


def _missing(path: pathlib.Path) -> str:
    if not path.exists():
        return "no such folder"
    missing = [n for n in ("styles.csv", "images/") if not (path / n.rstrip("/")).exists()]
    return "missing " + " and ".join(missing)


def _download(tried: list) -> str | None:
    """Downloads with kagglehub (installed) when credentials exist; else notes why not."""
    import kagglehub

    if not _kaggle_credentials_present():
        tried.append(
            "kagglehub download: no Kaggle credentials (~/.kaggle/kaggle.json, "
            "~/.kaggle/access_token, $KAGGLE_API_TOKEN, or $KAGGLE_USERNAME and $KAGGLE_KEY)"
        )
        return None
    logging.info(
        "Downloading %s with kagglehub into its cache (about 600 MB, once).", KAGGLE_DATASET
    )
    try:
        path = pathlib.Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as e:  # Network, authentication, quota: report it, with the other places.
        tried.append(f"kagglehub download: failed ({type(e).__name__}: {e})")
        return None
    found = _dataset_inside(path)
    if not found:
        tried.append(f"kagglehub download: {path} holds no styles.csv with images/")
        return None
    return str(found)
