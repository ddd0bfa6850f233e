#!/usr/bin/env python
"""An export whose camera files are in S3: ``cutfarm demo`` for a bucket media root.

Installed in the image as ``cutfarm-s3-demo``; with docker/compose.yaml:

    docker compose -f docker/compose.yaml exec ray-head cutfarm-s3-demo

It makes the sample cameras of ``cutfarm demo`` (serve_app/demo.py) in a temporary folder,
uploads them to ``<root>/sources/`` of the first ``s3://`` root in CUTFARM_MEDIA_ROOTS
(where the editor's bare names resolve), submits the demo config to the API
(CUTFARM_URL, default http://127.0.0.1:8000, token CUTFARM_API_TOKEN) and follows it to the
end, like ``cutfarm submit --wait``. The S3 endpoint and keys come from boto3's standard
configuration (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), as for cutfarm itself.

``--upload-only`` uploads and prints the config (JSON) instead of submitting it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cluster.settings import Settings, SettingsError
from render.objectstore import ObjectStoreError, S3Location, s3_client
from render.objectstore.errors import translate
from serve_app import cli
from serve_app.demo import prepare_demo


def bucket_root(settings: Settings) -> S3Location:
    for root in settings.media_roots:
        if isinstance(root.path, S3Location):
            return root.path
    raise SettingsError("CUTFARM_MEDIA_ROOTS names no s3://bucket/prefix root to upload to "
                        "(for a folder root, run `cutfarm demo`)")


def upload_demo(root: S3Location, work: Path) -> dict[str, Any]:
    """The demo cameras, uploaded to ``root``'s sources/; returns the demo's export config."""
    config = prepare_demo(work)
    s3 = s3_client()
    for source in config["sources"]:
        ref = root.resolve(source["filePath"])
        try:
            with (work / "sources" / source["filePath"]).open("rb") as body:
                s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=body,
                              ContentType="video/mp4")
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, ref.url, "uploading") or ObjectStoreError(
                f"cannot upload {ref.url} ({type(exc).__name__})") from exc
        print(f"uploaded {ref.url}", file=sys.stderr)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cutfarm-s3-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-only", action="store_true",
                        help="upload the cameras and print the export config; submit nothing")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        root = bucket_root(settings)
        with tempfile.TemporaryDirectory(prefix="cutfarm-s3-demo-") as tmp:
            config = upload_demo(root, Path(tmp))
            if args.upload_only:
                print(json.dumps(config, indent=2))
                return 0
            path = Path(tmp) / "export.json"
            path.write_text(json.dumps(config), encoding="utf-8")
            code = cli.main(["submit", str(path), "--wait"])
    except (SettingsError, ObjectStoreError) as exc:
        print(f"cutfarm-s3-demo: {exc}", file=sys.stderr)
        return 2
    if code == 0:
        job = config["id"]
        print(f"the demo export is at {settings.export_root}/{job}/output.mp4 "
              f"(download: GET /api/export/{job}/download)")
    return code


if __name__ == "__main__":
    sys.exit(main())
