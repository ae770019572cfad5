"""A version's files fetched from the primary's HTTP API (a controller.store.replica Source).

One persistent HTTP/1.1 connection per fetching thread of a copy
(controller.store.replica fetches FETCHERS files at once): a root tree is
thousands of small files, and a connection per file would cost more than the
files. A failed request is tried once more on a new connection; an HTTP
error names the URL and the status.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from typing import BinaryIO

from controller.core.errors import StoreError
from controller.core.ids import is_store_version

CHUNK = 1 << 20
TIMEOUT_S = 60.0
MAX_LISTING = 16 << 20
MTIME_HEADER = "X-Netroot-Mtime-Ns"  # controller.daemon.web.versionfiles sends it


def primary_versions(base_url: str, token: str | None, label: str) -> list[tuple[str, bool]]:
    """(version, active) of each version the primary holds of label, oldest first.

    The catch-up of a replica that missed events (its bridge was down): the
    primary's `/api/v1/labels/<label>/versions`, checked row by row.
    """
    source = HttpSource(base_url, token, label, "")
    source.base = f"/api/v1/labels/{label}/versions"
    try:
        response = source._get("")
        data = response.read(MAX_LISTING + 1)
    finally:
        source.close()
    if len(data) > MAX_LISTING:
        raise StoreError(f"{base_url}{source.base}: listing larger than {MAX_LISTING} bytes")
    try:
        rows = json.loads(data)
        found = [(str(row["version"]), row["active"] is True) for row in rows]
    except (ValueError, TypeError, KeyError):
        raise StoreError(f"{base_url}{source.base}: not a list of versions") from None
    return [(v, active) for v, active in found if is_store_version(v)]


class HttpSource:
    """Files of one version of one label, from the primary's /api/v1."""

    def __init__(self, base_url: str, token: str | None, label: str, version: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.base = f"/api/v1/labels/{label}/versions/{version}/files/"
        self.url = f"{base_url}{self.base}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()  # .conn: this thread's connection
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                context = ssl.create_default_context()
                conn = http.client.HTTPSConnection(self.netloc, timeout=TIMEOUT_S, context=context)
            else:
                conn = http.client.HTTPConnection(self.netloc, timeout=TIMEOUT_S)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        """Close this thread's connection (after an error: the next request opens another)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()

    def _get(self, rel: str) -> http.client.HTTPResponse:
        # Index paths are file names as the primary read them: quoted byte for byte.
        path = self.base + urllib.parse.quote(rel.encode("utf-8", "surrogateescape"), safe="/")
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request("GET", path, headers=self.headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if attempt == 2:
                    raise StoreError(f"{self.url}{rel}: {exc}") from None
                continue
            if response.status != 200:
                body = response.read(512).decode("utf-8", "replace").strip()
                self._drop()
                raise StoreError(f"{self.url}{rel}: HTTP {response.status}: {body[:200]}")
            return response
        raise AssertionError("unreachable")

    def read(self, rel: str, limit: int) -> bytes:
        """A small file's bytes (manifest, index)."""
        response = self._get(rel)
        data = response.read(limit + 1)
        if len(data) > limit:
            self._drop()
            raise StoreError(f"{self.url}{rel}: larger than {limit} bytes")
        return data

    def copy(self, rel: str, out: BinaryIO) -> int | None:
        """Stream a file into out; its mtime as the primary has it."""
        response = self._get(rel)
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise StoreError(f"{self.url}{rel}: {exc}") from None
        mtime = response.getheader(MTIME_HEADER)
        return int(mtime) if mtime is not None and mtime.isdigit() else None
