"""Fixed-point grids with stochastic rounding: on the grid, saturating, unbiased."""
import pytest
import torch

from mesu_snn.functional.fixed_point import fixed_point_round, fixed_point_step


def test_values_lie_on_the_saturating_grid():
    step = fixed_point_step(1.0, 4)                       # ±7 steps of 1/7
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    for stochastic in (True, False):
        q = fixed_point_round(x, step, 4, torch.Generator().manual_seed(0), stochastic=stochastic)
        k = q / step
        assert torch.allclose(k, k.round(), atol=1e-9) and k.abs().max() == 7
    assert torch.equal(fixed_point_round(torch.tensor([0.2]), step, 4, stochastic=False), torch.tensor([step]))


def test_stochastic_rounding_is_unbiased_and_keeps_tiny_updates():
    step = fixed_point_step(1.0, 8)
    x = torch.full((200_000,), 0.3 * step, dtype=torch.float64)     # far below one step
    q = fixed_point_round(x, step, 8, torch.Generator().manual_seed(1))
    assert float(q.mean()) == pytest.approx(0.3 * step, rel=0.02)
    assert float(fixed_point_round(x, step, 8, stochastic=False).abs().max()) == 0.0   # nearest loses it


def test_minimum_and_bad_bits():
    step = fixed_point_step(1.0, 6)
    assert float(fixed_point_round(torch.zeros(5), step, 6, minimum=step).min()) == pytest.approx(step)
    with pytest.raises(ValueError, match="bits"):
        fixed_point_step(1.0, 1)
    with pytest.raises(ValueError, match="value_range"):
        fixed_point_step(0.0, 8)
