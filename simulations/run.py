"""``python -m simulations.run [hydra overrides]``: run a Flower simulation from conf/.

Composes the config with Hydra (so ``--multirun`` sweeps and ``hydra.run.dir``
work), starts Flower's simulation engine with one virtual SuperNode per user,
and writes records.jsonl (as rounds end), results.json and the plot into the
Hydra run directory. ``checkpoint_every=K`` checkpoints there every K rounds;
``hydra.run.dir=<that folder> resume=true`` (same overrides, ``rounds`` may
grow) continues from the last checkpoint.

User errors (a bad config value, an unknown key or option, a missing dataset,
a folder that cannot be resumed, server 1 gone) print one line naming the
problem and exit with status 1, without a traceback: a traceback tells a user
nothing they can act on. Set ``HYDRA_FULL_ERROR=1`` to see the traceback
anyway. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from functools import partial
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from recdata import DatasetError
from schemas.config import AppConfig, ConfigError
from simulations.checkpoint import ResumeError, check_resumable, latest_checkpoint_head, prepare_simulation
from simulations.config import _one_line, to_app_config
from strategies.base import SetupError
from twoserver.link import Server1Client, Server1Unavailable

log = logging.getLogger("secrec")
LARGE_POPULATION = 20_000  # above this, one virtual node per user makes Flower 1.41's polling the bottleneck

# Mistakes a user can fix; they get one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DatasetError, ResumeError, Server1Unavailable,
                                                SetupError, HydraException, OmegaConfBaseException)


_USER_TRACE = "SECREC_USER_FULL_ERROR"  # set by cli() when the user asked for tracebacks (HYDRA_FULL_ERROR)


class RunStopped(RuntimeError):
    """The run ended early (e.g. server 1 died); its finished rounds are in the run folder."""


def simulate(cfg: AppConfig, out_dir: str) -> dict[str, Any]:
    """Run the configured protocol in Flower's simulation engine (or, with ``engine=batched``, on the
    batched engine); return what the server reported."""
    from recdata.dataset import dataset_meta

    if cfg.engine == "batched":
        return simulate_batched(cfg, out_dir)
    cfg = prepare_simulation(cfg, out_dir)
    if cfg.resume:  # refuse a wrong resume here, before Flower starts, so the message stays one line
        check_resumable(cfg, latest_checkpoint_head(out_dir))
    meta = dataset_meta(cfg)  # a missing or corrupt dataset is reported before Flower and Ray start
    Server1Client.check_config(cfg.strategy)  # and so is a server 1 link that cannot be made (TLS files, address)

    from flwr.simulation import run_simulation

    from simulations.client_app import make_client_app
    from simulations.server_app import make_server_app
    from strategies.base import simulated_node_count

    sim = cfg.simulation
    backend_config = flower_backend_config(cfg)
    if sim.node_pool is None and meta.n_users > LARGE_POPULATION:
        log.warning("%d users on as many virtual nodes: Flower polls every node for every message, which "
                    "slows each round with the population; simulation.node_pool=200 shares nodes "
                    "(README, Sweeps)", meta.n_users)
    outcome: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=make_server_app(cfg, out_dir, outcome), client_app=make_client_app(cfg),
                       num_supernodes=simulated_node_count(cfg, meta.n_users), backend_name=sim.backend,
                       backend_config=backend_config)
    if outcome.get("error"):
        raise RunStopped(outcome["error"])
    if outcome.get("stopped"):
        raise RunStopped(f"{outcome['stopped']}; results so far in {out_dir}")
    return outcome


def flower_backend_config(cfg: AppConfig) -> dict[str, Any]:
    """The Ray backend config of a Flower simulation of ``cfg``: each virtual client's CPUs, and a local Ray
    on this machine's cores, or the existing cluster ``simulation.ray_address`` (else ``$RAY_ADDRESS``) names.
    The entry point and the benchmarks that run Flower themselves (with extra mods or handlers) share it."""
    sim = cfg.simulation
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": float(sim.num_cpus_per_client), "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False, "log_to_driver": True},
    }
    ray_address = sim.ray_address or os.environ.get("RAY_ADDRESS")
    if ray_address:  # join an existing Ray cluster: it has its own CPUs (Ray refuses num_cpus when joining)
        backend_config["init_args"] = {"address": ray_address, "log_to_driver": True}
        log.info("simulation runs on the Ray cluster at %s", ray_address)
    return backend_config


def simulate_batched(cfg: AppConfig, out_dir: str) -> dict[str, Any]:
    """``engine=batched``: every round's users trained as one torch batch in this process (engine/), no
    Flower, no Ray, no messages; writes records.jsonl, results.json and the plot as the Flower path does.

    ``checkpoint_every=K`` checkpoints the driver's whole state (server and every user's private state)
    every K rounds, and ``resume=true`` continues from the last one, as on the Flower path (DESIGN
    "Nothing lost"): a 200-epoch DeepFM cell is about an hour here."""
    import time

    from engine.driver import StateMismatch
    from engine.loop import run_batched
    from engine.registry import get_driver
    from recdata.dataset import dataset_meta, load_split
    from simulations.checkpoint import NOT_RESUMABLE, open_run_folder, refuse_unsupported, save_checkpoint
    from simulations.results import append_record, global_mean_reference, log_final, write_results

    refuse_unsupported(cfg)
    checkpointable = get_driver(cfg.protocol).checkpointable
    if (cfg.resume or cfg.checkpoint_every) and not checkpointable:
        reason = NOT_RESUMABLE.get(cfg.strategy.name, f"strategy={cfg.strategy.name} has no batched checkpoint")
        if cfg.resume:
            raise ResumeError(f"resume: {reason}")
        log.warning("engine=batched keeps no checkpoints of strategy=%s (%s); checkpoint_every=%d is ignored "
                    "(rounds are still appended to records.jsonl)", cfg.strategy.name, reason, cfg.checkpoint_every)
    import torch

    from threadpoolctl import ThreadpoolController

    # One intra-op thread: a round's tensors are small, and torch's default pool (one thread per core)
    # spins against itself and any other job; measured 28x slower per round at load 5 on 2 cores
    # (benchmarks/bench_batched.py --threads), identical results either way. numpy's BLAS (OpenBLAS, one
    # thread per core) likewise: two Table 3 SVD cells side by side (--jobs 2) took 6.7x longer with it.
    torch.set_num_threads(1)
    ThreadpoolController().limit(limits=1, user_api="blas")  # for the rest of the process, as torch's setting
    start = time.perf_counter()
    meta = dataset_meta(cfg)
    resume = open_run_folder(cfg, out_dir)
    if resume is not None:
        if resume.lost:  # the checkpoint holds the users' private state too, so the redone rounds are the same rounds
            log.info("rounds %d..%d ran after the last checkpoint and are redone", resume.lost[0], resume.lost[-1])
        log.info("resuming %s from the checkpoint of round %d in %s", cfg.strategy.name, resume.checkpoint.round,
                 out_dir)
    log.info("engine=batched strategy=%s model=%s dataset=%s users=%d items=%d rounds=%d clients/round=%d",
             cfg.strategy.name, cfg.model.name, meta.name, meta.n_users, meta.n_items, cfg.rounds,
             cfg.clients_per_round)
    split = load_split(cfg)
    # Only the checkpoint: the rounds are in records.jsonl already, and rewriting results.json and its plot
    # at each checkpoint, as the Flower path does (where a round takes seconds), would slow short rounds.
    on_checkpoint = partial(save_checkpoint, out_dir, cfg=cfg) if checkpointable else None
    start_from = None if resume is None else (resume.checkpoint.round, resume.checkpoint.arrays, resume.prior,
                                              resume.released)
    try:
        run = run_batched(cfg, split, meta, on_round=lambda record: append_record(out_dir, record),
                          resume=start_from, on_checkpoint=on_checkpoint)
    except StateMismatch as err:
        raise ResumeError(f"the checkpoint in {out_dir} does not fit this run: {err}") from err
    run["reference_global_mean"] = global_mean_reference(split, run.pop("evaluated_users"))
    wall = time.perf_counter() - start
    path = write_results(out_dir, cfg, run, wall)
    log_final(run, wall, path)
    return run


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state database set-up chatter
    logging.getLogger("secrec").setLevel(logging.INFO)
    try:
        app_cfg = to_app_config(cfg)
        simulate(app_cfg, app_cfg.output_dir or HydraConfig.get().runtime.output_dir)
    except (*USER_ERRORS, RunStopped) as exc:
        # Reported here, not by Hydra: Hydra would first write "Error executing job with overrides ...".
        # SystemExit is not an Exception, so Hydra lets it through untouched.
        if os.environ.get(_USER_TRACE):
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        sys.exit(1)


def error_line(exc: BaseException) -> str:
    """One line naming the problem (Hydra's and OmegaConf's multi-line messages folded)."""
    if isinstance(exc, (HydraException, OmegaConfBaseException)) and not isinstance(exc, ConfigError):
        return _one_line(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def cli(argv: list[str] | None = None) -> int:
    """Run :func:`main`; print a user error as one line on stderr and return 1 (0 on success).

    Hydra prints its own (multi-line) report of composition errors unless
    ``HYDRA_FULL_ERROR`` is set, in which case it re-raises; so it is set here
    for Hydra, and the exception is reported below in one line. A user who set
    ``HYDRA_FULL_ERROR`` themselves gets the full traceback, as Hydra promises.
    """
    user_wants_trace = bool(os.environ.get("HYDRA_FULL_ERROR"))
    if user_wants_trace:
        os.environ[_USER_TRACE] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        main()
    except (*USER_ERRORS, RunStopped) as exc:
        if user_wants_trace:
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
