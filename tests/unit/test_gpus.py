"""The GPU inventory: discovery from the setting, whole-GPU hand-out and return."""

from __future__ import annotations

import pytest

from fnserve.backends.local.gpus import GpuInventory, discover


def test_setting_lists_gpus_or_none() -> None:
    assert discover("0,1") == ["0", "1"]
    assert discover(" 2 , 3 ") == ["2", "3"]
    assert discover("none") == [] and discover("") == []
    with pytest.raises(SystemExit, match="names a GPU twice"):
        discover("0,0")


def test_gpus_are_handed_out_whole_and_given_back() -> None:
    inventory = GpuInventory(["0", "1", "2"])
    assert inventory.take(2, "a") == ["0", "1"]
    assert inventory.take(2, "b") is None  # not enough: nothing is taken
    assert inventory.free == ["2"]
    assert inventory.take(1, "b") == ["2"]
    inventory.give_back("a")
    assert inventory.free == ["0", "1"]
    assert inventory.held() == {"2": "b"}
