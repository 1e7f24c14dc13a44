"""Shared fixtures: the session's isolated HOME and caches, the CI requirements, warm console scripts, the reference
data beside the checkout, and small generated images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import isolation

# Before anything imports torch, triton, huggingface_hub or matplotlib (they read their cache folders on import).
isolation.isolate_session()
# Before torch loads (libgomp reads it once): spin-waiting threads collapse on a shared CPU. See clipdehaze/__init__.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Test workers already use every core: torch.compile compiles its kernels in the worker instead of starting a pool
# of compile processes (each importing torch) beside it.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton runs kernels on CPU tensors only through its interpreter, which it chooses when first imported (Lightning
# imports it): without CUDA, the Triton selective scan's tests run interpreted. With CUDA, Triton compiles them and
# the `cuda`-marked tests check them on the GPU.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


#: What a machine may lack, with what a test needs it for. ``CLIPDEHAZE_REQUIRE`` (comma-separated; .ci/run sets it)
#: lists those a run must have: a test that would skip for want of one fails instead, naming it.
REQUIREMENTS = {
    "chromium": "headless Chromium (loads clipdehaze-compare's compare.html)",
    "pdflatex": "pdflatex with booktabs (compiles clipdehaze-table's table.tex)",
    "cxx": "a C++ compiler (the compiled CPU selective scan, torch.compile's inductor backend)",
    "triton-interpreter": "Triton with its interpreter (the Triton selective scan on CPU)",
    "iqa-reference": "pyiqa's NIQE/BRISQUE calibration images and MATLAB values (the no-reference metrics' parity)",
    "shared": "the project's shared/ folder beside the checkout (upstream manifests, golden outputs, real photos)",
}


def required() -> set[str]:
    """The requirements ``CLIPDEHAZE_REQUIRE`` lists (an unknown name is an error: a typo must not skip silently)."""
    names = {n.strip() for n in os.environ.get("CLIPDEHAZE_REQUIRE", "").split(",") if n.strip()}
    if unknown := names - set(REQUIREMENTS):
        raise pytest.UsageError(f"CLIPDEHAZE_REQUIRE names {sorted(unknown)}; known: {', '.join(REQUIREMENTS)}")
    return names


def require_or_skip(name: str, reason: str, *, allow_module_level: bool = False):
    """Skip the test (``reason`` says what is missing and how to get it), or fail it where CLIPDEHAZE_REQUIRE
    lists ``name`` (one of :data:`REQUIREMENTS`): in CI a missing tool is an error, not a silent skip."""
    if name not in REQUIREMENTS:
        raise ValueError(f"unknown requirement {name!r}; known: {', '.join(REQUIREMENTS)}")
    if name in required():
        pytest.fail(f"CLIPDEHAZE_REQUIRE lists {name} ({REQUIREMENTS[name]}), but it is missing: {reason}",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


@pytest.fixture
def chromium() -> str:
    """The headless Chromium binary (tests/browser.py drives it), or a skip naming what to install (a failure where
    CLIPDEHAZE_REQUIRE lists chromium)."""
    from browser import find_chromium

    binary = find_chromium()
    if binary is None:
        require_or_skip("chromium", "no headless Chromium on this machine (.ci/run installs Debian's `chromium` with "
                                    "apt-get where it can; elsewhere install chromium to run this test)")
    return binary


_DURATIONS = "clipdehaze/durations"
_measured: dict[str, float] = {}


def pytest_configure(config):
    required()


def pytest_runtest_logreport(report):
    """Each test's time (setup + call + teardown); with xdist the controller sees every worker's reports."""
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    """The controller (or a run without workers) keeps the durations in pytest's cache, for the next run's order."""
    if os.environ.get("PYTEST_XDIST_WORKER") or getattr(session.config, "cache", None) is None:
        return
    known = session.config.cache.get(_DURATIONS, {})
    known.update({k: round(v, 2) for k, v in _measured.items()})
    session.config.cache.set(_DURATIONS, known)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test marked ``exclusive`` (it asserts a wall-clock time) runs while no other test worker runs a test: every
    test holds a shared lock for its setup, call and teardown, an exclusive test waits for the others to finish
    theirs, and a turnstile keeps new ones from starting meanwhile."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import fcntl

    root = Path(os.environ["CLIPDEHAZE_TEST_ROOT"])
    exclusive = item.get_closest_marker("exclusive") is not None
    with open(root / "turnstile.lock", "a") as turnstile, open(root / "running.lock", "a") as running:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(running, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(running, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


def pytest_unconfigure(config):
    isolation.end_session()


def _longest_first(config, items) -> None:
    """Start the longest test files first, so parallel workers finish together: by the time their tests took last
    run (pytest's cache), else counting slow-marked tests. A file's tests stay together and in order (its
    module-scoped fixtures are made once per worker); every worker sorts alike (xdist needs one order)."""
    known = config.cache.get(_DURATIONS, {}) if getattr(config, "cache", None) is not None else {}
    total: dict[str, float] = {}
    for item in items:
        guess = 30.0 if "slow" in item.keywords else 0.5
        total[item.fspath] = total.get(item.fspath, 0.0) + known.get(item.nodeid, guess)
    items.sort(key=lambda item: -total[item.fspath])


def pytest_collection_modifyitems(config, items):
    _longest_first(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; `make gpu-check` runs these on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The suite runs many tiny CPU kernels: one intra-op thread avoids OpenMP barrier stalls on a shared 2-core box
    (one 37x53 forward/backward measured 0.13 s on one thread, 18 s on two under load). Subprocess tests are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: What every console-script run of the suite adds to the session's environment: offline, one OpenMP thread.
CLI_ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
# The session's environment as it is now (isolated, before any test changes it): what command servers start with.
_SESSION_ENV = dict(os.environ)


class Cli:
    """``cli(tool, args, cwd)``: the installed ``clipdehaze-<tool>`` console script, run as a user types it, through
    a warm command server (tests/cli_server.py: same argv, directory, environment, streams as a fresh process, without
    the start-up) -> CompletedProcess with text ``stdout``/``stderr``. ``env`` defaults to :meth:`env`; an env that
    differs in a variable read at import time runs as a fresh process. ``cli.script(path, args, cwd)`` runs any
    Python script file the same way."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._server = None

    @staticmethod
    def env(**extra: str) -> dict[str, str]:
        """The session's isolated environment, offline, with ``extra``."""
        return {**_SESSION_ENV, **CLI_ENV, **extra}

    def address(self) -> str | None:
        """The warm server's address (started now if not yet), None where commands run fresh."""
        import cli_server

        if self._server is None:
            self._server = cli_server.start_server(self.env(), self.tmp / "cli-server.log") or False
        return self._server.address if self._server else None

    def __call__(self, tool: str, args, cwd, *, env=None, timeout: float = 900):
        script = Path(sys.executable).parent / f"clipdehaze-{tool}"
        if not script.is_file():
            pytest.fail(f"{script} is not installed (pip install -e . installs the console scripts)")
        return self.script(script, args, cwd, env=env, timeout=timeout)

    def script(self, script, args, cwd, *, env=None, timeout: float = 900):
        import subprocess
        import tempfile

        import cli_server

        argv = [str(script), *map(str, args)]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
                open(os.devnull) as stdin:
            code, _ = cli_server.run(argv, cwd=cwd, env=self.env() if env is None else env, server=self.address(),
                                     stdin=stdin.fileno(), stdout=out.fileno(), stderr=err.fileno(), timeout=timeout)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, code, out.read(), err.read())

    def close(self) -> None:
        if self._server:
            self._server.close()


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """The session's :class:`Cli` (one warm command server per test worker, started on first use)."""
    runner = Cli(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()


def built_once(name: str, build) -> Path:
    """``<session root>/shared/<name>``: made by ``build(path)`` once per session, by the first test worker that
    needs it (the others wait for it, then reuse it): read-only inputs several workers use."""
    from filelock import FileLock

    path = Path(os.environ["CLIPDEHAZE_TEST_ROOT"]) / "shared" / name
    path.parent.mkdir(exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not (done := path.parent / f"{name}.done").exists():
            build(path)
            done.touch()
    return path


def _shared_dir() -> Path | None:
    candidates = [os.environ.get("CLIPDEHAZE_SHARED"), REPO.parent / "shared", REPO / "shared"]
    for c in candidates:
        if c and (Path(c) / "reference").is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or $CLIPDEHAZE_SHARED); tests that need it are skipped with the reason when absent."""
    d = _shared_dir()
    if d is None:
        require_or_skip("shared", "reference data not found: put the project's shared/ folder beside the checkout "
                                  "or set CLIPDEHAZE_SHARED=/path/to/shared")
    return d


def read_manifest(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """Parse a reference manifest: ``key<TAB>AxBxC`` per line, ``#`` comment lines skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        # BatchNorm's num_batches_tracked is written as "scalar" (a 0-d tensor).
        dims = () if shape in ("", "scalar") else tuple(int(s) for s in shape.split("x"))
        rows.append((key, dims))
    return rows


VENDORED_MANIFESTS = REPO / "tests" / "reference" / "manifests"


def manifest_param_count(name: str) -> int:
    """The published implementation's parameter count, from the manifest's comment line."""
    import re

    header = (VENDORED_MANIFESTS / f"{name}.tsv").read_text().splitlines()[0]
    return int(re.search(r"(\d+) parameters", header).group(1))


@pytest.fixture(scope="session")
def manifest():
    """``manifest(name)`` -> [(key, shape), ...] from the vendored copy of ``shared/reference/manifests/<name>.tsv``
    (kept identical to shared/ by tests/test_reference_vendored.py), so fidelity tests never skip."""

    def load(name: str):
        path = VENDORED_MANIFESTS / f"{name}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no vendored manifest for variant {name!r}")
        return read_manifest(path)

    return load


def _smooth_image(rng, h: int, w: int):
    """A smooth random RGB image (uint8), like a blurred photo: low-frequency noise upsampled."""
    import numpy as np
    from PIL import Image

    small = rng.random((max(2, h // 8), max(2, w // 8), 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img)


def make_paired_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], seed: int = 0,
                       input_dir: str = "hazy", target_dir: str = "GT") -> Path:
    """Write ``root/<split>/{hazy,GT}/NNNN.png`` pairs with a constant-haze relation (I = 0.6 J + 0.35)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, shapes in sizes.items():
        (root / split / input_dir).mkdir(parents=True, exist_ok=True)
        (root / split / target_dir).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(shapes):
            clean = _smooth_image(rng, h, w)
            hazy = (clean.astype(np.float32) * 0.6 + 0.35 * 255).round().clip(0, 255).astype(np.uint8)
            Image.fromarray(clean).save(root / split / target_dir / f"{i:04d}.png")
            Image.fromarray(hazy).save(root / split / input_dir / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_paired_root(tmp_path_factory) -> Path:
    """6 train pairs (72x88) and 2 odd-sized test pairs: enough for fast_dev_run / short fits."""
    root = tmp_path_factory.mktemp("tiny_paired")
    return make_paired_folder(root, {"train": [(72, 88)] * 6, "test": [(45, 61), (50, 37)]})


CONF_DIR = REPO / "conf"


def compose_in(tmp: Path, config_name: str = "train", overrides: list[str] | None = None, out: Path | None = None):
    """A composed config with the Hydra runtime set as a command's: output dir ``out`` (default ``tmp/run``), working
    directory and logs in ``tmp``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from clipdehaze.utils.hydra_utils import register_with_hydra

    register_with_hydra()
    GlobalHydra.instance().clear()
    out = Path(out or tmp / "run")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(tmp)
        cfg.hydra.job.num = 0
        cfg.paths.log_dir = str(tmp / "logs")
    out.mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    """``compose_cfg(config_name, overrides, out=None)`` -> :func:`compose_in` under the test's tmp_path."""
    from hydra.core.global_hydra import GlobalHydra

    yield lambda config_name="train", overrides=None, out=None: compose_in(tmp_path, config_name, overrides, out)
    GlobalHydra.instance().clear()


TINY_TRAINING = ["model=dehazeformer_test", "debug=quick", "trainer.max_epochs=2", "seed=5", "data=paired",
                 "data.crop_size=48", "data.batch_size=2", "data.num_workers=0", "data.name=tiny"]


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory, tiny_paired_root):
    """(run folder, train()'s summary) of one short training of dehazeformer_test on :func:`tiny_paired_root`
    (:data:`TINY_TRAINING`: debug=quick, 2 epochs, seed 5), made once per test worker: checkpoints/last.ckpt and the
    best one, metrics.json, per_image.csv. Read it; a test that changes it works on a copy."""
    from hydra.core.global_hydra import GlobalHydra

    from clipdehaze.train import train

    tmp = tmp_path_factory.mktemp("trained_tiny")
    run = tmp / "train_run"
    summary = train(compose_in(tmp, "train", [*TINY_TRAINING, f"data.root={tiny_paired_root}"], out=run))
    GlobalHydra.instance().clear()
    return run, summary


IQA_CALIBRATION_SDIST = "pyiqa==0.1.16"


@pytest.fixture(scope="session")
def iqa_calibration() -> Path:
    """pyiqa's ``ResultsCalibra`` folder: five TID2013 images with the official MATLAB NIQE/BRISQUE values
    (``results_official.csv``), shipped in the pyiqa 0.1.16 sdist (not its wheel). Found under
    $CLIPDEHAZE_IQA_CALIBRATION or the checkout's ignored ``.cache/iqa-calibration``, else fetched once from the
    package index with pip (``pip download --no-binary :all: pyiqa==0.1.16``) into it, so later runs (and CI's
    clean runs of one checkout) reuse it; skipped with the reason when neither works ("iqa-reference")."""
    import subprocess
    import tarfile
    import tempfile

    from filelock import FileLock

    cache = isolation.PERSISTENT / "iqa-calibration"
    given = os.environ.get("CLIPDEHAZE_IQA_CALIBRATION")
    if given and (Path(given) / "results_official.csv").is_file():
        return Path(given)
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / ".lock"):   # test workers: one downloads, the other waits and reuses
        if (cache / "ResultsCalibra" / "results_official.csv").is_file():
            return cache / "ResultsCalibra"
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                   IQA_CALIBRATION_SDIST]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=300)
                sdist = next(Path(tmp).glob("pyiqa-*.tar.gz"))
                with tarfile.open(sdist) as tar:
                    members = [m for m in tar.getmembers() if "/ResultsCalibra/" in m.name and m.isfile()]
                    for m in members:
                        m.name = m.name.split("/ResultsCalibra/", 1)[1]
                        tar.extract(m, Path(tmp) / "ResultsCalibra", filter="data")
                os.replace(Path(tmp) / "ResultsCalibra", cache / "ResultsCalibra")
            except (subprocess.SubprocessError, OSError, StopIteration, tarfile.TarError) as e:
                require_or_skip("iqa-reference", f"NIQE/BRISQUE calibration images unavailable "
                                f"({type(e).__name__}): put pyiqa 0.1.16's ResultsCalibra folder at "
                                "$CLIPDEHAZE_IQA_CALIBRATION, or allow `pip download --no-binary :all: "
                                f"{IQA_CALIBRATION_SDIST}`")
    return cache / "ResultsCalibra"
