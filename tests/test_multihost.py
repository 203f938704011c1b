"""lm.init(..., sharding=rule) across processes: a `jax.distributed` job of 2 local
processes with 2 CPU devices each (examples/local_cluster.py, 127.0.0.1 only), where
each process computes only its own shards (tests/multihost_worker.py checks them)."""

import importlib.util
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location(
        "local_cluster", ROOT / "examples" / "local_cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("local_cluster", module)
    spec.loader.exec_module(module)
    return module


local_cluster = _load_local_cluster()


def results(run) -> list[dict]:
    return [
        json.loads(line.removeprefix("RESULT "))
        for process in run.processes
        for line in process.stdout.splitlines()
        if line.startswith("RESULT ")
    ]


def test_two_processes_each_compute_and_hold_only_their_shards(tmp_path):
    run = local_cluster.run(
        ROOT / "tests" / "multihost_worker.py",
        [str(tmp_path)],  # where both processes save and restore a sharded checkpoint
        processes=2,
        devices_per_process=2,
        timeout=120,
    )
    assert [p.returncode for p in run.processes] == [0, 0]  # both exited by themselves
    found = sorted(results(run), key=lambda result: result["process"])
    assert [result["process"] for result in found] == [0, 1], [p.stdout for p in run.processes]
    for result in found:
        # Host staging: far below the largest weight, which an unsharded init stages.
        print(
            f"process {result['process']}: host peak during the sharded init "
            f"{result['sharded_init_host_peak_bytes'] / 2**20:.2f} MiB (unsharded init: "
            f"{result['plain_init_host_peak_bytes'] / 2**20:.2f} MiB); largest weight "
            f"{result['largest_weight_bytes'] / 2**20:.0f} MiB; {result['shards_checked']} "
            f"shards bit-equal; timings {result['timings']}"
        )
        assert result["sharded_init_host_peak_bytes"] < result["largest_weight_bytes"] / 2
        assert result["shards_checked"] == 32  # 8 arrays x 2 devices, initialized, restored
    assert found[0]["loss"] == found[1]["loss"]
    print(f"2-process job: {run.seconds:.1f} s wall")
    # The launcher saw the coordinator listening, and only on 127.0.0.1 (else it raises).
    assert any(
        "LISTEN 127.0.0.1:" in s or "LISTEN ::ffff:127.0.0.1:" in s
        for s in run.processes[0].sockets
    ), run.processes[0].sockets


def test_the_sharded_init_example_runs_as_two_processes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sharded_init.py"), "--smoke", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is held as shards [(64, 64)]" in result.stdout
    assert "one training step on the mesh" in result.stdout
    assert "2 processes finished" in result.stdout


# The launcher itself, on scripts that do not need jax: quick.


def script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    return path


def test_a_failing_process_stops_the_job_and_kills_the_others(tmp_path):
    failing = script(
        tmp_path,
        """
        import os, sys, time
        if os.environ["LOCAL_CLUSTER_PROCESS_ID"] == "1":
            sys.exit("process 1 gives up")
        time.sleep(60)
        """,
    )
    with pytest.raises(local_cluster.ClusterError, match="process 1 exited with code 1") as error:
        local_cluster.run(failing, processes=2, devices_per_process=1, timeout=30)
    assert "process 1 gives up" in str(error.value)
    assert [p.returncode for p in error.value.processes] == [-9, 1]  # killed, and reaped


def test_a_process_that_runs_too_long_is_killed(tmp_path):
    sleeping = script(tmp_path, "import time; time.sleep(60)")
    with pytest.raises(local_cluster.ClusterError, match=r"did not finish within 0.5 s") as error:
        local_cluster.run(sleeping, processes=2, devices_per_process=1, timeout=0.5)
    assert [p.returncode for p in error.value.processes] == [-9, -9]


def test_a_socket_off_loopback_stops_the_job(tmp_path):
    listening = script(
        tmp_path,
        """
        import socket, time
        server = socket.socket()
        server.bind(("0.0.0.0", 0))  # every interface
        server.listen(1)
        time.sleep(60)
        """,
    )
    with pytest.raises(local_cluster.LoopbackError, match=r"0\.0\.0\.0"):
        local_cluster.run(listening, processes=1, devices_per_process=1, timeout=30)


def test_connect_refuses_a_proxy(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    with pytest.raises(local_cluster.LoopbackError, match="proxy"):
        local_cluster.connect(0, 1, 1)


def test_the_socket_check_sees_this_process(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        found = local_cluster.inet_sockets()
        assert any(s["local_port"] == port and s["state"] == "LISTEN" for s in found), found
        local_cluster.check_own_sockets("now")
