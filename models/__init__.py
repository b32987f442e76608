"""Recommender models (torch only): MF, NCF, FM, DeepFM split into private / item rows / dense."""

from models.init import init_dense, init_item_table, init_private
from models.recommenders import RecModel, build_model
from models.spec import ModelSpec

__all__ = ["ModelSpec", "RecModel", "build_model", "init_dense", "init_item_table", "init_private"]
