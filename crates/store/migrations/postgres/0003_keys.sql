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
-- No ciphertext may name a data key that does not exist: foreign keys (checked by the
-- database for every new or re-keyed ciphertext, and for the deletion of a data key, with
-- row locks, so a write racing with the deletion of its key fails instead of storing an
-- unreadable secret). NOT VALID: rows written before this migration are not re-checked.
ALTER TABLE credential_secrets ADD CONSTRAINT credential_secrets_key_fk
    FOREIGN KEY (key_id) REFERENCES data_keys(id) NOT VALID;
ALTER TABLE connection_secrets ADD CONSTRAINT connection_secrets_key_fk
    FOREIGN KEY (key_id) REFERENCES data_keys(id) NOT VALID;
ALTER TABLE oauth_tokens ADD CONSTRAINT oauth_tokens_key_fk
    FOREIGN KEY (key_id) REFERENCES data_keys(id) NOT VALID;
