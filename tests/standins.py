"""Local stand-ins for what a real run downloads: the authors' evaluator_flow.py (a file we
wrote, with the same module-level names, never their text) served over real HTTP on
loopback, and its pin.

A test that uses the paper protocol replaces evaluator.paper_prompt.PAPER with STANDIN_PIN
(in process) and points VALBENCH_REFERENCE_URL_BASE at a FileServer; the project's real pin
and real URL are never weakened for it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from evaluator import paper_prompt

STANDIN_SOURCE = b'''"""A STAND-IN for the authors' evaluator_flow.py, written for the tests (not their text)."""

import sys

sys.exit("this file must never be executed")

EVALUATE_SYSTEM_PROMPT = """
Stand-in judge rubric for the tests.
Compare the two answers and score them from -2 to 2.
""".strip()

OUTPUT_JSON_SCHEMA = {
    "type": "object",
    "title": "alignment_judge_response_json",
    "properties": {
        "person_1_core_position": {"type": "string"},
        "person_1_has_no_information": {"type": "boolean"},
        "person_1_refusal": {"type": "boolean"},
        "person_2_core_position": {"type": "string"},
        "person_2_has_no_information": {"type": "boolean"},
        "person_2_refusal": {"type": "boolean"},
        "key_points_of_alignment": {"type": "string"},
        "key_points_of_opposition": {"type": "string"},
        "alignment_score": {"type": "integer", "minimum": -2, "maximum": 2},
    },
    "required": [
        "person_1_core_position",
        "person_1_has_no_information",
        "person_1_refusal",
        "person_2_core_position",
        "person_2_has_no_information",
        "person_2_refusal",
        "key_points_of_alignment",
        "key_points_of_opposition",
        "alignment_score",
    ],
    "additionalProperties": False,
}
'''
STANDIN_PROMPT = (
    "Stand-in judge rubric for the tests.\nCompare the two answers and score them from -2 to 2."
)
# Pinned here, as the project pins the real file's hashes: computed once, written down.
STANDIN_FILE_SHA256 = "ecb1a5b900a37fda4bf8a757c48999abb0a381c0a19d672e8fe5d4541904601a"
STANDIN_PROMPT_SHA256 = "c53dd17f1b3994a1bc041bafcad09585ee98c530fa1f35b51499abc66761fcca"
STANDIN_PIN = paper_prompt.Pin(
    repo="val-bench/VAL-Bench",
    commit="0" * 40,
    path="evaluator_flow.py",
    file_sha256=STANDIN_FILE_SHA256,
    prompt_sha256=STANDIN_PROMPT_SHA256,
)
STANDIN_PATH = f"/{STANDIN_PIN.repo}/{STANDIN_PIN.commit}/{STANDIN_PIN.path}"

assert hashlib.sha256(STANDIN_SOURCE).hexdigest() == STANDIN_FILE_SHA256


class FileServer:
    """A plain HTTP server on 127.0.0.1 serving fixed bodies by path, counting requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                server.requests[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
