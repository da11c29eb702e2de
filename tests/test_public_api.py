"""The public surface: ``gateway.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import gateway


def test_all_is_sorted_and_importable() -> None:
    assert gateway.__all__ == sorted(gateway.__all__)
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name


def test_all_lists_every_public_name() -> None:
    public = {n for n in vars(gateway) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(gateway, n)).__name__ == "module"}
    assert public - modules == set(gateway.__all__)
