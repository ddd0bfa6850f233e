"""What each piece of a job needs from Ray: the resources (CPUs, memory) its task asks for.

There is no placement: every media root is a folder every node sees at the same path or a
bucket, so any node can run any piece, the audio and the concat actor, and Ray places them
by resources alone. Only re-encoded pieces run as tasks; the concat actor reads copied
samples straight from the source itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from render.engine import Prepared
from render.plan import EncodePiece

#: Memory of a re-encode beyond its frames: codec state, Python, PyAV.
ENCODE_BASE_MEMORY = 300 << 20
#: Frames an encoder and decoder hold at once (lookahead, references, frame threads).
ENCODE_FRAMES_IN_FLIGHT = 48
AUDIO_MEMORY = 200 << 20
CONCAT_MEMORY = 300 << 20


@dataclass(frozen=True)
class PieceTask:
    index: int
    kind: str  # "encode"
    name: str
    num_cpus: float
    memory: int


def encode_memory(width: int, height: int, pix_fmt: str) -> int:
    bytes_per_pixel = 3.0 if "10" in pix_fmt else 1.5
    return int(ENCODE_BASE_MEMORY + ENCODE_FRAMES_IN_FLIGHT * width * height * bytes_per_pixel)


def piece_tasks(prep: Prepared, job_id: str) -> list[PieceTask]:
    """The tasks a job fans out to, in output order: one per re-encoded piece.

    Copy pieces need no task: the concat actor reads their samples straight from the
    source, so copying runs at the storage's speed with no hop through the object store.
    """
    fmt = prep.plan.out_format
    memory = encode_memory(max(fmt.width, 16), max(fmt.height, 16), fmt.pix_fmt)
    return [PieceTask(i, "encode", f"{job_id}:seg{piece.segment}:{piece.reason}:{i}", 1.0, memory)
            for i, piece in enumerate(prep.plan.pieces) if isinstance(piece, EncodePiece)]
