"""A loopback webhook endpoint that records every POST: the user's receiver, in notification tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from batchinfer.testing.loopback_http import QuietHandler, loopback_server


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A loopback endpoint that records every POST it gets."""

    url: str
    posts: list[Post] = field(default_factory=list)

    def for_job(self, job_id: str, path: str = "/jobs") -> list[Post]:
        return [p for p in self.posts if p.path == path and p.body.get("job_id") == job_id]

    def wait_for_jobs(self, job_ids: list[str], timeout_s: float, path: str = "/jobs") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.for_job(job_id, path) for job_id in job_ids):
                return
            time.sleep(0.1)
        raise AssertionError(f"no webhook call for some of {job_ids} in {timeout_s:.0f} s: {self.posts}")


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    posts: list[Post] = []

    class Recorder(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            posts.append(Post(self.path, dict(self.headers.items()), json.loads(body)))
            self.reply(200, b"{}")

    with loopback_server(Recorder) as url:
        yield Receiver(url=url, posts=posts)
