"""The `python` tool against real processes: limits, isolation, cleanup."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import psutil
import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools import sandbox
from tools.registry import ToolArgumentError, ToolContext, ToolError, default_registry

FORK_BOMB = """
import os, sys
print("cwd", os.getcwd(), file=sys.stderr, flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setenv("TROUPE_PYTHON_CPU_S", "2")
    monkeypatch.setenv("TROUPE_PYTHON_MEMORY_MB", "256")
    monkeypatch.setenv("TROUPE_PYTHON_MAX_PROCS", "32")


@pytest.fixture(params=["auto", "0"], ids=["namespaces", "no-namespaces"])
def mode(request, monkeypatch):
    """Run a test with the namespace layer and again with the fallback layers only (which the
    operator must opt in to)."""
    monkeypatch.setenv("TROUPE_PYTHON_NAMESPACES", request.param)
    if request.param == "0":
        monkeypatch.setenv("TROUPE_PYTHON_ALLOW_UNISOLATED", "1")
    return request.param


async def run(ctx: ToolContext, code: str, **args):
    return await default_registry.get("python")(ctx, {"code": code, **args})


@pytest.fixture
async def tcp_server():
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""
    accepted: list[object] = []

    async def on_connect(reader, writer):
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], accepted
    server.close()
    await server.wait_closed()


async def test_prints_output_and_reads_stdin(ctx, mode):
    assert await run(ctx, "print(input()[::-1])", stdin="abc") == "cba\n"


async def test_runs_in_a_fresh_directory_without_our_environment(ctx, monkeypatch):
    monkeypatch.setenv("TROUPE_SECRET_TOKEN", "s3cret")
    out = await run(ctx, "import os; print(sorted(os.listdir('.')), 'TROUPE_SECRET_TOKEN' in os.environ)")
    assert out == "['main.py'] False\n"


async def test_exception_shows_the_traceback(ctx):
    with pytest.raises(ToolError) as exc:
        await run(ctx, "x = 1\nraise ValueError('boom')")
    assert "exited with status 1" in exc.value.message
    assert 'File "main.py", line 2' in exc.value.message
    assert "ValueError: boom" in exc.value.message


async def test_busy_loop_hits_the_cpu_limit(ctx):
    with pytest.raises(ToolError) as exc:
        await run(ctx, "while True: pass", timeout_s=20)
    assert "CPU time limit of 2 s exceeded" in exc.value.message
    assert not exc.value.retryable


async def test_sleep_hits_the_wall_time_limit(ctx):
    with pytest.raises(ToolError) as exc:
        await run(ctx, "import time; time.sleep(60)", timeout_s=1)
    assert "wall-time limit of 1 s exceeded" in exc.value.message


async def test_memory_bomb_hits_the_memory_limit(ctx):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(10_000_000))"
    with pytest.raises(ToolError) as exc:
        await run(ctx, code)
    assert "memory limit of 256 MiB exceeded" in exc.value.message


async def test_fork_bomb_is_contained(ctx, mode):
    iso = await sandbox.isolation()
    if not (iso.namespaces or iso.cgroup_base or iso.nproc_works):
        pytest.skip("no layer here caps the number of processes")
    with pytest.raises(ToolError) as exc:
        await run(ctx, FORK_BOMB, timeout_s=3)
    assert "process limit reached (fork bomb?)" in exc.value.message
    assert "TROUPE_PYTHON_MAX_PROCS=32" in exc.value.message
    # Every process of the bomb is gone, and the sandbox still works.
    workdir = re.search(r"cwd (\S+)", exc.value.message).group(1)
    assert not Path(workdir).exists()
    survivors = []
    for proc in psutil.process_iter():
        try:
            if proc.cwd() == workdir:
                survivors.append(proc)
        except psutil.Error:
            pass
    assert survivors == []
    assert await run(ctx, "print('still fine')") == "still fine\n"


async def test_network_is_refused(ctx, mode, tcp_server):
    port, accepted = tcp_server
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    with pytest.raises(ToolError) as exc:
        await run(ctx, code)
    assert "network access is disabled" in exc.value.message
    await asyncio.sleep(0.1)
    assert accepted == []


async def test_network_namespace_stops_raw_connect(ctx, tcp_server):
    """ctypes goes around the audit hook; the empty network namespace still stops it."""
    if not (await sandbox.isolation()).namespaces:
        pytest.skip("no network namespace on this machine")
    port, accepted = tcp_server
    code = f"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
addr = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
print(libc.connect(fd, addr, len(addr)), ctypes.get_errno())
"""
    assert await run(ctx, code) == "-1 101\n"  # ENETUNREACH: not even loopback is up
    await asyncio.sleep(0.1)
    assert accepted == []


async def test_filesystem_is_read_only_outside_the_workdir(ctx):
    if not (await sandbox.isolation()).namespaces:
        pytest.skip("no mount namespace on this machine")
    outside = Path.home() / f".troupe-escape-{uuid.uuid4().hex}"  # not under /tmp (a fresh tmpfs inside)
    code = f"""
import os
open("here.txt", "w").write("ok")
open("/tmp/scratch.txt", "w").write("ok")
try:
    open({str(outside)!r}, "w")
except OSError as e:
    print(e.strerror)
print(os.listdir("/run"))
"""
    try:
        out = await run(ctx, code)
        # Read-only mounts refuse the write; a home under /tmp (a fresh tmpfs inside) is not there at all.
        assert out in ("Read-only file system\n[]\n", "No such file or directory\n[]\n")
    finally:
        assert not outside.exists()
        outside.unlink(missing_ok=True)


async def test_output_flood_is_capped(ctx, monkeypatch):
    monkeypatch.setenv("TROUPE_PYTHON_MAX_OUTPUT_BYTES", "65536")
    with pytest.raises(ToolError) as exc:
        await run(ctx, "while True: print('x' * 1000)", timeout_s=20)
    assert "output exceeded 64 KiB" in exc.value.message


async def test_bad_arguments_name_the_field(ctx):
    with pytest.raises(ToolArgumentError) as exc:
        await run(ctx, 123)
    assert exc.value.problems[0].startswith("code:")
    with pytest.raises(ToolArgumentError) as exc:
        await run(ctx, "print(1)", timeout_s="soon")
    assert exc.value.problems[0].startswith("timeout_s:")
    with pytest.raises(ToolArgumentError):
        await default_registry.get("python")(ctx, {"code": "print(1)", "network": True})


async def test_bad_limit_setting_says_which_variable(ctx, monkeypatch):
    monkeypatch.setenv("TROUPE_PYTHON_MEMORY_MB", "lots")
    with pytest.raises(ToolError, match="TROUPE_PYTHON_MEMORY_MB='lots' is not a positive integer"):
        await run(ctx, "print(1)")


async def test_concurrent_calls_all_succeed(ctx):
    outs = await asyncio.gather(*(run(ctx, f"print({i} * {i})") for i in range(6)))
    assert outs == [f"{i * i}\n" for i in range(6)]


async def test_a_run_cancelled_while_its_status_pipe_connects_closes_no_one_elses_descriptor(ctx, monkeypatch, tmp_path):
    """A cancel inside connect_read_pipe: asyncio's transport closes the pipe's file on its next
    loop turn, so the run must not close the number too, which by then may be another file's."""
    loop = asyncio.get_running_loop()
    connect = loop.connect_read_pipe

    async def cancelled_at_the_end(*args, **kwargs):
        if sys._getframe(1).f_code.co_name != "run_sandboxed":  # the subprocess's own pipes
            return await connect(*args, **kwargs)
        transport, _ = await connect(*args, **kwargs)
        transport.close()  # what connect_read_pipe does when cancelled while it waits
        raise asyncio.CancelledError

    monkeypatch.setattr(loop, "connect_read_pipe", cancelled_at_the_end)
    with pytest.raises(asyncio.CancelledError):
        await run(ctx, "print(1)")
    monkeypatch.undo()
    sentinel = os.open(tmp_path / "sentinel", os.O_RDWR | os.O_CREAT)  # takes the lowest free number
    for _ in range(3):
        await asyncio.sleep(0)  # the transport's close runs now
    os.fstat(sentinel)  # still ours
    os.close(sentinel)
