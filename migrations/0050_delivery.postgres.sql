-- Notification delivery (projections/delivery.py, projections/webhooks.py), PostgreSQL.
-- Numbers 0050–0059 belong to delivery. See docs/websocket.md, "Notification delivery".

-- Where the dispatcher is in the notifications read model: the last notification_id turned
-- into deliveries, written in the same transaction as those deliveries (exactly once).
CREATE TABLE delivery_tracking (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    updated_at TEXT NOT NULL
);

-- A user's webhook: where notifications are POSTed and the key that signs them.
CREATE TABLE webhook_endpoints (
    user_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,            -- HMAC-SHA256 key of the X-Spotex-Signature header
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- The outbox: one row per notification and channel (webhook, email, sms, push). Webhooks are
-- sent by spotex; the other channels wait here for a provider to claim them.
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY,    -- uuid5 of (notification, channel): the Idempotency-Key
    notification_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,                     -- the webhook URL when dispatched; null for provider channels
    payload TEXT NOT NULL,           -- the JSON body, as sent
    status TEXT NOT NULL,            -- pending, delivered, failed (given up)
    attempts INTEGER NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL, -- epoch seconds
    lease_until DOUBLE PRECISION,    -- a sender or provider holds it until then
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT,
    UNIQUE (notification_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (channel, status, next_attempt_at);
CREATE INDEX deliveries_user ON deliveries (user_id, notification_id);
