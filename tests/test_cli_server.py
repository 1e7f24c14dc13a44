"""tests/cli_server.py: a command run through the warm server gets exactly what a fresh ``python <script>`` gets
(argv, working directory, environment, streams, ``__main__``) and ends as one does (exit status, traceback,
non-daemon threads, atexit handlers); what the server's imports fixed (environment read at import time) makes it run
fresh; a client that gives up takes the command down with it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import cli_server
from conftest import Cli

PROBE = """
import atexit, json, os, sys, threading, time
import numpy
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path0": sys.path[0],
                  "name": __name__, "random": float(numpy.random.random()), "stdin": sys.stdin.read()}), flush=True)
sys.stderr.write("to stderr\\n")
def later():
    time.sleep(0.3)
    print("thread done", flush=True)
threading.Thread(target=later).start()   # not a daemon: the interpreter waits for it before atexit
atexit.register(lambda: print("atexit ran"))
if sys.argv[1] == "raise":
    raise ValueError("boom")
sys.exit(sys.argv[1] if not sys.argv[1].isdigit() else int(sys.argv[1]))
"""


def _run(cli: Cli, tmp_path: Path, *args: str, env=None, stdin: bytes = b"", timeout=120):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    (tmp_path / "in").write_bytes(stdin)
    with open(tmp_path / "in") as inp, open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        code, fresh = cli_server.run([probe, *args], cwd=tmp_path, env=env or cli.env(), server=cli.address(),
                                     stdin=inp.fileno(), stdout=out.fileno(), stderr=err.fileno(), timeout=timeout)
    return code, fresh, (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


@pytest.fixture
def served(cli):
    if cli.address() is None:
        pytest.skip("commands run as fresh processes here (not Linux, or a CUDA device): there is no server")
    return cli


def test_a_command_gets_its_argv_directory_environment_and_streams(served, tmp_path):
    env = served.env(PROBE_ONLY="x y")   # a variable the server never saw: not read at import, so forked
    code, fresh, out, err = _run(served, tmp_path, "3", env=env, stdin=b"typed input")
    assert fresh is None and code == 3
    first, *rest = out.splitlines()
    seen = json.loads(first)
    assert seen["argv"] == [str(tmp_path / "probe.py"), "3"] and seen["cwd"] == str(tmp_path)
    assert seen["env"] == env and seen["path0"] == str(tmp_path) and seen["name"] == "__main__"
    assert seen["stdin"] == "typed input" and err == "to stderr\n"
    assert rest == ["thread done", "atexit ran"]   # the interpreter's order: threads joined, then atexit


def test_each_command_draws_fresh_random_numbers(served, tmp_path):
    draws = {json.loads(_run(served, tmp_path, "0")[2].splitlines()[0])["random"] for _ in range(2)}
    assert len(draws) == 2   # numpy's global generator is not the server's copy


def test_it_exits_as_the_interpreter_does(served, tmp_path):
    code, _, _, err = _run(served, tmp_path, "raise")
    assert code == 1 and "Traceback" in err and "ValueError: boom" in err
    code, _, _, err = _run(served, tmp_path, "stopped: a message")
    assert code == 1 and err.endswith("stopped: a message\n")


def test_an_environment_read_at_import_time_runs_fresh(served, tmp_path):
    env = served.env(HF_HOME=str(tmp_path / "elsewhere"), OMP_NUM_THREADS="2")
    code, fresh, out, _ = _run(served, tmp_path, "0", env=env)
    assert code == 0 and "HF_HOME" in fresh and "OMP_NUM_THREADS" in fresh
    assert json.loads(out.splitlines()[0])["env"] == env


@pytest.mark.slow
def test_a_client_that_gives_up_takes_the_command_down(served, tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    with open(os.devnull, "r+") as null, pytest.raises(subprocess.TimeoutExpired):
        cli_server.run([script], cwd=tmp_path, env=served.env(), server=served.address(), stdin=null.fileno(),
                       stdout=null.fileno(), stderr=null.fileno(), timeout=5)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()


def test_parse_only_stops_an_argparse_tool_after_parsing(served, tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--n', type=int)\n"
                      "p.parse_args()\nprint('did the work')\n")
    for server in (served.address(), None):   # the forked and the fresh form
        with open(tmp_path / "out", "w+") as out, open(os.devnull) as null:
            codes = [cli_server.run([script, "--n", n], cwd=tmp_path, env=served.env(), server=server,
                                    stdin=null.fileno(), stdout=out.fileno(), stderr=out.fileno(),
                                    parse_only=True)[0] for n in ("3", "three")]
        assert codes == [0, 2]
        assert "did the work" not in (tmp_path / "out").read_text()


def test_a_temporary_folder_made_at_import_serves_every_command(served, tmp_path):
    """wandb makes its media folder when imported (in the server): the first command to exit must not remove it
    from under the next one (a wandb image panel then failed with FileNotFoundError)."""
    script = tmp_path / "media.py"
    script.write_text("import os, sys\nfrom wandb.sdk.data_types._private import MEDIA_TMP\n"
                      "open(os.path.join(MEDIA_TMP.name, sys.argv[1]), 'w').close()\nprint(MEDIA_TMP.name)\n")
    folders = []
    for name in ("a.png", "b.png"):
        out = served.script(script, [name], tmp_path)
        assert out.returncode == 0, out.stderr
        folders.append(out.stdout.strip())
    assert folders[0] == folders[1] and Path(folders[0], "a.png").is_file() and Path(folders[0], "b.png").is_file()
