-- Audit log as a hash chain (docs/audit.md). Rows written before this migration get their
-- seq and hashes at start-up (Store::connect chains rows whose seq is NULL, in id order).
ALTER TABLE audit_events ADD COLUMN seq BIGINT;
ALTER TABLE audit_events ADD COLUMN outcome TEXT NOT NULL DEFAULT 'success';
ALTER TABLE audit_events ADD COLUMN request_id TEXT;
ALTER TABLE audit_events ADD COLUMN source_address TEXT;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_events_seq ON audit_events(seq);
CREATE INDEX audit_events_workspace ON audit_events(workspace_id, seq);
-- Its leading column (target_kind) is never filtered on, so no query used it; each
-- event paid for it on every append.
DROP INDEX audit_events_target;
-- The chain's state: where verification starts (origin: the first kept event's seq and
-- prev_hash, moved by retention) and where it must end (head: the last appended event).
-- One row; appends lock it on PostgreSQL.
CREATE TABLE audit_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin_seq BIGINT NOT NULL,
    origin_prev_hash TEXT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, origin_seq, origin_prev_hash, head_seq, head_hash) VALUES
    (1, 1, '0000000000000000000000000000000000000000000000000000000000000000',
     0, '0000000000000000000000000000000000000000000000000000000000000000');
-- SQLite keeps the chain linked itself: an event must extend the recorded head (else the
-- insert fails), and it moves the head, without another statement per append.
-- (PostgreSQL: the store moves the head under the audit_chain row lock.)
CREATE TRIGGER audit_events_extend_head BEFORE INSERT ON audit_events
WHEN NEW.seq IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit chain head moved')
    WHERE NOT EXISTS (SELECT 1 FROM audit_chain
                      WHERE id = 1 AND head_seq = NEW.seq - 1 AND head_hash = NEW.prev_hash);
END;
CREATE TRIGGER audit_events_move_head AFTER INSERT ON audit_events
WHEN NEW.seq IS NOT NULL
BEGIN
    UPDATE audit_chain SET head_seq = NEW.seq, head_hash = NEW.hash WHERE id = 1;
END;
