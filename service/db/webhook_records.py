"""Webhook delivery records (the outbox): claim the due ones, record each attempt, read a
job's deliveries.

A row is written, ``pending``, in the transaction that ends its job
(:func:`service.jobs.events.record_terminal`). Senders (every API process runs one:
:class:`service.jobs.webhooks.WebhookDispatcher`) then:

1. **claim** due rows (:func:`claim_due`): a conditional UPDATE sets ``locked_until`` only
   where no other sender holds an unexpired lock, so two processes never send the same
   message at the same time, on SQLite and Postgres alike. A sender that dies mid-send
   leaves its lock to expire; another sender (or the restarted one) sends the message again:
   delivery is *at least once*, and receivers de-duplicate by ``webhook-id`` (the row's id).
2. **record** the answer: :func:`mark_delivered`, or :func:`record_failure`, which either
   schedules the next attempt with exponential backoff (:func:`backoff_seconds`) or gives up
   (``failed``) once the retry window (``WEBHOOK_RETRY_SECONDS`` from ``created_at``) is
   over. Both are fenced by ``attempts``: an outcome reported by a sender whose lock had
   expired and whose message was meanwhile retried by another changes nothing.

Writers flush; callers commit (a claim must be committed before sending, to be seen).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.db.tables import WebhookDeliveryRecord, as_utc

DeliveryStatus = Literal["pending", "delivered", "failed"]
"""``pending`` (to send, or to retry at ``next_attempt_at``) -> ``delivered`` (a 2xx answer)
| ``failed`` (gave up: the retry window ended, or the receiver said 410 Gone)."""

MAX_BACKOFF_SECONDS = 300.0
"""The longest wait between two attempts (5 min), however many attempts failed."""

MAX_ERROR_CHARS = 500


def backoff_seconds(failed_attempts: int, first_seconds: float) -> float:
    """Wait after the ``failed_attempts``-th failed attempt before the next one (s):
    ``first_seconds * 2 ** (failed_attempts - 1)``, at most :data:`MAX_BACKOFF_SECONDS`
    (1, 2, 4, ... 256, 300, 300 s with the default first delay of 1 s).

    Raises:
        ValueError: ``failed_attempts`` < 1.
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    exponent = min(failed_attempts - 1, 32)  # 2**32 s is past any cap; avoids float overflow
    return min(first_seconds * 2.0**exponent, MAX_BACKOFF_SECONDS)


def _claimable(now: datetime):  # noqa: ANN202 (an SQL condition)
    return (
        WebhookDeliveryRecord.status == "pending",
        WebhookDeliveryRecord.next_attempt_at <= now,
        or_(
            WebhookDeliveryRecord.locked_until.is_(None), WebhookDeliveryRecord.locked_until <= now
        ),
    )


def claim_due(
    session: Session, *, now: datetime, lock_seconds: float, limit: int
) -> list[WebhookDeliveryRecord]:
    """Lock up to ``limit`` due deliveries (``pending``, ``next_attempt_at`` <= ``now``, not
    locked by another sender) until ``now + lock_seconds``; flushes, the caller commits
    before sending.

    Each row is taken by its own conditional UPDATE (the same conditions again in its
    WHERE), so of two senders racing for a row exactly one changes it; the other's UPDATE
    matches nothing (on Postgres it waits for the first transaction, then re-checks).

    Args:
        now: aware UTC time (:func:`service.db.tables.utcnow`).
        lock_seconds: how long the claim keeps other senders off (s); longer than one send.
        limit: most rows to claim, oldest due first.
    Returns:
        The claimed records, as stored now (``attempts`` = attempts made before this one).
    """
    if limit <= 0:
        return []
    candidates = session.scalars(
        select(WebhookDeliveryRecord.id)
        .where(*_claimable(now))
        .order_by(WebhookDeliveryRecord.next_attempt_at, WebhookDeliveryRecord.id)
        .limit(limit)
    ).all()
    locked_until = now + timedelta(seconds=lock_seconds)
    claimed = [
        delivery_id
        for delivery_id in candidates
        if session.execute(
            update(WebhookDeliveryRecord)
            .where(WebhookDeliveryRecord.id == delivery_id, *_claimable(now))
            .values(locked_until=locked_until)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    ]
    session.flush()
    if not claimed:
        return []
    return list(
        session.scalars(
            select(WebhookDeliveryRecord)
            .where(WebhookDeliveryRecord.id.in_(claimed))
            .order_by(WebhookDeliveryRecord.next_attempt_at, WebhookDeliveryRecord.id)
            .execution_options(populate_existing=True)
        ).all()
    )


def _settle(session: Session, delivery: WebhookDeliveryRecord, **values: object) -> bool:
    """UPDATE a claimed pending row if no other sender has recorded an attempt since."""
    changed = session.execute(
        update(WebhookDeliveryRecord)
        .where(
            WebhookDeliveryRecord.id == delivery.id,
            WebhookDeliveryRecord.status == "pending",
            WebhookDeliveryRecord.attempts == delivery.attempts,
        )
        .values(attempts=delivery.attempts + 1, locked_until=None, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.flush()
    return changed == 1


def mark_delivered(session: Session, delivery: WebhookDeliveryRecord, *, now: datetime) -> bool:
    """Record a successful attempt (the receiver answered 2xx): ``delivered`` at ``now``,
    ``attempts`` + 1 (``last_error`` keeps the previous failure, if any).

    Args:
        delivery: the record as claimed (:func:`claim_due`).
    Returns:
        False when another sender recorded an attempt meanwhile (nothing changed).
    """
    return _settle(session, delivery, status="delivered", delivered_at=now)


def record_failure(
    session: Session,
    delivery: WebhookDeliveryRecord,
    *,
    error: str,
    now: datetime,
    first_backoff_seconds: float,
    retry_seconds: float,
    give_up: bool = False,
) -> DeliveryStatus | None:
    """Record a failed attempt: ``attempts`` + 1 and ``last_error``; then retry later
    (``pending``, ``next_attempt_at`` = ``now`` + :func:`backoff_seconds`, but never past the
    end of the retry window, so the last attempt falls on it) or give up (``failed``) when
    ``give_up`` or the window (``created_at + retry_seconds``) has ended.

    So a message is tried for at least ``retry_seconds``; at the defaults (first delay 1 s,
    window 900 s) that is 12 attempts: 0, 1, 3, 7, ... 255, 511, 811, 900 s after it was due.

    Returns:
        ``"pending"`` (retry scheduled) or ``"failed"``; None when another sender recorded
        an attempt meanwhile (nothing changed).
    """
    deadline = as_utc(delivery.created_at) + timedelta(seconds=retry_seconds)
    values: dict[str, object] = {"last_error": error[:MAX_ERROR_CHARS]}
    if give_up or now >= deadline:
        status: DeliveryStatus = "failed"
    else:
        status = "pending"
        delay = timedelta(seconds=backoff_seconds(delivery.attempts + 1, first_backoff_seconds))
        values["next_attempt_at"] = min(now + delay, deadline)
    return status if _settle(session, delivery, status=status, **values) else None


def job_deliveries(session: Session, job_id: str) -> list[WebhookDeliveryRecord]:
    """Every webhook message of a job (one per terminal status; at most one in practice),
    oldest first, as stored now."""
    return list(
        session.scalars(
            select(WebhookDeliveryRecord)
            .where(WebhookDeliveryRecord.job_id == job_id)
            .order_by(WebhookDeliveryRecord.created_at, WebhookDeliveryRecord.id)
            .execution_options(populate_existing=True)
        ).all()
    )


def count_pending(session: Session) -> int:
    """How many messages wait to be sent (any process, due or not)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(WebhookDeliveryRecord)
            .where(WebhookDeliveryRecord.status == "pending")
        )
        or 0
    )
