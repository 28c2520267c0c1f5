"""Object storage (S3 and S3-compatible servers): how each client reaches it, and a probe.

Locations are URIs (`s3://bucket/prefix`); the server is one setting, the endpoint URL
(`storage.s3_endpoint_url`, the standard `AWS_ENDPOINT_URL`; empty: AWS itself).
Credentials are never settings: every client reads them from the standard AWS chain
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `~/.aws`, an instance role).

`conditional_put_honoured` checks what LanceDB's concurrent writers rely on: that the store
refuses a write with `If-None-Match: *` onto an existing key (each LanceDB commit is such a
write; a store that ignores the header lets two writers overwrite each other's commit).
"""

from __future__ import annotations

import functools
import uuid
from typing import Any
from urllib.parse import urlparse


def is_object_store(uri: str) -> bool:
    """Whether a location is in object storage (`s3://...`) rather than a local folder."""
    return urlparse(str(uri)).scheme in {"s3", "s3a"}


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.strip("/")


def lancedb_options(endpoint_url: str, region: str = "") -> dict[str, str]:
    """LanceDB's `storage_options` for a store at `endpoint_url` (empty: AWS)."""
    options: dict[str, str] = {}
    if endpoint_url:
        options["aws_endpoint"] = endpoint_url
        if endpoint_url.startswith("http://"):
            options["allow_http"] = "true"
    if region:
        options["aws_region"] = region
    return options


def boto3_client(endpoint_url: str, region: str = "") -> Any:
    """An S3 client of the AWS SDK for the store (credentials from the AWS chain)."""
    try:
        import boto3
    except ImportError as exc:
        raise ImportError(
            "object storage needs boto3: pip install 'rar_pipeline[cluster]'"
        ) from exc
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)


def conditional_put_honoured(uri: str, client: Any) -> bool:
    """Whether the store under `uri` refuses a second `If-None-Match: *` write of one key.

    Writes a probe object under `<uri>/.rar-probe/` twice and deletes it.

    Raises:
        botocore.exceptions.ClientError: the store refused the first write too (no
            permission to write there, no such bucket): a problem to fix, not an answer.
    """
    from botocore.exceptions import ClientError

    bucket, prefix = split_uri(uri)
    key = f"{prefix}/.rar-probe/{uuid.uuid4().hex}".lstrip("/")
    client.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            return True
        raise
    finally:
        client.delete_object(Bucket=bucket, Key=key)
    return False


@functools.cache
def check_concurrent_writes(uri: str, endpoint_url: str, region: str = "") -> None:
    """Refuse a LanceDB database on a store that ignores conditional writes (once a process).

    Raises:
        RuntimeError: the store accepted the second conditional write; says why it matters
            and what to do.
    """
    if not conditional_put_honoured(uri, boto3_client(endpoint_url, region)):
        raise RuntimeError(
            f"the object store of {uri} ({endpoint_url or 'AWS'}) ignores conditional "
            "writes (If-None-Match: *): LanceDB commits through them, and without them two "
            "index writers at once can overwrite each other's commit. Use a store that "
            "honours them (AWS S3, MinIO, SeaweedFS, Ceph RGW), or set "
            "RAR_LANCEDB_SINGLE_WRITER=on and allow one index run at a time "
            "(tag_concurrency_limits: rar/workload=index, limit 1)."
        )
