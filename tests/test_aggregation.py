"""How ρ(bracket, J·g) depends on the aggregation (lie_helpers.analysis.aggregation): planted dominance and nulls."""
import numpy as np
import pytest
import torch

from lie_helpers.analysis import aggregation
from lie_helpers.engine.brackets import parameters_of
from test_baselines import synthetic_records

torch.set_num_threads(1)


def test_example_shares_find_the_example_that_carries_the_sum():
    pairs = [(0, 1), (0, 2), (1, 2)]
    bracket = torch.ones(3, 2, 4)
    bracket[0] *= 98                       # pair (0, 1) carries 98 of every 100
    shares = aggregation.example_shares(bracket, pairs)
    assert shares.sum().item() == pytest.approx(2.0)
    assert shares[0].item() == pytest.approx((98 + 1) / 100) and int(shares.argmax()) in (0, 1)
    assert shares[2].item() == pytest.approx(2 / 100)


def test_random_directions_have_the_brackets_per_tensor_rms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = parameters_of(model)
    names = list(params)
    rms = torch.rand(5, len(names)) + 0.1
    directions = aggregation.random_directions(rms, params, names, seed=3)
    for row, direction in zip(rms, directions):
        for name, value in zip(names, row):
            assert direction[name].shape == params[name].shape
            assert direction[name].double().pow(2).mean().sqrt().item() == pytest.approx(float(value), rel=1e-6)
    again = aggregation.random_directions(rms, params, names, seed=3)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(directions, again) for n in names)


def test_a_dominant_example_is_left_out_and_the_null_is_read_beside_it():
    records = synthetic_records(1.0)
    # example 3 dominates: its pairs' brackets are 100 times larger, in an order unrelated to J·g
    g = torch.Generator().manual_seed(5)
    for k, (i, j) in enumerate(records.pairs):
        if 3 in (i, j):
            records.logit_perturbation[:, k] = 100 * torch.rand(records.logit_perturbation[:, k].shape, generator=g)
    noise = {c: torch.rand(records.logit_perturbation[c].shape, generator=g) for c in range(len(records.steps))}
    result = aggregation.compare_aggregations(records, noise)
    assert np.all(result.dominant == 3) and np.all(result.dominant_share > 0.9)
    assert np.median(result.rho["without"]) > 0.8                         # the rest follows J·g
    assert np.median(result.rho["without"]) > np.median(result.rho["mean"]) + 0.3
    text = aggregation.describe_aggregations(result)
    assert "without the dominant example" in text and "depends on the aggregation" in text
