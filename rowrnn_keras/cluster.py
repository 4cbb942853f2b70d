"""The processes of a multi-process run find each other, check they were launched alike, and watch
each other: rowrnn's own link beside JAX's coordinator, on the coordinator's port + 1.

Why not JAX alone: jax.distributed aborts the whole process (a C++ fatal log and SIGABRT) when it
cannot connect, when a process count does not match (it waits out its timeout), and when a peer stops
sending heartbeats; its error callback cannot be set from Python (jaxlib 0.10.2: the callback's
status argument has no Python type). So before JAX starts, process 0 listens on PORT+1; every other
process connects and says who it is and how it was launched; process 0 answers once all are there,
or refuses a launch that cannot work, in one line. Afterwards each connection carries a heartbeat
every second: a process that dies closes its connection (the kernel does it, even on SIGKILL), and a
machine that vanishes stops beating; either way the others stop with one line naming the lost
process instead of hanging in a collective. No TensorFlow, no JAX here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rowrnn_keras.config import Cluster
from runtime.errors import InputError

BEAT_S = 1.0  # heartbeat interval
MESSAGE_LIMIT = 1 << 16  # one launch description, far more than it needs
HELLO_S = 10.0  # a connection that says nothing for this long is not one of ours: the next may be


def link_address(cluster: Cluster) -> tuple[str, int]:
    host, _, port = cluster.coordinator.rpartition(":")
    return host.strip("[]"), int(port) + 1


STDERR = 2  # where `lost_and_exit` writes: the process's stderr, also while `stderr_held` holds fd 2
HOLDER: subprocess.Popen | None = None  # the process holding fd 2's output while `stderr_held` runs
HOLD_S = 10.0  # how long the end of a hold waits for the holder to write out what it held
# The holder: keeps what it reads until its input ends (the block ended, or the process died in any
# way, an abort included), then writes it out; killed (a lost process told in one line), it drops it.
# It ignores the terminal's signals: a Ctrl-C ends the training process, whose output it then shows.
HOLDER_CODE = """
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
held = bytearray()
while chunk := os.read(0, 1 << 16):
    held += chunk
view = memoryview(held)
while view:
    view = view[os.write(2, view):]
"""


def lost_and_exit(message: str) -> None:
    """A process was lost: one line, exit 1, at once (the main thread may be stuck in a collective).
    What `stderr_held` holds (JAX's own fatal log of the same loss) is dropped."""
    os.write(STDERR, f"rowrnn: error: {message}\n".encode())
    if HOLDER is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            HOLDER.kill()
            HOLDER.wait(HOLD_S)
    os._exit(1)


@contextlib.contextmanager
def stderr_held() -> Iterator[None]:
    """While processes run collectives: what is written to fd 2 is held back by a small process of
    its own, and written out when the block ends (normally or by an exception) or when this process
    dies any other way (JAX and XLA abort with a fatal log: that log is shown). When process 0 dies,
    JAX's coordination client in every other process logs a multi-line fatal error ("Terminating
    process because the JAX distributed service detected fatal errors...", without saying which
    process) while rowrnn's watch says which one and ends the process first: `lost_and_exit` drops
    the held log, and the one line (written past the hold, to the real stderr) is all there is."""
    global STDERR, HOLDER
    sys.stderr.flush()
    real = os.dup(2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_CODE], stdin=subprocess.PIPE, stderr=real)
    os.dup2(holder.stdin.fileno(), 2)
    holder.stdin.close()  # fd 2 is the pipe's only writing end: when it closes, the holder writes out
    STDERR, HOLDER = real, holder
    try:
        yield
    finally:
        sys.stderr.flush()
        HOLDER = None
        os.dup2(real, 2)
        STDERR = 2
        os.close(real)
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.wait(HOLD_S)  # what it held comes before what this process writes next


@dataclass
class Link:
    """This process's connections to the others (process 0: to every process; others: to process 0)."""

    cluster: Cluster
    peers: dict[int, socket.socket]
    on_lost: Callable[[str], None] = lost_and_exit
    fewest_cores: int = 1  # the fewest cores a process of the run may use (each says how many it has)
    released: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_watching(self) -> None:
        for process, peer in self.peers.items():
            peer.settimeout(self.cluster.heartbeat_timeout_s)
            threading.Thread(
                target=self.watch, args=(process, peer), daemon=True, name=f"rowrnn-watch-{process}"
            ).start()
        threading.Thread(target=self.beat, daemon=True, name="rowrnn-heartbeat").start()

    def send(self, peer: socket.socket, message: dict) -> None:
        with self.lock, contextlib.suppress(OSError):  # a peer gone: its watcher notices
            peer.sendall((json.dumps(message) + "\n").encode())

    def beat(self) -> None:
        while not self.released.is_set():
            for peer in list(self.peers.values()):
                self.send(peer, {})
            time.sleep(BEAT_S)

    def watch(self, process: int, peer: socket.socket) -> None:
        """Read `process`'s heartbeats; report it (or whom process 0 says was lost) when they stop."""
        reader = peer.makefile("r")
        why = "its connection closed"
        try:
            for line in reader:
                message = json.loads(line)
                if "lost" in message:  # process 0 saw another process go
                    return self.report(message["lost"], message["why"])
                if message.get("done"):
                    return
        except TimeoutError:
            why = f"no heartbeat for {self.cluster.heartbeat_timeout_s} s"
        except (OSError, ValueError):
            pass
        self.report(process, why)

    def report(self, process: int, why: str) -> None:
        if self.released.is_set() or self.lost.is_set():
            return
        self.lost.set()
        if self.cluster.is_chief:  # tell the others whom they lost, or they would blame process 0
            for other, peer in self.peers.items():
                if other != process:
                    self.send(peer, {"lost": process, "why": why})
        self.on_lost(
            f"process {process} of {self.cluster.num_processes} was lost ({why}); "
            "run every process again to resume from the last backup"
        )

    def wait_for_loss(self, seconds: float) -> bool:
        """After an error in training: was it a lost process (then `on_lost` runs)?"""
        return self.lost.wait(seconds)

    def release(self) -> None:
        """Training is over (no more collectives): the processes may end in any order."""
        for peer in self.peers.values():
            self.send(peer, {"done": True})
        self.released.set()


def read_message(peer: socket.socket) -> dict:
    """One line, read a byte at a time: what follows it (heartbeats) is the watcher's to read."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = peer.recv(1)
        if not byte or len(data) > MESSAGE_LIMIT:
            raise ConnectionError("the connection closed")
        data += byte
    return json.loads(data)


def join(cluster: Cluster, launch: dict, cores: int = 1, on_lost: Callable[[str], None] = lost_and_exit) -> Link:
    """Meet the other processes of `cluster`; `launch`: what every process must agree on (the
    configuration, and where training resumes under "resume"); `cores`: how many this process may
    use. Returns once all are there, watching them (`on_lost` receives the line that names a lost
    process); a launch that cannot work is an InputError."""
    link = gather(cluster, launch, cores) if cluster.is_chief else report_in(cluster, launch, cores)
    link.on_lost = on_lost
    link.start_watching()
    return link


def gather(cluster: Cluster, launch: dict, cores: int) -> Link:
    """Process 0: wait for processes 1..N-1, each once, all launched alike."""
    host, port = link_address(cluster)
    server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        server.bind(("", port))
    except OSError as exc:
        server.close()
        raise InputError(
            f"process 0 cannot listen on port {port} (--coordinator's port + 1): {exc.strerror}; "
            "is another process 0 running?"
        ) from None
    server.listen()
    deadline = time.monotonic() + cluster.connect_timeout_s
    peers: dict[int, socket.socket] = {}
    fewest_cores = cores
    try:
        while len(peers) < cluster.num_processes - 1:
            server.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                peer, _ = server.accept()
            except TimeoutError:
                missing = sorted(set(range(1, cluster.num_processes)) - set(peers))
                raise InputError(
                    f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
                    f"{cluster.num_processes} did not join within {cluster.connect_timeout_s} s "
                    f"(each runs the same command with its --process-id, --coordinator {cluster.coordinator})"
                ) from None
            peer.settimeout(max(0.01, min(HELLO_S, deadline - time.monotonic())))
            try:
                hello = read_message(peer)
                process = int(hello["process_id"])
                their_cores = max(1, int(hello.get("cores", 1)))
            except (OSError, ValueError, KeyError, TypeError):
                peer.close()  # not one of ours
                continue
            problem = launch_problem(cluster, launch, hello, peers)
            if problem and process in peers:  # a duplicate: refuse it alone, the run goes on
                send_line(peer, {"error": problem})
                peer.close()
                continue
            if problem:  # launched differently: the whole run cannot work
                send_line(peer, {"error": problem})
                for other in peers.values():
                    send_line(other, {"error": problem})
                raise InputError(problem)
            peers[process] = peer
            fewest_cores = min(fewest_cores, their_cores)
        for peer in peers.values():
            send_line(peer, {"ok": True, "fewest_cores": fewest_cores})
    except BaseException:
        for peer in peers.values():
            peer.close()
        raise
    finally:
        server.close()
    return Link(cluster, peers, fewest_cores=fewest_cores)


def launch_problem(cluster: Cluster, launch: dict, hello: dict, peers: dict) -> str | None:
    process = hello["process_id"]
    if process in peers:
        return f"another process already joined as process {process}; each process needs its own --process-id"
    if hello.get("num_processes") != cluster.num_processes:
        return (
            f"process {process} was started with --num-processes {hello.get('num_processes')}, "
            f"process 0 with {cluster.num_processes}: every process needs the same"
        )
    if not 0 < process < cluster.num_processes:
        return f"process {process} is out of range for --num-processes {cluster.num_processes}"
    theirs = hello.get("launch") or {}
    settings = {key for key in set(launch) | set(theirs) if key != "resume"}
    differences = [
        f"{key} {theirs.get(key)} (process 0: {launch.get(key)})"
        for key in sorted(settings)
        if launch.get(key) != theirs.get(key)
    ]
    if differences:
        return f"process {process} was started with other settings: {'; '.join(differences)}"
    start = theirs.get("resume") or {}
    if "error" in start:
        return f"process {process}: {start['error']}"
    if start != (launch.get("resume") or {}):
        return (
            f"process {process} would {describe_start(start)}, process 0 would "
            f"{describe_start(launch.get('resume'))}: every process must see process 0's --out directory "
            "(a shared file system) and be given the same --restart"
        )
    return None


def send_line(peer: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        peer.sendall((json.dumps(message) + "\n").encode())


def describe_start(resume: dict | None) -> str:
    """'start afresh' or 'resume after epoch 3 (weights 1a2b3c4d5e6f)', from a launch's "resume"."""
    if not resume or not resume.get("epoch"):
        return "start afresh"
    return f"resume after epoch {resume['epoch']} (weights {str(resume.get('weights_sha256'))[:12]})"


def report_in(cluster: Cluster, launch: dict, cores: int) -> Link:
    """Process 1..N-1: reach process 0 (retrying until the timeout), say who we are, wait for all."""
    address = link_address(cluster)
    deadline = time.monotonic() + cluster.connect_timeout_s
    while True:
        try:
            peer = socket.create_connection(address, timeout=max(0.01, min(5.0, deadline - time.monotonic())))
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise InputError(
                    f"process {cluster.process_id} cannot reach process 0 at {address[0]}:{address[1]} "
                    f"(--coordinator's port + 1) within {cluster.connect_timeout_s} s: {exc.strerror or exc}"
                ) from None
            time.sleep(0.25)
    hello = {"process_id": cluster.process_id, "num_processes": cluster.num_processes, "launch": launch, "cores": cores}
    try:
        peer.settimeout(max(0.01, deadline - time.monotonic()))
        peer.sendall((json.dumps(hello) + "\n").encode())
        answer = read_message(peer)
    except (OSError, ValueError) as exc:
        peer.close()
        why = "it did not answer" if isinstance(exc, TimeoutError) else "it closed the connection"
        raise InputError(
            f"process {cluster.process_id}: process 0 at {cluster.coordinator} did not start the run within "
            f"{cluster.connect_timeout_s} s ({why})"
        ) from None
    if "error" in answer:
        peer.close()
        raise InputError(answer["error"])
    return Link(cluster, {0: peer}, fewest_cores=max(1, int(answer.get("fewest_cores", 1))))
