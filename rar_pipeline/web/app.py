"""The search page: a Starlette app over `Searchers`, served by uvicorn on 127.0.0.1.

    GET  /                       the form (a `q` parameter searches at once)
    POST /                       search with the form (text, optional image upload)
    GET|POST /api/search         the same search, answered as JSON
    GET  /media/data/<path>      a thumbnail of an image inside the data root
    GET  /media/upload/<name>    a thumbnail of an uploaded query image
    GET  /healthz                ok

Every search runs on one worker thread: models are loaded there once and kept (SQLite
caches and models stay on the thread that opened them), and requests queue rather than
compete for two cores. A request whose client has gone is dropped before it runs.
`web.guard.RequestGuard` checks every request's host, origin and body size first. Uploads
are checked like corpus images and kept under a quota; media routes serve only decodable
images, only from the data root or the uploads folder. A search that cannot run is
answered with its status (400: the request; 409: an index or checkpoint to materialize)
and a message, as JSON from the API and in the page.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rar_pipeline.core.corpus.images import thumbnail
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.search.query import (
    MAX_K,
    QUERY_IMAGE_CHECK,
    UPLOAD_NAME,
    SearchError,
    SearchPageConfig,
    SearchQuery,
    save_upload,
)
from rar_pipeline.core.search.searcher import SearchResult
from rar_pipeline.defs.searchers import Searchers
from rar_pipeline.web.guard import BodyTooLarge, RequestGuard, content_security_policy
from rar_pipeline.web.page import STYLE, PageState, render

THUMBNAIL_PX = 200
FORM_OVERHEAD = 64 * 1024  # the form's fields and multipart framing besides the image
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection
log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected: its work is dropped."""


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


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (its body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class SearchApp:
    """The page's state: the searchers, their worker thread, its settings."""

    def __init__(self, searchers: Searchers, page: SearchPageConfig) -> None:
        self.searchers = searchers
        self.config = page
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rar-search")

    async def run(self, request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the search thread, unless the client goes while it waits its turn.

        Raises:
            ClientGone: the client disconnected first (the work is dropped if it has not
                started; a search already running finishes, unseen).
        """
        gone = threading.Event()

        def job() -> Any:
            if gone.is_set():
                raise ClientGone
            return fn(*args, **kwargs)

        work = asyncio.get_running_loop().run_in_executor(self.worker, job)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            gone.set()
            work.cancel()
            raise ClientGone
        return work.result()

    # -- reading a request

    async def _params(self, request: Request) -> tuple[dict[str, Any], UploadFile | None]:
        if request.method == "GET":
            return dict(request.query_params), None
        limit = self.config.max_upload_bytes
        try:
            form = await request.form(max_files=1, max_fields=20, max_part_size=FORM_OVERHEAD)
        except BodyTooLarge:
            raise SearchError(f"the request is too large: uploads are limited to {limit:,} "
                              "bytes", status=413) from None  # fmt: skip
        except HTTPException as exc:  # a malformed form
            raise SearchError(f"the form cannot be read: {exc.detail}") from None
        upload = form.get("image")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        has_file = isinstance(upload, UploadFile) and bool(upload.filename)
        return params, upload if has_file else None

    async def _search(self, request: Request) -> PageState:
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
                data = await upload.read(self.config.max_upload_bytes + 1)
                image = await self.run(
                    request, save_upload, data, self.searchers.uploads,
                    max_bytes=self.config.max_upload_bytes,
                    quota_bytes=self.config.upload_quota_bytes,
                )  # fmt: skip
                state.query_image_url = f"/media/upload/{image.name}"
            if not state.text.strip() and image is None:
                return state  # the empty form
            query = SearchQuery(state.text, image)
            state.result = await self.run(request, self._search_sync, state, query)
        except SearchError as exc:
            state.error, state.status, state.asset = str(exc), exc.status, exc.asset
        except (ValueError, OSError) as exc:  # a model that cannot read the query, memory
            state.error, state.status = str(exc), 400
        state.request_ms = (time.perf_counter() - started) * 1000
        return state

    def _search_sync(self, state: PageState, query: SearchQuery) -> SearchResult:
        searcher = self.searchers.get(state.config)
        modality = [state.modality] if state.modality else None
        return searcher.search(query, state.k, hybrid=state.hybrid, modality=modality)

    # -- routes

    async def page(self, request: Request) -> Response:
        state = await self._search(request)
        return HTMLResponse(render(state), status_code=state.status, headers=_timing(state))

    async def api(self, request: Request) -> Response:
        state = await self._search(request)
        if state.error or state.result is None:
            error = state.error or "a query needs text (q), an image, or both"
            status = state.status if state.error else 400
            answer = {"error": error, "status": status}
            if state.asset:
                answer["asset"] = state.asset
            return JSONResponse(answer, status_code=status)
        body = {**state.result.as_dict(), "request_ms": round(state.request_ms or 0, 2)}
        # the client's own view of its image: the page's URL for it, never a server path
        body["query"]["image"] = state.query_image_url
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
        return await self.run(request, thumbnail_response, path)

    async def upload_media(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not UPLOAD_NAME.match(name):
            return PlainTextResponse("no such upload", status_code=404)
        return await self.run(request, thumbnail_response, self.searchers.uploads / name)


def _k(raw: Any) -> int:
    try:
        k = int(raw) if raw not in (None, "") else 10
    except (TypeError, ValueError):
        raise SearchError(f"results must be a whole number, not {str(raw)[:20]!r}") from None
    if not 1 <= k <= MAX_K:
        raise SearchError(f"results must be between 1 and {MAX_K}")
    return k


def _timing(state: PageState) -> dict[str, str]:
    return {"Server-Timing": f"total;dur={state.request_ms or 0:.1f}"}


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


def _quietly(route: Any) -> Any:
    """A route that answers a client that has gone with nothing, and a bug with JSON."""

    @functools.wraps(route)
    async def answer(request: Request) -> Response:
        try:
            return await route(request)
        except (ClientGone, ClientDisconnect):
            return Response(status_code=CLIENT_GONE)
        except BodyTooLarge:
            raise  # the guard answers it
        except Exception as exc:
            log.exception("the search page failed on %s", request.url.path)
            message = f"the server failed on this request ({type(exc).__name__}: {exc})"
            return JSONResponse({"error": message, "status": 500}, status_code=500)

    return answer


def create_app(searchers: Searchers, page: SearchPageConfig | None = None) -> Starlette:
    """The search page's ASGI app over `searchers` (`app.state.search` holds them)."""
    page = page or SearchPageConfig()
    search = SearchApp(searchers, page)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        search.worker.shutdown(wait=False, cancel_futures=True)

    guard = Middleware(
        RequestGuard,
        max_body_bytes=page.max_upload_bytes + FORM_OVERHEAD,
        allowed_hosts=page.allowed_hosts,
        csp=content_security_policy([STYLE]),
    )
    app = Starlette(
        routes=[
            Route("/", _quietly(search.page), methods=["GET", "POST"]),
            Route("/api/search", _quietly(search.api), methods=["GET", "POST"]),
            Route("/media/data/{path:path}", _quietly(search.data_media)),
            Route("/media/upload/{name}", _quietly(search.upload_media)),
            Route("/healthz", _health),
        ],
        middleware=[guard],
        lifespan=lifespan,
    )
    app.state.search = search
    return app
