"""The search page's HTML: a form, the query as enhanced, ranked results with thumbnails.

Everything a corpus or a person typed is escaped; images are referenced only through the
app's media routes (`/media/data/...`, `/media/upload/...`), which check what they serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from rar_pipeline.core.search.searcher import MODALITIES, SearchResult

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#222}
h1{font-size:1.4rem} form{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;
padding:1rem;background:#f4f5f7;border-radius:8px} label{display:flex;flex-direction:column;
font-size:.8rem;gap:.2rem} input[type=text]{width:28rem;font-size:1rem;padding:.35rem}
label.check{flex-direction:row;align-items:center;font-size:.9rem}
button{font-size:1rem;padding:.4rem 1.2rem} .query{margin:1rem 0;padding:.8rem 1rem;
border-left:4px solid #4a6fa5;background:#eef3fa;display:flex;gap:1rem;align-items:center}
.query img{max-height:96px}
.meta{color:#555;font-size:.85rem} .warn{color:#9a4b00} .error{color:#b00020;font-weight:600}
table{border-collapse:collapse;width:100%} td,th{padding:.4rem;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top} td.thumb{width:110px} td.thumb img{max-width:100px;
max-height:100px} .did{font-family:monospace}
"""


@dataclass
class PageState:
    """What the page shows: the form's values, and a result or an error."""

    configs: list[str]
    text: str = ""
    config: str = "full"
    k: int = 10
    hybrid: bool = False
    modality: str = ""
    result: SearchResult | None = None
    error: str | None = None
    status: int = 200  # the HTTP status the page is answered with (an error's own)
    asset: str | None = None  # what to materialize, when the error is the project's state
    query_image_url: str | None = None
    request_ms: float | None = None
    pools: list[str] = field(default_factory=list)


def data_image_url(img_path: str) -> str:
    """Where the page fetches a thumbnail of a data-root image."""
    return "/media/data/" + quote(img_path)


def _options(values: list[str], chosen: str, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    return "".join(
        f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>'
        f"{escape(labels.get(v, v))}</option>"
        for v in values
    )


def _form(state: PageState) -> str:
    modality = _options(["", *MODALITIES], state.modality, {"": "any"})
    return f"""
<form method="post" action="/" enctype="multipart/form-data" id="search">
  <label>Query<input type="text" name="q" id="q" value="{escape(state.text)}"
    placeholder="who founded the company that makes this?"></label>
  <label>Image (optional)<input type="file" name="image" id="image" accept="image/*"></label>
  <label>Config<select name="config" id="config">{_options(state.configs, state.config)}
  </select></label>
  <label>Results<input type="number" name="k" id="k" min="1" max="100" value="{state.k}">
  </label>
  <label>Candidates<select name="modality" id="modality">{modality}</select></label>
  <label class="check"><input type="checkbox" name="hybrid" id="hybrid" value="1"
    {" checked" if state.hybrid else ""}>hybrid (dense + full text)</label>
  <button type="submit" id="go">Search</button>
</form>"""


def _query(state: PageState) -> str:
    r = state.result
    if r is None:
        return ""
    image = (
        f'<img src="{escape(state.query_image_url)}" alt="query image" id="query-image">'
        if state.query_image_url
        else ""
    )
    calls = "no VLM call" if not r.vlm_calls else f"{r.vlm_calls:g} VLM call(s)"
    parts = " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in r.seconds.items() if k != "total")
    request = f", request {state.request_ms:.0f} ms" if state.request_ms is not None else ""
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in r.warnings)
    return f"""
<div class="query" id="enhanced">{image}<div>
  <div class="meta">{escape(r.query_type)} query · enhancement: {escape(r.enhancement)}
    ({calls}) · {escape(r.config)} ({escape(r.retriever)}) ·
    {"hybrid" if r.hybrid else "dense"}</div>
  <div><strong>Searched as:</strong> <span id="searched">{
        escape(r.searched_text or "(the image alone)")
    }</span></div>
  <div class="meta" id="latency">search {r.seconds["total"] * 1000:.0f} ms ({parts}){request}
  </div>{warnings}
</div></div>"""


def _results(state: PageState) -> str:
    r = state.result
    if r is None:
        return ""
    if not r.hits:
        return '<p id="results">No results.</p>'
    rows = []
    for h in r.hits:
        thumb = (
            f'<img src="{escape(data_image_url(h.img_path))}" alt="{escape(h.did)}" loading="lazy">'
            if h.img_path
            else ""
        )
        text = escape(h.text or h.txt or "")
        own = (
            f'<div class="meta">own text: {escape(h.txt)}</div>'
            if h.txt and h.text and h.txt != h.text
            else ""
        )
        rows.append(
            f'<tr class="hit" data-did="{escape(h.did)}"><td>{h.rank}</td>'
            f'<td class="thumb">{thumb}</td><td class="did">{escape(h.did)}</td>'
            f"<td>{h.score:.4f}</td><td>{escape(h.modality)}</td><td>{text}{own}</td></tr>"
        )
    return (
        '<table id="results"><tr><th>#</th><th></th><th>did</th><th>score</th>'
        "<th>modality</th><th>text (as indexed)</th></tr>" + "".join(rows) + "</table>"
    )


def render(state: PageState) -> str:
    """The whole page."""
    error = f'<p class="error" id="error">{escape(state.error)}</p>' if state.error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rar search</title>
<style>{STYLE}</style></head>
<body><h1>RAR search</h1>{_form(state)}{error}{_query(state)}{_results(state)}</body></html>"""
