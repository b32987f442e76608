"""What clients and strategies read of the app's config, in one place below both of them."""

from __future__ import annotations

from typing import Any

from models.spec import ModelSpec


def model_spec(cfg: dict[str, Any], n_user_features: int, n_item_features: int) -> ModelSpec:
    m = cfg["model"]
    return ModelSpec(name=m["name"], dim=int(m["dim"]), n_user_features=n_user_features,
                     n_item_features=n_item_features, init_std=float(m["init_std"]))
