"""`staged`: an asset body that works on local copies of a data root and artifacts in a store.

Every asset body is declared `@staged`. Where the corpus' data root or artifacts are in
object storage (`s3://...`), the body runs inside `CorpusResource.staged()`: the copies
are pulled before it, and what it wrote is pushed once it has succeeded, before Dagster
records the materialization (a generator body's events are held until the push is done).
Where both are local folders, the body runs as it is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def staged(body: Callable[..., Any]) -> Callable[..., Any]:
    """`body` on the local copies of its `corpus` resource's remote locations."""
    if inspect.isgeneratorfunction(body):

        @functools.wraps(body)
        def generate(*args: Any, **kwargs: Any) -> Any:
            corpus = kwargs.get("corpus")
            if corpus is None or not corpus.remote:
                yield from body(*args, **kwargs)
                return
            with corpus.staged():
                events = list(body(*args, **kwargs))
            yield from events

        return generate

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        corpus = kwargs.get("corpus")
        if corpus is None or not corpus.remote:
            return body(*args, **kwargs)
        with corpus.staged():
            return body(*args, **kwargs)

    return run
