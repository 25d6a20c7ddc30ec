-- Key rotations: one row per master-key or data-key rotation, for status and resume.
-- kind: master | data. state: running | failed | done. Progress of a data rotation is
-- derivable from the ciphertext rows themselves (WHERE key_id = from_key); done/total are
-- kept for display.
CREATE TABLE key_rotations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    workspace_id TEXT,
    from_key TEXT NOT NULL,
    to_key TEXT NOT NULL,
    state TEXT NOT NULL,
    total BIGINT NOT NULL,
    done BIGINT NOT NULL,
    error TEXT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
-- At most one unfinished rotation per kind and workspace (replicas racing to start one).
CREATE UNIQUE INDEX key_rotations_one_open ON key_rotations(kind, COALESCE(workspace_id, ''))
    WHERE state <> 'done';
CREATE INDEX connection_secrets_key ON connection_secrets(key_id);
-- No ciphertext may name a data key that does not exist: a data key row is deleted only in
-- the transaction that finds no ciphertext naming it, and these triggers stop a write that
-- raced with that deletion. (SQLite cannot add a foreign key to an existing table; the
-- PostgreSQL migration uses foreign keys.)
CREATE TRIGGER credential_secrets_key_insert BEFORE INSERT ON credential_secrets
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'credential_secrets.key_id names no data key'); END;
CREATE TRIGGER credential_secrets_key_update BEFORE UPDATE OF key_id ON credential_secrets
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'credential_secrets.key_id names no data key'); END;
CREATE TRIGGER connection_secrets_key_insert BEFORE INSERT ON connection_secrets
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'connection_secrets.key_id names no data key'); END;
CREATE TRIGGER connection_secrets_key_update BEFORE UPDATE OF key_id ON connection_secrets
WHEN NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'connection_secrets.key_id names no data key'); END;
CREATE TRIGGER oauth_tokens_key_insert BEFORE INSERT ON oauth_tokens
WHEN NEW.key_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'oauth_tokens.key_id names no data key'); END;
CREATE TRIGGER oauth_tokens_key_update BEFORE UPDATE OF key_id ON oauth_tokens
WHEN NEW.key_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM data_keys WHERE id = NEW.key_id)
BEGIN SELECT RAISE(ABORT, 'oauth_tokens.key_id names no data key'); END;
