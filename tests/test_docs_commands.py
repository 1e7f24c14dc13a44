"""Every clipdehaze command that README.md and experiments/**/README.md show runs as written (tests/docs_harness.py
says exactly what it checks and adds: the command composes or parses as written, then runs with a fixed set of
shortening overrides, never hydra.sweep.dir, hydra.run.dir or paths.*), from a fresh working directory outside the
checkout with HOME and every cache in the test's temporary directory; a command marked ``(needs: X)`` stops offline
naming what it needs, and runs past it with a stand-in where one exists; what the comments promise is checked.
``CLIPDEHAZE_DOCS_REPORT=<file>`` writes the list of commands with their status."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import docs_harness as H
from conftest import Cli, _shared_dir, built_once, require_or_skip


def _doc_id(path: Path) -> str:
    return str(path.relative_to(H.REPO))


@pytest.fixture(scope="session")
def paper_data() -> Path:
    """Tiny pairs in every paper dataset's layout, made once per session and linked into each working directory."""
    return built_once("paper-data", lambda path: H.make_paper_datasets(path / "data")) / "data"


@pytest.fixture(scope="session")
def warm_cache() -> Path:
    """A CLIPDEHAZE_CACHE with the embedded default datasets and the compiled CPU scan, made once per session and
    linked into each doc part's own cache."""
    from clipdehaze.data.synth import ensure_default_dataset
    from clipdehaze.models.ssm import cpu_kernel

    def build(path: Path) -> None:
        for kind in ("haze", "allweather"):
            ensure_default_dataset(path / "datasets", kind=kind)
        if cpu_kernel.unavailable_reason() is None:   # built (into the session's cache) where a compiler exists
            H.link_tree(Path(os.environ["CLIPDEHAZE_CACHE"]) / "kernels", path / "kernels")

    return built_once("clipdehaze-cache", build)


def _session_folder(name: str) -> Path:
    path = Path(os.environ["CLIPDEHAZE_TEST_ROOT"]) / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def standins() -> Path:
    """Shared by the test workers: the stand-in files of needs (each written under a temporary name, then renamed)."""
    return _session_folder("docs-standins")


@pytest.fixture(scope="session")
def once() -> Path:
    """Shared by the test workers: a prose command several docs name runs for one of them."""
    return _session_folder("docs-once")


def _run(part: H.Part, tmp_path: Path, paper_data: Path, warm_cache: Path, standins: Path, once: Path | None = None):
    env = Cli.env()
    # Where the harness finds the recordings a documented command replays (clipdehaze-reproduce trajectory).
    if (shared := _shared_dir()) is not None:
        env["CLIPDEHAZE_SHARED"] = str(shared)
    else:
        env.pop("CLIPDEHAZE_SHARED", None)
    return H.run_part(part, tmp_path, env, data=paper_data, cache=warm_cache, standins=standins, once=once)


PARTS = [part for doc in H.DOCS for part in H.parts(doc.read_text(), _doc_id(doc))]


@pytest.mark.slow
@pytest.mark.parametrize("part", PARTS, ids=[p.id for p in PARTS])
def test_documented_commands_run_as_written(part: H.Part, tmp_path: Path, paper_data, warm_cache, standins, once):
    result = _run(part, tmp_path, paper_data, warm_cache, standins, once)
    if report := os.environ.get("CLIPDEHAZE_DOCS_REPORT"):
        with open(report, "a") as f:
            for r in result.records:
                needs = f" (needs {', '.join(r['needs'])}: stopped naming each, then ran with stand-ins)" \
                    if r.get("needs") else ""
                needs += f" ({r['reason']})" if r.get("reason") else ""
                f.write(f"| {part.doc} | `{r['tool']} {' '.join(r['args'])}` | {r['status']}{needs} | "
                        f"{r['seconds']} s |\n")
    assert not result.failures, "\n".join(result.failures)
    assert all(r["status"] in ("ok", "skipped") for r in result.records)
    # Every command shown ran at least once (loops run theirs several times).
    assert len(result.records) >= len(part.commands), (len(result.records), part.commands)
    if skipped := [f"{r['tool']} {' '.join(r['args'])}: {r['reason']}" for r in result.records
                   if r["status"] == "skipped"]:   # only a recording of shared/ is ever missing
        require_or_skip("shared", f"{part.id}: every other command ran as written; skipped " + "; ".join(skipped))


def test_every_doc_with_commands_is_tested():
    """Each doc's parts together hold every command it shows, in a block or in prose."""
    for doc in H.DOCS:
        text = doc.read_text()
        shown = [c for b in H.code_blocks(text) for c in H.commands_in(b)] + H.inline_commands(text)
        held = [c for p in H.parts(text, _doc_id(doc)) for c in p.commands]
        assert set(shown) == set(held), (doc, set(shown) ^ set(held))


def test_a_doc_splits_where_no_command_reads_an_earlier_run(monkeypatch):
    text = ("```bash\n# train\nclipdehaze-train a=1\n\n# evaluate it\nclipdehaze-eval ckpt_path=<run>/x\n\n"
            "clipdehaze-train -m b=1,2\nclipdehaze-table outputs/train/multiruns/<stamp>\n```\n\n"
            "Prose: `clipdehaze-bench scan` and again `clipdehaze-bench scan`.\n\n```bash\nRUN=<run>\n"
            "clipdehaze-eval ckpt_path=$RUN/y\n```\n")
    monkeypatch.setattr(H, "MAX_PART_COMMANDS", 1)
    found = H.parts(text, "DOC.md")
    assert [(p.id, p.commands) for p in found] == [
        ("DOC.md:2", ["clipdehaze-train a=1", "clipdehaze-eval ckpt_path=<run>/x"]),
        ("DOC.md:8", ["clipdehaze-train -m b=1,2", "clipdehaze-table outputs/train/multiruns/<stamp>",
                      "clipdehaze-eval ckpt_path=$RUN/y"]),   # the next block reads the sweep's run
        ("DOC.md:prose", ["clipdehaze-bench scan"])]
    assert found[0].scripts == ["# train\nclipdehaze-train a=1\n", "# evaluate it\nclipdehaze-eval ckpt_path=<run>/x\n"]
    monkeypatch.setattr(H, "MAX_PART_COMMANDS", 4)
    assert [p.id for p in H.parts(text, "DOC.md")] == ["DOC.md:2", "DOC.md:8", "DOC.md:prose"]


@pytest.mark.slow
def test_a_broken_documented_command_fails_the_harness(tmp_path, paper_data, warm_cache, standins):
    """What the shortened run alone would pass: a typo in a key the shortening replaces (a README line with a
    mistyped CLIP), a value of the wrong type there, and a ``(needs: X)`` command that does not need X."""
    (readme_line,) = [ln for ln in (H.REPO / "README.md").read_text().splitlines()
                      if ln.startswith("clipdehaze-data clip-cache")]
    typo = readme_line.replace("clip=vit_b32_openai", "clip=vit_b32_opneai")
    assert typo != readme_line
    doc = "\n".join(f"```bash\n{cmd}\n```\n" for cmd in [
        typo,
        "clipdehaze-train model=dehazeformer_test data=reside6k trainer.max_epochs=1O",
        "clipdehaze-eval model=dcp data=reside6k   # (needs: gpu)",
        "clipdehaze-eval model=dcp data=reside6k   # -> metrics.json, per_image.csv, nowhere.png",
    ])
    failures, records = [], []
    for i, part in enumerate(H.parts(doc, "BROKEN.md")):
        result = _run(part, tmp_path / str(i), paper_data, warm_cache, standins)
        failures += result.failures
        records += result.records
    assert [r["status"] for r in records] == ["FAILED"] * 4, records
    assert len(failures) == 4
    typo_failure, type_failure, needs_failure, promise_failure = failures
    assert "as written, `clipdehaze-train data=reside6k clip=vit_b32_opneai" in typo_failure
    assert "vit_b32_opneai" in typo_failure and "Could not find" in typo_failure
    assert re.search(r"trainer.max_epochs=1O as written composes trainer.max_epochs to '1O' \(str\), where the "
                     r"shortening sets 1 \(int\)", type_failure), type_failure
    assert "(needs: gpu): expected to stop naming 'needs a CUDA GPU', but it succeeded" in needs_failure
    assert "the docs say '-> metrics.json, per_image.csv, nowhere.png': not written: ['nowhere.png']" \
        in promise_failure
    # The shortened run of the first two would have passed: only the as-written step ran for them.
    assert [len(r["steps"]) for r in records[:2]] == [1, 1]


def test_shortening_replaces_a_key_the_command_sets_and_appends_the_rest():
    args = ["-m", "experiment=cliphaze_ablation", "clip=vit_b32_openai", "seed=0,1"]
    out = H.shortened("train", args)
    assert out[:2] == ["-m", "experiment=cliphaze_ablation"] and "seed=0,1" in out
    assert "clip=vit_b32_openai" not in out and out.count("clip=tiny_random") == 1
    assert not any(a.startswith(("hydra.run", "hydra.sweep", "paths.")) for a in out)
    assert H.shortened("bench", ["models", "--models", "a", "b", "--sizes", "256", "--no-memory"]) == [
        "models", "--models", "a", "b", "--sizes", "64", "--mac-size", "64", "--repeats", "1", "--no-memory",
        "--no-profile", "--clip-model", "clipdehaze_tiny", "--train-batch", "1", "--train-crop", "48",
        "--goal-repeats", "0"]
    assert "hydra.sweeper.n_trials=2" in H.shortened("train", ["-m", "hparams_search=dehazeformer_optuna"])
    assert H.shortened("train", ["model=x"], ["trainer=cpu"])[-1] == "trainer=cpu"


def test_as_written_composes_each_sweep_value_with_the_original_arguments():
    runs = H.as_written_runs("train", ["-m", "model=a,b", "seed=0,1,2", "clip=vit_b32_openai", "lr=interval(0,1)"])
    assert [args for _, args, _ in runs] == [
        ["clip=vit_b32_openai", f"model={m}", f"seed={s}", "--cfg", "job", "--resolve"]
        for m, s in (("a", "0"), ("b", "1"), ("a", "2"))]
    assert H.as_written_runs("data", ["clip-cache", "data=x", "clip=y"]) == [
        ("train", ["data=x", "clip=y", "--cfg", "job", "--resolve"], False)]
    assert H.as_written_runs("bench", ["models", "--sizes", "256"]) == [("bench", ["models", "--sizes", "256"], True)]
    assert H.as_written_runs("table", ["outputs/x"]) == []
    assert H.as_written_runs("train", ["--help"]) == H.as_written_runs("train", ["--cfg", "job", "model=x"]) == []
    composed = {"data": {"crop_size": "25x6", "batch_size": 4}, "trainer": {"max_epochs": 3.0}}
    problems = H.shortened_key_problems("train", ["data.crop_size=25x6", "data.batch_size=4", "trainer.max_epochs=3.0",
                                                  "clip=vit_b32_openai"], composed)
    assert len(problems) == 1 and problems[0].startswith("data.crop_size=25x6 as written composes data.crop_size")


def test_doc_scripts_resolve_placeholders_needs_markers_and_what_comments_say():
    script = H.to_script("# evaluate -> metrics.json\nclipdehaze-eval ckpt_path=<run>/checkpoints/last.ckpt\n"
                         "clipdehaze-train -m x=1 \\\n    hydra.launcher.partition=<partition>"
                         "   # (needs: slurm, gpu)\n"
                         "\nclipdehaze-table outputs/train/multiruns/<stamp>   # four rows\n")
    assert "ckpt_path=$(__latest run)/checkpoints/last.ckpt" in script
    assert "CLIPDEHAZE_DOCS_NEEDS=slurm,gpu CLIPDEHAZE_DOCS_SAYS=" in script and "PLACEHOLDER-partition" in script
    assert "CLIPDEHAZE_DOCS_SAYS='evaluate -> metrics.json' clipdehaze-eval" in script
    assert "CLIPDEHAZE_DOCS_SAYS='four rows' clipdehaze-table outputs/train/multiruns/$(__latest stamp)" in script
    with pytest.raises(ValueError, match="unknown placeholder"):
        H.to_script("clipdehaze-train model=<name>\n")


def test_file_promises_read_the_listings_the_docs_use():
    assert H._file_names("table.md, .csv, .tex, plots.png") == ["table.md", "table.csv", "table.tex", "plots.png"]
    assert H._file_names("metrics.json (numbers, protocol), per_image.csv, grid.png") == [
        "metrics.json", "per_image.csv", "grid.png"]
    assert H._file_names("outputs/tables/sar_weather/table.md/.csv/.tex") == [
        "outputs/tables/sar_weather/table.md", "outputs/tables/sar_weather/table.csv",
        "outputs/tables/sar_weather/table.tex"]
    assert H._file_names("outputs/train/multiruns/<stamp>/{0,1,2}") == ["outputs/train/multiruns/<stamp>/{0,1,2}"]
    assert H._file_names("SOTS-indoor, DehazeFormer protocol") == []


def test_every_needs_marker_in_the_docs_is_known():
    for doc in H.DOCS:
        for marks in re.findall(r"\(needs: ([\w, -]+)\)", doc.read_text()):
            for mark in marks.split(","):
                assert mark.strip() in H.NEEDS, (doc, mark)


def test_every_console_script_has_a_shell_function():
    script = H.preamble()
    for tool in H.tools():
        assert f"clipdehaze-{tool}() {{" in script
    assert {"train", "eval", "predict", "data", "table", "compare", "bench"} <= set(H.tools())


def test_a_documented_trajectory_replay_gets_the_shared_recording_or_a_skip_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPDEHAZE_SHARED", raising=False)
    why = H.provide_shared_files("reproduce", ["trajectory", "run.pt"])
    assert why and "shared/" in why and not (tmp_path / "run.pt").exists()
    recordings = tmp_path / "shared" / "reference" / "trajectories"
    recordings.mkdir(parents=True)
    (recordings / "run.pt").write_bytes(b"recorded")
    monkeypatch.setenv("CLIPDEHAZE_SHARED", str(tmp_path / "shared"))
    assert "other.pt" in H.provide_shared_files("reproduce", ["trajectory", "other.pt"])
    assert H.provide_shared_files("reproduce", ["trajectory", "run.pt"]) is None
    assert (tmp_path / "run.pt").read_bytes() == b"recorded"
    assert H.provide_shared_files("train", ["model=dehazeformer_t"]) is None
    assert H.shortened("reproduce", ["trajectory", "run.pt", "--json", "out.json"]) == [
        "trajectory", "run.pt", "--json", "out.json"]
    assert H.as_written_runs("reproduce", ["trajectory", "run.pt"]) == []


def test_reproduce_commands_get_the_shortening_of_the_tool_they_run(tmp_path, monkeypatch):
    """Training a table gets train's shortening, scoring weights eval's, listing / dry runs / rendering none; as
    written, a table to train or score composes every row through its dry run; a ``--weights DIR`` the docs name is
    created in upstream's saved_models/ layout for the table's first rows."""
    train, evaluate = list(H.SHORTENING["train"]), list(H.SHORTENING["eval"])
    assert H.shortened("reproduce", ["dehazeformer", "--table", "sots_indoor"])[3:] == train
    assert H.shortened("reproduce", ["dehazeformer", "--table", "t", "--weights", "w/", "trainer.limit_test_batches=9"]
                       ) == ["dehazeformer", "--table", "t", "--weights", "w/", *evaluate]
    for quiet in H.REPRODUCE_QUIET:
        assert H.shortened("reproduce", ["dehazeformer", "--table", "t", quiet]) == ["dehazeformer", "--table", "t", quiet]
        assert H.as_written_runs("reproduce", ["dehazeformer", "--table", "t", quiet]) == []
    assert H.as_written_runs("reproduce", ["dehazeformer", "--table", "t", "seed=1"]) == [
        ("reproduce", ["dehazeformer", "--table", "t", "seed=1", "--dry-run"], False)]
    assert H._needs_a_generator("reproduce", ["dehazeformer", "--table", "sots_outdoor", "--weights", "saved_models/"])
    monkeypatch.chdir(tmp_path)
    H.provide_reproduce_weights(["dehazeformer", "--table", "sots_outdoor", "--weights", "saved_models/"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pth")) == [
        "saved_models/outdoor/dehazeformer-s.pth", "saved_models/outdoor/dehazeformer-t.pth"]
    assert not H._needs_a_generator("reproduce", ["dehazeformer", "--table", "sots_outdoor", "--weights",
                                                  "saved_models/"])
