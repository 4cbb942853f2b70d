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
import time

import pytest

from helpers import REPO, free_port
from rowrnn_keras import cluster as cluster_module
from rowrnn_keras.cluster import Link, join
from rowrnn_keras.config import Cluster
from runtime.errors import InputError

LAUNCH = {"epochs": 2}
WAIT_S = 20  # every wait here has a deadline


def start_cluster(
    processes: int, heartbeat_s: int = 20, cores: list[int] | None = None
) -> tuple[list[Link], list[queue.Queue]]:
    """Every process of a run joined, each in a thread; each link's lost-process lines go to a queue.
    `cores`: how many cores each process says it may use (default 1)."""
    port = free_port()
    lines = [queue.Queue() for _ in range(processes)]
    links: list[Link | None] = [None] * processes

    def run(index: int) -> None:
        cluster = Cluster(
            f"127.0.0.1:{port}", processes, index, connect_timeout_s=WAIT_S, heartbeat_timeout_s=heartbeat_s
        )
        links[index] = join(cluster, LAUNCH, cores[index] if cores else 1, on_lost=lines[index].put)

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


def test_every_process_learns_the_fewest_cores_any_of_them_may_use():
    """They split their parts of each batch into as many devices as the smallest of them has cores."""
    links, _ = start_cluster(3, cores=[8, 2, 4])
    assert [link.fewest_cores for link in links] == [2, 2, 2]
    for link in links:
        link.release()


def join_all(launches: list[dict]) -> list[Link | Exception]:
    """Processes 0..N-1 of one run, each joining with its launch (threads): their links or errors."""
    port = free_port()
    results: list[Link | Exception | None] = [None] * len(launches)

    def run(index: int) -> None:
        try:
            results[index] = join(
                Cluster(f"127.0.0.1:{port}", len(launches), index, connect_timeout_s=WAIT_S), launches[index]
            )
        except InputError as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(launches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S + 5)
    assert all(r is not None for r in results), "a process neither joined nor was refused"
    return results  # type: ignore[return-value]


def test_processes_that_would_resume_from_different_points_are_refused_in_one_line():
    """Process 1 cannot see process 0's backup (no shared directory) or was given --restart alone:
    they would train different epochs and wait on each other's collectives. Both are told why."""
    chief = {**LAUNCH, "resume": {"epoch": 3, "weights_sha256": "1a2b3c4d5e6f7a8b"}}
    other = {**LAUNCH, "resume": {"epoch": 0, "weights_sha256": None}}
    results = join_all([chief, other])
    expected = (
        "process 1 would start afresh, process 0 would resume after epoch 3 (weights 1a2b3c4d5e6f): every "
        "process must see process 0's --out directory (a shared file system) and be given the same --restart"
    )
    assert [str(r) for r in results] == [expected, expected]
    assert all(isinstance(r, InputError) for r in results)


def test_a_backup_another_process_cannot_use_refuses_the_whole_launch_with_its_reason():
    problem = "/shared/run/backup: cannot resume from this backup (state.json does not match its recorded sha256)"
    results = join_all([{**LAUNCH, "resume": {"epoch": 3}}, {**LAUNCH, "resume": {"error": problem}}])
    assert [str(r) for r in results] == [f"process 1: {problem}"] * 2


def test_other_settings_are_named_before_where_the_processes_start():
    results = join_all([{"epochs": 2, "resume": {"epoch": 1}}, {"epochs": 3, "resume": {"epoch": 0}}])
    assert [str(r) for r in results] == ["process 1 was started with other settings: epochs 3 (process 0: 2)"] * 2


def test_processes_resuming_from_the_same_backup_join():
    resume = {**LAUNCH, "resume": {"epoch": 3, "weights_sha256": "1a2b3c4d5e6f7a8b"}}
    links = join_all([resume, dict(resume)])
    assert all(isinstance(link, Link) for link in links)
    for link in links:
        link.release()


def test_a_connection_that_says_nothing_does_not_hold_up_the_run(monkeypatch):
    """A stray connection to process 0's port (a scanner, a health check) is dropped after its silence
    bound (1 s here), long before the 40 s the processes have to join; those that say who they are join."""
    monkeypatch.setattr(cluster_module, "HELLO_S", 1.0)
    port = free_port()
    started = time.monotonic()
    results: list = []
    chief = threading.Thread(
        target=lambda: results.append(join(Cluster(f"127.0.0.1:{port}", 2, 0, connect_timeout_s=40), LAUNCH)),
        daemon=True,
    )
    chief.start()
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            silent = socket.create_connection(("127.0.0.1", port + 1), timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "process 0 did not listen"
            time.sleep(0.1)
    try:
        other = join(Cluster(f"127.0.0.1:{port}", 2, 1, connect_timeout_s=40), LAUNCH)
        chief.join(WAIT_S + 5)
        assert len(results) == 1 and isinstance(results[0], Link)
        assert time.monotonic() - started < 15
        other.release()
        results[0].release()
    finally:
        silent.close()


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
