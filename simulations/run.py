"""``python -m simulations.run [hydra overrides]``: run a Flower simulation from conf/.

Composes the config with Hydra (so ``--multirun`` sweeps and ``hydra.run.dir``
work), starts Flower's simulation engine with one virtual SuperNode per user,
and writes results.json and the plot into the Hydra run directory.
"""

from __future__ import annotations

import logging
import os
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from simulations.config import to_app_config, validate_config
from schemas.config import AppConfig

log = logging.getLogger("secrec")


def simulate(cfg: AppConfig, out_dir: str) -> None:
    """Run the configured protocol in Flower's simulation engine."""
    from flwr.simulation import run_simulation

    from simulations.client_app import make_client_app
    from recdata.dataset import dataset_meta
    from simulations.server_app import make_server_app

    meta = dataset_meta(cfg)
    sim = cfg.simulation
    backend_config = {
        "client_resources": {"num_cpus": float(sim.num_cpus_per_client), "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False, "log_to_driver": True},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=make_server_app(cfg, out_dir), client_app=make_client_app(cfg),
                       num_supernodes=meta.n_users, backend_name=sim.backend, backend_config=backend_config)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_config(cfg)
    out_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    logging.getLogger("secrec").setLevel(logging.INFO)
    simulate(to_app_config(cfg), out_dir)


if __name__ == "__main__":
    main()
