"""A small HTTP client for the CLI: the same endpoints the editor uses, plus events."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None,
                 timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_text(exc)) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, f"cannot reach {self.base}: {exc.reason}") from None

    def submit(self, config: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/api/export", config)
        return result

    def status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/export/{job_id}/status")
        return result

    def delete(self, job_id: str) -> dict[str, Any]:
        """DELETE: cancels a pending or running export, removes a finished one."""
        result: dict[str, Any] = self._request("DELETE", f"/api/export/{job_id}")
        return result

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every job (page after page), optionally in the given states."""
        jobs: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"limit": "1000", **({"status": state} if state else {}),
                     **({"cursor": cursor} if cursor else {})}
            page = self._request("GET", f"/api/export?{urllib.parse.urlencode(query)}")
            jobs.extend(page["jobs"])
            cursor = page.get("nextCursor")
            if not cursor:
                return jobs

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Status updates from the Server-Sent Events stream, until the job ends."""
        req = urllib.request.Request(f"{self.base}/api/export/{job_id}/events")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_text(exc)) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, f"cannot reach {self.base}: {exc.reason}") from None
        with resp:
            data: list[str] = []
            try:
                for raw in resp:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
            except (OSError, http.client.HTTPException):
                return  # the server went away mid-stream: the caller sees the last status

    def download(self, url_path: str, dest: Path) -> int:
        req = urllib.request.Request(self.base + url_path)
        if self.token and "sig=" not in url_path:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp, \
                    dest.open("wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_text(exc)) from None
        return dest.stat().st_size


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError):
        return str(exc.reason)
