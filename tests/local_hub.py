"""A Hugging Face hub on localhost for the hub tests (no hub is reachable from CI), and a cache
laid out by hand as huggingface_hub lays it out.

`LocalHub` answers the three requests huggingface_hub makes to fetch a file: the model info
with file metadata (`/api/models/<repo>[/revision/<rev>]?blobs=true`), and HEAD and GET of
`/<repo>/resolve/<rev>/<file>` with the headers the hub sends (X-Repo-Commit, ETag =
the sha256 of an LFS file, Content-Length). It counts downloads and can serve corrupt bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def commit_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


class LocalHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.downloads: Counter[str] = Counter()  # "repo/file" -> GETs
        self.corrupt: Counter[str] = Counter()  # "repo/file" -> GETs still to answer with flipped bytes
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path).strip("/").split("/")
                if path[:2] == ["api", "models"]:
                    repo = "/".join(path[2:4])
                    if repo not in hub.repos:
                        return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    return self._send(200, json.dumps(hub.info(repo)).encode(), {"Content-Type": "application/json"})
                repo, rest = "/".join(path[:2]), path[2:]
                if repo not in hub.repos or len(rest) < 3 or rest[0] != "resolve":
                    return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
                name = "/".join(rest[2:])
                files = hub.repos[repo]
                if name not in files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                data = files[name]
                key = f"{repo}/{name}"
                if body:
                    hub.downloads[key] += 1
                    if hub.corrupt[key] > 0:
                        hub.corrupt[key] -= 1
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                headers = {"X-Repo-Commit": commit_of(files), "ETag": f'"{hashlib.sha256(files[name]).hexdigest()}"',
                           "Content-Type": "application/octet-stream"}
                self._send(200, data, headers, body=body)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool = True) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def info(self, repo: str) -> dict[str, object]:
        files = self.repos[repo]
        return {"id": repo, "modelId": repo, "sha": commit_of(files), "private": False, "siblings": [
            {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
             "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}}
            for name, data in sorted(files.items())]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_cache(cache: Path, repo: str, files: dict[str, bytes], *, revision: str = "main") -> Path:
    """Lay `files` out in a hub cache as huggingface_hub does (blobs named by sha256, snapshot
    links relative to them, a ref naming the commit); the snapshot directory."""
    d = cache / ("models--" + repo.replace("/", "--"))
    commit = commit_of(files)
    snap = d / "snapshots" / commit
    for name, data in files.items():
        blob = d / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / revision).write_text(commit)
    return snap
