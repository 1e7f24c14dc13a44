"""HTML: ``clipdehaze-compare``'s report as one self-contained page, ``compare.html`` (no network, no CDN).

The page holds the row and comparison tables, the forest and scatter plots, and per comparison a viewer for the
images with the largest improvement and the largest regression (in the first metric, read in its direction): hazy | reference | variant | GT
side by side, a before/after slider over reference and variant, and any image at full resolution on click.

Every image is embedded once as a PNG data URI in a script table, under an opaque key (``i0``, ``i1``...), and
assigned to its ``<img>`` elements on load. The page is inert whatever the runs are called: text goes into HTML
escaped for its context (element content and quoted attributes: :func:`html.escape`; the script's JSON:
:func:`script_json`, which also escapes ``<``, ``>`` and ``&``, so no ``</script>`` can close the script), and a
Content-Security-Policy allows nothing but data-URI images, the inline style, and the one inline script by its
sha256 (no other script, no event-handler attribute), so the page can neither reach the network nor run markup
that slipped through. The restored images are the runs' own test outputs (``<run>/test_outputs/<input stem>.png``,
written with ``save_test_outputs=true``), from the lowest seed both rows ran, and the hazy and GT images are the
files those outputs name in their text chunks (:class:`clipdehaze.callbacks.SaveTestOutputs`), read as the
metrics read them (:func:`clipdehaze.data.io.load_image`). A comparison whose runs saved no outputs says so.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from clipdehaze.callbacks import SOURCE_KEYS
from clipdehaze.render.document import Inline, plain, spans
from clipdehaze.render.numbers import UNITS, value

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1400px;
     padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.6em .8em}
.plot{max-width:100%;border:1px solid #ddd;margin:.3em 0}
.viewer{border:1px solid #ccc;padding:.6em;margin:0 0 1.2em}
.panels{display:grid;grid-template-columns:repeat(4,1fr);gap:.4em}
.panels figure{margin:0}
.panels img{width:100%;cursor:zoom-in;display:block}
figcaption{font-size:.8em;color:#555;text-align:center}
.slider{position:relative;margin-top:.6em;max-width:640px}
.slider img{width:100%;display:block;cursor:zoom-in}
.slider .after{position:absolute;top:0;left:0}
.slider input{width:100%}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.85);overflow:auto;display:none;cursor:zoom-out;z-index:9}
#lightbox img{display:block;margin:1em auto;max-width:none}
.pos{color:#176b1c}.neg{color:#a3161b}
"""

_SCRIPT = """
for (const img of document.querySelectorAll('img[data-src]')) img.src = IMAGES[img.dataset.src];
for (const box of document.querySelectorAll('.slider')) {
  const after = box.querySelector('.after'), range = box.querySelector('input');
  const set = () => { after.style.clipPath = 'inset(0 ' + (100 - range.value) + '% 0 0)'; };
  range.addEventListener('input', set); set();
}
const lightbox = document.getElementById('lightbox'), big = lightbox.querySelector('img');
for (const img of document.querySelectorAll('.zoom')) img.addEventListener('click', () => {
  big.src = img.src; big.alt = img.alt; lightbox.style.display = 'block'; });
lightbox.addEventListener('click', () => { lightbox.style.display = 'none'; });
document.addEventListener('keydown', e => { if (e.key === 'Escape') lightbox.style.display = 'none'; });
"""


class _Images:
    """Data URIs by opaque key, each image encoded once."""

    def __init__(self) -> None:
        self.uris: dict[str, str] = {}
        self._keys: dict[str, str] = {}

    def _key(self, source: str) -> tuple[str, bool]:
        if source in self._keys:
            return self._keys[source], False
        self._keys[source] = f"i{len(self._keys)}"
        return self._keys[source], True

    def add_png_bytes(self, source: str, data: bytes) -> str:
        key, new = self._key(source)
        if new:
            self.uris[key] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return key

    def add_file(self, path: Path) -> str | None:
        """An image file as PNG (a PNG as it is, any other format load_image reads re-encoded), decoded first so a
        broken file never reaches the page; None when it cannot be read."""
        from clipdehaze.data.io import ImageReadError, encode_png, load_image

        source = f"file:{path}"
        if source in self._keys:
            return self._keys[source]
        try:
            image = load_image(path)
            data = path.read_bytes() if path.suffix.lower() == ".png" else encode_png(image)
        except (OSError, ImageReadError):
            return None
        return self.add_png_bytes(source, data)


def script_json(obj: Any) -> str:
    """JSON that is safe inside ``<script>``: ``<``, ``>``, ``&`` and the JavaScript line separators as ``\\u``
    escapes (``json.dumps`` leaves ``</script>`` as it is)."""
    text = json.dumps(obj, ensure_ascii=False)
    for c in "<>&\u2028\u2029":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def inline(text: Inline) -> str:
    """Escaped text with its styled spans (:mod:`.document`)."""
    tags = {"b": "strong", "em": "em", "code": "code"}
    return "".join(_e(t) if style is None else f"<{tags[style]}>{_e(t)}</{tags[style]}>" for style, t in spans(text))


def render_blocks(blocks: list[tuple]) -> str:
    """:mod:`.document` blocks as HTML."""
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"<h{int(rest[0])}>{inline(rest[1])}</h{int(rest[0])}>")
        elif kind == "p":
            out.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "warn":
            out.append(f'<p class="warn">{inline(rest[0])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            header, body = rest
            out.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
        else:
            raise ValueError(f"unknown block {kind!r}")
    return "\n".join(out)


def _pick_runs(comparison) -> tuple[Any, Any, Any]:
    """(seed, variant run, reference run): the lowest seed both rows ran, else each row's first run."""
    v, r = comparison.variant, comparison.reference
    shared = sorted(set(map(str, v.seeds)) & set(map(str, r.seeds)))
    if shared:
        seed = shared[0]
        return seed, v.runs[[str(s) for s in v.seeds].index(seed)], r.runs[[str(s) for s in r.seeds].index(seed)]
    return f"{v.seeds[0]} / {r.seeds[0]}", v.runs[0], r.runs[0]


def _viewer(comparison, short: dict[str, str], metric: str, k: int, images: _Images) -> str:
    from clipdehaze.data.io import png_text

    res = comparison.results[metric]
    gain = res.per_image if res.higher_is_better else -res.per_image
    order = np.argsort(gain, kind="stable")
    chosen = list(dict.fromkeys([*order[::-1][:k].tolist(), *order[:k].tolist()]))
    seed, v_run, r_run = _pick_runs(comparison)
    v_name, r_name = short[comparison.variant.row.id], short[comparison.reference.row.id]
    title = f"<h3>{_e(comparison.kind)}: {_e(v_name)} vs {_e(r_name)} (seed {_e(seed)})</h3>"
    blocks = []
    for i in chosen:
        name = comparison.names[i]
        stem = Path(name).stem + ".png"
        v_out, r_out = Path(v_run.path) / "test_outputs" / stem, Path(r_run.path) / "test_outputs" / stem
        if not (v_out.is_file() and r_out.is_file()):
            missing = v_out if not v_out.is_file() else r_out
            return (title + f"<p class=\"warn\">No restored images to show: {_e(missing)} does not exist. The runs "
                    "save them with <code>save_test_outputs=true</code> (the study experiments set it).</p>")
        text = png_text(v_out)
        files = [Path(text[SOURCE_KEYS[0]]) if SOURCE_KEYS[0] in text else None, r_out, v_out,
                 Path(text[SOURCE_KEYS[1]]) if SOURCE_KEYS[1] in text else None]
        keys = [images.add_file(f) if f is not None else None for f in files]
        d = float(res.per_image[i])
        panels = []
        for key, file, label in zip(keys, files, ("hazy", f"reference: {r_name}", f"variant: {v_name}", "GT")):
            img = (f'<img class="zoom" data-src="{_e(key)}" alt="{_e(label)} {_e(name)}" title="click: full '
                   f'resolution">' if key else f"<p>(unreadable or missing: {_e(file or 'not recorded')})</p>")
            panels.append(f"<figure>{img}<figcaption>{_e(label)}</figcaption></figure>")
        r_key, v_key = keys[1:3]
        slider = "" if not (r_key and v_key) else (
            f'<div class="slider"><img class="zoom" data-src="{_e(r_key)}" alt="{_e(r_name)} {_e(name)}">'
            f'<img class="zoom after" data-src="{_e(v_key)}" alt="{_e(v_name)} {_e(name)}">'
            f'<input type="range" min="0" max="100" value="50" aria-label="before/after">'
            f"<figcaption>slider: left of the line {_e(v_name)}, right {_e(r_name)}</figcaption></div>")
        cls = "pos" if gain[i] > 0 else "neg"
        blocks.append(f'<div class="viewer"><p><strong>{_e(name)}</strong>: Δ {_e(metric.upper())} '
                      f'<span class="{cls}">{_e(value(d, metric, True))}{UNITS.get(metric, "")}</span> (mean over '
                      f"seeds; {_e(value(float(res.variant_per_image[i]), metric))} vs "
                      f"{_e(value(float(res.reference_per_image[i]), metric))})</p>"
                      f'<div class="panels">{"".join(panels)}</div>{slider}</div>')
    return title + "".join(blocks)


def write_html(path: Path, blocks: list[tuple], comparisons, short: dict[str, str], metric: str, out: Path,
               viewer_images: int) -> None:
    """The page: ``blocks`` (the report), the plots ``out/forest.png`` and ``out/scatter.png``, and a viewer of the
    ``viewer_images`` images with the largest improvement and the largest regression in ``metric`` per
    comparison (``short``: row id -> the name the report uses)."""
    images = _Images()
    plots = [images.add_png_bytes(f"plot:{name}", (out / name).read_bytes()) for name in ("forest.png", "scatter.png")]
    viewers = [_viewer(c, short, metric, viewer_images, images) for c in comparisons] if viewer_images else []
    script = f"const IMAGES = {script_json(images.uris)};\n{_SCRIPT}"
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode("ascii")
    heading = (f"<h2>Images with the largest improvement and regression in {_e(metric.upper())}</h2>"
               if viewers else "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(plain(blocks[0][2]))}</title><style>{_CSS}</style></head>
<body>
{render_blocks(blocks)}
<h2>Plots</h2>
<img class="plot zoom" data-src="{plots[0]}" alt="forest plot: mean delta with both intervals per comparison">
<img class="plot zoom" data-src="{plots[1]}" alt="per-image scatter: control vs variant">
{heading}
{"".join(viewers)}
<div id="lightbox"><img alt="full resolution"></div>
<script>{script}</script>
</body></html>
"""
    path.write_text(page)
