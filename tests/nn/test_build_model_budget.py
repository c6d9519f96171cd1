"""build_model, called directly, counts parameters on meta tensors and refuses what will not fit."""

from __future__ import annotations

import time

import pytest

from napari_deeptrack.errors import ConfigError, MemoryBudgetError
from napari_deeptrack.nn import build_model
from napari_deeptrack.nn.memory import ENV_CAP
from napari_deeptrack.nn.registry import count_parameters


def test_huge_model_refused_quickly_with_the_parameter_to_change():
    t0 = time.perf_counter()
    with pytest.raises(MemoryBudgetError, match="base_channels") as info:
        build_model(
            {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2}
            | {"base_channels": 10**5, "max_channels": 10**6}
        )
    assert time.perf_counter() - t0 < 5.0  # counted on meta tensors, nothing allocated
    assert info.value.need_bytes > info.value.budget_bytes
    assert info.value.parameter == "base_channels"
    assert ENV_CAP in str(info.value)


def test_loop_making_depth_refused_before_building():
    with pytest.raises(ConfigError, match="depth"):
        build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 100})


def test_budget_follows_the_environment(monkeypatch):
    small = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2, "base_channels": 8}
    model = build_model(small)  # fits the default budget
    assert sum(p.numel() for p in model.parameters()) == count_parameters(small)
    wide = small | {"base_channels": 1024, "max_channels": 2048}
    need = 4 * count_parameters(wide)
    assert need > 100 * 1024**2  # above the budget's 64 MB floor
    monkeypatch.setenv(ENV_CAP, str(0.75 * need / 1024**3))
    with pytest.raises(MemoryBudgetError, match="would need") as info:
        build_model(wide)
    assert info.value.need_bytes == need


def test_budget_module_reexports_the_same_budget():
    from napari_deeptrack.nn import memory
    from napari_deeptrack.sim import budget

    assert budget.memory_budget is memory.memory_budget
    assert budget.count_parameters({"type": "CNN", "in_channels": 1, "out_features": 2}) == count_parameters(
        {"type": "CNN", "in_channels": 1, "out_features": 2}
    )
