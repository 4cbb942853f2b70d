"""rowrnn_keras.cluster: the processes of a run meet, check their launch, and watch each other.

Here the processes are threads of this one (the link needs neither JAX nor TensorFlow); test_jax
runs it in real training processes. A process's death is its sockets closing, as the kernel closes
them for a killed process.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import REPO, free_port
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
        # close() alone waits for its watcher's reader to let go. A peer that died first may have
        # reset the connection already (it closed with heartbeats unread): then there is nothing to shut.
        with contextlib.suppress(OSError):
            peer.shutdown(socket.SHUT_RDWR)
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


def held_process(body: str) -> subprocess.CompletedProcess:
    """A process that writes to its native stderr (fd 2) inside `stderr_held`, then runs `body`."""
    code = (
        "import os\n"
        "from rowrnn_keras.cluster import stderr_held\n"
        "with stderr_held():\n"
        "    os.write(2, b'native: something failed\\n')\n"
        f"    {body}\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=WAIT_S)


def test_what_is_written_while_stderr_is_held_shows_when_the_hold_ends():
    result = held_process("raise SystemExit(3)")
    assert result.returncode == 3
    assert result.stderr == "native: something failed\n"


def test_a_process_that_aborts_while_stderr_is_held_still_shows_why():
    """JAX and XLA end a process with a fatal log and SIGABRT for other reasons than a lost process
    (a check failure, JAX's own heartbeat timeout, JAX's client losing process 0 before rowrnn's
    watch does): the hold must not take that log with it, or the process dies without a word."""
    result = held_process("os.abort()")
    assert result.returncode == -signal.SIGABRT
    assert "native: something failed" in result.stderr


def test_a_lost_process_is_one_line_even_while_stderr_is_held():
    result = held_process(
        "from rowrnn_keras.cluster import lost_and_exit\n"
        "    lost_and_exit('process 1 of 2 was lost (its connection closed)')"
    )
    assert result.returncode == 1
    assert result.stderr == "rowrnn: error: process 1 of 2 was lost (its connection closed)\n"
