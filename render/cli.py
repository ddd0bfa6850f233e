"""``cutfarm`` command line: run or explain one export in process (no Ray, no HTTP).

    cutfarm render CONFIG.json --media-root DIR -o OUT.mp4
    cutfarm plan CONFIG.json --media-root DIR
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .config import ExportConfig, parse_config, unknown_field_warnings
from .engine import Progress, describe_plan, execute, prepare
from .errors import CancelledError, RenderError
from .paths import media_location


def load_json(path: str) -> object:
    """A config file's JSON; SystemExit with one sentence when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"cutfarm: config file {path!r} not found") from None
    except IsADirectoryError:
        raise SystemExit(f"cutfarm: {path!r} is a folder, not a config file") from None
    except PermissionError:
        raise SystemExit(f"cutfarm: config file {path!r} cannot be read (permission denied)") \
            from None
    except UnicodeDecodeError:
        raise SystemExit(f"cutfarm: {path} is not a text (UTF-8 JSON) file") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"cutfarm: {path} is not valid JSON: {exc}") from None


def print_warnings(warnings: Sequence[str]) -> None:
    for text in warnings:
        print(f"cutfarm: warning: {text}", file=sys.stderr)


def _config(path: str) -> ExportConfig:
    config = parse_config(load_json(path))
    print_warnings(unknown_field_warnings(config))
    return config


class _Bar:
    def __init__(self, stream: object = sys.stderr) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last_line = ""

    def __call__(self, p: Progress) -> None:
        width = 30
        filled = int(p.fraction * width)
        eta = p.eta_seconds
        eta_text = f" ETA {eta:4.0f}s" if eta is not None else ""
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {p.fraction * 100:5.1f}% "
                f"{p.message}{eta_text}")
        if line == self.last_line:
            return
        self.last_line = line
        end = "\r" if self.tty else "\n"
        print(line.ljust(90), end=end, file=self.stream, flush=True)  # type: ignore[call-overload]


def cmd_render(args: argparse.Namespace) -> int:
    config = _config(args.config)
    roots = [media_location(r) for r in args.media_root]
    out = Path(args.output) if args.output else Path(f"{config.id}.{config.output.format}")
    cancel = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cancel.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    prep = prepare(config, roots, preset=args.preset)
    print_warnings(prep.warnings)
    bar = _Bar()
    execute(prep, out, on_progress=bar, cancel=cancel, workers=args.workers)
    plan = prep.plan
    print(file=sys.stderr)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {plan.frame_count} frames, "
          f"{float(plan.duration):.3f}s) in {time.monotonic() - t0:.1f}s; copied "
          f"{plan.copy_bytes / 1e6:.1f} MB, re-encoded {plan.encode_frames} frames")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    config = _config(args.config)
    prep = prepare(config, [media_location(r) for r in args.media_root])
    print_warnings(prep.warnings)
    print("\n".join(describe_plan(prep)))
    return 0


def add_engine_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The in-process engine commands, also offered by the service's ``cutfarm``."""
    r = sub.add_parser("render", help="run one export in this process (no server)")
    r.add_argument("config")
    r.add_argument("--media-root", action="append", required=True,
                   help="folder or s3://bucket/prefix holding sources/ (repeatable)")
    r.add_argument("-o", "--output")
    r.add_argument("--workers", type=int, default=2, help="parallel re-encodes")
    r.add_argument("--preset", default=None,
                   help="x264/x265 preset for re-encoded frames (default: veryfast for the "
                        "frames around cuts, fast for a full re-encode)")
    r.set_defaults(func=cmd_render)
    p = sub.add_parser("plan", help="show what would be copied and what re-encoded")
    p.add_argument("config")
    p.add_argument("--media-root", action="append", required=True)
    p.set_defaults(func=cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cutfarm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except CancelledError:
        print("\ncutfarm: cancelled; no output was written", file=sys.stderr)
        return 130
    except RenderError as exc:
        print(f"cutfarm: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
