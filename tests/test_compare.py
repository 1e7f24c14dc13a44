"""clipdehaze-compare on fixture runs: each comparison gets the right rows, numbers and test (paired by seed only
for twins that share an initialisation), metrics are read in their direction, runs scored on other images, images
listed twice, repeated and missing seeds are refused with the reason, the control and the twins are found, any two
rows (plain vs tta=x8) compare, and compare.html renders in a real headless Chromium without console errors or
network requests. The statistics themselves: tests/test_stats.py."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipdehaze.compare import ComparisonError, compare, main, make_report
from clipdehaze.data.io import save_image

PROTO = "DehazeFormer protocol: fixture"
IMAGES = [f"img{i:02d}.png" for i in range(12)]


def _run(root: Path, name: str, seed: int, values: dict[str, tuple[float, float]], *, aggregation: str = "cam",
         control: str | None = "real", manifest: str = "m1", gen: str = "cliphaze_test",
         clip: str | None = "ViT-B-32[x]@224px:openai", outputs: Path | None = None) -> Path:
    """A run folder as clipdehaze-train writes it: metrics.json (with the prior control), per_image.csv and, with
    ``outputs`` (a folder of hazy/GT files), test_outputs/ naming them."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {"model": {"name": gen, "aggregation": aggregation}, "seed": seed, "clip_control": control or "real",
           "data": {"name": "sots_indoor"}, "paths": {"output_dir": str(d)}}
    psnr = float(np.mean([v[0] for v in values.values()]))
    (d / "metrics.json").write_text(json.dumps({
        "generator": gen, "data": "sots_indoor", "seed": seed, "metric_protocol": PROTO, "params": 1000,
        "metrics": {"test/psnr_sots_indoor": psnr, "test/ssim_sots_indoor": 0.9},
        "dataset": {"name": "sots_indoor", "images": len(values), "available": len(values), "subset": False,
                    "manifest_sha256": manifest},
        "weights": {"origin": "trained"}, "clip": clip if control else None,
        "clip_control": {"train": control, "test": control} if control else None, "config": cfg}))
    with open(d / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "name", "psnr", "ssim"])
        for i, (n, (p, s)) in enumerate(values.items()):
            w.writerow([i, n, repr(p), repr(s)])
    if outputs is not None:
        (d / "test_outputs").mkdir()
        rng = np.random.default_rng(seed)
        for n in values:
            stem = Path(n).stem
            save_image(rng.random((3, 24, 32)), d / "test_outputs" / f"{stem}.png",
                       text={"clipdehaze-input": str(outputs / "hazy" / n), "clipdehaze-target": str(outputs / "GT" / n)})
    return d


def _values(rng, offset: float, seed_shift: float = 0.0) -> dict[str, tuple[float, float]]:
    base = np.linspace(20, 30, len(IMAGES))
    return {n: (float(b + offset + seed_shift + rng.normal(0, 0.4)), float(0.8 + 0.01 * offset + rng.normal(0, 0.01)))
            for n, b in zip(IMAGES, base)}


def _study(root: Path, seeds_variant=(0, 1, 2), seeds_control=(0, 1, 2), outputs: Path | None = None,
           seed_spread: float = 0.0) -> Path:
    rng = np.random.default_rng(42)
    sweep = root / "multirun"
    k = 0
    for s in seeds_variant:
        for control, offset in (("real", 0.6), ("shuffled", 0.1)):
            _run(sweep, str(k), s, _values(rng, offset, seed_spread * s), control=control, outputs=outputs)
            k += 1
    for s in seeds_control:
        _run(sweep, str(k), s, _values(rng, 0.0, -seed_spread * s), aggregation="sum", control=None, outputs=outputs)
        k += 1
    return sweep


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _matrix(sweep: Path, aggregation: str, control: str | None, metric: str) -> tuple[list[int], np.ndarray]:
    """(seeds, seeds x images) read back from the fixture files, independently of clipdehaze.compare."""
    out = []
    for d in sorted(sweep.iterdir()):
        m = json.loads((d / "metrics.json").read_text())
        if m["config"]["model"]["aggregation"] != aggregation or (m["clip_control"] or {}).get("test") != control:
            continue
        rows = {r["name"]: float(r[metric]) for r in _csv(d / "per_image.csv")}
        out.append((m["seed"], [rows[n] for n in sorted(IMAGES)]))
    out.sort()
    return [s for s, _ in out], np.array([v for _, v in out])


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_each_comparison_gets_the_right_numbers_and_test(metric, tmp_path):
    """The plumbing: each comparison's rows, per-image Δ and seed means are those of the fixture files (read back
    here independently), twins (one recipe, another prior) are paired by seed and the control (another
    architecture: aggregation=sum) is compared unpaired, and the Holm column adjusts the report's p-values. The
    statistics themselves are checked against hand-worked oracles in tests/test_stats.py."""
    from clipdehaze.stats import PAIRED_T, WELCH_T, holm, paired_t, welch_t

    sweep = _study(tmp_path)
    make_report([sweep], tmp_path / "out")
    report = _csv(tmp_path / "out" / "compare.csv")
    rows = {(r["kind"], r["variant"], r["metric"]): r for r in report}
    seeds, real = _matrix(sweep, "cam", "real", metric)
    _, free = _matrix(sweep, "sum", None, metric)
    _, shuffled = _matrix(sweep, "cam", "shuffled", metric)
    for (kind, variant), (a, b, test) in {
            ("vs control", "cliphaze_test [real]"): (real, free, WELCH_T),
            ("vs control", "cliphaze_test [shuffled]"): (shuffled, free, WELCH_T),
            ("real vs shuffled", "cliphaze_test [real]"): (real, shuffled, PAIRED_T)}.items():
        r = rows[(kind, variant, metric)]
        d = a.mean(0) - b.mean(0)
        assert float(r["delta"]) == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
        assert float(r["better_rate"]) == pytest.approx(np.mean(d > 0)) and r["higher_is_better"] == "True"
        assert r["seed_test"] == test
        expected = (paired_t if test == PAIRED_T else welch_t)(a.mean(1), b.mean(1))
        assert float(r["seed_p"]) == pytest.approx(expected.p, rel=1e-9)
        assert (float(r["seed_ci_low"]), float(r["seed_ci_high"])) == pytest.approx(expected.ci, rel=1e-9)
        assert int(r["n_images"]) == len(IMAGES) and r["variant_seeds"] == "0 1 2"
    assert seeds == [0, 1, 2]
    raw = [float(r["wilcoxon_p"]) for r in report]
    assert [float(r["wilcoxon_p_holm"]) for r in report] == pytest.approx(holm(raw))
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "Welch t (independent initialisations)" in md and "paired t (shared initialisation)" in md
    assert "(Holm " in md


def test_seed_level_is_welch_when_the_rows_ran_other_seeds(tmp_path):
    from clipdehaze.stats import WELCH_T, welch_t

    sweep = _study(tmp_path, seeds_control=(3, 4))
    _, _, comparisons = compare([sweep])
    res = next(c for c in comparisons if c.kind == "vs control" and c.variant.row.prior == "real").results["psnr"]
    _, real = _matrix(sweep, "cam", "real", "psnr")
    _, free = _matrix(sweep, "sum", None, "psnr")
    expected = welch_t(real.mean(1), free.mean(1))
    assert res.seed.test == WELCH_T and res.seed.p == pytest.approx(expected.p, rel=1e-9)
    assert res.seed.ci == pytest.approx(expected.ci, rel=1e-9)


def test_twins_missing_a_seed_are_refused_naming_it(tmp_path):
    """Prior-control twins pair by seed: a seed only one of them ran is named, not silently dropped."""
    sweep = _study(tmp_path)
    for d in sweep.iterdir():
        m = json.loads((d / "metrics.json").read_text())
        if m["seed"] == 2 and (m["clip_control"] or {}).get("test") == "shuffled":
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    with pytest.raises(ComparisonError, match=r"seeds \['2'\] ran only in the first and \[\] only in the second"):
        compare([sweep])


def test_a_repeated_seed_is_refused_naming_the_runs(tmp_path):
    sweep = _study(tmp_path)
    _run(sweep, "again", 1, _values(np.random.default_rng(9), 0.6), control="real")
    with pytest.raises(ComparisonError, match=r"seed 1 names different weights in 2 runs \(.*again"):
        compare([sweep])


def test_an_image_listed_twice_is_refused(tmp_path):
    sweep = _study(tmp_path)
    victim = sweep / "0" / "per_image.csv"
    lines = victim.read_text().splitlines()
    victim.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ComparisonError, match=r"0/per_image.csv: images listed more than once: 'img00.png'"):
        compare([sweep])


def test_no_reference_metrics_read_lower_as_better(tmp_path):
    """NIQE of the variant is lower (better) on every image: verdict "better", every image improved, and the viewer
    and plots count those images as improvements."""
    sweep = tmp_path / "runs"
    rng = np.random.default_rng(0)
    base = {n: 6.0 + rng.random() for n in IMAGES}
    for seed in (0, 1, 2):
        for name, shift, aggregation in (("v", -1.0, "cam"), ("c", 0.0, "sum")):
            d = _run(sweep, f"{name}{seed}", seed, {n: (20.0, 0.8) for n in IMAGES}, aggregation=aggregation,
                     control="real" if name == "v" else None)
            with open(d / "per_image.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["index", "name", "niqe"])
                for i, n in enumerate(IMAGES):
                    w.writerow([i, n, repr(base[n] + shift + 0.05 * seed * (1 if name == "v" else -1))])
    _, _, (comparison,) = compare([sweep], metrics=("niqe",), resamples=999)
    res = comparison.results["niqe"]
    assert res.higher_is_better is False and res.delta == pytest.approx(-1.0 + 0.05 * 2, abs=1e-9)
    assert res.better_rate == 1.0 and res.verdict.startswith("better (seed-level 95% interval below 0)")
    md = make_report([sweep], tmp_path / "out", metrics=("niqe",), resamples=999)["markdown"]
    assert "lower is better" in md and "| 100% |" in md and "| better (seed-level 95% interval below 0) |" in md
    with pytest.raises(ComparisonError, match="--metrics nosuchmetric: no registered metric"):
        compare([sweep], metrics=("nosuchmetric",))


def test_the_dominant_source_of_variance_is_stated(tmp_path):
    """Seed means 4 dB apart per seed: seeds dominate, and the verdict follows the seed-level interval although every
    image improves (the case the issue found by hand: p = 1e-9 over images, seed spread larger than the effect)."""
    (tmp_path / "a").mkdir()
    result = make_report([_study(tmp_path / "a", seed_spread=4.0)], tmp_path / "out_a")
    real = next(c for c in result["comparisons"] if c.kind == "vs control" and c.variant.row.prior == "real")
    assert real.results["psnr"].dominant == "seeds"
    assert "seed-to-seed variance dominates" in result["markdown"]
    assert real.results["psnr"].ci[0] > 0 and real.results["psnr"].verdict.startswith("no clear difference (seed")
    (tmp_path / "b").mkdir()
    calm = make_report([_study(tmp_path / "b")], tmp_path / "out_b")
    real = next(c for c in calm["comparisons"] if c.kind == "vs control" and c.variant.row.prior == "real")
    assert real.results["psnr"].dominant == "images" and "image-to-image variance dominates" in calm["markdown"]


def test_runs_scored_on_other_images_are_refused_with_the_reason(tmp_path, capsys, cli):
    sweep = _study(tmp_path)
    _run(sweep, "other", 0, _values(np.random.default_rng(0), 0.3), control="constant", manifest="m2")
    with pytest.raises(ComparisonError, match="different image sets") as e:
        compare([sweep])
    msg = str(e.value)
    assert f"'cliphaze_test' 12 images of sots_indoor (manifest m2, {sweep / 'other'})" in msg
    assert "manifest m1" in msg and "compare one image set at a time" in msg
    # The console script exits 2 with the same message.
    out = cli("compare", [str(sweep), "--out", str(tmp_path / "o")], tmp_path)
    assert out.returncode == 2 and "different image sets" in out.stdout
    assert not (tmp_path / "o" / "compare.md").exists()


def test_bad_per_image_files_are_named(tmp_path):
    sweep = _study(tmp_path)
    victim = sweep / "0" / "per_image.csv"
    text = victim.read_text()
    victim.write_text(text.replace("img03.png", "img99.png"))
    with pytest.raises(ComparisonError) as e:
        compare([sweep])
    assert f"{victim}: its images differ from those of {sweep / '6' / 'per_image.csv'}" in str(e.value)
    assert "only here: ['img99.png'], only there: ['img03.png']" in str(e.value)
    lines = text.splitlines()
    lines[2] = lines[2].split(",")[0] + ",img01.png,nan,0.5"
    victim.write_text("\n".join(lines) + "\n")
    with pytest.raises(ComparisonError, match=r"0/per_image.csv: psnr of img01.png is 'nan'"):
        compare([sweep])
    victim.unlink()
    with pytest.raises(ComparisonError, match=r"0/per_image.csv: no per-image results"):
        compare([sweep])


def test_the_control_is_the_clip_free_row_or_named(tmp_path):
    sweep = _study(tmp_path)
    rows, base, comparisons = compare([sweep])
    assert base.prior == "-" and len(rows) == 3
    assert sorted((c.kind, c.variant.row.prior, c.reference.row.prior) for c in comparisons) == [
        ("real vs shuffled", "real", "shuffled"), ("vs control", "real", "-"), ("vs control", "shuffled", "-")]
    _, base, comparisons = compare([sweep], baseline="clip_control=shuffled")
    assert base.prior == "shuffled" and {c.reference.row.prior for c in comparisons} == {"shuffled"}
    _, by_id, _ = compare([sweep], baseline=base.id)  # the stable id the table and the report print
    assert by_id.id == base.id
    with pytest.raises(ComparisonError, match="matches 3 rows; name one by its id or full name"):
        compare([sweep], baseline="cliphaze_test")
    _run(sweep, "another_free", 0, _values(np.random.default_rng(1), 0.0), aggregation="concat", control=None)
    with pytest.raises(ComparisonError, match="2 rows are CLIP-free: name the control with --baseline"):
        compare([sweep])


def test_identical_outputs_are_called_identical(tmp_path):
    """A control that changes nothing the model uses (e.g. every image has the same zero-shot class, so a shuffled
    text feature is the real one) gives Δ = 0 on every image, and the verdict says so."""
    sweep = _study(tmp_path)
    for d in sweep.iterdir():
        if json.loads((d / "metrics.json").read_text())["clip_control"] == {"train": "shuffled", "test": "shuffled"}:
            real = sweep / str(int(d.name) - 1)  # the fixture writes each seed's real run just before its shuffled one
            (d / "per_image.csv").write_text((real / "per_image.csv").read_text())
    _, _, comparisons = compare([sweep])
    twin = next(c for c in comparisons if c.kind == "real vs shuffled")
    assert twin.results["psnr"].verdict.startswith("identical on every image")
    assert twin.results["psnr"].wilcoxon_p is None and twin.results["psnr"].tie_rate == 1.0


def test_report_files_and_the_random_prior_statement(tmp_path, capsys):
    sweep = _study(tmp_path)
    for m in sweep.glob("*/metrics.json"):
        data = json.loads(m.read_text())
        if data["clip"]:
            data["clip"] = "clipdehaze_tiny[c93031b4]@64px:random(seed=0)"
        m.write_text(json.dumps(data))
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--resamples", "999"]) == 0
    printed = capsys.readouterr().out
    assert "The CLIP prior of these runs is random" in printed and "cannot carry information" in printed
    out = tmp_path / "out"
    for f in ("compare.md", "compare.csv", "compare_per_image.csv", "forest.png", "scatter.png", "compare.html"):
        assert (out / f).stat().st_size > 200, f
    per_image = _csv(out / "compare_per_image.csv")
    assert len(per_image) == 3 * 2 * len(IMAGES)  # comparisons x metrics x images
    html = (out / "compare.html").read_text()
    assert "save_test_outputs=true" in html  # the fixture runs saved no outputs: the page says how to get them


def test_viewer_names_unreadable_images_instead_of_embedding_them(tmp_path):
    sources = tmp_path / "set"
    for n in IMAGES:
        save_image(np.full((3, 8, 8), 0.5), sources / "hazy" / n)
        save_image(np.full((3, 8, 8), 0.5), sources / "GT" / n)
    sweep = _study(tmp_path, outputs=sources)
    for f in (sweep / "0" / "test_outputs").iterdir():  # the real prior's seed-0 run: truncated files
        f.write_bytes(f.read_bytes()[:40])
    (sources / "GT" / IMAGES[0]).unlink()
    make_report([sweep], tmp_path / "out", viewer_images=len(IMAGES))
    html = (tmp_path / "out" / "compare.html").read_text()
    assert f"(unreadable or missing: {sweep / '0' / 'test_outputs' / 'img00.png'})" in html
    assert f"(unreadable or missing: {sources / 'GT' / IMAGES[0]})" in html
    import base64

    embedded = lambda f: base64.b64encode(f.read_bytes()).decode() in html  # noqa: E731
    assert not embedded(sweep / "0" / "test_outputs" / "img00.png")
    assert embedded(sweep / "1" / "test_outputs" / "img00.png")  # the shuffled run's outputs are fine


def test_the_table_has_a_prior_column(tmp_path):
    from clipdehaze.table import make_table

    sweep = _study(tmp_path)
    evaluated = json.loads((sweep / "0" / "metrics.json").read_text())
    evaluated["clip_control"] = {"train": "real", "test": "shuffled"}
    evaluated["config"]["test_clip_control"] = "shuffled"
    (sweep / "0" / "metrics.json").write_text(json.dumps(evaluated))
    result = make_table([sweep], None, tmp_path / "table")
    assert sorted(r["prior"] for r in result["rows"]) == ["-", "real", "shuffled", "train real / test shuffled"]
    md = (tmp_path / "table" / "table.md").read_text()
    assert "| dataset | method | prior |" in md and "| train real / test shuffled |" in md


def test_compare_reads_the_per_image_file_train_and_eval_write():
    from clipdehaze import compare as C
    from clipdehaze.callbacks import SOURCE_KEYS
    from clipdehaze.artefacts import PER_IMAGE_CSV

    assert C.PER_IMAGE_CSV == PER_IMAGE_CSV
    assert SOURCE_KEYS == ("clipdehaze-input", "clipdehaze-target")


@pytest.mark.slow
def test_compare_html_renders_in_headless_chromium(chromium, tmp_path):
    from browser import Chromium

    sources = tmp_path / "set"
    rng = np.random.default_rng(0)
    for n in IMAGES:
        save_image(rng.random((3, 24, 32)), sources / "hazy" / n)
        save_image(rng.random((3, 24, 32)), sources / "GT" / n)
    sweep = _study(tmp_path, outputs=sources)
    make_report([sweep], tmp_path / "out", viewer_images=2)
    page = tmp_path / "out" / "compare.html"
    assert "http://" not in page.read_text() and "https://" not in page.read_text()

    browser = Chromium(chromium, tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        images = browser.evaluate("[...document.images].filter(i => i.closest('#lightbox') === null)"
                                  ".map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))")
        # The slider: moving it uncovers more of the variant.
        clip = browser.evaluate("(() => { const s = document.querySelector('.slider input'); s.value = 80;"
                                " s.dispatchEvent(new Event('input')); return document.querySelector('.slider .after')"
                                ".style.clipPath; })()")
        # A click shows the image at full resolution.
        zoom = browser.evaluate("(() => { const img = document.querySelector('.panels img.zoom'); img.click();"
                                " const big = document.querySelector('#lightbox img');"
                                " return new Promise(r => setTimeout(() => r({shown: getComputedStyle("
                                "document.getElementById('lightbox')).display, width: big.naturalWidth,"
                                " rendered: big.getBoundingClientRect().width, src: big.src === img.src}), 200)); })()")
        shot = browser.screenshot(tmp_path / "compare_html.png")
        errors, urls = browser.errors(), browser.requested_urls()
    finally:
        browser.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in urls), [u[:80] for u in urls]
    # 2 plots + 3 comparisons x 4 images x (4 panels + 2 slider layers)
    assert len(images) == 2 + 3 * 4 * 6
    assert all(i["complete"] and i["width"] > 0 for i in images), [i for i in images if not i["width"]]
    assert clip == "inset(0px 20% 0px 0px)"
    assert zoom == {"shown": "block", "width": 32, "rendered": 32, "src": True}
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_make_study_runs_offline_and_says_the_random_prior_carries_nothing(tmp_path):
    """``make study``'s driver, one family, two seeds, two steps: the multirun, the comparison, and the statement."""
    out = subprocess.run([sys.executable, "-m", "clipdehaze.study", "--families", "mixcldehazenet", "--seeds", "0,1",
                          "--steps", "2", "--out", str(tmp_path / "study")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("cannot carry information about the images") >= 3  # the driver (twice) and compare.md
    (report,) = (tmp_path / "study").glob("*/mixcldehazenet/compare")
    md = (report / "compare.md").read_text()
    assert "Control: **mixcldehazenet_test [CLIP-free]**" in md
    for kind in ("real vs shuffled", "real vs constant"):
        assert f"| {kind} | mixcldehazenet_test [real] |" in md
    rows = _csv(report / "compare.csv")
    assert {r["variant_seeds"] for r in rows} == {"0 1"} and len(rows) == 5 * 2
    html = (report / "compare.html").read_text()
    assert html.count('class="viewer"') == 5 * 4 and "save_test_outputs=true" not in html


def test_plain_and_self_ensembled_scores_of_the_same_weights_compare_paired(tmp_path):
    """Three seeds' checkpoints, each evaluated plain and with tta=x8: two rows (the label says x8), and with the
    plain row's id as --baseline one comparison whose seeds pair (the same weights under both)."""
    from clipdehaze.stats import PAIRED_T, paired_t
    from clipdehaze.utils.tta import TTA_DESCRIPTIONS

    runs = tmp_path / "evals"
    rng = np.random.default_rng(1)
    for seed in (0, 1, 2):
        plain = _values(rng, 0.0, seed_shift=seed)
        for tta, values in (("none", plain), ("x8", {n: (p + 0.2 + rng.normal(0, 0.02), s) for n, (p, s) in
                                                      plain.items()})):
            d = _run(runs, f"{seed}-{tta}", seed, values, control=None)
            m = json.loads((d / "metrics.json").read_text())
            ckpt = f"/sweep/{seed}/checkpoints/last.ckpt"
            m.update(train_config=m["config"], weights={"origin": "checkpoint", "path": ckpt,
                                                        "sha256": f"{seed:064d}"},
                     config={"task_name": "eval", "ckpt_path": ckpt, "tta": tta, "paths": {"output_dir": str(d)}})
            if tta == "x8":
                m["metric_protocol"] = f"{PROTO}; {TTA_DESCRIPTIONS['x8']}"
            (d / "metrics.json").write_text(json.dumps(m))
    from clipdehaze.runs.collect import collect_runs
    from clipdehaze.runs.identity import aggregate

    rows = aggregate(collect_runs([runs]))
    assert sorted(r.name for r in rows) == ["cliphaze_test", "cliphaze_test (tta=x8)"]
    plain_row = next(r for r in rows if r.label == "")
    _, base, (c,) = compare([runs], baseline=plain_row.id, resamples=999)
    res = c.results["psnr"]
    assert base is not None and c.paired_seeds and res.seed.test == PAIRED_T
    a = np.array([np.mean([float(r["psnr"]) for r in _csv(runs / f"{s}-x8" / "per_image.csv")]) for s in (0, 1, 2)])
    b = np.array([np.mean([float(r["psnr"]) for r in _csv(runs / f"{s}-none" / "per_image.csv")]) for s in (0, 1, 2)])
    assert res.seed.ci == pytest.approx(paired_t(a, b).ci, rel=1e-9)
    assert res.delta == pytest.approx(0.2, abs=0.02) and res.verdict.startswith("better (seed-level")
