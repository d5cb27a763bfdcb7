"""``PartitionSampler``: reproducible client sampling by partition id.

Nodes are chosen by *partition id* with a seeded RNG, so the same seed samples the same clients
whatever random node ids the SuperLink hands out; a node whose partition claim cannot be used
is refused and never sampled.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.app import Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from clipfed.defense.validation import parse_partition_id
from clipfed.streams import Stream, stream_rng

if TYPE_CHECKING:
    from clipfed.config import RunConfig


class PartitionSampler:
    """Maps node ids to partition ids once (a QUERY round), then samples partitions by seed.

    Attributes:
        node_of: Partition id -> the node id that holds it (latest claim).
        offline: The partitions whose node was not connected at the latest ``sample``.
        refused: Node id -> ``{"node", "partition", "reason"}`` for each node whose partition
            claim was refused; such a node is never sampled.
    """

    def __init__(self, cfg: RunConfig, poll_seconds: float = 1.0) -> None:
        """Read the sampling keys from ``cfg``.

        Args:
            cfg: The run config: ``seed``, ``num-clients``, ``clients-per-round`` (the sample
                size) and ``round-timeout`` (seconds to wait for nodes and QUERY replies).
            poll_seconds: Seconds between checks while waiting for the first round's nodes.
        """
        self.seed = cfg.seed
        self.num_clients = cfg.num_clients
        self.sample_size = cfg.clients_per_round
        self.timeout = cfg.round_timeout
        self.poll_seconds = poll_seconds
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.offline: list[int] = []  # partitions whose node left the SuperLink
        self.refused: dict[int, dict[str, object]] = {}  # node id -> why its partition claim was refused

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(nodes)} of num-clients={self.num_clients} SuperNodes connected after "
                    f"{self.timeout:.0f} s: run with --federation-config 'num-supernodes="
                    f"{self.num_clients}' (simulation) or start {self.num_clients} SuperNodes"
                )
            log(INFO, "Waiting for SuperNodes: %d of %d connected", len(nodes), self.num_clients)
            time.sleep(self.poll_seconds)
        return nodes

    def discover(self, grid: Grid) -> list[int]:
        """Ask every node we have not met for its partition id; return the nodes online now.

        Only the first round waits for all ``num-clients`` nodes; later rounds go on with the
        nodes that are still connected (a dead SuperNode drops out of the SuperLink's list), and
        a node that joins later (a restarted SuperNode) is asked for its partition id. A node
        whose answer cannot be used (no partition id, one outside ``0..num-clients-1``, or one that
        a node still online already holds) is refused: logged, listed in ``refused`` (and so in
        every round's report), never sampled; the run goes on without it.

        Args:
            grid: Flower's grid.

        Returns:
            The node ids connected now, sorted.

        Raises:
            RuntimeError: On the first call, fewer than ``num-clients`` nodes connected within
                ``round-timeout`` seconds.
        """
        nodes = sorted(grid.get_node_ids()) if self.node_of else self._wait_for_nodes(grid)
        known = set(self.node_of.values()) | set(self.refused)
        unknown = [n for n in nodes if n not in known]
        if not unknown:
            return nodes
        queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown]
        online = set(nodes)
        for reply in sorted(grid.send_and_receive(queries, timeout=self.timeout),
                            key=lambda m: m.metadata.src_node_id):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "Node %d did not report its partition: %s", node, reply.error.reason)
                continue
            pid, reason = self._claimed_partition(reply, online)
            if reason is not None:
                self.refused[node] = {"node": node, "partition": pid, "reason": reason}
                log(WARNING, "Refused node %d: %s", node, reason)
                continue
            assert pid is not None
            if pid in self.node_of:
                log(WARNING, "Partition %d moved from node %d (offline) to node %d (a restarted SuperNode)",
                    pid, self.node_of[pid], node)
            self.node_of[pid] = node
        return nodes

    def _claimed_partition(self, reply: Message, online: set[int]) -> tuple[int | None, str | None]:
        """The partition id a QUERY reply claims, or why the claim is refused.

        Returns:
            ``(partition id or None, None)`` for a usable claim, ``(claimed id or None, reason)``
            for a refused one.
        """
        try:
            value = reply.content["metrics"]["partition-id"]
        except KeyError:
            return None, "its reply carries no partition-id metric"
        pid, problem = parse_partition_id(value, self.num_clients)
        if problem is not None or pid is None:
            return pid, problem
        holder = self.node_of.get(pid)
        if holder is not None and holder in online:
            return pid, f"partition-id={pid} is already held by node {holder}, which is online"
        return pid, None

    def sample(self, grid: Grid, server_round: int) -> dict[int, int]:
        """This round's clients: ``min(clients-per-round, online partitions)`` of the online
        partitions, drawn without replacement by ``stream_rng(seed, Stream.SAMPLING, round)``.

        Args:
            grid: Flower's grid (``discover`` is run on it first).
            server_round: The round number; with the seed it fixes the draw.

        Returns:
            ``{node id: partition id}``, ordered by partition id.

        Raises:
            RuntimeError: No node has reported a usable partition id (see ``discover`` for the
                first round's wait).
        """
        online = set(self.discover(grid))
        if not self.node_of:  # a run in which no client can train must fail, not "complete" empty
            raise RuntimeError(
                f"round {server_round}: none of the {len(online)} connected SuperNodes reported its "
                f"partition id within round-timeout={self.timeout:g} s ({len(self.refused)} refused); "
                "a ClientApp's first start can take longer than that: raise round-timeout")
        partitions = sorted(p for p, node in self.node_of.items() if node in online)
        self.offline = sorted(p for p, node in self.node_of.items() if node not in online)
        if self.offline:
            log(WARNING, "Round %d: partitions %s are offline", server_round, self.offline)
        chosen = draw(self.seed, server_round, partitions, self.sample_size)
        log(INFO, "configure_train: sampled partitions %s", chosen)
        return {self.node_of[p]: p for p in chosen}


def draw(seed: int, server_round: int, partitions: list[int], sample_size: int) -> list[int]:
    """The partitions sampled in ``server_round`` among ``partitions`` (sorted): a pure function
    of the seed, so a benchmark can tell in advance which round samples which attackers."""
    rng = stream_rng(seed, Stream.SAMPLING, server_round)
    size = min(sample_size, len(partitions))
    return sorted(int(p) for p in rng.choice(partitions, size=size, replace=False))
