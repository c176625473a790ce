"""The page kit every report shares: the HTML skeleton, its inline style and script, escaping.

A page is one self-contained file: no network, no CDN, the style and the
script inline. Data the script needs travels as JSON in a
``<script type="application/json">`` block and is put on the page with DOM
APIs (``textContent``), never parsed as HTML; everything the Python side
writes into the HTML itself goes through :func:`escape`.
"""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --soft: #f6f8fa; --good: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #fff; }
header.page { padding: 18px 24px 8px; border-bottom: 1px solid var(--line); }
header.page h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
main { padding: 12px 24px 40px; }
h2 { font-size: 16px; margin: 22px 0 8px; font-weight: 600; }
h3 { font-size: 14px; margin: 16px 0 6px; font-weight: 600; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
table.facts { border-collapse: collapse; margin: 6px 0 12px; }
table.facts th, table.facts td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; }
table.facts th { color: var(--muted); font-weight: 500; white-space: nowrap; }
table.list { border-collapse: collapse; margin: 6px 0 12px; }
table.list th, table.list td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
                               vertical-align: top; }
table.list th { background: var(--soft); font-weight: 600; }
table.list td.num, table.list th.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin: 6px 0 12px; }
.banner.pass { background: #dafbe1; color: var(--good); border: 1px solid #aceebb; }
.banner.fail { background: #ffebe9; color: var(--bad); border: 1px solid #ffcecb; }
.failures li { color: var(--bad); }
.controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 10px 0;
            position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 3;
            border-bottom: 1px solid var(--line); }
.controls label { color: var(--muted); }
.controls select { font: inherit; padding: 2px 4px; max-width: 360px; }
table.grid { border-collapse: separate; border-spacing: 0; }
table.grid th { position: sticky; top: var(--controls-height, 49px); background: var(--soft); z-index: 2;
                text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); font-weight: 600;
                vertical-align: bottom; max-width: 190px; }
table.grid th .sub { display: block; font-weight: 400; color: var(--muted); font-size: 12px;
                     overflow-wrap: anywhere; }
table.grid td { padding: 8px; border-bottom: 1px solid var(--line); vertical-align: top; width: 176px;
                max-width: 190px; }
table.grid td.input { background: #fcfcfd; }
.name { overflow-wrap: anywhere; font-size: 12px; margin-top: 4px; }
.thumb { display: block; width: 160px; height: 160px; object-fit: contain; background: var(--soft);
         border-radius: 4px; cursor: zoom-in; }
.tokens { display: block; max-width: 160px; margin-top: 4px; }
.label { font-weight: 600; margin-top: 4px; overflow-wrap: anywhere; }
.score { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.empty { color: var(--muted); font-size: 12px; }
.maps { display: flex; gap: 8px; align-items: flex-start; flex-wrap: wrap; }
.maps figure { margin: 0; }
.maps figcaption { font-size: 12px; color: var(--muted); max-width: 160px; overflow-wrap: anywhere; }
.map { width: 128px; height: 128px; image-rendering: pixelated; display: block; border-radius: 3px;
       cursor: zoom-in; }
.colorbar { display: inline-block; width: 200px; height: 12px; vertical-align: middle; image-rendering: pixelated;
            border-radius: 2px; margin: 0 6px; }
.problems { color: var(--bad); }
.card { display: inline-block; width: 150px; vertical-align: top; margin: 0 10px 10px 0; }
.card .thumb { width: 140px; height: 140px; }
.curves { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
#lightbox { position: fixed; inset: 0; background: rgba(15, 18, 22, 0.86); display: none; z-index: 10;
            align-items: center; justify-content: center; flex-direction: column; gap: 10px; cursor: zoom-out; }
#lightbox.open { display: flex; }
#lightbox .pictures { display: flex; gap: 16px; align-items: center; justify-content: center; max-width: 96vw; }
#lightbox img { max-width: 90vw; max-height: 82vh; image-rendering: auto; background: #fff; }
#lightbox .pictures.two img { max-width: 46vw; }
#lightbox .caption { color: #fff; max-width: 90vw; overflow-wrap: anywhere; }
"""

SCRIPT = """
"use strict";
const kit = {
  /** The JSON data block of the page, parsed (never evaluated). */
  data(id) { return JSON.parse(document.getElementById(id).textContent); },
  /** An element with attributes and children; text only through textContent. */
  el(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined) continue;
      if (name === "text") element.textContent = value;
      else if (name === "class") element.className = value;
      else element.setAttribute(name, value);
    }
    for (const child of children) if (child !== null && child !== undefined) element.append(child);
    return element;
  },
  /** Rows appended a chunk at a time as the page scrolls, so a run of thousands opens at once. */
  progressive(body, sentinel, count, renderRow, chunk) {
    let next = 0;
    let total = count;
    const more = () => {
      const end = Math.min(total, next + chunk);
      const rows = document.createDocumentFragment();
      for (; next < end; next++) rows.append(renderRow(next));
      body.append(rows);
    };
    const observer = new IntersectionObserver((seen) => {
      if (!seen.some((entry) => entry.isIntersecting) || next >= total) return;
      more();
      // observing again reports the sentinel's place anew: still in sight, the next chunk follows
      observer.unobserve(sentinel);
      observer.observe(sentinel);
    }, { rootMargin: "1200px 0px" });
    more();
    observer.observe(sentinel);
    return {
      restart() { body.replaceChildren(); next = 0; more(); observer.unobserve(sentinel); observer.observe(sentinel); },
      rendered() { return next; },
    };
  },
};

/* The lightbox: a click on any picture with data-full shows it full size (and its data-panel beside it). */
(function () {
  const box = kit.el("div", { id: "lightbox", role: "dialog", "aria-modal": "true" });
  const pictures = kit.el("div", { class: "pictures" });
  const caption = kit.el("div", { class: "caption" });
  box.append(pictures, caption);
  document.body.append(box);
  const close = () => { box.classList.remove("open"); pictures.replaceChildren(); };
  box.addEventListener("click", close);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
  document.addEventListener("click", (event) => {
    const picture = event.target.closest ? event.target.closest("[data-full]") : null;
    if (!picture || box.contains(picture)) return;
    const sources = [picture.dataset.full, picture.dataset.panel].filter(Boolean);
    pictures.replaceChildren(...sources.map((source) => kit.el("img", { src: source, alt: "" })));
    pictures.classList.toggle("two", sources.length > 1);
    caption.textContent = picture.dataset.caption || "";
    box.classList.add("open");
  });
})();
"""


def escape(value: Any) -> str:
    """``value`` as text safe in HTML content and in a quoted attribute."""
    return html.escape(str(value), quote=True)


def json_block(element_id: str, data: Any) -> str:
    """``data`` as a ``<script type="application/json">`` block no value can end early.

    Every ``<`` (so ``</script>`` and ``<!--``) is written as ``\\u003c``,
    which ``JSON.parse`` reads back as the same character.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")
    # the two line separators end a line in old scripts: never raw inside the block
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{escape(element_id)}">{text}</script>'


def document(title: str, subtitle: str, body: str, scripts: list[str] | None = None) -> str:
    """A whole page: the skeleton, the shared style and script, ``body`` and the page's own ``scripts``.

    ``title`` and ``subtitle`` are escaped here; ``body`` is HTML the caller built with :func:`escape`.
    """
    own = "".join(f"<script>{script}</script>" for script in scripts or [])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # nothing leaves the page: no request but for its own pictures (relative or inline)
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data: file:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f'<body><header class="page"><h1>{escape(title)}</h1><div class="muted">{escape(subtitle)}</div></header>\n'
        f"<main>{body}</main>\n<script>{SCRIPT}</script>{own}</body></html>\n"
    )


def facts(rows: list[tuple[str, Any]]) -> str:
    """A two-column table of names and values (both escaped); rows whose value is None are left out."""
    cells = "".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows
                    if value is not None and value != "")
    return f'<table class="facts">{cells}</table>' if cells else ""


def number(value: Any, digits: int = 3) -> str:
    """A float shown to ``digits`` significant digits; ``-`` for none."""
    if value is None:
        return "-"
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


__all__ = ["SCRIPT", "STYLE", "document", "escape", "facts", "json_block", "number"]
