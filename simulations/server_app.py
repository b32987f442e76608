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

from simulations.config import compose_config, to_app_config
from recdata.dataset import dataset_meta
from simulations.registry import build_strategy
from simulations.results import final_summary, write_results
from schemas.config import AppConfig

log = logging.getLogger("secrec")


def run_server(grid: Grid, cfg: AppConfig, out_dir: str) -> dict[str, Any]:
    """Run one federated training and write its results into ``out_dir``."""
    start = time.perf_counter()
    meta = dataset_meta(cfg)
    strategy = build_strategy(cfg, meta)
    log.info("strategy=%s model=%s dataset=%s users=%d items=%d rounds=%d clients/round=%d",
             cfg.strategy.name, cfg.model.name, meta.name, meta.n_users, meta.n_items,
             cfg.rounds, cfg.clients_per_round)
    run = strategy.start(grid)
    wall = time.perf_counter() - start
    path = write_results(out_dir, cfg, run, wall)
    summary = final_summary(run["records"])
    log.info("final test RMSE %s after %d rounds, %.1f s; results in %s", summary["final_test_rmse"],
             summary["rounds"], wall, path)
    return run


def make_server_app(cfg: AppConfig, out_dir: str) -> ServerApp:
    """A ServerApp bound to a composed config (used by ``python -m simulations.run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, out_dir)

    return app


def cfg_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """Compose conf/ with the Hydra overrides carried in the Flower run config."""
    return to_app_config(compose_config(str(run_config.get("overrides", ""))))


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("secrec").setLevel(logging.INFO)
    cfg = cfg_from_run_config(dict(context.run_config))
    out_dir = cfg.output_dir or str(context.run_config.get("output-dir", "outputs/flwr-run"))
    run_server(grid, cfg, out_dir)
