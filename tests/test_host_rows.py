"""Per-host data: with several processes each reads only its rows of the image cache, and what it
reads gives the same batches as a process that holds every image."""

import numpy as np
import pytest

from fashion_jax.data import host_rows
from fashion_jax.data import input_pipeline
from tests.conftest import json_from_cpu_devices


@pytest.fixture
def cache(tmp_path):
    """A memory-mapped image cache of 50 tiny images; image n is filled with the value n."""
    images = np.broadcast_to(np.arange(50, dtype=np.uint8)[:, None, None, None], (50, 4, 3, 3))
    np.save(tmp_path / "images.npy", np.ascontiguousarray(images))
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def test_cached_rows_read_only_what_is_indexed_in_the_order_asked(cache):
    positions = np.array([3, 9, 4, 40, 41, 0])
    rows = host_rows.CachedRows(cache, positions)
    assert rows.shape == (6, 4, 3, 3) and len(rows) == 6
    np.testing.assert_array_equal(rows[[4, 0, 2]][:, 0, 0, 0], [41, 3, 4])
    assert rows[1][0, 0, 0] == 9
    assert rows.read.tolist() == [True, True, True, False, True, False]
    np.testing.assert_array_equal(np.asarray(rows)[:, 0, 0, 0], positions)


@pytest.mark.parametrize("processes", [2, 3])
def test_eval_batches_of_each_process_read_only_its_rows_and_together_make_the_batch(
    cache, processes
):
    positions = np.arange(2, 45)  # 43 images: the last batch of 12 is padded.
    labels = np.arange(43, dtype=np.int32)
    batch_size, per_process = 12, 12 // processes
    whole = list(input_pipeline.eval_batches(cache[positions], labels, batch_size))
    read = []
    for p in range(processes):
        images = host_rows.CachedRows(cache, positions)
        rows = slice(p * per_process, (p + 1) * per_process)
        for batch, expected in zip(
            input_pipeline.eval_batches(images, labels, batch_size, rows), whole, strict=True
        ):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(batch[key], expected[key][rows])
        read.append(images.read)
    assert all(r.sum() <= -(-43 // batch_size) * per_process for r in read)
    np.testing.assert_array_equal(np.sum(read, axis=0), np.ones(43))  # Each read by one process.


@pytest.mark.parametrize("probabilities", [None, "class_balanced"])
def test_each_process_holds_its_share_of_an_epoch_and_gathers_the_same_batches(
    cache, probabilities
):
    positions = np.arange(1, 48)  # 47 train images, batches of 8: the last batch wraps around.
    labels = (np.arange(47) % 3).astype(np.int32)
    if probabilities:
        probabilities = input_pipeline.sampling_probabilities(labels, probabilities)
    in_memory = host_rows.TrainRows(cache[positions], labels, 8, 0, slice(None), probabilities)
    for epoch in (0, 1):
        held = []
        for p in range(2):
            rows = slice(4 * p, 4 * p + 4)
            share = host_rows.TrainRows(
                host_rows.CachedRows(cache, positions), labels, 8, 0, rows, probabilities
            )
            share.start_epoch(epoch)
            assert len(share.held_rows) <= 6 * 4  # 6 steps of 4 rows.
            for _, indices in input_pipeline.train_indices(
                47, 8, 0, epoch, rows=rows, probabilities=probabilities
            ):
                got, expected = share.batch(indices[0]), in_memory.batch(indices[0])
                np.testing.assert_array_equal(got["image"], expected["image"])
                np.testing.assert_array_equal(got["label"], expected["label"])
            held.append(set(share.held_rows.tolist()))
        epoch_rows = set(input_pipeline.epoch_permutation(47, 0, epoch, probabilities).tolist())
        assert held[0] | held[1] == epoch_rows
        if probabilities is None:
            assert len(held[0]) == 24 and len(held[1]) == 24 and len(held[0] & held[1]) == 1


def test_a_share_refuses_rows_of_another_epoch(cache):
    share = host_rows.TrainRows(
        host_rows.CachedRows(cache, np.arange(40)), np.zeros(40, np.int32), 8, 0, slice(0, 4), None
    )
    with pytest.raises(ValueError, match="start_epoch was not called"):
        share.batch(np.array([0, 1, 2, 3]))


EPOCH_UPLOAD = """
import json
import jax, numpy as np
from fashion_jax import models
from fashion_jax.data import dataset, host_rows, input_pipeline
from fashion_jax.training import optim, parallel, state as state_lib, steps
from tests.conftest import tiny_config

config = tiny_config("", **{"model.conv_impl": "im2col", "data_on_device": "true",
                            "steps_per_dispatch": 2, "augment.flip": True})
rng = np.random.default_rng(0)
cache = rng.integers(0, 256, (64, 80, 60, 3), dtype=np.uint8)
positions = np.arange(3, 63)  # 60 train images: 4 steps of 16, the last filled up.
labels = rng.integers(0, 4, 60).astype(np.int32)
dp = parallel.DataParallel.over_all_devices()
model = models.create_model(config.model, 4)
results = {}
for name, images in (("replicated", cache[positions]),
                     ("epoch upload", host_rows.CachedRows(cache, positions))):
    subset = dataset.Subset(ids=np.arange(60), images=images, labels=labels)
    runner = steps.TrainStepRunner(dp, subset, config)
    state = state_lib.create_train_state(config, model, optim.create_learning_rate_fn(
        config.optimizer), (80, 60, 3), dp.replicated)
    key = jax.jit(lambda: jax.random.key(0), out_shardings=dp.replicated)()
    sums = []
    for epoch, first_step in ((0, 0), (1, 1)):  # The second as if resumed after one step.
        runner.start_epoch(epoch, first_step)
        for _, indices in input_pipeline.train_indices(60, 16, 0, epoch, first_step,
                                                       steps_per_chunk=2):
            state, metrics = runner(state, None, indices, key)
            sums.append(float(metrics["loss_sum"]))
    results[name] = (runner.per_epoch_upload, sums, jax.device_get(state.params),
                     runner._run._cache_size())
a, b = results["replicated"], results["epoch upload"]
print(json.dumps({
    "per_epoch_upload": [a[0], b[0]],
    "compiled": [a[3], b[3]],
    "loss_sums": [a[1], b[1]],
    "params_absolute": max(float(np.max(np.abs(x - y))) for x, y in
                           zip(jax.tree.leaves(a[2]), jax.tree.leaves(b[2]))),
}))
"""


def test_device_data_uploaded_per_epoch_trains_as_replicated_device_data():
    """Device data of a process of several: each epoch's rows uploaded per device (2 CPU
    devices here) give the steps that all of train, replicated on every device, gives."""
    numbers = json_from_cpu_devices(EPOCH_UPLOAD, devices=2)
    assert numbers["per_epoch_upload"] == [False, True]
    assert numbers["compiled"] == [1, 1]  # The short chunk reused the compiled scan.
    replicated, uploaded = numbers["loss_sums"]
    assert len(replicated) == len(uploaded) == 4  # Epoch 0: steps 0-1, 2-3; epoch 1: 1-2, 3.
    assert uploaded == pytest.approx(replicated, rel=1e-5)
    assert numbers["params_absolute"] <= 1e-6, numbers
