"""Container health check for the cutfarm image (Docker HEALTHCHECK and compose).

The role comes from the first argument (compose passes it) or else from /tmp/cutfarm-role,
which the entry point writes:

- head, standalone: GET the API's health endpoint (CUTFARM_HEALTH_URL, default
  http://127.0.0.1:8000/api/health) must answer 2xx;
- worker: the raylet's health endpoint on the dashboard agent (public even with token
  auth) must answer "success";
- any other container (a one-off command, the cluster launcher's `bash`): healthy.

Exit 0 healthy, 1 unhealthy; one line on stdout for `docker inspect`.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

API_URL = os.environ.get("CUTFARM_HEALTH_URL", "http://127.0.0.1:8000/api/health")
RAYLET_URL = os.environ.get(
    "CUTFARM_RAYLET_HEALTH_URL", "http://127.0.0.1:52365/api/local_raylet_healthz")


def role() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    path = Path(os.environ.get("CUTFARM_ROLE_FILE", "/tmp/cutfarm-role"))
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(200).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.reason
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def main() -> int:
    kind = role()
    if kind in ("head", "standalone"):
        status, body = get(API_URL)
        ok = 200 <= status < 300
    elif kind == "worker":
        status, body = get(RAYLET_URL)
        ok = status == 200 and "success" in body
    else:
        print(f"no cutfarm role recorded ({kind or 'none'}): nothing to check")
        return 0
    print(f"{kind}: {'healthy' if ok else 'unhealthy'} ({status} {body.strip()[:120]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
