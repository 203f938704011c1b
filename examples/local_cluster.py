"""Run multi-host JAX code on one machine, as local processes talking over 127.0.0.1.

The processes form one `jax.distributed` job, each with its own simulated CPU devices.

Code written for several hosts (`jax.process_index()`, arrays that span devices no one
process can address, `jax.make_array_from_single_device_arrays`) can only be tested by
running several processes. This module runs a script as such a job, for tests and
examples:

    python examples/local_cluster.py --processes 2 --devices 4 examples/sharded_init.py

or, from Python, `local_cluster.run(script, args, processes=2, devices_per_process=4)`.
The script calls `local_cluster.connect()` before anything initializes a JAX backend
(before `jax.devices()` or any computation; importing jax is fine).

Why loopback is pinned: by default each piece of a `jax.distributed` job listens on
every interface. The coordinator binds `[::]:port`, and the CPU collectives (gloo) bind
whatever address the machine's hostname resolves to, so a test would open ports that
other machines can reach, and could fail or hang behind a firewall or a proxy. Here
every address is given explicitly: the coordinator binds and is reached at
127.0.0.1, gloo is built with `hostname="127.0.0.1"` (jax has no setting for this; a
private jaxlib function is used, and `connect` refuses to run if it is missing), and
proxy variables are removed from the processes' environment. Then the sockets are
checked: the launcher reads every process's sockets from `/proc` while it runs, each
process checks its own after connecting and at exit, and any address other than
127.0.0.1 stops the run with `LoopbackError`. Nothing ever falls back to another
address. Linux only (the check reads `/proc`).

Every process has a time limit; when one fails or runs out of time, the launcher kills
every process group it started, so a failed run never leaves processes behind.

Importing this module does not import jax.
"""

import argparse
import atexit
import dataclasses
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


LOOPBACK = "127.0.0.1"
# How `run` tells each process who it is (read by `connect` and `is_worker`).
PROCESS_ID = "LOCAL_CLUSTER_PROCESS_ID"
NUM_PROCESSES = "LOCAL_CLUSTER_NUM_PROCESSES"
PORT = "LOCAL_CLUSTER_PORT"

_LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::ffff:127.0.0.1"})
_WILDCARDS = frozenset({"0.0.0.0", "::", "::ffff:0.0.0.0"})
_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


class LoopbackError(RuntimeError):
    """Loopback-only operation cannot be guaranteed here, or a socket used an address
    other than 127.0.0.1."""


class ClusterError(RuntimeError):
    """A process of the job failed or ran out of time. `processes` holds what every
    process printed until then."""

    def __init__(self, message: str, processes: "list[ProcessResult]"):
        super().__init__(message)
        self.processes = processes


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    """One process of a finished job: its exit code, what it printed, and every socket
    the launcher saw it hold (as `"tcp LISTEN 127.0.0.1:4242 -> 0.0.0.0:0"`)."""

    process_id: int
    returncode: int | None
    stdout: str
    stderr: str
    sockets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ClusterResult:
    """A job that succeeded: one `ProcessResult` per process, and its wall time."""

    processes: list[ProcessResult]
    seconds: float
    port: int


# --- the launcher -------------------------------------------------------------------


def run(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    processes: int,
    devices_per_process: int,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ClusterResult:
    """Run `python script *args` as `processes` processes of one `jax.distributed` job
    on 127.0.0.1, each with `devices_per_process` CPU devices, and wait for all of them
    to exit by themselves.

    **Arguments:**

    - `script`: the Python file each process runs; it calls `connect()` first.
    - `args`: its command-line arguments, the same for every process.
    - `processes`, `devices_per_process`: the job's shape; `jax.devices()` then has
      `processes * devices_per_process` devices.
    - `timeout`: seconds every process may run, from the start of the job.
    - `env`: variables added to each process's environment (no proxy variables; the
      variables that pin the job to the CPU and to loopback cannot be overridden).
    - `cwd`: the processes' working directory.

    **Returns:** a `ClusterResult`. **Raises** `ClusterError` if a process exits
    with an error or the time runs out (every process is then killed), and
    `LoopbackError` if a process holds a socket on an address other than 127.0.0.1,
    or if loopback-only operation cannot be guaranteed on this machine.
    """
    if processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"need processes >= 1 and devices_per_process >= 1, got "
            f"{processes} and {devices_per_process}"
        )
    check_loopback()
    with _reserved_port() as port, tempfile.TemporaryDirectory(prefix="local_cluster_") as logs:
        started = time.perf_counter()
        children = [
            _Child(
                i,
                script,
                args,
                _child_env(env, i, processes, port, devices_per_process),
                Path(logs),
                cwd,
            )
            for i in range(processes)
        ]
        try:
            _wait(children, started + timeout, timeout)
            seconds = time.perf_counter() - started
            return ClusterResult([child.result() for child in children], seconds, port)
        finally:
            for child in children:
                child.kill()
                child.close()


class _Child:
    """One process of the job, in its own process group, writing to two log files."""

    def __init__(
        self,
        process_id: int,
        script: str | os.PathLike[str],
        args: Sequence[str],
        env: dict[str, str],
        logs: Path,
        cwd: str | os.PathLike[str] | None,
    ):
        self.process_id = process_id
        self.sockets: set[str] = set()
        self.stdout = open(logs / f"{process_id}.out", "w+")
        self.stderr = open(logs / f"{process_id}.err", "w+")
        self.popen = subprocess.Popen(
            [sys.executable, os.fspath(script), *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,  # its own process group, killed as one
        )

    def audit(self) -> None:
        """Record this process's sockets; raise `LoopbackError` on a non-loopback one."""
        if self.popen.poll() is not None:
            return
        try:
            sockets = inet_sockets(self.popen.pid)
        except OSError as error:
            # A process that is exiting loses its /proc entries before it can be reaped.
            try:
                self.popen.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                raise LoopbackError(
                    f"cannot read the sockets of process {self.process_id}: {error}"
                ) from error
        bad = [s for s in sockets if not _is_loopback(s)]
        if bad:
            raise LoopbackError(
                f"process {self.process_id} (pid {self.popen.pid}) holds sockets on an "
                f"address other than {LOOPBACK}: {[_describe(s) for s in bad]}"
            )
        self.sockets.update(_describe(s) for s in sockets)

    def kill(self) -> None:
        """Kill the process group if the process still runs (never after a clean exit)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=30)

    def result(self) -> ProcessResult:
        outputs = []
        for log in (self.stdout, self.stderr):
            log.flush()
            log.seek(0)
            outputs.append(log.read())
        return ProcessResult(
            self.process_id, self.popen.returncode, *outputs, tuple(sorted(self.sockets))
        )

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()

    def tail(self) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text()[-4000:]


def _wait(children: list[_Child], deadline: float, timeout: float) -> None:
    """Until every child exits 0, auditing their sockets; raise when one fails."""
    while True:
        for child in children:
            child.audit()
        codes = [child.popen.poll() for child in children]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed or (time.perf_counter() > deadline and None in codes):
            for child in children:
                child.kill()
            logs = "".join(
                f"\n--- process {c.process_id} (exit code {c.popen.returncode}), "
                f"stderr:\n{c.tail()}"
                for c in children
            )
            what = (
                f"process {failed[0]} exited with code {codes[failed[0]]}"
                if failed
                else f"processes {[i for i, c in enumerate(codes) if c is None]} did not "
                f"finish within {timeout:g} s"
            )
            raise ClusterError(
                f"local cluster: {what}; every process was killed.{logs}",
                [c.result() for c in children],
            )
        if all(code == 0 for code in codes):
            return
        time.sleep(0.02)


def _child_env(
    extra: Mapping[str, str] | None, process_id: int, processes: int, port: int, devices: int
) -> dict[str, str]:
    """This environment without proxies or JAX/XLA/gRPC settings, plus `extra` and the
    settings that make a CPU-only loopback job."""
    extra = dict(extra or {})
    proxies = [name for name in extra if "proxy" in name.lower()]
    if proxies:
        raise LoopbackError(f"env= sets proxy variables {proxies}; the job must not use one.")
    env = {
        name: value
        for name, value in os.environ.items()
        if "proxy" not in name.lower()  # gRPC would route the coordinator through it
        and not name.startswith(("JAX_", "XLA_", "GRPC_"))
    }
    env.update(extra)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONUNBUFFERED="1",
        **{PROCESS_ID: str(process_id), NUM_PROCESSES: str(processes), PORT: str(port)},
    )
    return env


class _reserved_port:
    """A free port on 127.0.0.1, kept from every other `bind(0)` until the job ends.

    The coordinator binds with SO_REUSEPORT, so a port that was free a moment ago could
    be shared by two jobs started at once. This socket, bound with SO_REUSEPORT and
    never listening, keeps the kernel from handing the port out again while still
    letting the coordinator (same user, SO_REUSEPORT) bind it."""

    def __enter__(self) -> int:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind((LOOPBACK, 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *exc_info: object) -> None:
        self.socket.close()


# --- in each process ----------------------------------------------------------------


def is_worker() -> bool:
    """Whether this process was started by `run` (and should call `connect`)."""
    return PORT in os.environ


def connect(
    process_id: int | None = None,
    num_processes: int | None = None,
    port: int | None = None,
    *,
    timeout_seconds: int = 60,
) -> None:
    """Join this process to the local job, over 127.0.0.1 only. Call it before anything
    initializes a JAX backend; by default the arguments come from the environment `run`
    sets.

    It pins the CPU collectives (gloo) to 127.0.0.1, calls
    `jax.distributed.initialize` with the coordinator bound to and reached at
    127.0.0.1, creates the devices, checks they are this job's and that every socket
    is on 127.0.0.1 (again at exit), and makes an uncaught exception end the process
    at once, so that its peers are not left waiting for it. **Raises**
    `LoopbackError` if loopback-only operation cannot be guaranteed.
    """
    process_id = int(os.environ[PROCESS_ID]) if process_id is None else process_id
    num_processes = int(os.environ[NUM_PROCESSES]) if num_processes is None else num_processes
    port = int(os.environ[PORT]) if port is None else port
    if os.environ.get("JAX_PLATFORMS") != "cpu":
        raise LoopbackError("JAX_PLATFORMS must be 'cpu' before python starts (run sets it).")
    check_loopback(proxies_allowed=False)
    import jax

    built = _pin_gloo_to_loopback()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Both in minutes: how long the CPU client waits for its peers' devices.
    jax.config.update("jax_cpu_get_local_topology_timeout_minutes", 1)
    jax.config.update("jax_cpu_get_global_topology_timeout_minutes", 2)
    address = f"{LOOPBACK}:{port}"
    jax.distributed.initialize(
        coordinator_address=address,
        coordinator_bind_address=address,  # the default binds [::]: every interface
        num_processes=num_processes,
        process_id=process_id,
        cluster_detection_method="deactivate",  # no SLURM, MPI or cloud detection
        initialization_timeout=timeout_seconds,
        heartbeat_timeout_seconds=10,
        shutdown_timeout_seconds=timeout_seconds,
    )
    devices = jax.devices()
    if not built:
        raise LoopbackError("the CPU backend was not built by the loopback gloo factory.")
    if jax.process_count() != num_processes or jax.process_index() != process_id:
        raise LoopbackError(
            f"joined as process {jax.process_index()} of {jax.process_count()}, expected "
            f"{process_id} of {num_processes}: another job may share port {port}."
        )
    if len(devices) != num_processes * jax.local_device_count():
        raise LoopbackError(f"{len(devices)} devices for {num_processes} processes")
    check_own_sockets("after connecting")
    sys.excepthook = _exit_at_once
    atexit.register(_check_at_exit)  # runs before jax's own atexit shutdown


def check_loopback(proxies_allowed: bool = True) -> None:
    """Raise `LoopbackError` unless 127.0.0.1 works here and the sockets of a process
    can be read from /proc (and, with `proxies_allowed=False`, no proxy variable is
    set: `run` removes them from the processes it starts)."""
    proxies = [name for name in os.environ if "proxy" in name.lower()]
    if proxies and not proxies_allowed:
        raise LoopbackError(f"proxy variables are set: {proxies}")
    if not os.path.exists("/proc/self/net/tcp"):
        raise LoopbackError("the socket check needs Linux's /proc/<pid>/net; not found.")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind((LOOPBACK, 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=5) as client:
                source = client.getsockname()[0]
    except OSError as error:
        raise LoopbackError(f"cannot connect to {LOOPBACK} on this machine: {error}") from error
    if source != LOOPBACK:
        raise LoopbackError(f"a connection to {LOOPBACK} came from {source}")


def check_own_sockets(when: str) -> None:
    """Raise `LoopbackError` if this process holds a socket off 127.0.0.1."""
    bad = [s for s in inet_sockets("self") if not _is_loopback(s)]
    if bad:
        raise LoopbackError(
            f"{when}: sockets on an address other than {LOOPBACK}: {[_describe(s) for s in bad]}"
        )


def _pin_gloo_to_loopback() -> list[bool]:
    """Replace jax's CPU backend factory by one that builds gloo collectives bound to
    127.0.0.1 (jax's own passes no hostname). Returns a list that holds True once the
    factory has run."""
    from jax._src import distributed, xla_bridge
    from jax._src.lib import _jax

    gloo = getattr(_jax, "make_gloo_tcp_collectives", None)
    cpu_client = getattr(xla_bridge, "make_cpu_client", None)
    needed = {
        "jaxlib's make_gloo_tcp_collectives(hostname=...)": "hostname"
        in (getattr(gloo, "__doc__", None) or ""),
        "jax's xla_bridge.make_cpu_client(collectives=...)": callable(cpu_client)
        and "collectives" in inspect.signature(cpu_client).parameters,
        "jax's xla_bridge.register_backend_factory": hasattr(
            xla_bridge, "register_backend_factory"
        ),
    }
    missing = [name for name, present in needed.items() if not present]
    if missing:
        raise LoopbackError(
            f"this jax/jaxlib lacks {missing}, needed to bind gloo to {LOOPBACK}; refusing "
            "to run a job whose collectives would listen on every interface."
        )
    if xla_bridge.backends_are_initialized():
        raise LoopbackError(
            "a JAX backend is initialized already; call connect() before jax.devices() or "
            "any computation."
        )
    built = [False]

    def loopback_cpu_client() -> Any:
        client = distributed.global_state.client
        if client is None:
            raise LoopbackError("jax.distributed.initialize must run before the backend.")
        collectives = _jax.make_gloo_tcp_collectives(distributed_client=client, hostname=LOOPBACK)
        built[0] = True
        return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", loopback_cpu_client, priority=0, fail_quietly=False)
    return built


def _exit_at_once(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """An uncaught exception: print it and exit now. The normal exit would first wait
    (up to the shutdown timeout) for every peer to shut down too."""
    traceback.print_exception(kind, error, tb)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _check_at_exit() -> None:
    try:
        check_own_sockets("at exit")
    except LoopbackError:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


# --- reading sockets from /proc -----------------------------------------------------


def inet_sockets(pid: int | str = "self") -> list[dict[str, Any]]:
    """Every TCP and UDP socket (IPv4 and IPv6) that process `pid` holds, read from
    /proc: `proto`, `state`, `local`, `local_port`, `remote`, `remote_port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    sockets = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{proto}") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                (local, local_port), (remote, remote_port) = (
                    field.split(":") for field in fields[1:3]
                )
                sockets.append(
                    {
                        "proto": proto,
                        "state": _TCP_STATES.get(fields[3], fields[3]) if "tcp" in proto else "",
                        "local": _address(local),
                        "local_port": int(local_port, 16),
                        "remote": _address(remote),
                        "remote_port": int(remote_port, 16),
                    }
                )
    return sockets


def _address(hex_address: str) -> str:
    packed = bytes.fromhex(hex_address)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed[::-1])
    # IPv6: four 32-bit words, each in the host's (little-endian) byte order.
    packed = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, packed)


def _is_loopback(s: dict[str, Any]) -> bool:
    """Bound to 127.0.0.1, and either connected to 127.0.0.1 or connected to nothing."""
    unconnected = s["remote"] in _WILDCARDS and s["remote_port"] == 0
    return s["local"] in _LOOPBACK_ADDRESSES and (s["remote"] in _LOOPBACK_ADDRESSES or unconnected)


def _describe(s: dict[str, Any]) -> str:
    state = f" {s['state']}" if s["state"] else ""
    return f"{s['proto']}{state} {s['local']}:{s['local_port']} -> {s['remote']}:{s['remote_port']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per process")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("script", help="the Python file every process runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args()
    try:
        result = run(
            options.script,
            options.args,
            processes=options.processes,
            devices_per_process=options.devices,
            timeout=options.timeout,
        )
    except ClusterError as error:
        sys.exit(str(error))
    for process in result.processes:
        for line in process.stdout.splitlines():
            print(f"[{process.process_id}] {line}")
    print(f"{options.processes} processes finished in {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
