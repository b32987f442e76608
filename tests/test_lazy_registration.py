"""Start and evaluation cost independent of the population, checked on a real Flower simulation.

A virtual node simulates the user the server assigns it (Flower's mod chain,
no simulation needed). One tiny run (12 users, 2 rounds of 3 sampled, 2 evaluated after each) through
a grid that records every message the ServerApp sends:

* no node is messaged unless its user is sampled or evaluated: each such
  node gets exactly one assignment (registration) message, even when its user
  comes back in a later round or in evaluation, the others none;
* an evaluated user's download is its test items' rows and the dense
  parameters (plus the item request), computed here from the dataset, far
  below the full item table it used to receive;
* results.json carries the global-mean reference RMSE of the same users.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from recdata.dataset import dataset_meta, load_split
from schemas import common
from schemas import plaintext as plain_schema
from schemas.config import model_spec
from schemas.validation import MessageError
from simulations.client_app import simulated_user_mod
from simulations.config import compose_config, to_app_config
from simulations.results import global_mean_reference
from strategies.exchange import content_nbytes, node_waves
from tests.sim_utils import SMALL, cached_run, run_sim

OVERRIDES = SMALL + ["dataset.n_items=400", "clients_per_round=3", "rounds=2", "train.eval_clients=2",
                     "strategy=plaintext", "model=mf", "train.ranking=false"]  # no candidate rows: O(test items)


def test_a_virtual_node_runs_each_message_as_the_assigned_user_it_names():
    """Flower gave this node partition-id 7; the server assigns it users 3 and 9 (a shared node,
    ``simulation.node_pool``). Each message runs as the user it names, on that user's own part of the
    node's state; a user never assigned here, or a malformed addressee, is refused."""
    cfg = to_app_config(compose_config(SMALL))
    mod = simulated_user_mod(cfg)
    context = Context(run_id=1, node_id=55, node_config={"partition-id": 7}, state=RecordDict(), run_config={})
    seen: list[tuple[int, int]] = []

    def handler(msg: Message, ctx: Context) -> Message:
        assert common.SIMULATED_USER not in msg.content  # handlers see the protocol's content only
        count = int(ctx.state["count"]["n"]) + 1 if "count" in ctx.state else 1
        ctx.state["count"] = ConfigRecord({"n": count})  # what handlers store must reach the node's own state
        seen.append((int(ctx.node_config["partition-id"]), count))
        return msg

    def send(content: RecordDict, message_type: str = common.EVAL_REQUEST) -> None:
        # a message as the node receives it (Flower sets this metadata; no ServerApp runs here)
        metadata = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=55, reply_to_message_id="",
                            group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
        mod(Message(content=content, metadata=metadata), context, handler)

    request = common.eval_request_message
    send(request(1))  # naming no user: Flower's own id and the node's whole state
    send(common.addressed(common.assign_message(3, 12), 3), common.REGISTER)
    send(common.addressed(request(1), 3))
    send(common.assign_message(9, 12), common.REGISTER)  # an assignment names its user itself
    send(common.addressed(request(1), 9))
    send(common.addressed(request(2), 3))
    assert seen == [(7, 1), (3, 1), (3, 2), (9, 1), (9, 2), (3, 3)]
    assert int(context.state["count"]["n"]) == 1  # the unaddressed message's own entry, apart from the users'
    with pytest.raises(MessageError, match="not assigned user 4"):
        send(common.addressed(request(1), 4))
    with pytest.raises(MessageError, match="assigns user 4"):
        send(common.addressed(common.assign_message(4, 12), 3), common.REGISTER)
    with pytest.raises(MessageError, match="user"):
        send(common.addressed(request(1), 12))  # outside the population
    bad = request(1)
    bad[common.SIMULATED_USER] = ConfigRecord({"user": 3, "also": 1})
    with pytest.raises(MessageError, match="exactly"):
        send(bad)
    assert len(seen) == 6


def test_a_phase_reaches_each_node_at_most_once_per_wave():
    """Users on shared nodes go out in waves: every user once, no node twice in a wave, order kept,
    as many waves as the busiest node has users (Flower would otherwise run two of a node's messages
    at once on one Context)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        users = rng.choice(1000, size=int(rng.integers(1, 40)), replace=False).tolist()
        node_of_user = {u: int(rng.integers(0, 5)) for u in users}
        waves = node_waves(users, node_of_user)
        assert sorted(u for w in waves for u in w) == sorted(users)
        assert all(len({node_of_user[u] for u in w}) == len(w) for w in waves)
        assert all(w == [u for u in users if u in w] for w in waves)
        assert len(waves) == max(list(node_of_user.values()).count(n) for n in set(node_of_user.values()))
    assert node_waves([4, 7, 9], {4: 0, 7: 1, 9: 2}) == [[4, 7, 9]]  # one node each: one wave, as before
    assert node_waves([], {}) == []


@pytest.mark.slow
def test_only_sampled_and_evaluated_users_nodes_are_messaged_and_evaluation_sends_test_rows(tmp_path):
    res, grid = run_sim(tmp_path, OVERRIDES, record=True)
    assert grid is not None
    cfg = to_app_config(compose_config(OVERRIDES))
    meta = dataset_meta(cfg)
    split = load_split(cfg)

    assigned = {node: common.parse_register_reply(c, meta.n_users)
                for t, node, c in grid.sent if t == common.REGISTER}
    registrations = [node for t, node, _c in grid.sent if t == common.REGISTER]
    assert len(registrations) == len(set(registrations)), "a node was assigned twice"
    evaluated = sorted({assigned[node] for t, node, _c in grid.sent if t == common.EVAL_REQUEST})
    trained = sorted({assigned[node] for t, node, _c in grid.sent if t == plain_schema.REQUEST})
    assert len(evaluated) == 2 and 3 <= len(trained) <= 6
    # every message went to a node whose user is sampled or evaluated, and only those were registered
    assert {node for _t, node, _c in grid.sent} == set(assigned)
    assert sorted(assigned.values()) == sorted(set(evaluated) | set(trained))
    assert len(assigned) < meta.n_users

    record = res["records"][-1]
    rnd = record["round"]
    assert record["clients"] == 3 and record["eval_clients"] == 2 and np.isfinite(record["test_rmse"])
    # Evaluation download per user = item request + rows of its distinct test items + dense parameters.
    spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
    dense = np.zeros(spec.dense_size, np.float32)
    expected = [content_nbytes(common.eval_request_message(rnd))
                + content_nbytes(plain_schema.update_message(
                    rnd, np.zeros((len(np.unique(split.user(u).test_items)), spec.row_dim), np.float32), dense))
                for u in evaluated]
    assert record["eval_bytes_down_per_client"] == pytest.approx(sum(expected) / len(expected))
    full_model = content_nbytes(plain_schema.model_content(np.zeros((meta.n_items, spec.row_dim), np.float32), dense))
    assert record["eval_bytes_down_per_client"] < full_model / 10

    reference = res["final"]["reference_global_mean"]
    assert reference["users"] == 2
    assert reference["test_rmse"] == pytest.approx(global_mean_reference(split, evaluated)["test_rmse"])


@pytest.mark.parametrize("strategy", ["secemb", "secfedrec"])
def test_two_server_users_never_name_or_count_their_test_items(strategy):
    """Their protocols hide which items a user rated, so an item request from server 0 is refused."""
    from clients.environment import client_env
    from clients.evaluation import on_eval_request, on_evaluate_rows

    cfg = to_app_config(compose_config(SMALL + [f"strategy={strategy}", "model=mf"]))
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    env = client_env(cfg, context)
    with pytest.raises(MessageError, match="do not name their test items"):
        on_eval_request(common.eval_request_message(1), context, env)
    rows = plain_schema.update_message(1, np.zeros((1, env.spec.row_dim), np.float32),
                                       np.zeros(env.spec.dense_size, np.float32))
    with pytest.raises(MessageError, match="do not name their test items"):  # no row count check that could leak
        on_evaluate_rows(rows, context, env)


@pytest.mark.slow
def test_users_sharing_two_nodes_train_as_on_nodes_of_their_own(tmp_path, tmp_path_factory):
    """12 users on 2 virtual nodes (6 sampled a round: each phase goes out in waves of one message per
    node) give the same test RMSE, HR@10, train loss and metered bytes, round by round, as one node per
    user. SecEmb: its users keep state between phases and evaluate through their own retrieval. The
    one-node-per-user run is tests/test_secure_protocols.py's NCF twin (shared through ``cached_run``)."""
    over = SMALL + ["dataset.n_user_features=5", "dataset.n_item_features=4", "model=ncf", "rounds=2",
                    "train.eval_every=1", "train.ranking_negatives=20", "strategy=secemb", "strategy.m_prime=6"]
    alone = cached_run(tmp_path_factory, over)
    shared, grid = run_sim(tmp_path, over + ["simulation.node_pool=2"], record=True)
    assert grid is not None and len({node for _t, node, _c in grid.sent}) == 2
    keys = ("clients", "test_rmse", "hr@10", "train_loss", "bytes_up_per_client", "bytes_down_per_client")
    assert len(shared["records"]) == len(alone["records"]) == 2
    for mine, theirs in zip(shared["records"], alone["records"]):
        for key in keys:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key


class _ConnectingGrid:
    """Stands in for the grid's node list only (what ``_wait_for_nodes`` reads): node k has connected by
    the k-th poll, up to ``connected`` nodes."""

    def __init__(self, connected: int) -> None:
        self.connected, self.polls = connected, 0

    def get_node_ids(self) -> list[int]:
        self.polls += 1
        return list(range(min(self.polls, self.connected)))


def test_a_run_waits_for_its_nodes_says_so_and_stops_with_a_reason(monkeypatch, caplog):
    """A deployment's run waits up to ``simulation.register_timeout`` for one node per user: it proceeds once
    they are there, logs progress while it waits, and without them stops with a SetupError saying what
    to start (one line for the entry point), not a traceback."""
    from recdata.dataset import DatasetMeta
    from strategies import base
    from strategies.plaintext import PlaintextStrategy

    monkeypatch.setattr(base, "NODE_WAIT_PROGRESS_S", 1.0)
    cfg = to_app_config(compose_config(["simulation.register_timeout=3.5"]))
    strategy = PlaintextStrategy(cfg, DatasetMeta("toy", 3, 7, 0, 0))
    assert strategy._wait_for_nodes(_ConnectingGrid(3), 3) == [0, 1, 2]
    with caplog.at_level("INFO", logger="secrec.strategy"), pytest.raises(base.SetupError) as err:
        strategy._wait_for_nodes(_ConnectingGrid(2), 3)
    assert "only 2 of the 3 nodes" in str(err.value) and "one SuperNode per user" in str(err.value)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for nodes")]
    assert len(progress) >= 2 and all(line.startswith("waiting for nodes: 2 of 3 connected") for line in progress)
