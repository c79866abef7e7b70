"""How an HTTP model's requests reach its servers: through which proxy, trusting which certificates.

The one seam every transport (native, aiohttp, httpx) takes its network settings from, so that
they all behave as curl, requests and httpx do in the same environment:

- **Proxies** from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either case,
  lower case first), read by the standard library (``urllib.request.getproxies`` and
  ``proxy_bypass``, as requests reads them) rather than a parser of our own. A model's
  ``proxy`` overrides the environment: a URL its requests all go through, or ``none`` for none.
  Proxies are spoken to in plain HTTP (``http://``; a password in the environment's URL becomes
  ``Proxy-Authorization``): an ``https`` request goes through a ``CONNECT`` tunnel, a plain one as
  an absolute-form request.
- **Certificates**: OpenSSL's default store, which ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` replace
  when set (OpenSSL reads them itself, as curl and Python's ``urllib`` do), plus the model's
  ``ca_bundle``. Verification is on unless the model says ``verify: false``, which is logged.

``Network.for_model`` reads all this once, when the engine is built: a bad ``ca_bundle`` or a proxy
of a kind we cannot speak to is an ``EngineError`` then, not a failure of every request.
"""

from __future__ import annotations

import base64
import logging
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchinfer.errors import EngineError

if TYPE_CHECKING:  # the configs validate proxies with this module
    from batchinfer.engines.configs import OpenAIEngineConfig

log = logging.getLogger(__name__)

# A model's ``proxy`` that sends its requests direct, whatever HTTP(S)_PROXY and ALL_PROXY say.
PROXY_NONE = "none"

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: where it listens, and the ``Proxy-Authorization`` its URL's credentials make."""

    host: str
    port: int
    authorization: str | None = None

    @property
    def url(self) -> str:
        """Its URL without the credentials (they travel in ``authorization``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What each request to the proxy carries: its credentials, if its URL had any."""
        return {} if self.authorization is None else {"Proxy-Authorization": self.authorization}


def parse_proxy(url: str) -> Proxy:
    """A proxy URL as curl reads one (no scheme means ``http://``); ``ValueError`` for a proxy we
    cannot speak to (``https://``, ``socks5://``) or a URL without a host. The messages never
    repeat the URL: it may hold a password."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ValueError(f"a {parts.scheme}:// proxy, and only http:// proxies are supported")
    if not parts.hostname:
        raise ValueError("a proxy URL without a host")
    authorization = None
    if parts.username is not None:  # user:password@, percent-encoded in the URL
        secret = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    return Proxy(parts.hostname, parts.port or DEFAULT_PORTS["http"], authorization)


def tls_context(ca_bundle: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """The TLS context of a model's requests: OpenSSL's default store (``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` when set) plus ``ca_bundle``; no checks at all when ``verify`` is False."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    return context


@dataclass
class Network:
    """One model's network settings, read once; ``proxy_for`` each URL it sends to."""

    tls: ssl.SSLContext
    # Scheme ("http", "https", or "all") -> proxy URL: urllib's view of the environment, or the
    # model's own proxy for both schemes.
    proxies: Mapping[str, str]
    # Whether NO_PROXY (the platform's bypass list) applies: not to a model's own proxy, since the
    # models file named it for this model's servers.
    bypass_no_proxy: bool = True
    _routes: dict[str, Proxy | None] = field(default_factory=dict, repr=False)

    @classmethod
    def for_model(cls, config: OpenAIEngineConfig) -> Network:
        """``config``'s settings over the environment's; ``EngineError`` naming what is wrong."""
        if config.proxy is None:
            network = cls(_model_tls(config), urllib.request.getproxies())
        else:
            own = {} if config.proxy == PROXY_NONE else {"http": config.proxy, "https": config.proxy}
            network = cls(_model_tls(config), own, bypass_no_proxy=False)
        for url in config.replica_urls:  # a proxy we cannot use fails the build, not each request
            try:
                network.proxy_for(url)
            except ValueError as exc:
                raise EngineError(
                    f"Model {config.id!r}: the environment (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) "
                    f"gives {exc}; set the model's proxy to an http:// proxy, or to none to go direct."
                ) from None
        return network

    @classmethod
    def from_environment(cls) -> Network:
        """The environment's proxies and CA alone, for a URL no model names (a prompt file's)."""
        return cls(tls_context(), urllib.request.getproxies())

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to ``url`` goes through, or None to go direct."""
        if url not in self._routes:
            self._routes[url] = self._route(url)
        return self._routes[url]

    def _route(self, url: str) -> Proxy | None:
        parts = urllib.parse.urlsplit(url)
        proxy = self.proxies.get(parts.scheme) or self.proxies.get("all")
        if proxy is None:
            return None
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        # NO_PROXY as the standard library reads it (requests does the same): host or host:port,
        # domain suffixes, or *.
        if self.bypass_no_proxy and urllib.request.proxy_bypass(f"{parts.hostname}:{port}"):
            return None
        return parse_proxy(proxy)


def _model_tls(config: OpenAIEngineConfig) -> ssl.SSLContext:
    if not config.verify:
        log.warning(
            "Model %r has verify: false: its servers' TLS certificates are not checked, so anyone "
            "on the way can read and change its requests and answers; give it a ca_bundle instead.",
            config.id,
        )
    try:
        return tls_context(config.ca_bundle, config.verify)
    except (OSError, ssl.SSLError) as exc:
        raise EngineError(
            f"Model {config.id!r}: its ca_bundle {config.ca_bundle} cannot be read as PEM "
            f"certificates ({exc}); point ca_bundle at the CA's .pem file."
        ) from None
