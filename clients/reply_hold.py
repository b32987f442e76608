"""A device's reply leaves a fixed time after its work began, whatever the work took.

Why: a user's local work grows with its rating count (more rows to train, more
ratings to evaluate), and when a reply reaches the SuperLink is visible to
server 0's host and to the network even though the reply's own stamps are
neutral (:func:`simulations.client_app.untimed_reply`). Holding every reply
until ``hold`` seconds after the handler started makes that arrival time the
same for every user, as long as no device's work takes longer than ``hold``.
A reply that overruns leaves at once and the device logs it locally (nothing
about it travels): its operator should raise the hold.

The hold is the device's own choice: its node config ``reply-hold-seconds``
wins over the run config's ``simulation.reply_hold`` (which server 0's operator
writes). It is for deployments; in a simulation it only slows the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from schemas.config import MAX_REPLY_HOLD_S, AppConfig

log = logging.getLogger("secrec.client")

REPLY_HOLD_NODE_KEY = "reply-hold-seconds"


def reply_hold_seconds(node_config: Mapping[str, Any], cfg: AppConfig) -> float:
    """The hold this device applies: its node config's value if set, else the run config's."""
    if REPLY_HOLD_NODE_KEY not in node_config:
        return float(cfg.simulation.reply_hold)
    value = node_config[REPLY_HOLD_NODE_KEY]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"node config {REPLY_HOLD_NODE_KEY}: expected seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"node config {REPLY_HOLD_NODE_KEY}: expected seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_REPLY_HOLD_S):
        raise ValueError(f"node config {REPLY_HOLD_NODE_KEY}: must be 0..{MAX_REPLY_HOLD_S:g} seconds, got {value!r}")
    return seconds


@contextmanager
def held(seconds: float, what: str, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Run the block, then wait until ``seconds`` after it began (also when it raised: a failure's reply is
    held too). ``what`` names the work in the device's overrun warning."""
    start = clock()
    try:
        yield
    finally:
        left = seconds - (clock() - start)
        if left > 0:
            sleep(left)
        elif seconds > 0 and left < 0:
            log.warning("%s took %.3f s, more than this device's reply hold of %.3f s: its reply leaves when done, "
                        "so its arrival time shows the work; raise the hold", what, seconds - left, seconds)
