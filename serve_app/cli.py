"""The ``cutfarm`` command: run the service, talk to it, or run the engine in process.

``HELP`` below is what ``cutfarm --help`` shows; keep the two in step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cluster.errors import ClusterError
from cluster.settings import Settings, SettingsError, parse_media_roots
from render import cli as render_cli

from .client import ApiError, Client
from .errors import ServeRefusedError

DEFAULT_URL = "http://127.0.0.1:8000"

HELP = f"""\
Frame-exact server-side export for browser video editors.

  cutfarm serve [--host H] [--port P] [--media-root DIR] [--token T]
  cutfarm submit CONFIG.json [--wait] [--download PATH]
  cutfarm status JOB_ID
  cutfarm cancel JOB_ID        stop a pending or running export
  cutfarm delete JOB_ID        remove a finished export and its output
  cutfarm list [--state S]
  cutfarm demo
  cutfarm render CONFIG.json --media-root DIR -o OUT.mp4   (in process, no server)
  cutfarm plan CONFIG.json --media-root DIR                 (in process, no server)

Client commands reach the server at --url (default: CUTFARM_URL or {DEFAULT_URL})
with the token in CUTFARM_API_TOKEN.
"""


def _settings(args: argparse.Namespace) -> Settings:
    base = Settings.from_env()
    changes: dict[str, Any] = {}
    if args.media_root:
        changes["media_roots"] = parse_media_roots(",".join(args.media_root),
                                                  "--media-root")
    if getattr(args, "export_root", None):
        changes["export_dir"] = args.export_root  # a folder or s3://bucket/prefix
    if args.host:
        changes["host"] = args.host
    if args.port:
        changes["port"] = args.port
    if args.token:
        changes["api_token"] = SecretStr(args.token)
    if args.ray_address:
        changes["ray_address"] = args.ray_address
    return base.with_changes(**changes)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    return run(_settings(args))


def _client(args: argparse.Namespace) -> Client:
    token = args.token or os.environ.get("CUTFARM_API_TOKEN") or None
    return Client(args.url or os.environ.get("CUTFARM_URL", DEFAULT_URL), token)


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    """Show a progress bar fed by the events stream; returns the final status."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    last: dict[str, Any] = client.status(job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn(),
                  transient=False) as bar:
        task = bar.add_task(job_id, total=1.0)
        for event in client.events(job_id):
            last = event
            bar.update(task, completed=float(event.get("progress", 0.0)),
                       description=str(event.get("message", job_id))[:60])
            if event.get("status") in ("completed", "failed", "cancelled"):
                break
    return last


def cmd_submit(args: argparse.Namespace) -> int:
    config = render_cli.load_json(args.config)
    if not isinstance(config, dict):
        raise SystemExit(f"cutfarm: {args.config} must hold a JSON object (the export config)")
    return _submit(_client(args), config, args.wait or bool(args.download), args.download)


def _submit(client: Client, config: dict[str, Any], wait: bool, download: str | None) -> int:
    created = client.submit(config)
    job_id = created["jobId"]
    print(f"{job_id}: {created['message']}")
    render_cli.print_warnings(created.get("warnings", []))
    if not wait:
        return 0
    final = _follow(client, job_id)
    if final.get("status") not in ("completed", "failed", "cancelled"):
        print(f"cutfarm: the connection to the server ended while {job_id} was "
              f"{final.get('status')} ({final.get('message', '')}); follow it with: "
              f"cutfarm status {job_id}", file=sys.stderr)
        return 1
    if final.get("status") != "completed":
        print(f"{job_id}: {final.get('status')}: {final.get('error', '')}", file=sys.stderr)
        return 1
    if download:
        size = client.download(final["downloadUrl"], Path(download))
        print(f"downloaded {size / 1e6:.1f} MB to {download}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).status(args.job_id), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    state = client.status(args.job_id)["status"]
    if state in ("completed", "failed", "cancelled"):
        # DELETE removes a finished export's output: never do that behind "cancel".
        print(f"cutfarm: {args.job_id} is already {state}; to remove it and its output, "
              f"run: cutfarm delete {args.job_id}", file=sys.stderr)
        return 1
    print(json.dumps(client.delete(args.job_id), indent=2))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).delete(args.job_id), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for job in _client(args).list(args.state):
        print(f"{job['jobId']:40} {job['status']:10} {job['progress'] * 100:5.1f}%  "
              f"{job.get('message', '')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import prepare_demo

    settings = _settings(args)
    folder = next((r.folder for r in settings.media_roots if r.folder is not None), None)
    if folder is None:
        raise SettingsError("cutfarm demo makes its cameras in a folder: give a folder "
                            "--media-root (the server must read it too)")
    config = prepare_demo(folder)
    client = _client(args)
    code = _submit(client, config, True, None)
    if code == 0:
        out = f"{settings.export_root}/{config['id']}/output.mp4"
        print(f"the demo export is at {out}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cutfarm", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def server_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--media-root", action="append",
                       help="media folder (holds sources/ and exports/); repeatable, "
                            "a folder every node sees at the same path, or s3://bucket/prefix; "
                            "default CUTFARM_MEDIA_ROOTS or ./data")
        p.add_argument("--export-root",
                       help="folder or s3://bucket/prefix for jobs and outputs (default "
                            "CUTFARM_EXPORT_ROOT, else exports/ in the first folder media root)")
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="HTTP port (default 8000)")
        p.add_argument("--token", help="require this bearer token (CUTFARM_API_TOKEN)")
        p.add_argument("--ray-address",
                       help="Ray cluster to attach to ('local' always starts a new one; "
                            "default: a running cluster, else a new local one)")

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help=f"server URL (default CUTFARM_URL or {DEFAULT_URL})")
        p.add_argument("--token", help="bearer token (default CUTFARM_API_TOKEN)")

    p = sub.add_parser("serve", help="start Ray (if needed), the API and the dashboard")
    server_flags(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("submit", help="submit an export config")
    p.add_argument("config")
    p.add_argument("--wait", action="store_true", help="follow progress until the end")
    p.add_argument("--download", help="download the result to this path (implies --wait)")
    client_flags(p)
    p.set_defaults(func=cmd_submit)
    for name, func, helptext in (("status", cmd_status, "show a job's status"),
                                 ("cancel", cmd_cancel, "cancel a pending or running job"),
                                 ("delete", cmd_delete,
                                  "cancel a job, or remove a finished one and its output")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        client_flags(p)
        p.set_defaults(func=func)
    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--state", help="pending, processing, completed, failed or cancelled")
    client_flags(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("demo", help="make sample cameras and export them through the API")
    p.add_argument("--media-root", action="append")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--ray-address")
    client_flags(p)
    p.set_defaults(func=cmd_demo)
    render_cli.add_engine_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("render", "plan"):
        return render_cli.run(args)
    try:
        return int(args.func(args))
    except ApiError as exc:
        print(f"cutfarm: {exc}", file=sys.stderr)
        return 2
    except (SettingsError, ServeRefusedError, ClusterError) as exc:
        print(f"cutfarm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
