"""Recommender models (torch only): MF, NCF, FM, DeepFM split into private / item rows / dense, on batches of users."""

from models.batch import UserBatch, gather_rows, make_batch, make_batch_flat
from models.init import init_dense, init_item_table, init_private
from models.recommenders import dense_layout, predict, regularizer
from models.spec import ModelSpec
from models.training import BatchResult, PrivateState, evaluate_batch, train_batch

__all__ = ["BatchResult", "ModelSpec", "PrivateState", "UserBatch", "dense_layout", "evaluate_batch", "gather_rows",
           "init_dense", "init_item_table", "init_private", "make_batch", "make_batch_flat", "predict", "regularizer",
           "train_batch"]
