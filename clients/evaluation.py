"""Local test evaluation for the model-based protocols.

``plaintext`` evaluates by item request: the user names its test items
(:data:`schemas.common.EVAL_REQUEST`) and then receives only their rows and
the dense parameters (:data:`schemas.common.EVALUATE_ROWS`), so its download
is O(its test items). ``secemb`` users fetch the same rows through SecEmb's
private retrieval (:mod:`clients.secemb_evaluation`), so their download is
O(the evaluation m'); ``secfedrec`` sends the full public model
(:data:`schemas.common.EVALUATE`). Naming the items would tell server 0 items
the user rated, which both hide, so their users refuse the item request
(decided by the user's own config, whatever server 0 asks). Either way the
user computes the squared error of its
held-out ratings with its private parameters, and scores its ranking case (its latest test item
and seeded unrated candidates, recdata.ranking) for HR@k / NDCG@k. In ``plaintext`` it reports
its sum and count in the clear (the twin promises nothing). In the two-server
protocols (SecEmb, Secure FedRec) it secret-shares [SSE, count, hit, ndcg, ranked] between the
servers (share 0 in the clear, share 1 sealed for server 1), so server 0
learns only the sums over the evaluated users. Which reply to send is decided
by the user's own config, never by what server 0 asks for.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.local_training import evaluate_locally
from clients.private_state import device_state_dir, load_private
from models.ranking import candidate_scores, mf_candidate_scores, ranking_sums
from recdata.ranking import user_candidates
from schemas import common
from schemas import two_server as ts_schema
from schemas.plaintext import parse_model_content, parse_update_message, request_reply
from schemas.validation import MessageError

TWO_SERVER_PROTOCOLS = ("secemb", "secfedrec")


def ranking_case(env: ClientEnv) -> np.ndarray | None:
    """This user's ranking case (positive, then its seeded negatives), from its own ratings and the run
    seed: the same row recdata.ranking.ranking_candidates gives the batched engine. None: no case or off."""
    train = env.cfg.train
    if not train.ranking:
        return None
    u = env.user
    return user_candidates(u.user_id, u.train_items, u.test_items, env.n_items, env.seed, int(train.ranking_negatives))


def mf_ranking(env: ClientEnv, u: np.ndarray, V: np.ndarray) -> np.ndarray | None:
    """[hit, ndcg, 1] of this user's ranking case scored with its private u and the item matrix V it holds
    (``fedmf``, ``distributed_mf``); None without a case."""
    case = ranking_case(env)
    if case is None:
        return None
    return ranking_sums(mf_candidate_scores(u[None], V[case][None]), int(env.cfg.train.ranking_k))[0]


def named_test_items(env: ClientEnv) -> np.ndarray:
    """The distinct items of this user's test ratings and ranking candidates, sorted: what it names and
    the order rows arrive in."""
    case = ranking_case(env)
    return np.unique(env.user.test_items if case is None else np.concatenate([env.user.test_items, case]))


def refuse_if_items_are_private(env: ClientEnv) -> None:
    """The two-server protocols hide which items a user rated: their users never name them, nor count them."""
    if env.cfg.strategy.name in TWO_SERVER_PROTOCOLS:
        raise MessageError(f"{env.cfg.strategy.name} users do not name their test items (they evaluate "
                           "through a private retrieval or the full model)")


def on_eval_request(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Name this user's test items (none is a valid answer: the user then reports an empty sum)."""
    refuse_if_items_are_private(env)
    return request_reply(named_test_items(env))


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Evaluate with the full public model (``secemb``, ``secfedrec``)."""
    start = time.perf_counter()
    secure = secure_header(content, context, env)
    table, dense = parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    return reply_with_rows(env, context, secure, table, dense, None, start, secure[0] if secure else None)


def on_evaluate_rows(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Evaluate with the rows of the test items this user named (``plaintext``)."""
    start = time.perf_counter()
    refuse_if_items_are_private(env)
    rnd, rows, dense = parse_update_message(content, env.spec.row_dim, env.spec.dense_size)
    items = named_test_items(env)
    if rows.shape[0] != len(items):
        raise MessageError(f"evaluation sent {rows.shape[0]} rows for {len(items)} test items")
    return reply_with_rows(env, context, None, rows, dense, items, start, rnd)


def secure_header(content: RecordDict, context: Context, env: ClientEnv) -> tuple[int, bytes, str, int] | None:
    """(round, server 1's key, run, ring bits) in the two-server protocols (the key checked against the pin)."""
    if env.cfg.strategy.name not in TWO_SERVER_PROTOCOLS:
        return None
    header = ts_schema.parse_eval_message(content)
    ts.check_pinned_key(header[1], env, context)
    return header


def reply_with_rows(env: ClientEnv, context: Context, secure: tuple[int, bytes, str, int] | None,
                    table: np.ndarray, dense: np.ndarray, row_items: np.ndarray | None, start: float,
                    rnd: int | None, test: tuple[np.ndarray, np.ndarray] | None = None) -> RecordDict:
    """Test SSE and count, and the ranking case's [hit, ndcg, ranked], in the clear or secret-shared, with the
    private state as of round ``rnd``'s training (None: the newest; clients.private_state).

    ``table`` holds every item's row (``row_items`` None) or the rows of the sorted ``row_items``;
    ``test`` (items, ratings) defaults to all of the user's test ratings.
    """
    test_items, test_ratings = (env.user.test_items, env.user.test_ratings) if test is None else test

    def local(ids: np.ndarray) -> np.ndarray:
        return ids if row_items is None else np.searchsorted(row_items, ids)

    features = env.item_features if row_items is None else env.item_features[row_items]
    private = load_private(context, env.spec, env.user.user_id, env.seed, device_state_dir(env, context),
                           before=None if rnd is None else rnd + 1)
    params = private["params"]
    sse, count = evaluate_locally(env.spec, table, dense, params, local(test_items), test_ratings,
                                  env.user.user_features, features)
    case = ranking_case(env)
    ranking = None
    if case is not None:
        rows = local(case)
        scores = candidate_scores(env.spec, table[rows][None], dense, np.asarray(params)[None],
                                  np.arange(len(case))[None], env.user.user_features[None], features[rows][None])
        ranking = ranking_sums(scores, int(env.cfg.train.ranking_k))[0]
    if secure is None:
        return common.evaluation_reply(sse, count, time.perf_counter() - start, ranking)
    rnd, pub, run, _bits = secure  # the evaluation ring, checked by the parser
    metrics = ts.eval_metric_codec(env).encode_eval(sse, count, ranking)
    share0, box = ts.sealed_metric_shares(pub, run, rnd, env.user.user_id, metrics)
    return ts_schema.secure_eval_reply(share0, box, ts.telemetry_seconds(env, time.perf_counter() - start))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    common.EVAL_REQUEST: on_eval_request,
    common.EVALUATE: on_evaluate,
    common.EVALUATE_ROWS: on_evaluate_rows,
}
