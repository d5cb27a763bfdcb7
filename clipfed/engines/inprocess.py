"""An in-process engine: the real ServerApp ``main`` driving the real ClientApp in one process.

``InProcessGrid`` implements Flower's ``Grid`` by dispatching each message to
``clipfed.app.client_app.app`` with that node's ``Context`` (partition id in its node config), and
turns a handler exception into an error reply as a SuperNode would. No Ray, no serialisation:
the same strategy, client and evaluation code as ``flwr run`` (the same seed gives the same
metrics on both), in one process. Clients run one after another, so a round costs about what it
costs under Ray on 2 cores, without Ray's start-up; it suits sweeps, profiling and debugging.
Clients and server both run on the run config's ``device`` (every node context carries the run
config and no ``device`` of its own), so on a GPU machine they share its GPU, one at a time.
``flwr run`` stays the default way to run and is what the end-to-end tests exercise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from clipfed.app.client_app import app as client_app
from clipfed.config import RunConfig
from clipfed.flower_internals import SERVER_NODE_ID, assign_message_id, server_identity

NODE_ID_BASE = 1_000_000


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp contexts in this process (node i holds partition i)."""

    def __init__(self, cfg: RunConfig, threads: int = 1) -> None:
        self._run = Run.create_empty(run_id=1)
        self.contexts = {
            NODE_ID_BASE + pid: Context(
                run_id=1, node_id=NODE_ID_BASE + pid,
                node_config={"partition-id": pid, "num-partitions": cfg.num_clients, "num-threads": threads},
                state=RecordDict(), run_config=cfg.to_flower())
            for pid in range(cfg.num_clients)
        }
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(next(self._ids))
            assign_message_id(message, message_id)
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(code=0, reason=f"no node {message.metadata.dst_node_id}"), reply_to=message)
        try:
            return client_app(message, context)
        except Exception as err:  # a SuperNode turns a ClientApp exception into an error reply
            return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=message)


def run_inprocess(cfg: RunConfig, threads: int = 1) -> Path:
    """Run ``cfg`` through ``server_app.main`` on an ``InProcessGrid``; return the run folder.

    SIGINT, SIGTERM and SIGHUP raise ``launch.Interrupted`` here (in the main thread: a bench
    worker's too), so a run stopped from outside records ``interrupted`` and keeps its checkpoint
    to resume from, as a ``flwr run`` does; Python's default SIGTERM would end the process with
    the result still saying ``running``."""
    from clipfed.app.server_app import main
    from clipfed.engines.launch import interruptible
    from clipfed.runs.results import default_run_name

    if not cfg.run_name:
        cfg = cfg.model_copy(update={"run_name": default_run_name(cfg)})
    with interruptible(), server_identity():
        main(InProcessGrid(cfg, threads), Context(run_id=1, node_id=SERVER_NODE_ID, node_config={},
                                                  state=RecordDict(), run_config=cfg.to_flower()))
    return Path(cfg.out_dir) / cfg.run_name
