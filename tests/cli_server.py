"""Run the installed console scripts (``.venv/bin/clipdehaze-*``) as a shell runs them, without paying Python + torch
+ Lightning start-up for every command (used by tests/docs_harness.py and conftest's ``cli`` fixture).

A server process imports what the console scripts import, once, then forks one process per command. That process
takes the command's argv, working directory, environment and standard streams, and runs the console script's own
file as ``__main__`` (``runpy.run_path``), so what runs is the script a user types; it ends through the
interpreter's shutdown sequence (non-daemon threads joined, atexit handlers, buffered output flushed; see
:func:`run_as_main`), and its exit status is what ``python <script>`` would return (a signal gives ``-signum``, as
in :mod:`subprocess`).

A forked process differs from a fresh one only in what the server's imports fixed, and those are checked:

* Environment variables read at import time (``HF_HOME`` by huggingface_hub, ``OMP_*`` by libgomp, ``PYTHON*`` by
  the interpreter): the server records every variable Python code reads while it imports, and adds the prefixes
  that native libraries and the interpreter read with ``getenv``. A command whose environment differs from the
  server's in one of them runs as a fresh process instead (:func:`run` says so in ``fresh``). Some libraries read
  the whole environment (fsspec copies it to look for FSSPEC_*), so in practice a command that changes or removes
  any variable the server had, other than the shell's own bookkeeping (``PWD``, ``OLDPWD``, ``SHLVL``, ``_``),
  runs fresh; one that only adds variables is forked.
* Thread pools: the server runs no tensor operation, so torch's OpenMP pool does not exist yet when it forks
  (OpenBLAS shuts its threads down around a fork itself); with a CUDA device the caller uses no server at all
  (a CUDA driver initialised before a fork is unusable in the child).
* Per-process state: Python's ``random`` reseeds itself in a forked child, numpy's global generator is reseeded here
  from the OS as a fresh process seeds it; torch's default generator is untouched by the server, so it has a fresh
  process's default seed. Hydra's global state is set up by ``hydra.main`` inside the command, never in the server.
  Temporary directories made at import time (wandb's media folder) are shared by the commands, which write
  uniquely named files there: no command removes them when it exits, the server's :meth:`CommandServer.close` does.

Each command runs in a session of its own; if the client goes away (a timeout), the command's process group is
killed. Linux only (abstract sockets, pidfds): elsewhere :func:`start_server` returns None and commands run fresh.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

#: Prefixes of environment variables read outside Python code, at interpreter or native library start-up.
NATIVE_ENV_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "MALLOC_",
                       "CUDA", "NVIDIA_", "TORCH", "TRITON_", "TMPDIR", "PATH")
#: Imported lazily by the console scripts when they run (every command that builds a CLIP, or resolves clip_dim).
WARM = ("open_clip",)
_HEADER = struct.Struct("!I")
_READY = "cli-server-ready "


# ----------------------------------------------------------------------------------------------------- client side
class CommandServer:
    """A warm server process (``python cli_server.py serve``) started with ``env``; close() ends it and its waiters."""

    def __init__(self, proc: subprocess.Popen, address: str, log: Path, tmpdirs: Sequence[str]):
        self.proc, self.address, self.log, self.tmpdirs = proc, address, log, list(tmpdirs)

    def close(self) -> None:
        import shutil

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # the server and its waiters; a waiter's death kills its command
        self.proc.wait()
        for path in self.tmpdirs:
            shutil.rmtree(path, ignore_errors=True)


def start_server(env: Mapping[str, str], log: Path, warm: Sequence[str] = (),
                 timeout: float = 600) -> CommandServer | None:
    """Start a server that imports every console script's module of the installed clipdehaze (and ``warm``), with
    ``env`` as its environment; None where forking cannot stand in for a fresh process (not Linux, or a CUDA GPU)."""
    if sys.platform != "linux":
        return None
    address = f"clipdehaze-cli-{os.getpid()}-{time.monotonic_ns()}"   # an abstract socket: nothing on disk
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, __file__, "serve", address, *warm], env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True, cwd=log.parent)
    ready = proc.stdout.readline()
    proc.stdout.close()
    if not ready.startswith(_READY):
        proc.wait(timeout)
        raise RuntimeError(f"the command server did not start (exit {proc.returncode}): {log.read_text()[-3000:]}")
    info = json.loads(ready[len(_READY):])
    server = CommandServer(proc, address, log, info["tmpdirs"])
    if info["cuda"]:
        server.close()
        return None
    return server


def run(argv: Sequence[str], *, cwd: str | os.PathLike, env: Mapping[str, str], server: str | None,
        stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
        timeout: float | None = None, parse_only: bool = False) -> tuple[int, str | None]:
    """Run the console script ``argv[0]`` (a path) with ``argv[1:]``, in ``cwd`` with exactly ``env``, reading and
    writing the given file descriptors (default: this process's). Returns (exit status, why it ran as a fresh process
    or None). ``server`` is a :class:`CommandServer`'s address, or None for a fresh process. ``parse_only`` stops an
    argparse tool right after its command line parsed (exit 0), before it does anything."""
    fds = [sys.stdin.fileno() if stdin is None else stdin, sys.stdout.fileno() if stdout is None else stdout,
           sys.stderr.fileno() if stderr is None else stderr]
    request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": dict(env), "parse_only": parse_only}
    why = "no command server"
    if server is not None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect("\0" + server)
            body = json.dumps(request).encode()
            socket.send_fds(sock, [_HEADER.pack(len(body))], fds)
            sock.sendall(body)
            sock.settimeout(timeout)
            try:
                reply = _read_line(sock)
            except socket.timeout:
                # Closing the connection makes the server kill the command's process group.
                raise subprocess.TimeoutExpired(list(argv), timeout) from None
        if "returncode" in reply:
            return reply["returncode"], None
        why = reply["fresh"]
    cmd = [sys.executable, __file__, "parse-only", *argv] if parse_only else list(argv)
    if str(cmd[0]).endswith(".py"):   # a script file rather than an installed console script
        cmd.insert(0, sys.executable)
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=dict(env), stdin=fds[0], stdout=fds[1], stderr=fds[2],
                         timeout=timeout)
    return out.returncode, why


def _read_line(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the command server closed the connection without an exit status")
        data += chunk
    return json.loads(data)


# ----------------------------------------------------------------------------------------------------- server side
#: Temporary directories the imports made (wandb keeps one for media files): every command shares them.
_IMPORT_TMPDIRS: list = []


def _warm(modules: Sequence[str]) -> set[str]:
    """Import the console scripts' modules and ``modules``; the environment variables Python code read meanwhile.
    Temporary directories made meanwhile are kept in :data:`_IMPORT_TMPDIRS`."""
    import importlib
    import tempfile
    from importlib import metadata

    read: set[str] = set()
    getitem = os._Environ.__getitem__
    init = tempfile.TemporaryDirectory.__init__

    def recording(self, key):
        read.add(key)
        return getitem(self, key)

    def made(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _IMPORT_TMPDIRS.append(self)

    os._Environ.__getitem__ = recording
    tempfile.TemporaryDirectory.__init__ = made
    try:
        scripts = [e.module for e in metadata.distribution("clipdehaze").entry_points if e.group == "console_scripts"]
        for name in [*scripts, *WARM, *modules]:
            importlib.import_module(name)
    finally:
        os._Environ.__getitem__ = getitem
        tempfile.TemporaryDirectory.__init__ = init
    return read


#: Set by a shell for each command it runs; nothing reads them to decide anything.
SHELL_BOOKKEEPING = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})


def _import_time(key: str, read: set[str]) -> bool:
    return key not in SHELL_BOOKKEEPING and (key in read or key.startswith(NATIVE_ENV_PREFIXES))


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    (size,) = _HEADER.unpack(msg)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), fds


def _wait_and_report(conn: socket.socket, pid: int) -> None:
    """In the waiter: the command's exit status to the client; if the client goes away first, kill the command."""
    pidfd = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([pidfd, conn], [], [])
        if conn in ready and not conn.recv(1):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            return


def _become(request: dict, fds: list[int]) -> None:
    """In the forked command process: take the command's session, streams, directory, environment and argv."""
    import ctypes

    os.setsid()
    # The waiter dies with the server (closed at the end of a test): the command follows instead of living on.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if stream.isatty():
            stream.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(request["argv"][0]).resolve().parent)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    import atexit

    for tmp in _IMPORT_TMPDIRS:   # shared by every command: the server's to remove, not the first command's
        atexit.unregister(tmp.cleanup)
        tmp._finalizer.detach()


def serve(address: str, modules: Sequence[str]) -> dict:
    """Accept commands forever; returns only in a forked command process, with its request."""
    server_env = dict(os.environ)   # as started: imports may set variables of their own (OMP_WAIT_POLICY)
    read = _warm(modules)
    import torch

    cuda = torch.cuda.device_count() > 0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(64)
    import gc

    gc.freeze()   # the warm modules' objects: never scanned by a child's collections, so never copied by them
    print(_READY + json.dumps({"pid": os.getpid(), "cuda": cuda, "tmpdirs": [t.name for t in _IMPORT_TMPDIRS]}),
          flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        conn, _ = listener.accept()
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as e:
            print(f"cli_server: bad request: {e}", file=sys.stderr, flush=True)
            conn.close()
            continue
        env = request["env"]
        differ = sorted(k for k in set(env) | set(server_env)
                        if env.get(k) != server_env.get(k) and _import_time(k, read))
        if differ:
            conn.sendall(json.dumps({"fresh": f"environment differs from the server's in {', '.join(differ)}, "
                                              "read when modules are imported"}).encode() + b"\n")
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:   # the waiter
                listener.close()
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    _become(request, fds)
                    return request
                for fd in fds:
                    os.close(fd)
                try:
                    _wait_and_report(conn, pid)
                finally:
                    os._exit(0)
        for fd in fds:
            os.close(fd)
        conn.close()


def _stop_after_parsing() -> None:
    """argparse's top-level parse ends the program (exit 0) once the command line parsed."""
    import argparse

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_exit(self, *args, **kwargs):
        parse_args(self, *args, **kwargs)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = parse_then_exit


def run_as_main(script: str) -> None:
    """Run ``script`` as ``__main__`` and exit as the interpreter does: the exit status of ``sys.exit`` (a non-int
    printed, status 1), an uncaught exception's traceback (status 1; KeyboardInterrupt by SIGINT), non-daemon threads
    joined, atexit handlers run, standard streams flushed. The forked process then leaves with ``os._exit``: tearing
    down thousands of inherited modules would copy the server's whole heap (seconds per command), and Python does not
    promise finalizers for objects still alive at exit."""
    import atexit
    import runpy
    import threading

    interrupted = False
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:   # noqa: BLE001 - what the interpreter does with an uncaught exception
        sys.excepthook(type(e), e, e.__traceback__)
        code, interrupted = 1, isinstance(e, KeyboardInterrupt)
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "serve":
        command = serve(rest[0], rest[1:])
        if command["parse_only"]:
            _stop_after_parsing()
        run_as_main(sys.argv[0])
    elif mode == "parse-only":   # the fresh-process form of parse_only
        import runpy

        sys.argv = rest
        sys.path[0] = str(Path(rest[0]).resolve().parent)
        _stop_after_parsing()
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        raise SystemExit(f"usage: {__file__} serve ADDRESS [MODULE...] | parse-only SCRIPT [ARG...]")
