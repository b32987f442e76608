"""MF, NCF, FM and DeepFM (SecEmb Appendix I) as functions of a batch of users' parameters.

A client holds only its own user parameters, the K item rows it fetched
(indexed 0..K-1 locally) and the dense parameters. The three groups are kept
apart because the protocols treat them differently: user-private parameters
never leave the device, item rows travel sparsely (DPF / packed Paillier),
dense parameters are secret-shared as one flat vector.

Every group carries a leading user dimension B: ``rows`` [B, K, row_dim],
``user`` [B, private_size] and ``dense`` [B, dense_size]. Users share no
tensor, so the gradient of the SUM of the users' losses with respect to each
group is every user's own gradient: one backward pass serves the whole batch
of a simulation round, and the Flower client is the batch of one. Each user
has its own copy of the dense vector for that reason - the secure protocols
encode every user's dense gradient separately.

Item row layout: [embedding(s) | bias]. User layout mirrors it. The dense
vector's flat order is ``dense_layout`` (the order torch's ``named_parameters``
gave the former nn.Module models, so seeded initial values are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from math import prod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.batch import UserBatch
from models.spec import ModelSpec


# dense parameter blocks -----------------------------------------------------
@dataclass(frozen=True)
class _Param:
    """A free dense tensor; zero at init except the feature embeddings (see models.init)."""
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Linear:
    """torch.nn.Linear(n_in, n_out, bias): weight [n_out, n_in], then bias [n_out]."""
    name: str
    n_in: int
    n_out: int
    bias: bool = True


@dataclass(frozen=True)
class _Norm:
    """torch.nn.LayerNorm(n): weight [n], bias [n]."""
    name: str
    n: int


def _blocks(spec: ModelSpec) -> list[_Param | _Linear | _Norm]:
    """The dense parameters of ``spec``'s model, in flat-vector order."""
    d = spec.dim
    if spec.name == "mf":
        return [_Param("global_bias", (1,))]
    if spec.name == "ncf":  # NCF's dense part is exactly the 688 of SecEmb Table 9 at d=16 (no global bias)
        return [_Linear("mlp.0", 2 * d, d), _Linear("mlp.2", d, d // 2), _Linear("out", d + d // 2, 1, bias=False)]
    fm = [_Param("global_bias", (1,)), _Param("feat_emb", (spec.n_features, d)), _Param("feat_w", (spec.n_features,))]
    if spec.name == "fm":
        return fm
    fields = spec.n_features + 2
    return fm + [_Linear("deep.0", fields * d, 4 * d), _Norm("deep.1", 4 * d), _Linear("deep.3", 4 * d, 2 * d),
                 _Norm("deep.4", 2 * d), _Linear("deep.6", 2 * d, 1)]


def dense_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the dense parameters, in the flat order of the dense vector."""
    layout: list[tuple[str, tuple[int, ...]]] = []
    for block in _blocks(spec):
        if isinstance(block, _Param):
            layout.append((block.name, block.shape))
        elif isinstance(block, _Linear):
            layout.append((f"{block.name}.weight", (block.n_out, block.n_in)))
            if block.bias:
                layout.append((f"{block.name}.bias", (block.n_out,)))
        else:
            layout += [(f"{block.name}.weight", (block.n,)), (f"{block.name}.bias", (block.n,))]
    return layout


def initial_dense_values(spec: ModelSpec, feature_generator: torch.Generator) -> np.ndarray:
    """Flat dense vector with torch's own layer init (global RNG) and feature embeddings ~ N(0, init_std).

    Linear and LayerNorm values are drawn by constructing the torch.nn layers
    in order, exactly as the layers of a torch module would be created, so a
    seeded global RNG gives torch's default initialisation.
    """
    parts: list[torch.Tensor] = []
    for block in _blocks(spec):
        if isinstance(block, _Linear):
            parts += [p.detach() for p in nn.Linear(block.n_in, block.n_out, bias=block.bias).parameters()]
        elif isinstance(block, _Norm):
            parts += [p.detach() for p in nn.LayerNorm(block.n).parameters()]
        elif block.name == "feat_emb":
            parts.append(torch.zeros(block.shape).normal_(0.0, spec.init_std, generator=feature_generator))
        else:
            parts.append(torch.zeros(block.shape))
    flat = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0)
    return flat.numpy().astype(np.float32)


def dense_offsets(spec: ModelSpec) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Each dense parameter's (offset in the flat dense vector, shape), in flat-vector order."""
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    offset = 0
    for name, shape in dense_layout(spec):
        out[name] = (offset, shape)
        offset += prod(shape)
    return out


def linear_layers(spec: ModelSpec) -> list[str]:
    """Names of ``spec``'s linear layers (each has ``<name>.weight`` [n_out, n_in]), in flat-vector order."""
    return [block.name for block in _blocks(spec) if isinstance(block, _Linear)]


def unflatten_dense(spec: ModelSpec, dense: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of a [B, dense_size] tensor as the named per-user parameters [B, *shape]."""
    layout = dense_layout(spec)
    sizes = [prod(shape) for _, shape in layout]
    if dense.shape[-1] != sum(sizes):
        raise ValueError(f"dense vector has {dense.shape[-1]} entries, expected {sum(sizes)}")
    parts = torch.split(dense, sizes, dim=1)
    return {name: part.reshape((dense.shape[0],) + shape) for (name, shape), part in zip(layout, parts)}


FIRST_LAYER_BLOCKS = ("deep.0.weight[user]", "deep.0.weight[item]", "deep.0.weight[features]")


def dense_blocks(spec: ModelSpec, dense: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`unflatten_dense`'s views of a [B, dense_size] tensor, with DeepFM's first-layer weight as its
    user, item and feature-field blocks (:data:`FIRST_LAYER_BLOCKS`, views [B, 4d, 1 | 1 | F, d]).

    Why: these are the pieces :func:`predict` reads, so leaves made of them get their gradients from
    autograd with nothing joined. Views of a flat leaf get theirs joined by the backward of each split
    (a copy of the 873K values per user for the flat vector and another for the first layer's blocks,
    about 15% of a DeepFM round on ml_100k); :func:`models.training.train_batch` writes the pieces'
    gradients into the flat layout itself, through the same views of its output.
    """
    named = unflatten_dense(spec, dense)
    if spec.name != "deepfm":
        return named
    blocks = dict(zip(FIRST_LAYER_BLOCKS, _first_layer_blocks(spec, named)))
    return {key: piece for name, value in named.items()
            for key, piece in (blocks.items() if name == "deep.0.weight" else [(name, value)])}


def _first_layer_blocks(spec: ModelSpec, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """DeepFM's first-layer weight's user, item and feature-field blocks [B or 1, 4d, 1 | 1 | F, d], from
    :func:`dense_blocks`'s pieces or as views of ``p["deep.0.weight"]`` (one split: its backward writes the
    weight's gradient once; indexing each block would fill a zero gradient of all of W per block)."""
    if FIRST_LAYER_BLOCKS[0] in p:
        return tuple(p[key] for key in FIRST_LAYER_BLOCKS)
    weight = p["deep.0.weight"]
    return weight.reshape(weight.shape[0], -1, spec.n_features + 2, spec.dim).split([1, 1, spec.n_features], dim=2)


# terms fixed across calls ----------------------------------------------------
Memo = dict[str, "torch.Tensor | None"]
DenseParams = dict[str, torch.Tensor]  # named dense parameters, [B or 1, *shape] each


def fixed(memo: Memo | None, key: str, compute: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
    """``compute()``, computed once per ``memo``: the value of a term that depends only on the rows, the dense
    vector and the batch.

    A caller passes a memo (an empty dict it keeps) across calls in which those do not change - the private
    Adam steps, where only the user's own parameters move - and None otherwise. The cached tensor is the
    one the first call computed, used in the same expression, so results are bit-identical to recomputing
    it (tests/test_batched_models.py); DeepFM's dense terms were about a quarter of its round.
    """
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


# layer taps for record-level clipping ----------------------------------------
LayerTaps = dict[str, tuple[torch.Tensor | None, torch.Tensor]]  # layer -> (its input x or None, its output y)
_LAYER_TAPS: ContextVar[LayerTaps | None] = ContextVar("layer_taps", default=None)


@contextmanager
def layer_taps() -> Iterator[LayerTaps]:
    """Within it, every linear layer records (input x, output y) under its layer name, and y keeps its
    gradient after a backward pass. DeepFM's first layer, applied blockwise, records x as None: its input
    is never formed (:func:`mlp_input` builds it on request).

    Why: record-level clipping (:mod:`models.dp_training`) passes a linear layer's weight as one shared
    constant and needs each record's input a and output gradient g, from which the record's weight
    gradient g a^T and its norm ||g|| ||a|| follow without forming it. Tapping the forward that
    :func:`predict` runs keeps one implementation of the models (no second forward that returns
    activations).
    """
    taps: LayerTaps = {}
    token = _LAYER_TAPS.set(taps)
    try:
        yield taps
    finally:
        _LAYER_TAPS.reset(token)


# building blocks on a batch of users ----------------------------------------
def _linear(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Per-user linear layer: x [B, N, in] @ W_b^T (+ b_b) -> [B, N, out].

    A weight of leading size 1 under a batch of several users is one weight shared by all of them (record
    clipping's constant): one GEMM, rather than a batched product over a broadcast copy per user.
    """
    weight = p[f"{name}.weight"]
    bias = p.get(f"{name}.bias")
    if weight.shape[0] == 1 and x.shape[0] != 1:
        out = torch.matmul(x, weight[0].T)
        out = out if bias is None else out + bias.unsqueeze(1)
    else:
        weight = weight.transpose(1, 2)
        out = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
    return _tapped(name, x, out)


def _tapped(name: str, x: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out``, recorded with its layer's input under :func:`layer_taps` (a no-op outside it)."""
    taps = _LAYER_TAPS.get()
    if taps is not None and out.requires_grad:
        out.retain_grad()
        taps[name] = (x, out)
    return out


def _layer_norm(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Per-user LayerNorm: normalise without affine, then each user's own weight and bias."""
    normed = F.layer_norm(x, x.shape[-1:])
    return torch.addcmul(p[f"{name}.bias"].unsqueeze(1), normed, p[f"{name}.weight"].unsqueeze(1))


def _rowwise_dot(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each user's matrix times its vector, m [B, N, d] @ v [B, d] -> [B, N].

    ``torch.einsum("bnd,bd->bn", m, v)`` lowers to this same ``bmm`` (the same values, forward and backward,
    checked bit for bit); calling it directly skips einsum's parsing and permutes, 10-15% of the product at
    a plaintext MF group's sizes, in every one of a round's 18 or so passes.
    """
    return torch.bmm(m, v.unsqueeze(2)).squeeze(2)


def _fetch(rows: torch.Tensor, local_items: torch.Tensor) -> torch.Tensor:
    """Row of each rating: rows [B, K, r], local_items [B, N] -> [B, N, r].

    Whole rows are copied with ``index_select`` on the [B*K, r] view, whose backward is a row-wise
    ``index_add_``: the same values as ``gather`` along dim 1 with an expanded index and its
    element-wise ``scatter_add_`` backward, about half the time (6.6 against 12.6 ms forward and
    backward at 50 users x 590 ratings x 65). On the flat view an index past a user's K rows would
    read the next user's row instead of failing as ``gather`` does, so the bounds are checked here.
    """
    b, k, width = rows.shape
    if local_items.numel() and (int(local_items.min()) < 0 or int(local_items.max()) >= k):
        raise IndexError(f"a rating's local item index is outside its user's {k} rows")
    flat = (local_items + torch.arange(b, dtype=local_items.dtype).unsqueeze(1) * k).reshape(-1)
    return rows.reshape(b * k, width).index_select(0, flat).reshape(b, local_items.shape[1], width)


def _features(batch: UserBatch) -> torch.Tensor:
    """Each rating's feature vector [user features | item features]: [B, N, l_x + l_y]."""
    b, n = batch.local_items.shape
    return torch.cat([batch.user_x.unsqueeze(1).expand(b, n, -1), batch.item_x], dim=2)


# models ---------------------------------------------------------------------
def _mf(spec, q, user, p, batch, memo):
    """r = <p_u, q_i> + b_u + b_i + mu."""
    d = spec.dim
    q_emb, q_bias = q.split([d, 1], dim=2)  # one split: its backward writes one gradient tensor, not one per slice
    dot = _rowwise_dot(q_emb, user[:, :d])
    return dot + q_bias.squeeze(2) + user[:, d:d + 1] + p["global_bias"]


def _ncf(spec, q, user, p, batch, memo):
    """NeuMF: GMF(p_g * q_g) and MLP(2d -> d -> d/2) on (p_m, q_m), joined by one linear layer."""
    d = spec.dim
    q_g, q_m, q_bias = q.split([d, d, 1], dim=2)
    gmf = q_g * user[:, None, :d]
    p_m = user[:, None, d:2 * d].expand(-1, q.shape[1], -1)
    mlp = torch.relu(_linear(torch.cat([p_m, q_m], dim=2), p, "mlp.0"))
    mlp = torch.relu(_linear(mlp, p, "mlp.2"))
    joined = _linear(torch.cat([gmf, mlp], dim=2), p, "out").squeeze(2)
    return joined + q_bias.squeeze(2) + user[:, 2 * d:2 * d + 1]


def _fm_term(spec, q_emb, q_bias, user, p, x, memo):
    """Factorisation machine over the fields (user id, item id, features x_f scaled embeddings e_f).

    linear + 1/2 (||sum of field embeddings||^2 - sum of their squared norms);
    the feature part uses sum_f x_f e_f = x @ E and sum_f ||x_f e_f||^2 = x^2 @ ||e_f||^2,
    so no [B, N, fields, d] tensor is built. The terms without the user's parameters are ``fixed``.
    """
    d = spec.dim
    emb = p["feat_emb"]
    total = user[:, None, :d] + q_emb + fixed(memo, "fm.features", lambda: torch.bmm(x, emb))
    squares = ((user[:, :d] ** 2).sum(1, keepdim=True) + fixed(memo, "fm.item_squares", lambda: (q_emb ** 2).sum(2))
               + fixed(memo, "fm.feature_squares", lambda: torch.einsum("bnf,bf->bn", x * x, (emb ** 2).sum(2))))
    linear = (p["global_bias"] + user[:, d:d + 1] + q_bias.squeeze(2)
              + fixed(memo, "fm.feature_linear", lambda: torch.einsum("bnf,bf->bn", x, p["feat_w"])))
    return linear + 0.5 * ((total * total).sum(2) - squares)


def _fm(spec, q, user, p, batch, memo):
    return _fm_term(spec, *q.split([spec.dim, 1], dim=2), user, p, fixed(memo, "features", lambda: _features(batch)),
                    memo)


def _deepfm(spec, q, user, p, batch, memo):
    """FM plus an MLP over the concatenated field embeddings [p_u | q_i | x_1 e_1 | ...]: (F+2)d -> 4d -> 2d -> 1.

    The first layer is applied blockwise, W [p_u | q_i | x_f e_f]_f = W_u p_u + W_i q_i + sum_f x_f (W_f e_f),
    which is the same product without materialising the [B, N, (F+2)d] input. Only W_u p_u involves the
    user's parameters: the item and feature blocks are ``fixed`` (W_f e_f reads 4d x F x d values per user).
    """
    d = spec.dim
    x = fixed(memo, "features", lambda: _features(batch))
    q_emb, q_bias = q.split([d, 1], dim=2)
    # W's user, item and feature blocks [B, 4d, 1 | 1 | F, d]. W may also be one [1, ...] copy shared by the
    # whole batch (record-level clipping, models.dp_training): expand is then a stride-0 view and the einsums
    # broadcast; with a per-user W both are no-ops
    w_user, w_item, w_features = _first_layer_blocks(spec, p)
    h = (_rowwise_dot(w_user.squeeze(2).expand(user.shape[0], -1, -1), user[:, :d]) + p["deep.0.bias"]).unsqueeze(1)
    h = (h + fixed(memo, "deepfm.items", lambda: torch.einsum("bnd,bhd->bnh", q_emb, w_item.squeeze(2)))
         + fixed(memo, "deepfm.features", lambda: torch.bmm(
             x, _field_products(w_features, p["feat_emb"], x.shape[0]))))  # x @ (W_f e_f)
    h = _tapped("deep.0", None, h)
    h = torch.relu(_layer_norm(h, p, "deep.1"))
    h = torch.relu(_layer_norm(_linear(h, p, "deep.3"), p, "deep.4"))
    return _fm_term(spec, q_emb, q_bias, user, p, x, memo) + _linear(h, p, "deep.6").squeeze(2)


def _field_products(w_features: torch.Tensor, feat_emb: torch.Tensor, n_users: int) -> torch.Tensor:
    """W_f e_f of every feature field, [B, F, 4d], from W's feature blocks [B or 1, 4d, F, d] and the
    feature embeddings [B or 1, F, d].

    When both are one dense vector expanded to every user (stride 0: evaluation and ranking pass the
    downloaded vector so), the products are computed once and expanded: einsum would otherwise lay W out
    for a batched product by copying it once per user (320 MB for 100 users on ml_100k): a trained
    DeepFM's evaluation of all 943 users took 10.1 s that way and 1.3 s this way. The products are the
    ones a device computes for itself (a batch of one); the batched kernel's rounding differed from them
    by about 1e-11 in that evaluation's RMSE.
    """
    shared = (w_features.shape[0] > 1 and w_features.stride(0) == 0 and feat_emb.shape[0] > 1
              and feat_emb.stride(0) == 0)
    if shared:
        w_features, feat_emb = w_features[:1], feat_emb[:1]
    products = torch.einsum("bhfd,bfd->bfh", w_features, feat_emb)
    return products.expand(n_users, -1, -1) if shared else products


_FORWARD = {"mf": _mf, "ncf": _ncf, "fm": _fm, "deepfm": _deepfm}

def mlp_input(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, params: DenseParams,
              batch: UserBatch) -> torch.Tensor:
    """The input of DeepFM's first MLP layer, materialised: [p_u | q_i | x_1 e_1 | ... | x_F e_F], [B, N, (F+2)d].

    :func:`_deepfm` never builds it (it applies the layer blockwise); record-level clipping needs it to
    form that layer's per-record gradient g a^T without storing it. ``params["feat_emb"]`` may be
    [B, F, d] or one shared [1, F, d].
    """
    d = spec.dim
    x = _features(batch)
    b, n = x.shape[:2]
    features = (x.unsqueeze(3) * params["feat_emb"].unsqueeze(1)).reshape(b, n, -1)
    return torch.cat([user[:, None, :d].expand(b, n, d), fetch_rated(rows, batch)[..., :d], features], dim=2)


def fetch_rated(rows: torch.Tensor, batch: UserBatch) -> torch.Tensor:
    """The row of each of the batch's ratings, [B, N, row_dim] (what :func:`predict` reads)."""
    return _fetch(rows, batch.local_items)


def _params(spec: ModelSpec, dense: torch.Tensor | DenseParams) -> DenseParams:
    return dense if isinstance(dense, dict) else unflatten_dense(spec, dense)


def predict(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, dense: torch.Tensor | DenseParams,
            batch: UserBatch, memo: Memo | None = None) -> torch.Tensor:
    """Predicted ratings [B, N] of every user's (padded) ratings; padded entries are meaningless.

    ``dense``: the flat [B, dense_size] vector, or its named parameters (``unflatten_dense``'s dict; record
    clipping passes every linear layer's weight as one shared [1, ...] constant). ``memo``: see
    :func:`fixed` (the private Adam steps hold rows, dense and batch fixed).
    """
    rated = fixed(memo, "rated", lambda: fetch_rated(rows, batch))
    return _FORWARD[spec.name](spec, rated, user, _params(spec, dense), batch, memo)


def row_squares(rows: torch.Tensor) -> torch.Tensor:
    """Per user [B]: the sum of squares of its fetched rows (the rows' part of :func:`regularizer`)."""
    return (rows ** 2).sum((1, 2))


def regularised_dense(spec: ModelSpec) -> tuple[str, ...] | None:
    """The dense parameters :func:`regularizer` covers: None for every one (``spec.reg_dense``), else their
    names (FM and DeepFM: the feature embeddings; MF and NCF: none)."""
    if spec.reg_dense:
        return None
    return ("feat_emb",) if spec.name in ("fm", "deepfm") else ()


def dense_squares(spec: ModelSpec, dense: torch.Tensor | DenseParams) -> torch.Tensor | None:
    """Per user [B]: the dense parameters' part of :func:`regularizer` (None: the model has none).

    A dict of named parameters sums per parameter (a shared [1, ...] one broadcasts: its constant term).
    """
    covered = regularised_dense(spec)
    if covered is None:
        if isinstance(dense, dict):
            return sum(((v ** 2).reshape(v.shape[0], -1).sum(1) for v in dense.values()), torch.zeros(()))
        return (dense ** 2).sum(1)
    if covered == ("feat_emb",):
        return (_params(spec, dense)["feat_emb"] ** 2).sum((1, 2))
    return None


def regularizer(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, dense: torch.Tensor | DenseParams,
                rows_part: torch.Tensor | None = None, memo: Memo | None = None) -> torch.Tensor:
    """Per user [B]: sum of squares of its user vector and its fetched rows, and of the feature
    embeddings (FM, DeepFM) or, with ``spec.reg_dense``, of every dense parameter.

    ``reg_dense`` is weight decay on the MLP as well: without it DeepFM's MLP overfits ml_100k after
    about ten epochs (README, Table 3). ``rows_part`` replaces ``row_squares(rows)`` (the loss scales it
    per rating in ``reg_form="rating"``); ``memo``: see :func:`fixed`.
    """
    reg = (user ** 2).sum(1) + (fixed(memo, "rows_part", lambda: row_squares(rows)) if rows_part is None
                                else rows_part)
    dense_part = fixed(memo, "dense_part", lambda: dense_squares(spec, dense))
    return reg if dense_part is None else reg + dense_part
