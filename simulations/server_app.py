"""The Flower ServerApp: compose the config, run the configured strategy, write results.

``app`` is what ``flwr run .`` loads (``[tool.flwr.app.components]``); it
reads Hydra overrides from the run config key ``overrides``.
:func:`make_server_app` builds the same app around an already composed config
for ``python -m simulations.run``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from recdata import DatasetError
from simulations.config import compose_config, to_app_config
from recdata.dataset import dataset_meta, load_split
from simulations.registry import build_strategy
from simulations.checkpoint import (NOT_RESUMABLE, ResumeError, open_run_folder, refuse_unsupported,
                                    save_checkpoint)
from simulations.results import append_record, global_mean_reference, log_final, write_results
from schemas.config import AppConfig, ConfigError
from strategies.base import SetupError
from twoserver.link import Server1Unavailable

log = logging.getLogger("secrec")


def run_server(grid: Grid, cfg: AppConfig, out_dir: str, simulated: bool = True) -> dict[str, Any]:
    """Run one federated training (or resume one) and write its results into ``out_dir``.

    Every round is appended to ``records.jsonl`` as it ends; every
    ``checkpoint_every`` rounds the strategy's state is checkpointed and
    results.json/the plot are refreshed, so a run that dies loses at most the
    rounds since its last checkpoint, and ``resume=true`` continues from it.

    ``simulated``: the nodes are virtual nodes of a ClientApp bound to ``cfg``
    (:func:`simulations.client_app.make_client_app`), so the server assigns
    users to nodes as they are first sampled instead of messaging every node
    before round 1, and the results carry the global-mean reference RMSE
    computed from the local dataset. ``False`` (``flwr run``, SuperNodes):
    every node is asked which user it holds; no reference is computed.
    """
    start = time.perf_counter()
    refuse_unsupported(cfg)
    meta = dataset_meta(cfg)
    strategy = build_strategy(cfg, meta)
    every = int(cfg.checkpoint_every)
    can_checkpoint = hasattr(strategy, "checkpoint_state") and hasattr(strategy, "restore_state")
    if every and not can_checkpoint:
        log.warning("strategy=%s keeps no checkpoints (%s); rounds are still appended to records.jsonl",
                    cfg.strategy.name, NOT_RESUMABLE.get(cfg.strategy.name, "no checkpoint_state"))
    first_round, prior, released = 1, [], None
    resume = open_run_folder(cfg, out_dir)
    if resume is not None:
        ckpt = resume.checkpoint
        strategy.restore_state(ckpt.arrays)  # type: ignore[attr-defined]
        first_round, prior, released = ckpt.round + 1, resume.prior, resume.released
        if resume.lost:  # rounds after the checkpoint are redone
            # Devices keep their private state per round (clients.private_state), so the users of a redone
            # round start it from their state before it, as the uninterrupted run did; a device without its
            # state folder starts from its initial state instead.
            log.warning("rounds %d..%d ran after the last checkpoint and are redone; their users start them "
                        "from the private state they kept from before them", resume.lost[0], resume.lost[-1])
        log.info("resuming %s from the checkpoint of round %d in %s", cfg.strategy.name, ckpt.round, out_dir)
    log.info("strategy=%s model=%s dataset=%s users=%d items=%d rounds=%d clients/round=%d",
             cfg.strategy.name, cfg.model.name, meta.name, meta.n_users, meta.n_items,
             cfg.rounds, cfg.clients_per_round)
    done: list[dict[str, Any]] = list(prior)
    reference: dict[str, Any] = {}

    def with_reference(run: dict[str, Any]) -> dict[str, Any]:
        """The run plus the global-mean reference (simulation only; computed once, when users are known)."""
        if simulated and not reference:
            reference.update(global_mean_reference(load_split(cfg), strategy.evaluation_users()))
        return {**run, "reference_global_mean": reference} if reference else run

    def on_round(record: dict[str, Any]) -> None:
        record.update(engine="flower", bytes_source="measured")  # the batched engine writes "batched"/"computed"
        append_record(out_dir, record)
        done.append(record)
        if every and can_checkpoint and record["round"] % every == 0:
            save_checkpoint(out_dir, record["round"], strategy.checkpoint_state(), cfg)  # type: ignore[attr-defined]
            write_results(out_dir, cfg, with_reference({"records": done, "checkpoint_round": record["round"]}),
                          time.perf_counter() - start)

    run = with_reference(strategy.start(grid, on_round=on_round, first_round=first_round, prior_records=prior,
                                        assign_users=simulated, released_records=released))
    wall = time.perf_counter() - start
    path = write_results(out_dir, cfg, run, wall)
    if run.get("stopped"):
        log.error("run stopped: %s; results so far in %s", run["stopped"], path)
    else:
        log_final(run, wall, path)
    return run


def make_server_app(cfg: AppConfig, out_dir: str, outcome: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to a composed config (used by ``python -m simulations.run``).

    ``outcome`` receives ``stopped`` (the run ended early, e.g. server 1 died)
    or ``error`` (a user error, one line) so the entry point can report it
    once and exit non-zero; Flower would otherwise log a traceback.
    """
    app = ServerApp()
    holder = outcome if outcome is not None else {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run = run_server(grid, cfg, out_dir)
        except USER_ERRORS as exc:
            holder["error"] = one_line(exc)
            log.error("error: %s", holder["error"])
            return
        if run.get("stopped"):
            holder["stopped"] = run["stopped"]

    return app


def cfg_from_run_config(run_config: dict[str, Any]) -> AppConfig:
    """Compose conf/ with the Hydra overrides carried in the Flower run config."""
    return to_app_config(compose_config(str(run_config.get("overrides", ""))))


# Mistakes a user can fix: the ServerApp logs them as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DatasetError, ResumeError, Server1Unavailable, SetupError)


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return ' '.join(lines) if lines else type(exc).__name__


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: compose the config from the run config's overrides, train, write results.

    A user error is logged as one line and ends the run (no traceback).
    Checkpoints and ``resume=true`` work as in ``python -m simulations.run``;
    here the devices keep their private state where their node config's
    ``device-state-dir`` says (the server never reads it).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else every log push to the SuperLink is logged (and pushed)
    logging.getLogger("secrec").setLevel(logging.INFO)
    try:
        cfg = cfg_from_run_config(dict(context.run_config))
        out_dir = cfg.output_dir or str(context.run_config.get("output-dir", "outputs/flwr-run"))
        run = run_server(grid, cfg, out_dir, simulated=False)
    except USER_ERRORS as exc:
        log.error("error: %s", one_line(exc))
        return
    if run.get("stopped"):
        log.error("run stopped: %s", run["stopped"])
