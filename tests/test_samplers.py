import numpy as np
import pytest
import torch

from dlsa_prod.training.samplers import PairSampler, epoch_order


def _batches(sampler):
    """One epoch's (positives, negatives) batches: slices of the epoch's draws."""
    pos, neg = sampler.epoch()
    return [(pos[s:e], None if neg is None else neg[s:e]) for s, e in sampler.batch_bounds()]


def test_pair_sampler_draws_classes_uniformly_with_distinct_negatives():
    labels = np.repeat(np.arange(5), [500, 100, 20, 5, 1])
    sampler = PairSampler(labels, 5, batch_size=4000, generator=torch.Generator().manual_seed(0))
    pos, neg = sampler.sample_batch(50000)
    yp, yn = labels[pos.numpy()], labels[neg.numpy()]
    assert np.all(yp != yn)
    for y in (yp, yn):
        freq = np.bincount(y, minlength=5) / y.size
        np.testing.assert_allclose(freq, 0.2, atol=0.01)
    # within a class every sample is reachable
    assert set(pos[yp == 1].tolist()) == set(np.flatnonzero(labels == 1).tolist())


def test_pair_sampler_epoch_length_and_missing_classes():
    labels = np.array([0, 0, 0, 2, 2, 2, 2])  # class 1 absent
    sampler = PairSampler(labels, 3, batch_size=3, generator=torch.Generator().manual_seed(1))
    batches = _batches(sampler)
    assert len(batches) == 3 and sum(len(p) for p, _ in batches) == 7
    for pos, neg in batches:
        assert 1 not in labels[pos.numpy()] and 1 not in labels[neg.numpy()]


def test_pair_sampler_single_class_has_no_negatives():
    sampler = PairSampler(np.zeros(10, dtype=int), 2, 4, torch.Generator().manual_seed(0))
    pos, neg = sampler.sample_batch(4)
    assert neg is None and pos.shape == (4,)


def test_class_balanced_epoch_batches():
    labels = torch.tensor(np.repeat(np.arange(4), [1000, 100, 10, 2]))
    idx = epoch_order(labels, 4, balanced=True, generator=torch.Generator().manual_seed(0))
    assert idx.numel() == labels.numel()
    freq = np.bincount(labels[idx].numpy(), minlength=4) / idx.numel()
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    plain = epoch_order(labels, 4, balanced=False, generator=torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(labels.numel()))


def test_pair_sampler_draws_the_epoch_at_once_and_batches_are_its_slices():
    labels = torch.tensor(np.repeat(np.arange(3), [50, 20, 5]))
    a = PairSampler(labels, 3, 32, torch.Generator().manual_seed(3))
    b = PairSampler(labels, 3, 32, torch.Generator().manual_seed(3))
    pos, neg = a.epoch()
    batches = _batches(b)
    assert [len(p) for p, _ in batches] == [32, 32, 11]
    assert torch.equal(torch.cat([p for p, _ in batches]), pos) and torch.equal(torch.cat([n for _, n in batches]), neg)
    assert a.batch_bounds() == [(0, 32), (32, 64), (64, 75)]


def test_device_generator_is_the_cpu_generator_on_cpu():
    from dlsa_prod.training.samplers import device_generator

    g = torch.Generator().manual_seed(0)
    assert device_generator(g, "cpu") is g


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_stays_on_the_device_and_is_seeded_from_the_cpu_generator():
    from dlsa_prod.training.samplers import device_generator

    labels = torch.tensor(np.repeat(np.arange(4), [100, 30, 10, 3]), device="cuda")
    draws = []
    for _ in range(2):
        g = device_generator(torch.Generator().manual_seed(5), "cuda")
        pos, neg = PairSampler(labels, 4, 64, g, "cuda").epoch()
        assert pos.is_cuda and neg.is_cuda
        draws.append(pos)
    assert torch.equal(draws[0], draws[1])
    assert bool((labels[pos] != labels[neg]).all())
