"""A self-contained HTML report: sections of text, tables and images embedded as data URIs.

Used by the demo (``dhs_spark.demo``); nothing here knows about lenses. Images are PNGs made
with matplotlib's Agg backend and embedded base64, so the file opens anywhere offline.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Section:
    """One report section: a title, paragraphs (plain text, escaped), tables and figures.

    Table cells: ``True`` / ``False`` render as PASS / FAIL (green / red), ``None`` and NaN as
    n/a, floats with 4 significant digits; pass a string ("yes") for a boolean that is no verdict."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)  # (caption, header, rows)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, data URI)
    anchor: str = ""


def png_data_uri(fig) -> str:
    """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grz_to_rgb(image_chw: np.ndarray, scale: float | None = None, q: float = 8.0) -> np.ndarray:
    """An asinh-stretched RGB (H, W, 3) in [0, 1] from a (3, H, W) g, r, z stamp in nanomaggies.

    z -> red, r -> green, g -> blue (Lupton et al. 2004 stretch); ``scale`` defaults to the
    99.5th percentile of the mean band so that hosts and arcs share one stretch per stamp.
    """
    g, r, z = (np.nan_to_num(b.astype(np.float64)) for b in image_chw[:3])
    mean = (g + r + z) / 3.0
    if scale is None:
        scale = max(float(np.percentile(mean, 99.5)), 1e-6)
    stretch = np.arcsinh(q * np.clip(mean, 0, None) / scale) / (q * np.maximum(mean, 1e-12))
    rgb = np.stack([z, r, g], axis=-1) * stretch[..., None] / np.arcsinh(q) * q
    return np.clip(rgb, 0.0, 1.0)


def file_data_uri(path: str | Path, mime: str = "image/png") -> str:
    """A file (e.g. a PNG another tool wrote) as a base64 data URI."""
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.4g}"
    return html.escape(str(value))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:0.8em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}
th{background:#eee}td.num,td.pass,td.fail{text-align:right}caption{font-weight:bold;text-align:left;padding:4px 0}
.pass{background:#d9f2d9}.fail{background:#f7d4d4}figure{display:inline-block;margin:0.5em}
figcaption{font-size:0.85em;color:#555}img{max-width:100%}nav a{margin-right:1em}
"""


def render_html(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole report as one HTML string."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if subtitle:
        parts.append(f"<p>{html.escape(subtitle)}</p>")
    parts.append("<nav>" + "".join(f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections)) + "</nav>")
    for i, sec in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(sec.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in sec.paragraphs)
        for caption, header, rows in sec.tables:
            parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                cells = []
                for value in row:
                    # booleans are pass/fail cells; numbers right-aligned; text left
                    cls = " class='pass'" if value is True else " class='fail'" if value is False else ""
                    if not cls and isinstance(value, (int, float, np.integer, np.floating)):
                        cls = " class='num'"
                    cells.append(f"<td{cls}>{_fmt(value)}</td>")
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</table>")
        for caption, uri in sec.images:
            parts.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, sections, subtitle))
    return path
