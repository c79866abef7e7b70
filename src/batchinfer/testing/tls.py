"""A certificate authority made for a test (``trustme``), and a server certificate it signed: the
internal CA of a company, in miniature. No system store trusts it, so a client trusts the server
only when told to (``SSL_CERT_FILE``, a model's ``ca_bundle``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class PrivateCA:
    pem: Path  # the CA's certificate, as a client is pointed at it
    server_context: ssl.SSLContext  # a server's context, its certificate for 127.0.0.1 and localhost

    @classmethod
    def make(cls, directory: Path) -> PrivateCA:
        ca = trustme.CA(organization_name="batchinfer test CA")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        pem = directory / "private-ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        return cls(pem, server_context)
