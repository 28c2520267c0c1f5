"""The search page: a Starlette app over `Searchers`, served by uvicorn on 127.0.0.1.

    GET  /                       the form (a `q` parameter searches at once)
    POST /                       search with the form (text, optional image upload)
    GET|POST /api/search         the same search, answered as JSON
    GET  /media/data/<path>      a thumbnail of an image inside the data root
    GET  /media/upload/<name>    a thumbnail of an uploaded query image
    GET  /healthz                ok

Every search runs on one worker thread: models are loaded there once and kept (SQLite
caches and models stay on the thread that opened them), and requests queue rather than
compete for two cores. Uploads are bounded in bytes and checked like corpus images; media
routes serve only decodable images, only from the data root or the uploads folder.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rar_pipeline.core.corpus.images import thumbnail
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.search.query import (
    MAX_UPLOAD_BYTES,
    QUERY_IMAGE_CHECK,
    UPLOAD_NAME,
    SearchError,
    SearchQuery,
    save_upload,
)
from rar_pipeline.core.search.searcher import SearchResult
from rar_pipeline.defs.searchers import Searchers
from rar_pipeline.web.page import PageState, render

THUMBNAIL_PX = 200
MAX_K = 100


@functools.lru_cache(maxsize=2048)
def _thumbnail(path: str, mtime_ns: int) -> bytes:
    return thumbnail(Path(path), THUMBNAIL_PX, "PNG", QUERY_IMAGE_CHECK)


def thumbnail_response(path: Path) -> Response:
    """A PNG thumbnail of `path`, or 404 unless it is a file that decodes as an image."""
    try:
        data = _thumbnail(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError):
        return PlainTextResponse("not an image", status_code=404)
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


class SearchApp:
    """The page's state: the searchers, their worker thread, the upload limit."""

    def __init__(self, searchers: Searchers, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.searchers = searchers
        self.max_upload_bytes = max_upload_bytes
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rar-search")

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the search thread."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.worker, call)

    # -- reading a request

    async def _params(self, request: Request) -> tuple[dict[str, Any], UploadFile | None]:
        if request.method == "GET":
            return dict(request.query_params), None
        length = int(request.headers.get("content-length") or 0)
        if length > self.max_upload_bytes + 64 * 1024:
            raise SearchError(f"the request is {length:,} bytes; uploads are limited to "
                              f"{self.max_upload_bytes:,}")  # fmt: skip
        form = await request.form(max_files=1, max_fields=20, max_part_size=64 * 1024)
        upload = form.get("image")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        has_file = isinstance(upload, UploadFile) and bool(upload.filename)
        return params, upload if has_file else None

    async def _search(self, request: Request) -> tuple[PageState, SearchResult | None]:
        state = PageState(configs=list(INDEXED))
        started = time.perf_counter()
        try:
            params, upload = await self._params(request)
            state.text = str(params.get("q", ""))
            state.config = str(params.get("config") or "full")
            state.hybrid = params.get("hybrid") in ("1", "true", "on")
            state.modality = str(params.get("modality") or "")
            state.k = _k(params.get("k"))
            image = None
            if upload is not None:
                data = await upload.read(self.max_upload_bytes + 1)
                folder, limit = self.searchers.uploads, self.max_upload_bytes
                image = await self.run(save_upload, data, folder, max_bytes=limit)
                state.query_image_url = f"/media/upload/{image.name}"
            if not state.text.strip() and image is None:
                return state, None  # the empty form
            query = SearchQuery(state.text, image)
            state.result = await self.run(self._search_sync, state, query)
        except (ValueError, OSError) as exc:  # SearchError, a missing model or memory
            state.error = str(exc)
        state.request_ms = (time.perf_counter() - started) * 1000
        return state, state.result

    def _search_sync(self, state: PageState, query: SearchQuery) -> SearchResult:
        searcher = self.searchers.get(state.config)
        modality = [state.modality] if state.modality else None
        return searcher.search(query, state.k, hybrid=state.hybrid, modality=modality)

    # -- routes

    async def page(self, request: Request) -> Response:
        state, _ = await self._search(request)
        status = 400 if state.error else 200
        return HTMLResponse(render(state), status_code=status, headers=_timing(state))

    async def api(self, request: Request) -> Response:
        state, result = await self._search(request)
        if state.error or result is None:
            error = state.error or "a query needs text (q), an image, or both"
            return JSONResponse({"error": error}, status_code=400)
        body = {**result.as_dict(), "request_ms": round(state.request_ms or 0, 2)}
        return JSONResponse(body, headers=_timing(state))

    async def data_media(self, request: Request) -> Response:
        try:
            path = resolve_in_root(
                self.searchers.data_root,
                request.path_params["path"],
                strict=self.searchers.strict_paths,
            )
        except ValueError:
            return PlainTextResponse("outside the data root", status_code=404)
        return await self.run(thumbnail_response, path)

    async def upload_media(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not UPLOAD_NAME.match(name):
            return PlainTextResponse("no such upload", status_code=404)
        return await self.run(thumbnail_response, self.searchers.uploads / name)


def _k(raw: Any) -> int:
    try:
        k = int(raw) if raw not in (None, "") else 10
    except (TypeError, ValueError):
        raise SearchError(f"results must be a whole number, not {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise SearchError(f"results must be between 1 and {MAX_K}")
    return k


def _timing(state: PageState) -> dict[str, str]:
    return {"Server-Timing": f"total;dur={state.request_ms or 0:.1f}"}


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(searchers: Searchers, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Starlette:
    """The search page's ASGI app over `searchers` (`app.state.search` holds them)."""
    search = SearchApp(searchers, max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        search.worker.shutdown(wait=False)

    app = Starlette(
        routes=[
            Route("/", search.page, methods=["GET", "POST"]),
            Route("/api/search", search.api, methods=["GET", "POST"]),
            Route("/media/data/{path:path}", search.data_media),
            Route("/media/upload/{name}", search.upload_media),
            Route("/healthz", _health),
        ],
        lifespan=lifespan,
    )
    app.state.search = search
    return app


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
