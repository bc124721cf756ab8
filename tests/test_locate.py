"""Finding the dataset: flag, $FASHION_DATA_DIR, data/ in the checkout, ../shared beside it, the
kagglehub cache, a kagglehub download; with fake folders and a fake kagglehub (no network)."""

import sys
import types

import pytest

from fashion_jax import errors
from fashion_jax import optional_dependencies
from fashion_jax.data import locate

FLAG = "--config.data.data_dir"


def make_dataset(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "styles.csv").write_text("id\n")
    return folder


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty world: a fake checkout, home, cwd and kagglehub cache; no variables set."""
    checkout = tmp_path / "work" / "checkout"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(locate, "CHECKOUT", checkout)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    for name in (
        "FASHION_DATA_DIR",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_CONFIG_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # Not installed, unless a test says so.
    return tmp_path, checkout


def kaggle_cache_version(root, version):
    return root / "kagglehub" / "datasets" / locate.KAGGLE_DATASET / "versions" / str(version)


def fake_kagglehub(monkeypatch, download_to):
    calls = []

    def dataset_download(handle):
        calls.append(handle)
        make_dataset(download_to / "myntradataset")
        return str(download_to)

    monkeypatch.setitem(
        sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download)
    )
    return calls


def test_each_place_is_tried_in_order(places, monkeypatch):
    root, checkout = places
    cached = make_dataset(kaggle_cache_version(root, 2) / "myntradataset")
    make_dataset(kaggle_cache_version(root, 1))  # An older version: the newest wins.
    assert locate.find_dataset("", FLAG) == str(cached)
    shared = make_dataset(checkout.parent / "shared" / "data" / locate.FOLDER_NAME)
    assert locate.find_dataset("", FLAG) == str(shared)
    in_checkout = make_dataset(checkout / "data" / locate.FOLDER_NAME)
    assert locate.find_dataset("", FLAG) == str(in_checkout)
    recorded = make_dataset(root / "recorded")
    assert locate.find_dataset("", FLAG, recorded=str(recorded)) == str(recorded)
    from_env = make_dataset(root / "env")
    monkeypatch.setenv("FASHION_DATA_DIR", str(from_env))
    assert locate.find_dataset("", FLAG, recorded=str(recorded)) == str(from_env)
    from_flag = make_dataset(root / "flag")
    assert locate.find_dataset(str(from_flag), FLAG) == str(from_flag)


def test_a_flag_or_variable_naming_the_wrong_folder_is_an_error_not_a_fall_through(
    places, monkeypatch
):
    root, checkout = places
    make_dataset(checkout / "data" / locate.FOLDER_NAME)
    (root / "empty").mkdir()
    with pytest.raises(errors.DataError, match=r"--config.data_dir=.*empty does not hold"):
        locate.find_dataset(str(root / "empty"), "--config.data_dir")
    monkeypatch.setenv("FASHION_DATA_DIR", str(root / "nowhere"))
    with pytest.raises(errors.DataError, match=r"\$FASHION_DATA_DIR=.*nowhere.*no such folder"):
        locate.find_dataset("", FLAG)


def test_downloads_with_kagglehub_only_with_credentials(places, monkeypatch):
    root, _ = places
    calls = fake_kagglehub(monkeypatch, root / "download")
    with pytest.raises(errors.DataError, match="no Kaggle credentials"):
        locate.find_dataset("", FLAG)
    assert calls == []
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    found = locate.find_dataset("", FLAG)
    assert calls == [locate.KAGGLE_DATASET]
    assert found == str(root / "download" / "myntradataset")


def test_the_message_lists_every_place_and_the_fix(places, monkeypatch):
    root, checkout = places
    with pytest.raises(optional_dependencies.MissingDependencyError) as raised:
        locate.find_dataset("", "--config.data_dir")
    message = str(raised.value)
    assert message.splitlines()[0].startswith(
        "The dataset is in none of the places tried, and downloading it needs kagglehub, which "
        'is not installed: run pip install -e ".[kaggle]"'
    )
    for expected in (
        "--config.data_dir: not set",
        "$FASHION_DATA_DIR: not set",
        str(checkout / "data" / locate.FOLDER_NAME),
        str(checkout.parent / "shared" / "data" / locate.FOLDER_NAME),
        "kagglehub cache",
        'pip install -e ".[kaggle]"',
        "~/.kaggle/kaggle.json",
        "pass --config.data_dir=<folder>",
    ):
        assert expected in message, (expected, message)

    # A failed download is reported with its reason, not raised as is.
    def failing(handle):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=failing))
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    with pytest.raises(errors.DataError, match="failed \\(ConnectionError: no network\\)"):
        locate.find_dataset("", FLAG)


def test_the_tests_find_a_user_s_copy_by_the_same_rule_and_never_download(places, monkeypatch):
    root, checkout = places
    calls = fake_kagglehub(monkeypatch, root / "download")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    assert locate.find_local_dataset() is None
    assert calls == []  # Credentials and kagglehub present: still no download.
    cached = make_dataset(kaggle_cache_version(root, 1))
    assert locate.find_local_dataset() == str(cached)
    shared = make_dataset(checkout.parent / "shared" / "data" / locate.FOLDER_NAME)
    assert locate.find_local_dataset() == str(shared)
    in_checkout = make_dataset(checkout / "data" / locate.FOLDER_NAME)  # Where README says.
    assert locate.find_local_dataset() == str(in_checkout)
    from_env = make_dataset(root / "env")
    monkeypatch.setenv("FASHION_DATA_DIR", str(from_env))
    assert locate.find_local_dataset() == str(from_env)
    monkeypatch.setenv("FASHION_DATA_DIR", str(root / "nowhere"))
    with pytest.raises(errors.DataError, match="FASHION_DATA_DIR"):
        locate.find_local_dataset()
    assert calls == []
