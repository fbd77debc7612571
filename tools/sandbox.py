"""A throwaway, resource-limited sandbox for model-written Python (used by the `python` tool).

Layers, each detected at runtime (the set in force is logged once per process):

- namespaces: `unshare` gives the code its own network (no interfaces up), PID and mount
  namespace (and user namespace, unless we are root). Inside, the filesystem is remounted
  read-only except a fresh working directory, /tmp, /var/tmp, /dev/shm and /run are fresh
  tmpfs (which also hides unix sockets such as PostgreSQL's), and every capability is
  dropped before the code runs. Troupe's state (`TROUPE_HOME`: database, Qdrant files,
  every tenant's workspaces and uploads, admin.key), the service account's home and working
  directory, and `TROUPE_PYTHON_HIDE_PATHS` are covered by an empty read-only tmpfs; the
  working directory (and the interpreter, when a covered folder holds it) is mounted back
  at its own path. Without namespaces the python tool refuses to run unless
  `TROUPE_PYTHON_ALLOW_UNISOLATED=1`.
- unprivileged uid: when we are root, the code runs as a random unused uid. With namespaces,
  real root sets the mounts up without a user namespace and the bootstrap switches uid just
  before the code runs (a 0700 folder above the interpreter, such as /root, is covered and
  the interpreter mounted back, so that uid can still import the standard library); then
  owner-only files (/etc/shadow, 0700 workspaces) stay closed even where nothing covers them.
  Without namespaces, `setpriv` switches uid up front if that uid can run the interpreter.
- process cap: a pids cgroup when one can be created, else RLIMIT_NPROC (which the kernel
  ignores for processes running as the real root), else the PID namespace's own pid_max
  (kernel >= 6.14, no lower than 301).
- rlimits: CPU time, address space, file size, no core files.
- an audit hook refusing socket connect/bind/send/resolve: a last layer only, since C code
  (ctypes) can go around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from tools.registry import ToolError

__all__ = [
    "DEFAULT_CPU_S",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PROCS",
    "DEFAULT_MEMORY_MB",
    "ENV_ALLOW_UNISOLATED",
    "ENV_HIDE_PATHS",
    "NET_REFUSED",
    "Limits",
    "Outcome",
    "hidden_paths",
    "human_bytes",
    "isolation",
    "run_sandboxed",
]

log = logging.getLogger(__name__)

DEFAULT_CPU_S = 10
DEFAULT_MEMORY_MB = 512
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
DEFAULT_MAX_PROCS = 64
_MAX_FILE_BYTES = 64 << 20
_TMPFS_SIZE = "64m"
NET_REFUSED = "network access is disabled in the python tool sandbox"
ENV_HIDE_PATHS = "TROUPE_PYTHON_HIDE_PATHS"
ENV_ALLOW_UNISOLATED = "TROUPE_PYTHON_ALLOW_UNISOLATED"

# Runs inside the sandbox as `python -I -c _BOOTSTRAP CONFIG`. It stays in the sandbox as a
# small supervisor (PID 1 of the namespace when there is one) so that the user's code is
# never PID 1 (which would ignore SIGXCPU) and so that the exit status and CPU time of the
# user's process come back on a private pipe that the user's code cannot write to.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys, traceback

cfg = json.loads(sys.argv[1])
layers = []
libc = ctypes.CDLL(None, use_errno=True)

class MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), "mount " + target)

def set_readonly(path, readonly, recursive):
    # mount_setattr(2) (syscall 442 on x86_64 and arm64): one call covers every submount.
    attr = MountAttr(attr_set=1 if readonly else 0, attr_clr=0 if readonly else 1)
    if libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0,
                    ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        raise OSError(ctypes.get_errno(), "mount_setattr " + path)

def confine(workdir):
    # We are root of fresh namespaces here (of a user namespace too, unless late_uid is set);
    # nothing the user wrote runs yet.
    if cfg["late_uid"] is None:  # only where a user namespace keeps the write away from the host's
        try:
            with open("/proc/sys/kernel/pid_max", "w") as f:
                f.write(str(cfg["pid_max"]))
            layers.append("pid_max=%d" % cfg["pid_max"])
        except OSError:
            pass  # per-namespace pid_max needs Linux >= 6.14
    try:
        mount(workdir, workdir, None, 4096)  # MS_BIND: its own mount, to keep it writable
        set_readonly("/", True, recursive=True)
        set_readonly(workdir, False, recursive=False)
        layers.append("read-only filesystem")
    except OSError as e:
        layers.append("read-only filesystem FAILED: %s" % e)
    # Handles on what must stay visible, taken before anything is covered: each is mounted
    # back at its own path afterwards (the working directory writable, the interpreter not).
    keep = [(os.open(workdir, os.O_PATH | os.O_DIRECTORY), workdir, True)]
    for path in cfg["keep"]:
        try:
            keep.append((os.open(path, os.O_PATH | os.O_DIRECTORY), path, False))
        except OSError:
            pass  # not reachable from here, so nothing to mount back
    private = []
    for path in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                mount("tmpfs", path, "tmpfs", 2 | 4, "size=%s,mode=1777" % cfg["tmpfs_size"])
                private.append(path)
            except OSError:
                pass
    layers.append("private tmpfs: " + " ".join(private))
    hidden = []
    for path in cfg["hide"]:  # outermost first; one inside a covered folder is already gone
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                mount("tmpfs", path, "tmpfs", 2 | 4 | 8, "size=1m,mode=0755")
            except OSError as e:  # fail closed: never run with Troupe's state in view
                sys.exit("python sandbox: could not hide %s: %s" % (path, e))
            hidden.append(path)
    for fd, path, writable in keep:
        there = os.stat(path) if os.path.exists(path) else None
        if there is None or (there.st_dev, there.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            os.makedirs(path, exist_ok=True)
            mount("/proc/self/fd/%d" % fd, path, None, 4096 | 16384)  # MS_BIND | MS_REC
            set_readonly(path, not writable, recursive=not writable)
        os.close(fd)
    for path in cfg["hide"]:  # covered again where a folder mounted back holds it
        if path not in hidden and os.path.isdir(path) and any(path.startswith(k + "/") for _, k, _ in keep):
            mount("tmpfs", path, "tmpfs", 2 | 4 | 8, "size=1m,mode=0755")
            hidden.append(path)
    for path in hidden:
        set_readonly(path, True, recursive=False)
    if hidden:
        layers.append("hidden: " + " ".join(hidden))
    # Entered again through the new tree: a cwd left under a covered folder would let `..`
    # walk the folder beneath the cover.
    os.chdir(workdir)
    # Drop every capability for good (bounding set too), so that the code cannot undo the
    # read-only remount or change pid_max; uid 0 inside keeps only file ownership.
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    if cfg["late_uid"] is not None:
        # Real root set the mounts up; the code runs as a throwaway uid, so files readable by
        # their owner only (/etc/shadow, root's 0600 files) stay closed. Only now: before the
        # mounts, this uid could not have reached an interpreter under a 0700 /root.
        uid = cfg["late_uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # real, effective and saved: no way back to root
        layers.append("unprivileged uid")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    if libc.capset(header, (ctypes.c_uint32 * 6)()) == 0:
        layers.append("no capabilities")

def refuse_network(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                 "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        raise PermissionError(cfg["net_refused"])

status_fd = cfg["status_fd"]
if cfg["namespaces"]:
    confine(cfg["workdir"])
else:
    os.chdir(cfg["workdir"])
pid = os.fork()
if pid == 0:
    os.close(status_fd)
    limits = [(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1),  # soft: SIGXCPU, hard: SIGKILL
              (resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"]),
              (resource.RLIMIT_FSIZE, cfg["max_file_bytes"], cfg["max_file_bytes"]),
              (resource.RLIMIT_CORE, 0, 0)]
    if cfg["nproc"]:
        limits.append((resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"]))
    for res, soft, hard in limits:
        resource.setrlimit(res, (soft, hard))
    sys.addaudithook(refuse_network)
    sys.argv = ["main.py"]
    sys.path.insert(0, os.getcwd())
    with open("main.py") as f:
        source = f.read()
    # A real __main__ module, so that pickle (multiprocessing) finds the code's functions.
    main = type(sys)("__main__")
    main.__file__ = "main.py"
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    try:
        exec(compile(source, "main.py", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # hide this frame
        sys.exit(1)
else:
    _, status, usage = os.wait4(pid, 0)
    report = {"layers": layers, "cpu_s": usage.ru_utime + usage.ru_stime}
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["exit"] = os.WEXITSTATUS(status)
    os.write(status_fd, json.dumps(report).encode())
    os._exit(report.get("exit", 1))
"""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise ToolError(f"{name}={raw!r} is not a positive integer; set it to a whole number above 0 or unset it")
    return int(raw)


@dataclass(frozen=True)
class Limits:
    cpu_s: int
    memory_mb: int
    max_output_bytes: int
    max_procs: int

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            cpu_s=_env_int("TROUPE_PYTHON_CPU_S", DEFAULT_CPU_S),
            memory_mb=_env_int("TROUPE_PYTHON_MEMORY_MB", DEFAULT_MEMORY_MB),
            max_output_bytes=_env_int("TROUPE_PYTHON_MAX_OUTPUT_BYTES", DEFAULT_MAX_OUTPUT_BYTES),
            max_procs=_env_int("TROUPE_PYTHON_MAX_PROCS", DEFAULT_MAX_PROCS),
        )


def hidden_paths(extra: Iterable[Path | str] = ()) -> list[str]:
    """The folders the sandbox covers with an empty tmpfs, outermost only, as real paths.

    Always: the service account's home directory (keys, tokens, caches) and the service's
    working directory (`.env` files, a default `.troupe`), unless either is a system folder;
    `$TROUPE_HOME` when set; every folder in `TROUPE_PYTHON_HIDE_PATHS`; plus `extra` (the
    python tool adds the Troupe home its task's workspace lives in).
    """
    wanted: list[Path] = [Path(p) for p in extra]
    wanted += [p for p in (Path.home().resolve(), Path.cwd().resolve()) if not _is_system(p)]
    if os.environ.get("TROUPE_HOME", "").strip():  # relative to the cwd, as Settings reads it
        wanted.append(Path(os.environ["TROUPE_HOME"].strip()).expanduser().resolve())
    wanted += [Path(p.strip()).expanduser() for p in os.environ.get(ENV_HIDE_PATHS, "").split(",") if p.strip()]
    found: list[Path] = []
    for path in wanted:
        if not path.is_absolute():
            raise ToolError(f"{ENV_HIDE_PATHS}: {str(path)!r} is relative; list absolute folders, comma-separated")
        real = path.resolve()
        if real == Path("/"):
            raise ToolError(f"cannot hide {str(path)!r} (it is the root folder) from the python sandbox; "
                            f"check TROUPE_HOME and {ENV_HIDE_PATHS}")
        found.append(real)
    return _outermost(found)


def _outermost(paths: Iterable[Path]) -> list[str]:
    paths = list(paths)
    return sorted({str(p) for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)})


_SYSTEM = tuple(Path(p) for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys",
                                  "/dev", "/opt"))


def _is_system(path: Path) -> bool:
    """`/`, a folder holding a system folder, or one inside one: never a default to hide."""
    return any(path == s or s.is_relative_to(path) or path.is_relative_to(s) for s in _SYSTEM)


@functools.cache
def _closed_ancestors() -> tuple[Path, ...]:
    """Folders above the interpreter that other users cannot pass through (a 0700 /root).
    Covered like hidden ones, with the interpreter mounted back inside, so that code running
    as a throwaway uid can still import the standard library."""
    closed = set()
    for d in _interpreter_dirs():
        for parent in Path(d).parents:
            with contextlib.suppress(OSError):
                if parent != Path("/") and not parent.stat().st_mode & 0o001:
                    closed.add(parent)
    return tuple(closed)


@functools.cache
def _interpreter_dirs() -> list[str]:
    """What the interpreter needs to start; mounted back (read-only) if a hidden folder holds it."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(str(Path(d).resolve()) for d in dirs)


def human_bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"


# -- pids cgroup -------------------------------------------------------------------------


def _pids_cgroup_base() -> Path | None:
    """Our own cgroup directory in a hierarchy with the pids controller, if any."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        pre, _, post = line.partition(" - ")
        mount_point = pre.split()[4]
        fstype, _source, options = (post.split() + ["", "", ""])[:3]
        for entry in own:
            hier, controllers, path = entry.split(":", 2)
            v1 = fstype == "cgroup" and "pids" in options.split(",") and "pids" in controllers.split(",")
            v2 = fstype == "cgroup2" and hier == "0"
            if v1 or v2:
                base = Path(mount_point) / path.lstrip("/")
                if v1 or "pids" in (base / "cgroup.subtree_control").read_text().split():
                    return base
    return None


class _PidsCgroup:
    """A throwaway pids cgroup: caps the number of processes, finds every one to kill."""

    def __init__(self, base: Path, max_procs: int):
        self.path = base / f"troupe-python-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_procs))
        self.procs = self.path / "cgroup.procs"

    def limit_hit(self) -> bool:
        with contextlib.suppress(OSError):
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, count = line.partition(" ")
                if key == "max" and int(count) > 0:
                    return True
        return False

    async def wait_limit_hit(self) -> None:
        # Polled: cgroup v1 has no notification for it. A sandbox at its process cap is
        # thrashing (fork bomb), so the run ends now rather than at its wall-time limit.
        while not self.limit_hit():
            await asyncio.sleep(0.1)

    async def kill_all(self) -> None:
        for _ in range(200):
            try:
                pids = [int(p) for p in self.procs.read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)

    async def remove(self) -> None:
        await self.kill_all()
        for _ in range(100):  # killed processes leave the cgroup a moment after they die
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                await asyncio.sleep(0.01)
        log.warning("python tool: could not remove cgroup %s", self.path)


# -- isolation detection -----------------------------------------------------------------


@dataclass(frozen=True)
class _Isolation:
    namespaces: bool
    drop_uid: bool
    cgroup_base: Path | None
    layers: tuple[str, ...] = ()
    why_no_namespaces: str = ""
    late_uid: bool = False
    """As root: namespaces without a user namespace, and the code switched to a throwaway uid
    once the mounts are set up (see `_BOOTSTRAP`)."""

    @property
    def nproc_works(self) -> bool:
        # The kernel skips RLIMIT_NPROC for the real root, whatever the namespace says.
        return self.drop_uid or self.late_uid or os.geteuid() != 0

    @property
    def uid_per_run(self) -> bool:
        return self.drop_uid or self.late_uid


_detected: dict[bool, _Isolation] = {}
# asyncio locks belong to one event loop; tests and Ray replicas may each run their own.
_detect_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def isolation() -> _Isolation:
    want_namespaces = os.environ.get("TROUPE_PYTHON_NAMESPACES", "auto").lower() not in ("0", "off", "false")
    lock = _detect_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if want_namespaces not in _detected:
            _detected[want_namespaces] = await _detect(want_namespaces)
        return _detected[want_namespaces]


async def _detect(want_namespaces: bool) -> _Isolation:
    """Find which layers work here by trying them, and log the outcome once."""
    missing: list[str] = []
    cgroup_base = await asyncio.to_thread(_usable_cgroup_base)
    if cgroup_base is None:
        missing.append("pids cgroup (no writable cgroup with the pids controller)")
    limits = Limits.from_env()
    if want_namespaces and os.geteuid() == 0 and shutil.which("unshare"):
        late = _Isolation(namespaces=True, drop_uid=False, cgroup_base=cgroup_base, late_uid=True)
        # The standard library must still import as the new uid (through the mounted-back prefix).
        probe = "import os, json, sqlite3, ctypes; print(os.getuid())"
        outcome = await run_sandboxed(late, probe, "", 30, limits)
        if outcome.status.get("exit") == 0 and outcome.stdout.strip() not in ("0", ""):
            return _report(late, outcome, missing)
        log.info("python tool: namespaces as root with a late uid switch failed (%s); trying a user namespace",
                 outcome.stderr[-300:].strip() or outcome.stdout.strip())
    drop_uid = False
    if os.geteuid() == 0 and shutil.which("setpriv"):
        uid = _random_uid()
        probe = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
            sys.executable, "-I", "-c", "import sys; print(sys.version, sys.base_prefix)",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd="/",
        )  # fmt: skip
        out = (await probe.communicate())[0].decode().strip()
        # Compare, not just run: where the interpreter's own files are unreadable to other
        # users (under a 0700 /root), the loader may quietly pick up the system libpython.
        drop_uid = out == f"{sys.version} {sys.base_prefix}"
        if not drop_uid:
            missing.append(f"unprivileged uid ({sys.executable} does not run as itself for another user: {out[-200:]})")
    iso = _Isolation(namespaces=False, drop_uid=drop_uid, cgroup_base=cgroup_base)
    outcome = None
    if want_namespaces and shutil.which("unshare"):
        outcome = await run_sandboxed(replace(iso, namespaces=True), "pass", "", 30, limits)
        if outcome.status.get("exit") == 0:
            iso = replace(iso, namespaces=True)
        else:
            why = f"unshare failed: {outcome.stderr[-300:].strip()}"
            missing.append(f"namespaces ({why})")
            iso = replace(iso, why_no_namespaces=why)
            outcome = None
    else:
        why = "no unshare binary; install util-linux" if want_namespaces else "TROUPE_PYTHON_NAMESPACES=0"
        missing.append(f"namespaces ({why})")
        iso = replace(iso, why_no_namespaces=why)
    if outcome is None:
        outcome = await run_sandboxed(iso, "pass", "", 30, limits)
        if outcome.status.get("exit") != 0:
            raise ToolError(f"the python sandbox does not start here: {outcome.stderr[-500:]}", retryable=True)
    return _report(iso, outcome, missing)


def _report(iso: _Isolation, outcome: Outcome, missing: list[str]) -> _Isolation:
    """Log the layers in force (and those missing) once; the isolation with its layers."""
    layers = ["rlimits (cpu, address space, file size)", "audit hook on sockets"]
    if iso.namespaces:
        kinds = "net+pid+mount namespaces" if iso.late_uid else "user+net+pid+mount namespaces"
        layers[:0] = [kinds, *outcome.status.get("layers", [])]
    if iso.drop_uid:
        layers.append("unprivileged uid")
    if iso.cgroup_base is not None:
        layers.append(f"pids cgroup under {iso.cgroup_base}")
    elif iso.nproc_works:
        layers.append("RLIMIT_NPROC")
    else:
        missing.append("RLIMIT_NPROC (the kernel ignores it for root)")
    log.info("python tool isolation in force: %s", "; ".join(layers))
    if missing:
        log.warning("python tool isolation NOT available: %s", "; ".join(missing))
    return replace(iso, layers=tuple(layers))


def _usable_cgroup_base() -> Path | None:
    try:
        base = _pids_cgroup_base()
        if base is None:
            return None
        probe = _PidsCgroup(base, 1)
        probe.path.rmdir()
    except OSError:
        return None
    # A process killed mid-run leaves its empty cgroup behind; rmdir refuses busy ones, and
    # the age check spares those another process has just made.
    for stale in base.glob("troupe-python-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 600:
                stale.rmdir()
    return base


def _random_uid() -> int:
    # A fresh uid per run keeps concurrent runs from sharing one RLIMIT_NPROC count, and
    # no real account owns anything in this range.
    return random.randrange(1 << 20, 1 << 30)


# -- one run -----------------------------------------------------------------------------


@dataclass
class Outcome:
    stdout: str = ""
    stderr: str = ""
    status: dict = field(default_factory=dict)
    timed_out: bool = False
    overflow: bool = False
    procs_limit_hit: bool = False


async def _read_capped(stream: asyncio.StreamReader, into: bytearray, cap: int, overflow: asyncio.Event) -> None:
    # Keep draining past the cap: asyncio (3.11) only reports a process as exited once its
    # pipes are closed, and a paused pipe never sees the close.
    while chunk := await stream.read(65536):
        if len(into) <= cap:
            into += chunk[: cap + 1 - len(into)]
            if len(into) > cap:
                overflow.set()


async def _feed(stream: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stream.write(data)
            await stream.drain()
        stream.close()


def _prepare(code: str, uid: int | None) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="troupe-python-"))
    (workdir / "main.py").write_text(code)
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _command(iso: _Isolation, config: dict, uid: int | None, cgroup: _PidsCgroup | None) -> list[str]:
    argv = [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(config)]
    if iso.late_uid:  # real root: no user namespace, the uid switch happens inside
        argv[:0] = ["unshare", "--net", "--pid", "--mount-proc", "--kill-child", "--"]
    elif iso.namespaces:
        argv[:0] = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--mount-proc", "--kill-child", "--"]
    if uid is not None and not iso.late_uid:
        argv[:0] = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    if cgroup is not None:  # join the cgroup before anything runs, so no process escapes the count
        argv[:0] = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup.procs)]
    return argv


def _environment(workdir: Path, namespaces: bool) -> dict[str, str]:
    # Built from scratch: the service's own variables (endpoints, API keys) stay out.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": "/tmp" if namespaces else str(workdir),
        # One thread per numeric library: threads count against the process cap.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _remove_workdir(workdir: Path) -> None:
    """Cleanup never turns a finished run into a failure: a folder left behind is logged."""
    try:
        shutil.rmtree(workdir, ignore_errors=True)  # its last os.close can still raise
    except OSError:
        log.warning("could not remove the sandbox folder %s", workdir, exc_info=True)


async def run_sandboxed(iso: _Isolation, code: str, stdin: str, timeout_s: float, limits: Limits,
                        hide: Iterable[str] | None = None) -> Outcome:
    """Run `code` once; with namespaces, the folders in `hide` (default: `hidden_paths()`) are
    covered by an empty tmpfs, and the sandbox's own working directory is all it can write."""
    hide = hidden_paths() if hide is None else list(hide)
    hide = _outermost([Path(p) for p in hide] + list(_closed_ancestors()))
    uid = _random_uid() if iso.uid_per_run else None
    workdir: Path | None = None
    cgroup: _PidsCgroup | None = None
    proc: asyncio.subprocess.Process | None = None
    status_r, status_w = os.pipe()
    status_pipe: asyncio.BaseTransport | None = None
    tasks: list[asyncio.Task] = []
    out, err = bytearray(), bytearray()
    try:
        workdir = await asyncio.to_thread(_prepare, code, uid)
        cgroup = _PidsCgroup(iso.cgroup_base, limits.max_procs) if iso.cgroup_base else None
        config = {
            "workdir": str(workdir),
            "status_fd": status_w,
            "namespaces": iso.namespaces,
            "late_uid": uid if iso.late_uid else None,
            "hide": hide,
            "keep": _interpreter_dirs(),
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_mb << 20,
            "max_file_bytes": _MAX_FILE_BYTES,
            "nproc": limits.max_procs if iso.nproc_works else 0,
            "pid_max": max(301, limits.max_procs + 4),
            "tmpfs_size": _TMPFS_SIZE,
            "net_refused": NET_REFUSED,
        }
        proc = await asyncio.create_subprocess_exec(
            *_command(iso, config, uid, cgroup), cwd=workdir, env=_environment(workdir, iso.namespaces),
            pass_fds=(status_w,), start_new_session=True, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.close(status_w)
        status_w = -1
        assert proc.stdin and proc.stdout and proc.stderr
        # The status pipe closes when the supervisor is gone; unlike proc.wait() it does not
        # wait for stray processes that still hold stdout open.
        status_reader = asyncio.StreamReader()
        # The file object owns the descriptor from here on: closing the number as well, after a
        # cancel inside connect_read_pipe, would close whatever reused it in another thread.
        status_file = os.fdopen(status_r, "rb", buffering=0)
        status_r = -1
        try:
            status_pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(status_reader), status_file
            )
        except BaseException:
            status_file.close()
            raise
        overflow = asyncio.Event()
        cap = limits.max_output_bytes
        streams = ((proc.stdout, out), (proc.stderr, err))
        readers = [asyncio.create_task(_read_capped(s, b, cap, overflow)) for s, b in streams]
        finished = asyncio.create_task(status_reader.read())
        stoppers = [asyncio.create_task(overflow.wait())]
        if cgroup is not None:
            stoppers.append(asyncio.create_task(cgroup.wait_limit_hit()))
        tasks = [*readers, finished, *stoppers, asyncio.create_task(_feed(proc.stdin, stdin.encode()))]

        done, _ = await asyncio.wait([finished, *stoppers], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        outcome = Outcome(timed_out=not done, overflow=overflow.is_set())
        await _kill_everything(proc, cgroup, uid)
        # Everything is dead now, so the pipes reach EOF at once; the timeout only guards
        # against a process no layer could find (no namespace, cgroup or throwaway uid).
        await asyncio.wait([finished, *readers], timeout=5)
        outcome.stdout = out.decode(errors="replace")
        outcome.stderr = err.decode(errors="replace")
        if finished.done():
            with contextlib.suppress(ValueError):
                outcome.status = json.loads(finished.result() or b"{}")
        outcome.procs_limit_hit = cgroup.limit_hit() if cgroup else False
        return outcome
    finally:
        for task in tasks:
            task.cancel()
        if proc is not None:
            if proc.returncode is None:  # cancelled mid-run, or something still holds a pipe
                await _kill_everything(proc, cgroup, uid)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if status_pipe is not None:
            status_pipe.close()
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if cgroup is not None:
            await cgroup.remove()
        if workdir is not None:
            await asyncio.to_thread(_remove_workdir, workdir)


async def _kill_everything(proc: asyncio.subprocess.Process, cgroup: _PidsCgroup | None, uid: int | None) -> None:
    # The process group covers the normal case; with a PID namespace, killing `unshare`
    # kills its PID 1 (--kill-child) and with it every process inside. Without one, the
    # cgroup or the throwaway uid finds processes that left the group (setsid).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        await cgroup.kill_all()
    elif uid is not None:
        await asyncio.to_thread(_kill_uid, uid)


def _kill_uid(uid: int) -> None:
    for _ in range(50):
        procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        if not procs:
            return
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        time.sleep(0.01)
