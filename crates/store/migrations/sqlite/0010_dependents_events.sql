-- Issue 7: dependents (what uses a connection) and events (an outbox delivered to webhooks).
--
-- connection_dependents: registered by consumers (pipelines, datasets, alert policies, …);
-- deleting a connection that has any needs an explicit cascade, which deletes the chosen
-- rows with the connection (and emits one dependent.cascade_deleted event each).
CREATE TABLE connection_dependents (
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT,
    registered_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection_id, kind, ref)
);
-- Webhooks of a workspace. The HMAC signing secret is encrypted with the workspace data key
-- (AAD: workspace, webhook id, version -2, field webhook_secret) and rotated with it.
-- `events` is a JSON list of event kinds; [] means every kind.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    description TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_by TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_workspace ON webhooks(workspace_id);
CREATE INDEX webhooks_key ON webhooks(key_id);
CREATE TRIGGER webhooks_key_insert BEFORE INSERT ON webhooks
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'webhooks.key_id names no data key'); END;
CREATE TRIGGER webhooks_key_update BEFORE UPDATE OF key_id ON webhooks
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'webhooks.key_id names no data key'); END;
-- The outbox: one row per event, written in the transaction of the change it describes
-- (only when a webhook of the workspace wants it). `payload` is the delivered JSON body.
CREATE TABLE event_outbox (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX event_outbox_created ON event_outbox(created_at);
-- Delivery state per (event, webhook): pending → delivered | failed. A replica claims a due
-- row by setting lease_owner/lease_until; nobody else sends it until the lease runs out.
CREATE TABLE event_deliveries (
    event_id TEXT NOT NULL REFERENCES event_outbox(id) ON DELETE CASCADE,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_status BIGINT,
    last_error TEXT,
    delivered_at BIGINT,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, webhook_id)
);
CREATE INDEX event_deliveries_due ON event_deliveries(state, next_attempt_at);
CREATE INDEX event_deliveries_webhook ON event_deliveries(webhook_id, created_at);
