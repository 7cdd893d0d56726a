"""Webhooks: which URLs a job may name, and how one message is signed, sent and its
answer judged.

A job's terminal status adds its message to ``webhook_deliveries`` in the transaction that
ends the job (:func:`service.jobs.events.record_terminal`): once the status is committed the
message cannot be lost, whatever happens to the worker. Every API process runs a
dispatcher (:mod:`service.jobs.webhook_dispatcher`) that claims due messages
(:mod:`service.db.webhook_records`) and sends each with :func:`send`: signed per Standard
Webhooks (https://www.standardwebhooks.com, with the ``standardwebhooks`` package) and
POSTed with httpx. The training workers never send: a busy worker delays no webhook.

Answers (what a receiver's reply does):

* **2xx**: delivered.
* **No answer** (connection refused or reset, DNS failure, no reply within
  ``WEBHOOK_TIMEOUT_SECONDS``) and **any other status** (3xx: redirects are never followed,
  4xx, 5xx): retried with exponential backoff (``WEBHOOK_BACKOFF_SECONDS``, doubling, at
  most 5 min) until ``WEBHOOK_RETRY_SECONDS`` after the message was written, then ``failed``.
  4xx are retried too, as Standard Webhooks recommends: most are a receiver's bug or
  configuration (a 401 after rotating the secret, a 404 during a deploy) that its owner
  fixes while we retry, and retries are few (about 12 in the default 15 minutes).
* **410 Gone**: the receiver says the endpoint is gone for good: ``failed`` at once.
* A host that now resolves to a private or loopback address (unless
  ``WEBHOOK_ALLOW_PRIVATE``): ``failed`` at once, never contacted. Otherwise the request
  goes to the very address that was checked (pinned, with the URL's ``Host`` and TLS server
  name), so a DNS answer that changes between the check and the connection (DNS
  rebinding) cannot turn it towards a private address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

from service.core.errors import ApiError
from service.core.settings import Settings
from service.db.tables import WebhookDeliveryRecord, utcnow

USER_AGENT = "lora-service-webhooks/0.1"


def _refuse(message: str) -> ApiError:
    return ApiError(422, "invalid_webhook_url", message, "webhook_url")


class HostUnresolvable(Exception):
    """The host name has no address now (DNS failure): worth trying again later."""


def _is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return (
        not address.is_global  # also shared (100.64/10), documentation and benchmark ranges
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def resolve(host: str) -> list[tuple[str, bool]]:
    """The addresses ``host`` resolves to now, each with whether it is private: not
    globally reachable, loopback, link-local, reserved, multicast or unspecified
    (IPv4-mapped IPv6 judged as IPv4).

    Raises:
        HostUnresolvable: the name does not resolve (or is not a valid name).
    """
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolvable(f"cannot resolve {host!r}: {exc}") from exc
    found: dict[str, bool] = {}
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        found[text] = _is_private(ipaddress.ip_address(text))
    return list(found.items())


def is_private_host(host: str) -> bool:
    """Whether ``host`` is, or resolves to, a private, loopback, link-local, reserved or
    multicast address (an unresolvable name counts as private: it cannot be checked)."""
    try:
        return any(private for _, private in resolve(host))
    except HostUnresolvable:
        return True


def signer(settings: Settings) -> Webhook | None:
    """The Standard Webhooks signer for ``WEBHOOK_SECRET`` (``whsec_`` + base64 key bytes),
    or None when the secret is unset, empty or not base64."""
    if settings.webhook_secret is None:
        return None
    try:
        return Webhook(settings.webhook_secret.get_secret_value())
    except Exception:  # the package raises several kinds (empty, bad base64); never log it
        return None


def check_url(url: str | None, settings: Settings) -> str | None:
    """``url`` if a job may POST to it: ``http``/``https`` with a host, and unless
    ``WEBHOOK_ALLOW_PRIVATE`` is set, not on a private or loopback address (checked again
    before every delivery, since DNS may change). None stays None.

    Raises:
        ApiError: 422 ``invalid_webhook_url`` (param ``webhook_url``); also when no usable
            ``WEBHOOK_SECRET`` is set to sign with.
    """
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse(f"webhook_url must be an http(s) URL with a host, got {url!r}.")
    if parts.username or parts.password:
        raise _refuse("webhook_url must not carry credentials; webhooks are signed instead.")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise _refuse(f"webhook_url has an invalid port: {url!r}.") from None
    if not settings.webhook_allow_private and is_private_host(parts.hostname):
        raise _refuse(
            f"webhook_url host {parts.hostname!r} is a private, loopback or unresolvable "
            "address (set WEBHOOK_ALLOW_PRIVATE=true to allow it)."
        )
    if signer(settings) is None:
        raise _refuse(
            "webhooks need a signing secret: the service has no usable WEBHOOK_SECRET set "
            "(whsec_ followed by base64)."
        )
    return url


# --------------------------------------------------------------------------- one message


def message_body(payload: dict[str, Any]) -> str:
    """The exact JSON text POSTed (and signed) for ``payload``: compact, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def signed_headers(webhook: Webhook, message_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: ``webhook-id`` (the same on every
    retry), ``webhook-timestamp`` (this attempt's time, integer seconds since the epoch),
    ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` keyed by
    the secret), and ``content-type: application/json``."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign(message_id, now, body),
        "content-type": "application/json",
    }


def pin(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` rewritten to connect to ``address`` (an IP its host resolved to), plus the
    ``Host`` header and httpx request extensions (``sni_hostname`` for https) that keep the
    original host for the server, virtual hosting and TLS certificate checks. The client
    must not keep connections alive (``max_keepalive_connections=0``): a pooled connection
    is keyed by address, and one checked for another host must not be reused.

    Returns:
        (URL to request, extra headers, httpx ``extensions``).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = _bracket(address) + port
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"host": _bracket(host) + port}, extensions


def _bracket(host: str) -> str:
    """An IPv6 literal in brackets, as URLs and ``Host`` headers write it."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``delivered``; else ``error`` (for ``last_error``) and
    whether to ``give_up`` rather than retry."""

    delivered: bool
    error: str | None = None
    give_up: bool = False


def send(
    client: httpx.Client,
    webhook: Webhook,
    delivery: WebhookDeliveryRecord,
    *,
    allow_private: bool,
    now: datetime | None = None,
) -> Outcome:
    """POST one message (signed for this attempt) and classify the answer (see the module
    docstring). The response body is never read. Never raises for the receiver's sake."""
    body = message_body(delivery.payload)
    headers = signed_headers(webhook, delivery.id, body, now or utcnow())
    url, extensions = delivery.url, {}
    if not allow_private:
        host = urlsplit(delivery.url).hostname or ""
        try:
            addresses = resolve(host)
        except HostUnresolvable as exc:
            return Outcome(False, str(exc))
        private = [a for a, is_private in addresses if is_private]
        if private:
            return Outcome(False, f"refused: {host!r} resolves to {private[0]}", give_up=True)
        url, host_header, extensions = pin(delivery.url, addresses[0][0])
        headers.update(host_header)
    try:
        with client.stream(
            "POST", url, content=body.encode(), headers=headers, extensions=extensions
        ) as response:
            status = response.status_code
    except httpx.TimeoutException:
        return Outcome(False, f"no answer within {client.timeout.read} s")
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}", give_up=True)
    if 200 <= status < 300:
        return Outcome(True)
    return Outcome(False, f"HTTP {status}", give_up=status == 410)
