"""One request/reply phase between the ServerApp and a set of users.

Every protocol round is a short sequence of phases. A phase sends one message
per user, waits for the replies, measures the bytes actually sent each way
(the deflated Flower objects of each message's content, i.e. what goes over
the wire), validates each reply with the protocol's parser and leaves out,
with a log line, any user whose reply is an error or fails validation, so the
round goes on without it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from schemas.sizes import content_nbytes  # noqa: F401  (re-exported: the one copy lives in schemas)
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger("secrec.exchange")
T = TypeVar("T")


@dataclass
class Meter:
    """Bytes down/up per user and time spent waiting, for one round."""

    down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    client_seconds: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    wait_seconds: float = 0.0
    dropped: dict[int, str] = field(default_factory=dict)

    def reset(self) -> None:
        self.down.clear()
        self.up.clear()
        self.client_seconds.clear()
        self.dropped.clear()
        self.wait_seconds = 0.0


class Exchange:
    """Sends phases of a protocol to users (partition ids) through a Flower Grid.

    Several users may share a node (a pooled virtual node, ``simulation.node_pool``). Flower's simulation
    engine can run two messages for one node at once on the same stored ``Context``, and the later
    writer would lose the other's state, so a phase goes out in waves with at most one message per node,
    and each reply is matched to its user by the id of the message it answers, not by its node.
    """

    def __init__(self, grid: Grid, node_of_user: Mapping[int, int], timeout: float | None, meter: Meter) -> None:
        self.grid = grid
        self.node_of_user = dict(node_of_user)
        self.timeout = timeout
        self.meter = meter

    def addressed(self, user: int, content: RecordDict) -> RecordDict:
        """What goes over the wire to ``user``'s node (a pooled node also needs the user named)."""
        return content

    def phase(
        self,
        message_type: str,
        contents: Mapping[int, RecordDict],
        group_id: str,
        parse: Callable[[int, RecordDict], T],
        *,
        count_bytes: bool = True,
    ) -> dict[int, T]:
        """Send ``contents[user]`` to each user and return the parsed valid replies.

        ``parse(user, content)`` validates one reply and returns the protocol's
        view of it; a ``ValueError`` from it drops that user for the round.
        """
        user_of_message: dict[str, int] = {}
        replies: list[Message] = []
        for wave in node_waves(contents, self.node_of_user):
            messages = []
            for user in wave:
                if count_bytes:  # the protocol's bytes: a simulation-only addressee record is not counted
                    self.meter.down[user] += content_nbytes(contents[user])
                messages.append(Message(content=self.addressed(user, contents[user]),
                                        dst_node_id=self.node_of_user[user], message_type=message_type,
                                        group_id=group_id))
            start = time.perf_counter()
            replies.extend(self.grid.send_and_receive(messages, timeout=self.timeout))
            self.meter.wait_seconds += time.perf_counter() - start
            # the grid gave each pushed message its id
            user_of_message.update((m.metadata.message_id, user) for m, user in zip(messages, wave))
        parsed: dict[int, T] = {}
        for reply in replies:
            user = user_of_message.get(reply.metadata.reply_to_message_id)
            if user is None or self.node_of_user.get(user) != reply.metadata.src_node_id:
                log.warning("ignoring a reply from unexpected node %s", reply.metadata.src_node_id)
                continue
            if reply.has_error():
                self.drop(user, f"client error: {reply.error.reason}")
                continue
            if count_bytes:
                self.meter.up[user] += content_nbytes(reply.content)
            try:
                parsed[user] = parse(user, reply.content)
            except ValueError as exc:
                self.drop(user, f"rejected {message_type} reply: {exc}")
        for user in contents:
            if user not in parsed and user not in self.meter.dropped:
                self.drop(user, f"no reply to {message_type}")
        return parsed

    def drop(self, user: int, reason: str) -> None:
        log.warning("round continues without user %d: %s", user, reason)
        self.meter.dropped[user] = reason


def node_waves(users: Iterable[int], node_of_user: Mapping[int, int]) -> list[list[int]]:
    """``users`` in waves with at most one user per node: a user's wave is how many earlier users share its node."""
    waves: list[list[int]] = []
    seen: dict[int, int] = defaultdict(int)
    for user in users:
        node = node_of_user[user]
        if seen[node] == len(waves):
            waves.append([])
        waves[seen[node]].append(user)
        seen[node] += 1
    return waves


def client_seconds_of(meter: Meter, user: int, seconds: float) -> None:
    """Accumulate a user's self-reported compute time over the phases of a round."""
    meter.client_seconds[user] += seconds


def summarize_meter(meter: Meter, users: list[int]) -> dict[str, Any]:
    """Mean bytes per participating user and compute seconds of the round (None when no user reported any)."""
    n = max(len(users), 1)
    timed = bool(meter.client_seconds)  # secure strategies receive seconds only with simulation.telemetry
    return {
        "bytes_down_per_client": sum(meter.down.get(u, 0) for u in users) / n,
        "bytes_up_per_client": sum(meter.up.get(u, 0) for u in users) / n,
        "client_seconds_mean": sum(meter.client_seconds.get(u, 0.0) for u in users) / n if timed else None,
        "client_seconds_max": max((meter.client_seconds.get(u, 0.0) for u in users), default=0.0) if timed else None,
        "dropped": len(meter.dropped),
    }
