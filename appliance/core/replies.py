"""Answers that carry data (`logs`, `screenshot`): published on `<prefix>/site/<site>/reply/<command id>`,
not retained, in bounded chunks, each a JSON object the console reassembles by `seq` until `last`.

    {"v": 1, "site": .., "id": <command id>, "type": "logs", "seq": 0, "last": false, "lines": [...]}
    {"v": 1, "site": .., "id": .., "type": "screenshot", "seq": 0, "last": true,
     "content_type": "image/jpeg", "data": "<base64 piece>"}
    {"v": 1, "site": .., "id": .., "type": .., "seq": 0, "last": true, "error": "why there is nothing"}
"""

from __future__ import annotations

import base64
import json
from typing import Any

# Under any broker's comfortable message size and a village link's patience: 32 KiB a chunk.
MAX_CHUNK_BYTES = 32 * 1024
MAX_LOG_LINES = 5000
DEFAULT_LOG_LINES = 200


def _envelope(site: str, command_id: str, command_type: str, seq: int, last: bool) -> dict[str, Any]:
    return {"v": 1, "site": site, "id": command_id, "type": command_type, "seq": seq, "last": last}


def line_chunks(site: str, command_id: str, lines: list[str], command_type: str = "logs") -> list[dict[str, Any]]:
    """Log lines in chunks of at most MAX_CHUNK_BYTES (a longer line is cut, never split over chunks)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for line in lines:
        line = line[: MAX_CHUNK_BYTES // 2]
        cost = len(json.dumps(line, ensure_ascii=False).encode()) + 2
        if chunks[-1] and size + cost > MAX_CHUNK_BYTES - 256:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += cost
    return [{**_envelope(site, command_id, command_type, seq, seq == len(chunks) - 1), "lines": part}
            for seq, part in enumerate(chunks)]


def data_chunks(site: str, command_id: str, data: bytes, content_type: str,
                command_type: str = "screenshot") -> list[dict[str, Any]]:
    encoded = base64.b64encode(data).decode()
    piece = MAX_CHUNK_BYTES - 512
    parts = [encoded[i:i + piece] for i in range(0, len(encoded), piece)] or [""]
    return [{**_envelope(site, command_id, command_type, seq, seq == len(parts) - 1), "content_type": content_type,
             "data": part} for seq, part in enumerate(parts)]


def error_chunk(site: str, command_id: str, command_type: str, error: str) -> list[dict[str, Any]]:
    return [{**_envelope(site, command_id, command_type, 0, True), "error": error}]


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The console's side: chunks (any order, duplicates allowed) into one answer; KeyError if incomplete."""
    by_seq = {chunk["seq"]: chunk for chunk in chunks}
    last = next(seq for seq, chunk in by_seq.items() if chunk.get("last"))
    ordered = [by_seq[seq] for seq in range(last + 1)]
    if "error" in ordered[0]:
        return {"error": ordered[0]["error"]}
    if "lines" in ordered[0]:
        return {"lines": [line for chunk in ordered for line in chunk["lines"]]}
    return {"content_type": ordered[0]["content_type"],
            "data": base64.b64decode("".join(chunk["data"] for chunk in ordered))}
