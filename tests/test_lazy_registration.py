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
from strategies.exchange import content_nbytes
from tests.sim_utils import SMALL, run_sim

OVERRIDES = SMALL + ["dataset.n_items=400", "clients_per_round=3", "rounds=2", "train.eval_clients=2",
                     "strategy=plaintext", "model=mf", "train.ranking=false"]  # no candidate rows: O(test items)


def test_a_virtual_node_simulates_the_user_it_was_assigned_and_only_that_one():
    """Flower gave this node partition-id 7; the server assigns user 3, which every later handler sees."""
    cfg = to_app_config(compose_config(SMALL))
    mod = simulated_user_mod(cfg)
    context = Context(run_id=1, node_id=55, node_config={"partition-id": 7}, state=RecordDict(), run_config={})
    seen: list[int] = []

    def handler(msg: Message, ctx: Context) -> Message:
        seen.append(int(ctx.node_config["partition-id"]))
        ctx.state["touched"] = ConfigRecord({"n": 1})  # what handlers store must reach the node's own state
        return msg

    def send(content: RecordDict, message_type: str) -> None:
        # a message as the node receives it (Flower sets this metadata; no ServerApp runs here)
        metadata = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=55, reply_to_message_id="",
                            group_id="", created_at=0.0, ttl=60.0, message_type=message_type)
        mod(Message(content=content, metadata=metadata), context, handler)

    send(common.eval_request_message(1), common.EVAL_REQUEST)  # before any assignment: Flower's own id
    send(common.assign_message(3, 12), common.REGISTER)
    send(common.eval_request_message(1), common.EVAL_REQUEST)
    assert seen == [7, 3, 3] and "touched" in context.state
    send(common.assign_message(3, 12), common.REGISTER)  # the same assignment again is harmless
    with pytest.raises(MessageError, match="already simulates user 3"):
        send(common.assign_message(4, 12), common.REGISTER)


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
