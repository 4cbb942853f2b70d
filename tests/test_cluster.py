"""rowrnn_keras.cluster: the processes of a run meet, check their launch, and watch each other.

Here the processes are threads of this one (the link needs neither JAX nor TensorFlow); test_jax
runs it in real training processes. A process's death is its sockets closing, as the kernel closes
them for a killed process.
"""

from __future__ import annotations

import queue
import socket
import threading

import pytest

from helpers import free_port
from rowrnn_keras.cluster import Link, join
from rowrnn_keras.config import Cluster
from runtime.errors import InputError

LAUNCH = {"epochs": 2}
WAIT_S = 20  # every wait here has a deadline


def start_cluster(processes: int, heartbeat_s: int = 20) -> tuple[list[Link], list[queue.Queue]]:
    """Every process of a run joined, each in a thread; each link's lost-process lines go to a queue."""
    port = free_port()
    lines = [queue.Queue() for _ in range(processes)]
    links: list[Link | None] = [None] * processes

    def run(index: int) -> None:
        cluster = Cluster(
            f"127.0.0.1:{port}", processes, index, connect_timeout_s=WAIT_S, heartbeat_timeout_s=heartbeat_s
        )
        links[index] = join(cluster, LAUNCH, on_lost=lines[index].put)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert all(links), "a process did not join"
    return links, lines


def die(link: Link) -> None:
    """What a killed process leaves: its connections closed, its heartbeat gone."""
    link.released.set()  # its own threads stop beating (and would not report)
    for peer in link.peers.values():
        peer.shutdown(socket.SHUT_RDWR)  # close() alone waits for its watcher's reader to let go
        peer.close()


def test_a_dead_process_is_named_to_every_other_process():
    links, lines = start_cluster(3)
    die(links[2])
    expected = "process 2 of 3 was lost (its connection closed); run every process again to resume from the last backup"
    assert lines[0].get(timeout=WAIT_S) == expected
    assert lines[1].get(timeout=WAIT_S) == expected  # relayed by process 0, not blamed on it
    for link in links[:2]:
        link.release()


def test_a_dead_process_0_is_named():
    links, lines = start_cluster(2)
    die(links[0])
    assert lines[1].get(timeout=WAIT_S).startswith("process 0 of 2 was lost (its connection closed)")


def test_a_process_that_stops_beating_is_lost_after_the_heartbeat_timeout():
    links, lines = start_cluster(2, heartbeat_s=2)
    links[1].released.set()  # alive, connected, silent: a machine that vanished
    assert lines[0].get(timeout=WAIT_S).startswith("process 1 of 2 was lost (no heartbeat for 2 s)")
    die(links[1])


def test_processes_that_finished_training_may_end_in_any_order():
    links, lines = start_cluster(2)
    links[0].release()
    links[1].release()
    for link in links:
        die(link)
    with pytest.raises(queue.Empty):
        lines[0].get(timeout=3)
    assert lines[1].empty()


def test_a_second_process_0_cannot_listen():
    port = free_port()
    first = threading.Thread(
        target=lambda: pytest.raises(InputError, join, Cluster(f"127.0.0.1:{port}", 2, 0, connect_timeout_s=3), LAUNCH),
        daemon=True,
    )
    first.start()
    threading.Event().wait(0.5)
    with pytest.raises(InputError, match="process 0 cannot listen on port .* is another process 0 running"):
        join(Cluster(f"127.0.0.1:{port}", 2, 0, connect_timeout_s=3), LAUNCH)
    first.join(WAIT_S)
