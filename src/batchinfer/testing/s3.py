"""An S3-compatible object store for tests and benchmarks: moto's standalone server (as s3fs's own
test suite uses it) in a thread of this process, on a free port of 127.0.0.1, with one bucket.

moto keeps its state per process, not per server: a second server in the same process sees the
first one's buckets, so each server makes a bucket of its own name.

``env`` is what a process needs to reach it through s3fs and botocore (credentials that moto
accepts, and ``AWS_ENDPOINT_URL``); ``activate`` sets it in this process for as long as it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class S3Server:
    bucket: str = field(default_factory=lambda: f"batchinfer-{uuid.uuid4().hex[:12]}")
    endpoint: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def running(self) -> Iterator[S3Server]:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request on stderr
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        try:
            with self.activate():
                import s3fs

                s3fs.S3FileSystem(skip_instance_cache=True).mkdir(self.bucket)
            yield self
        finally:
            server.stop()

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """This process reaches the server (s3fs and botocore read the environment).

        s3fs keeps its file systems per process, keyed by their arguments and not the environment,
        so one made for an earlier server would still talk to that one: the cache is cleared on the
        way in and out.
        """
        import s3fs

        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])
