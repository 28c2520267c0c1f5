"""The requests of issue 19's probe of `rar serve`, as a hostile user or a careless client
would send them. `tests/web/test_hostile_requests.py` runs them against a real server and
`benchmarks/search_probes.py` times them.

Each probe takes the server's URL and the project folder it serves (which some probes
damage first), and returns the HTTP statuses the server answered with.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

Probe = Callable[[str, Path], list[int]]
NORMAL = {"q": "a yellow rectangle", "k": "5"}


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, bytes]:  # fmt: skip
    """(status, body) of one request; an HTTP error status is an answer, not an exception."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def search(url: str, **params: str) -> tuple[int, dict]:
    status, body = request(f"{url}/api/search?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def multipart(fields: dict[str, str], image: bytes | None) -> tuple[bytes, dict]:
    """A form body (and its content type) as the page's form posts it."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     'filename="q.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + image + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@functools.cache
def thin_png(width: int, height: int) -> bytes:
    """A blank PNG of that size: 1 x 39,999,999 is 78 kB (and takes ~3 s to make)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, "PNG")
    return buffer.getvalue()


THIN = [(1, 2000), (10, 500), (1, 39_999_999)]


def thin_images(url: str, project: Path) -> list[int]:
    """1. Thin images: OCR stretched their short side to 736 px (7.6 GiB, 21.8 GB)."""
    statuses = []
    for size in THIN:
        body, headers = multipart({"q": "what is written here?"}, thin_png(*size))
        statuses.append(request(f"{url}/api/search", body, headers)[0])
    return statuses


def chunked_upload(url: str, project: Path, total: int = 2 * 2**30) -> list[int]:
    """2. A 2 GB chunked upload: it was read whole and spooled to disk before its 400."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    head = (f"POST /api/search HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked"
            "\r\nContent-Type: multipart/form-data; boundary=xyz\r\n\r\n").encode()  # fmt: skip
    first = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n\r\n'
    chunk = b"\0" * (256 * 1024)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
        sent = 0
        with contextlib.suppress(OSError):  # the server hangs up once it has refused it
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        answer = sock.recv(4096)
    return [int(answer.split()[1])]


def foreign_origin(url: str, project: Path) -> list[int]:
    """3. Another site's page made the operator's browser post; DNS rebinding's Host."""
    body, headers = multipart({"q": "hat"}, None)
    foreign = request(f"{url}/", body, {**headers, "Origin": "https://evil.example"})[0]
    framed = request(
        f"{url}/api/search?q=hat",
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    )[0]
    rebound = request(f"{url}/api/search?q=hat", headers={"Host": "evil.example:80"})[0]
    return [foreign, framed, rebound]


def damaged_table(url: str, project: Path) -> list[int]:
    """4. A damaged LanceDB table: a plain-text 500 and a RuntimeError traceback."""
    for data in (project / "artifacts" / "demo" / "lancedb" / "query.lance" / "data").iterdir():
        data.unlink()
    return [search(url, q="a red hat", config="query")[0]]


def quoted_hybrid(url: str, project: Path) -> list[int]:
    """5. A quoted phrase, hybrid: 400 "position is not found ... recreate the index"."""
    statuses = []
    for text in ('"yellow rectangle"', "yellow AND (rectangle", "name:yellow*"):
        status, body = search(url, q=text, hybrid="1", k="5")
        statuses.append(status if len(body.get("hits", [])) == 5 else -1)
    return statuses


def hybrid_fills_k(url: str, project: Path) -> list[int]:
    """6. Hybrid returned fewer than k hits (1.5% of hybrid requests)."""
    statuses = []
    for text in ("red", "blue circle", "Velmora triangle", "who makes this", "green"):
        status, body = search(url, q=text, hybrid="1", k="20")
        statuses.append(status if len(body.get("hits", [])) == 20 else -1)
    return statuses


def absurd_k(url: str, project: Path) -> list[int]:
    """7. An absurd number of results (the CLI's traceback; the page's limit held)."""
    return [search(url, q="red", k=k)[0] for k in ("4611686018427387904", "-1", "1e9")]


def checkpoint_without_manifest(url: str, project: Path) -> list[int]:
    """8. A checkpoint folder without its manifest was served as untrained."""
    (project / "artifacts" / "demo" / "checkpoints" / "corpus" / "checkpoint.json").unlink()
    return [search(url, q="a red hat", config="corpus")[0]]


def abandoned_requests(url: str, project: Path, clients: int = 3) -> list[int]:
    """9. Clients that gave up still cost the next query (three of them, 19 s)."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")

    def give_up() -> None:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET /api/search?q=who+makes+this&hybrid=1 HTTP/1.1\r\n"
                         f"Host: {host}:{port}\r\n\r\n".encode())  # fmt: skip
            time.sleep(0.2)

    threads = [threading.Thread(target=give_up) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return []


PROBES: dict[str, tuple[Probe, list[int]]] = {
    "thin images": (thin_images, [400, 400, 400]),
    "2 GB chunked upload": (chunked_upload, [413]),
    "foreign origin, rebinding": (foreign_origin, [403, 403, 400]),
    "damaged LanceDB table": (damaged_table, [409]),
    "quoted hybrid": (quoted_hybrid, [200, 200, 200]),
    "hybrid fills k": (hybrid_fills_k, [200] * 5),
    "absurd k": (absurd_k, [400, 400, 400]),
    "checkpoint without manifest": (checkpoint_without_manifest, [409]),
    "abandoned requests": (abandoned_requests, []),
}


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
