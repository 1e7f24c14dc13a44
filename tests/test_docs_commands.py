"""Every clipdehaze command that README.md and experiments/**/README.md show runs as written (tests/docs_harness.py
says exactly what is added: a fixed set of shortening overrides, never hydra.sweep.dir, hydra.run.dir or
paths.*), from a fresh working directory outside the checkout; a command marked ``(needs: X)`` stops offline
naming what it needs. ``CLIPDEHAZE_DOCS_REPORT=<file>`` writes the list of commands with their status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import docs_harness as H
from conftest import _shared_dir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _doc_id(path: Path) -> str:
    return str(path.relative_to(H.REPO))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("CLIPDEHAZE_CACHE") or tmp_path_factory.mktemp("docs-cache"))


@pytest.mark.slow
@pytest.mark.parametrize("doc", H.DOCS, ids=_doc_id)
def test_documented_commands_run_as_written(doc: Path, tmp_path: Path, cache_dir: Path):
    text = doc.read_text()
    blocks = [b for b in H.code_blocks(text) if H.commands_in(b)]
    shown_in_blocks = {c for b in blocks for c in H.commands_in(b)}
    # Prose names some commands again (and again): each distinct one runs once.
    inline = [c for c in dict.fromkeys(H.inline_commands(text)) if c not in shown_in_blocks]
    if not blocks and not inline:
        pytest.skip(f"{_doc_id(doc)} shows no clipdehaze command")
    work = tmp_path / "work"  # the user's working directory: outside the checkout
    work.mkdir()
    H.make_paper_datasets(work / "data")
    log = tmp_path / "commands.jsonl"
    env = {**ENV, "CLIPDEHAZE_DOCS_LOG": str(log), "CLIPDEHAZE_CACHE": str(cache_dir)}
    env.pop("CLIPDEHAZE_DATA_DIR", None)
    env.pop("CLIPDEHAZE_LOG_DIR", None)
    # Where the harness finds the recordings a documented command replays (clipdehaze-reproduce trajectory).
    if (shared := _shared_dir()) is not None:
        env["CLIPDEHAZE_SHARED"] = str(shared)
    else:
        env.pop("CLIPDEHAZE_SHARED", None)
    scripts = [H.to_script(b) for b in blocks] + [H.to_script(c) for c in inline]
    expected = [c for b in blocks for c in H.commands_in(b)] + inline
    failures = []
    for script in scripts:
        res = subprocess.run(["bash", "-c", H.preamble(sys.executable) + script], cwd=work, env=env,
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            failures.append(f"--- script exited {res.returncode}:\n{script}\n{res.stderr[-8000:]}")
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if report := os.environ.get("CLIPDEHAZE_DOCS_REPORT"):
        with open(report, "a") as f:
            for r in records:
                needs = f" (needs {r['needs']}: stopped naming {r['expected']!r})" if r.get("needs") else ""
                needs += f" ({r['reason']})" if r.get("reason") else ""
                f.write(f"| {_doc_id(doc)} | `{r['tool']} {' '.join(r['args'])}` | {r['status']}{needs} | "
                        f"{r['seconds']} s |\n")
    assert not failures, "\n".join(failures)
    assert all(r["status"] in ("ok", "skipped") for r in records)
    # Every command shown ran at least once (loops run theirs several times).
    assert len(records) >= len(expected), (len(records), expected)
    if skipped := [f"{r['tool']} {' '.join(r['args'])}: {r['reason']}" for r in records if r["status"] == "skipped"]:
        pytest.skip(f"{_doc_id(doc)}: every other command ran as written; skipped " + "; ".join(skipped))


def test_shortening_replaces_a_key_the_command_sets_and_appends_the_rest():
    args = ["-m", "experiment=cliphaze_ablation", "clip=vit_b32_openai", "seed=0,1"]
    out = H.shortened("train", args)
    assert out[:2] == ["-m", "experiment=cliphaze_ablation"] and "seed=0,1" in out
    assert "clip=vit_b32_openai" not in out and out.count("clip=tiny_random") == 1
    assert not any(a.startswith(("hydra.run", "hydra.sweep", "paths.")) for a in out)
    assert H.shortened("bench", ["models", "--models", "a", "b", "--sizes", "256", "--no-memory"]) == [
        "models", "--models", "a", "b", "--sizes", "64", "--mac-size", "64", "--repeats", "1", "--no-memory",
        "--no-profile"]
    assert "hydra.sweeper.n_trials=2" in H.shortened("train", ["-m", "hparams_search=dehazeformer_optuna"])


def test_doc_scripts_resolve_placeholders_and_needs_markers():
    script = H.to_script("clipdehaze-eval ckpt_path=<run>/checkpoints/last.ckpt\n"
                         "clipdehaze-train -m x=1 \\\n    hydra.launcher.partition=<partition>   # (needs: slurm)\n")
    assert "ckpt_path=$(__latest_run)/checkpoints/last.ckpt" in script
    assert "CLIPDEHAZE_DOCS_NEEDS=slurm clipdehaze-train -m x=1" in script and "PLACEHOLDER-partition" in script
    with pytest.raises(ValueError, match="unknown placeholder"):
        H.to_script("clipdehaze-train model=<name>\n")


def test_every_needs_marker_in_the_docs_is_known():
    import re

    for doc in H.DOCS:
        for mark in re.findall(r"\(needs: ([\w-]+)\)", doc.read_text()):
            assert mark in H.NEEDS, (doc, mark)


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


def test_reproduce_commands_get_the_shortening_of_the_tool_they_run(tmp_path, monkeypatch):
    """Training a table gets train's shortening, scoring weights eval's, listing / dry runs / rendering none; a
    ``--weights DIR`` the docs name is created in upstream's saved_models/ layout for the table's first rows."""
    assert H.shortened("reproduce", ["dehazeformer", "--table", "sots_indoor"])[3:] == H.SHORTENING["train"]
    assert H.shortened("reproduce", ["dehazeformer", "--table", "t", "--weights", "w/", "trainer.limit_test_batches=9"]
                       ) == ["dehazeformer", "--table", "t", "--weights", "w/", *H.SHORTENING["eval"]]
    for quiet in H.REPRODUCE_QUIET:
        assert H.shortened("reproduce", ["dehazeformer", "--table", "t", quiet]) == ["dehazeformer", "--table", "t", quiet]
    monkeypatch.chdir(tmp_path)
    H.provide_reproduce_weights(["dehazeformer", "--table", "sots_outdoor", "--weights", "saved_models/"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pth")) == [
        "saved_models/outdoor/dehazeformer-s.pth", "saved_models/outdoor/dehazeformer-t.pth"]
