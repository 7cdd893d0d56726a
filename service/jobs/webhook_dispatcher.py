"""The webhook dispatcher: sends the outbox (``webhook_deliveries``) from an API process.

Every API process runs one :class:`WebhookDispatcher` (started and stopped by the app's
lifespan, :func:`service.api.app.create_app`); the training workers never send, so a busy
worker delays no webhook. Claims (:func:`service.db.webhook_records.claim_due`) keep
several processes from sending the same message at once; how a message is signed, sent and
its answer judged is :func:`service.jobs.webhooks.send`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from service.core.settings import Settings
from service.db import webhook_records
from service.db.engine import session_factory
from service.db.retry import retry_locked
from service.db.tables import WebhookDeliveryRecord, utcnow
from service.jobs.webhooks import USER_AGENT, Outcome, send, signer

log = logging.getLogger(__name__)

MAX_CONCURRENT_SENDS = 4
"""Messages one API process sends at once (a slow receiver holds one slot, not all)."""
LOCK_MARGIN_SECONDS = 30.0
"""A claim outlives one send (``WEBHOOK_TIMEOUT_SECONDS``) by this much (s); a sender gone
for longer leaves its message to another sender, which sends it again (at least once)."""


class WebhookDispatcher:
    """Sends due webhook messages from this process: a daemon thread that every
    ``WEBHOOK_POLL_SECONDS`` claims as many due messages as it has free slots
    (:data:`MAX_CONCURRENT_SENDS`) and sends each on a small thread pool, then records the
    outcome (delivered, retry later, or gave up).

    Several processes may run one on the same database (every API process does). Without
    a usable ``WEBHOOK_SECRET`` it does not start (messages then wait for a process that
    has one, and a warning says so when some are waiting).
    """

    def __init__(self, settings: Settings, *, concurrency: int = MAX_CONCURRENT_SENDS) -> None:
        self._settings = settings
        self._concurrency = concurrency
        self._factory = session_factory(settings.database_url)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._failures = 0
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None
        self._webhook: Webhook | None = None

    @property
    def running(self) -> bool:
        """Whether the dispatcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Messages being sent right now."""
        with self._lock:
            return self._in_flight

    def start(self) -> bool:
        """Start sending (True), or return False when there is no usable secret."""
        self._webhook = signer(self._settings)
        if self._webhook is None:
            self._warn_if_waiting()
            return False
        self._client = httpx.Client(
            timeout=self._settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # no proxy or CA settings from the environment: settings only
            limits=httpx.Limits(max_keepalive_connections=0),  # a fresh connection per POST
            headers={"user-agent": USER_AGENT},
        )
        self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="webhook-send")
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()
        log.info(
            "webhook dispatcher started (poll every %.2f s, retries for %.0f s)",
            self._settings.webhook_poll_seconds,
            self._settings.webhook_retry_seconds,
        )
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; wait up to ``timeout`` s for sends in flight, then close. A send
        cut short (or claimed and not started) is sent again once its claim expires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + timeout
            while self.in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._client is not None and not self.in_flight:
            self._client.close()

    def dispatch_due(self) -> int:
        """Claim due messages for the free slots and hand them to the pool (one polling
        round); returns how many were claimed."""
        if self._pool is None:
            raise RuntimeError("WebhookDispatcher.start() was not called (or found no secret)")
        free = self._concurrency - self.in_flight
        if free <= 0:
            return 0
        with self._factory() as session:

            def claim() -> list[WebhookDeliveryRecord]:
                found = webhook_records.claim_due(
                    session,
                    now=utcnow(),
                    lock_seconds=self._settings.webhook_timeout_seconds + LOCK_MARGIN_SECONDS,
                    limit=free,
                )
                session.commit()
                return found

            claimed = retry_locked(session, claim)
        for delivery in claimed:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._deliver, delivery).add_done_callback(self._done)
        return len(claimed)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_due()
                self._failures = 0
            except Exception:  # e.g. the database is down: keep polling, log now and then
                self._failures += 1
                if self._failures == 1 or self._failures % 100 == 0:
                    log.exception("webhook dispatcher: claim failed (%d in a row)", self._failures)
            self._stop.wait(self._settings.webhook_poll_seconds)

    def _done(self, _future: Future) -> None:  # also runs for a send cancelled by stop()
        with self._lock:
            self._in_flight -= 1

    def _deliver(self, delivery: WebhookDeliveryRecord) -> None:
        try:
            assert self._client is not None and self._webhook is not None
            outcome = send(
                self._client,
                self._webhook,
                delivery,
                allow_private=self._settings.webhook_allow_private,
            )
            self._record(delivery, outcome)
        except Exception:  # the claim expires and the message is sent again
            log.exception("webhook %s (job %s): attempt not recorded", delivery.id, delivery.job_id)

    def _record(self, delivery: WebhookDeliveryRecord, outcome: Outcome) -> None:
        settings = self._settings
        with self._factory() as session:

            def write() -> bool | str | None:
                now = utcnow()
                if outcome.delivered:
                    done: bool | str | None = webhook_records.mark_delivered(
                        session, delivery, now=now
                    )
                else:
                    done = webhook_records.record_failure(
                        session,
                        delivery,
                        error=outcome.error or "failed",
                        now=now,
                        first_backoff_seconds=settings.webhook_backoff_seconds,
                        retry_seconds=settings.webhook_retry_seconds,
                        give_up=outcome.give_up,
                    )
                session.commit()
                return done

            result = retry_locked(session, write)
        what = (
            "delivered" if outcome.delivered and result
            else f"gave up: {outcome.error}" if result == "failed"
            else f"failed ({outcome.error}); will retry" if result == "pending"
            else "outcome not recorded: another sender recorded an attempt meanwhile"
        )  # fmt: skip
        # the host only, never the whole URL (it may carry a token); never the secret
        log.log(
            logging.WARNING if result == "failed" else logging.INFO,
            "webhook %s (%s, job %s) to %s, attempt %d: %s",
            delivery.id,
            delivery.payload.get("type"),
            delivery.job_id,
            urlsplit(delivery.url).hostname,
            delivery.attempts + 1,
            what,
        )

    def _warn_if_waiting(self) -> None:
        try:
            with self._factory() as session:
                waiting = webhook_records.count_pending(session)
        except Exception:  # start-up must not fail over a warning
            return
        if waiting:
            log.warning(
                "%d webhook message(s) wait to be sent, but this process has no usable "
                "WEBHOOK_SECRET to sign them with: they stay pending",
                waiting,
            )
