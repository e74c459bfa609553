"""Devices bucketed by amount of data: same models bit for bit, every device trained once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.engines.buckets import MIN_BUCKET_DEVICES, chunk_plan
from tinytwin.engines.experiment import prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.simulate import stream_fedavg
from tinytwin.spec.load import validate_spec


def skewed_experiment(devices: int = 300):
    """Digits over ``devices`` devices, Dirichlet 0.3: sizes from 0 to dozens of samples."""
    return prepare(
        validate_spec(
            {
                "seed": 4,
                "dataset": {"name": "digits"},
                "partition": {"method": "dirichlet", "alpha": 0.3, "min_samples": 0},
                "model": {"name": "mlp", "hidden": [16]},
                "fleet": {"groups": [{"profile": "raspberry-pi-4", "count": devices, "link": "wifi"}]},
            }
        )
    )


def test_chunk_plan_covers_every_device_once_in_classes_within_2x():
    sizes = np.random.default_rng(0).integers(0, 100, 1000)
    plan = chunk_plan(sizes, 8, 64)
    flat = np.concatenate(plan)
    assert np.array_equal(np.sort(flat), np.arange(1000))
    assert all(len(p) <= 64 for p in plan)
    for pos in plan:
        steps = -(-sizes[pos] // 8)
        assert steps.max() <= 2 * max(steps.min(), 1) or steps.max() == 0
    assert len(plan) > 1000 // 64 + 1  # really bucketed


def test_chunk_plan_keeps_consecutive_chunks_for_small_or_even_fleets():
    small = chunk_plan(np.arange(MIN_BUCKET_DEVICES - 1), 8, 100)
    assert [p.tolist() for p in small] == [list(range(0, 100)), list(range(100, 200)), list(range(200, 255))]
    even = chunk_plan(np.full(1000, 60), 10, 2048)
    assert len(even) == 1 and np.array_equal(even[0], np.arange(1000))


@pytest.mark.parametrize(
    "cfg",
    [LocalTraining(2, 8, 0.1, "sgd", 0.0, 0.0, 0.0), LocalTraining(2, 8, 0.01, "adam", 0.0, 0.0, 0.1)],
    ids=["plain-sgd", "adam-prox"],
)
def test_bucketed_training_is_bit_identical_to_plain_chunks(cfg):
    exp = skewed_experiment()
    assert exp.num_samples.max() >= 3 * max(1, np.median(exp.num_samples))  # skewed enough to bucket
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    ids = np.arange(exp.fleet.num_devices)
    trainers = [LocalTrainer(exp.module, exp.layout, x, y, cfg, 9, chunk_size=100, bucketing=b) for b in (False, True)]
    assert len(trainers[1].plan(exp.parts)) > len(trainers[0].plan(exp.parts))
    plain, bucketed = (t.train(exp.initial_params(), 3, ids, exp.parts) for t in trainers)
    assert torch.equal(bucketed.params, plain.params)
    assert np.array_equal(bucketed.train_loss, plain.train_loss)
    assert np.array_equal(bucketed.steps, plain.steps) and plain.steps.max() > 2


def test_bucketed_streaming_fedavg_equals_the_one_shot_mean():
    exp = skewed_experiment()
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    cfg = LocalTraining(1, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    ids, start, n = np.arange(exp.fleet.num_devices), exp.initial_params(), exp.num_samples
    whole = LocalTrainer(exp.module, exp.layout, x, y, cfg, 2).train(start, 1, ids, exp.parts)
    expected = weighted_mean(whole.params - start, torch.from_numpy(n).float())
    trainer = LocalTrainer(exp.module, exp.layout, x, y, cfg, 2, chunk_size=50)
    agg, losses, error = stream_fedavg(trainer, start, 1, ids, exp.parts, n, "float32", exp.model.tensor_sizes)
    assert error is None and np.array_equal(losses, whole.train_loss)
    assert torch.allclose(agg, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_cache_tiles_train_the_same_models_bit_for_bit(monkeypatch):
    """A chunk trained tile by tile (weights kept in cache across steps) equals the chunk trained
    at once, including devices with no data and tiles where no device has data at some step."""
    import tinytwin.engines.local_training as local_training

    exp = skewed_experiment()
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    cfg = LocalTraining(2, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    ids = np.arange(exp.fleet.num_devices)
    results = []
    for tile_bytes in (1 << 40, 40_000):
        monkeypatch.setattr(local_training, "CACHE_TILE_BYTES", tile_bytes)
        trainer = LocalTrainer(exp.module, exp.layout, x, y, cfg, 5, chunk_size=128, bucketing=False)
        assert trainer._mlp_grad is not None
        tiles = trainer._tiles(128, trainer._mlp_grad)
        assert (len(tiles) == 1) == (tile_bytes == 1 << 40) and tiles[-1][1] == 128
        results.append(trainer.train(exp.initial_params(), 2, ids, exp.parts))
    whole, tiled = results
    assert (exp.num_samples == 0).any() and whole.steps.max() > 2
    first_chunk = trainer.schedule(2, ids[:128], exp.parts[:128]) >= 0
    steps_with_data = first_chunk.reshape(128, -1, cfg.batch_size).any(axis=2)
    assert any(not steps_with_data[lo:hi].any(axis=0).all() for lo, hi in tiles)  # a tile skips a step
    assert torch.equal(tiled.params, whole.params)
    assert np.array_equal(tiled.train_loss, whole.train_loss) and np.array_equal(tiled.steps, whole.steps)
