"""Self-contained HTML report pages: matplotlib figures inlined as PNGs, tables, preformatted text."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from image_classifier import artifacts

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#eee}.IssuesFound{background:#fdd}.Error{background:#fec}.NotApplicable{color:#888}
img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:80%}"""


def subplots(*args, **kwargs):
    """`matplotlib.pyplot.subplots` on the Agg backend (no display needed): (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (100 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


class Page:
    """An HTML page built section by section; `save` writes it (and each plot as a PNG) atomically."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.images: dict[str, bytes] = {}

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def plot(self, name: str, fig, caption: str = "") -> None:
        """Inline the figure; it is also saved as `<name>.png` beside the page, which it links to."""
        data = png_bytes(fig)
        self.images[name] = data
        encoded = base64.b64encode(data).decode()
        self.parts.append(f'<figure><a href="{html.escape(name)}.png"><img alt="{html.escape(name)}" '
                          f'src="data:image/png;base64,{encoded}"></a>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, header: Sequence[str], rows: Iterable[Sequence], row_class: Sequence[str] | None = None) -> None:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for i, row in enumerate(rows):
            css = f' class="{html.escape(row_class[i])}"' if row_class else ""
            body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        self.parts.append(f"<table><tr>{cells}</tr>{''.join(body)}</table>")

    def save(self, path: Path) -> None:
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(self.parts)}</body></html>")
        for name, data in self.images.items():
            artifacts.atomic_write_bytes(path.parent / f"{name}.png", data)
        artifacts.atomic_write_bytes(path, page.encode())
