"""Reports are inert whatever the runs are called: hostile names (image files, run folders, data names, config
values, published sources) go through clipdehaze-table and clipdehaze-compare, and no output lets them act.
compare.html is opened in a real headless Chromium, which shows that no injected markup exists and no script other
than the page's own runs; the CSVs hold no cell a spreadsheet would evaluate yet read back exactly; Markdown
tables keep their columns; table.tex compiles; the plots draw."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clipdehaze.artefacts import write_rows_csv
from clipdehaze.data.io import save_image
from clipdehaze.render.csv import FORMULA_START, read_dicts
from conftest import require_or_skip

PROTO = "DehazeFormer protocol: fixture"
MARK = "PWNED"

#: Image file names (no "/"), each a way into one output format: HTML element and attribute, script context,
#: spreadsheet formulas (OWASP CSV injection: = + - @ tab CR, and a leading quote that must survive the round
#: trip), Markdown structure, LaTeX commands and matplotlib's mathtext.
HOSTILE_NAMES = [
    f"<img src=x onerror=\"document.title='{MARK}'\">.png",
    f"</script><script>document.title='{MARK}'</script>.png",
    "=HYPERLINK(\"http:x\",\"click\").png",
    "+cmd|' -c calc'!A0.png",
    "-2+3.png",
    "@SUM(A1).png",
    "\tTAB.png",
    "\rCR.png",
    "'quoted.png",
    "a|b|c.png",
    "[x](javascript:alert(1)).png",
    "**bold** `code`.png",
    "$\\frac{1}{0}$ 50% #1 & {a}_b ~^\\.png",
    "line\nbreak.png",
]
#: A run folder path holding the payload the issue found running in compare.html.
HOSTILE_FOLDER = Path("</script><svg onload=\"document.title='" + MARK + "'\">")
HOSTILE_DATA = "sots<b onmouseover=alert(1)>|x"
HOSTILE_VALUE = "=1+1 <script>document.title='PWNED'</script> | \\textbf{x} $x$"


def _run(root: Path, seed: int, offset: float, aggregation: str, control: str | None,
         outputs: Path | None) -> Path:
    """A run folder as clipdehaze-train writes it, per_image.csv through the project's own CSV writer."""
    d = root / f"{aggregation}-{control}-{seed}"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    values = {n: (20.0 + i + offset + rng.normal(0, 0.3), 0.8 + 0.01 * offset + rng.normal(0, 0.01))
              for i, n in enumerate(HOSTILE_NAMES)}
    cfg = {"model": {"name": "cliphaze_test", "aggregation": aggregation, "note": HOSTILE_VALUE}, "seed": seed,
           "clip_control": control or "real", "data": {"name": HOSTILE_DATA}, "paths": {"output_dir": str(d)}}
    (d / "metrics.json").write_text(json.dumps({
        "generator": "cliphaze_test", "data": HOSTILE_DATA, "seed": seed, "metric_protocol": PROTO, "params": 1000,
        "metrics": {f"test/psnr_{HOSTILE_DATA}": float(np.mean([v[0] for v in values.values()])),
                    f"test/ssim_{HOSTILE_DATA}": 0.8},
        "dataset": {"name": HOSTILE_DATA, "images": len(values), "available": len(values), "subset": False,
                    "manifest_sha256": "m<1>"},
        "weights": {"origin": "trained"}, "clip": "ViT-B-32[x]@224px:openai" if control else None,
        "clip_control": {"train": control, "test": control} if control else None, "config": cfg}))
    write_rows_csv(d / "per_image.csv", [{"index": i, "name": n, "psnr": p, "ssim": s}
                                         for i, (n, (p, s)) in enumerate(values.items())])
    if outputs is not None:
        for n in values:
            save_image(rng.random((3, 12, 16)), d / "test_outputs" / f"{Path(n).stem}.png",
                       text={"clipdehaze-input": str(outputs / "hazy" / n), "clipdehaze-target": str(outputs / "GT" / n)})
    return d


def _study(root: Path, with_outputs: bool = True) -> Path:
    sources = root / "set"
    for n in HOSTILE_NAMES:
        save_image(np.full((3, 12, 16), 0.4), sources / "hazy" / n)
        save_image(np.full((3, 12, 16), 0.6), sources / "GT" / n)
    sweep = root / HOSTILE_FOLDER / "multirun"
    for seed in (0, 1):
        for aggregation, control, offset in (("cam", "real", 0.5), ("cam", "shuffled", 0.1), ("sum", None, 0.0)):
            _run(sweep, seed, offset, aggregation, control, sources if with_outputs else None)
    return sweep


def _check_csv(path: Path) -> list[dict[str, str]]:
    """No raw cell starts like a formula (numbers aside); returns the rows as the project reads them back."""
    with open(path, newline="") as f:
        for row in csv.reader(f):
            for cell in row:
                if cell.startswith(FORMULA_START):
                    float(cell)  # only a number may start with "-" / "+"
    with open(path, newline="") as f:
        return read_dicts(f)


def _check_markdown_tables(text: str) -> None:
    """Every row of every table has as many cells as its header (an escaped "\\|" is not a separator), and no raw
    HTML tag survives."""
    table: list[int] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append(len(re.findall(r"(?<!\\)\|", line)))
        elif table:
            assert len(set(table)) == 1, (table, text)
            table = []
    assert not re.search(r"<[a-zA-Z/]", text), "raw HTML in Markdown"


def test_per_image_csv_neutralises_formulas_and_reads_back_exactly(tmp_path):
    rows = [{"index": i, "name": n, "psnr": -1.5 + i} for i, n in enumerate(HOSTILE_NAMES)]
    write_rows_csv(tmp_path / "per_image.csv", rows)
    back = _check_csv(tmp_path / "per_image.csv")
    assert [r["name"] for r in back] == HOSTILE_NAMES
    assert [float(r["psnr"]) for r in back] == [r["psnr"] for r in rows]  # "-1.5" stays a number


def test_table_outputs_are_inert(tmp_path):
    sweep = _study(tmp_path, with_outputs=False)
    exp = tmp_path / "exp" / "p"
    exp.mkdir(parents=True)
    with open(exp / "published.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "generator", "dataset", "psnr", "ssim", "params", "macs", "source"])
        w.writerow(["=Evil|Net <i>", "cliphaze_test", HOSTILE_DATA, "30", "0.9", "", "", HOSTILE_VALUE])
        w.writerow(["@Other", "other_net", HOSTILE_DATA, "29", "0.8", "", "", "[1](javascript:x)"])
    from clipdehaze.table import make_table

    out = tmp_path / "t"
    result = make_table([sweep], "p", out, experiments_root=tmp_path / "exp")
    assert len(result["rows"]) == 3
    md = (out / "table.md").read_text()
    _check_markdown_tables(md)
    assert "&lt;b onmouseover=alert(1)&gt;\\|x" in md and "[1](javascript" not in md and "[1\\](javascript" in md
    back = _check_csv(out / "table.csv")
    assert {r["dataset"] for r in back} == {HOSTILE_DATA}
    assert "@Other" in {r["method"] for r in back} and HOSTILE_VALUE in {r["published_source"] for r in back}
    assert (out / "plots.png").stat().st_size > 1000  # "$\frac{1}{0}$" in a label drew as text
    tex = (out / "table.tex").read_text()
    assert "<script>" not in tex and "\\textbf{x}" not in tex
    if shutil.which("pdflatex") is None:
        require_or_skip("pdflatex", "pdflatex not installed (.ci/run installs texlive-latex-base + "
                                    "texlive-latex-recommended)")
    (out / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                 "\\input{table.tex}\n\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=out,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]


def test_compare_markdown_and_csvs_are_inert(tmp_path):
    from clipdehaze.compare import make_report

    sweep = _study(tmp_path, with_outputs=False)
    result = make_report([sweep], tmp_path / "out", viewer_images=2, resamples=199)
    _check_markdown_tables(result["markdown"])
    per_image = _check_csv(tmp_path / "out" / "compare_per_image.csv")
    assert {r["image"] for r in per_image} == set(HOSTILE_NAMES)
    _check_csv(tmp_path / "out" / "compare.csv")
    html = (tmp_path / "out" / "compare.html").read_text()
    assert str(HOSTILE_FOLDER) not in html  # the path is shown escaped ("No restored images to show: ...")


def test_script_json_cannot_close_its_script():
    from clipdehaze.render.html import script_json

    text = script_json({"k": "</script><svg onload=x>\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"k": "</script><svg onload=x>\u2028&"}


# ------------------------------------------------------------------------------------------------------------
# compare.html in a real browser
#: What the page looks like to a script: injected elements, the title, whether the hostile text shows as text.
_PROBE = f"""(() => ({{
  title: document.title,
  injected: document.querySelectorAll('svg, script:not(:last-of-type), img[src="x"], [onerror], [onload], b').length,
  scripts: document.scripts.length,
  marked: document.title.includes('{MARK}') || window.pwned === true,
  text: document.body.innerText,
}}))()"""


def _open(binary: str, page: Path, profile: Path) -> tuple[dict, list[str]]:
    from browser import Chromium

    browser = Chromium(binary, profile)
    try:
        browser.open(page.as_uri())
        probe = browser.evaluate("new Promise(r => setTimeout(() => r(" + _PROBE + "), 300))")
        errors = browser.errors()
    finally:
        browser.close()
    return probe, errors


def test_compare_html_is_inert_in_headless_chromium(chromium, tmp_path):
    from clipdehaze.compare import make_report

    sweep = _study(tmp_path)
    make_report([sweep], tmp_path / "out", viewer_images=len(HOSTILE_NAMES), resamples=199)
    page = tmp_path / "out" / "compare.html"
    probe, errors = _open(chromium, page, tmp_path / "profile")
    assert not errors, errors  # a blocked inline handler or script would be a CSP error here
    assert probe["injected"] == 0 and probe["scripts"] == 1 and not probe["marked"], probe
    assert probe["title"].startswith("Does the CLIP prior help? sots<b onmouseover=alert(1)>|x")
    for name in HOSTILE_NAMES[:4]:
        assert name.replace("\t", " ").strip() in probe["text"].replace("\t", " "), name  # shown as text


def test_the_browser_check_catches_an_injection(chromium, tmp_path, monkeypatch):
    """The same report written without escaping is caught by the same probe: the check can fail."""
    from clipdehaze.compare import make_report
    from clipdehaze.render import html as H

    monkeypatch.setattr(H, "_e", str)
    sweep = _study(tmp_path)
    make_report([sweep], tmp_path / "out", viewer_images=2, resamples=199)
    probe, errors = _open(chromium, tmp_path / "out" / "compare.html", tmp_path / "profile")
    assert probe["injected"] > 0, (probe, errors)
