-- The material generation: a counter that moves in the same transaction as every change to
-- what a resolve reads (connections, their legacy secret rows, credentials, their versions
-- and ciphertexts, data keys). A replica's resolve cache tags what it read with the counter
-- and, in the transaction that records the resolve, checks that it has not moved since
-- (docs/run-time.md, "The resolve cache").
CREATE TABLE material_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n BIGINT NOT NULL
);
INSERT INTO material_generation (id, n) VALUES (1, 0);
-- Deferred constraint triggers: the counter row is updated once per transaction (a
-- transaction-local setting remembers it) and only at commit, so the row lock is taken last
-- and held for the commit alone: writers never wait on it while holding other row locks.
CREATE FUNCTION bump_material_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('patchbay.material_bumped', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('patchbay.material_bumped', 'yes', true);
        UPDATE material_generation SET n = n + 1 WHERE id = 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER connections_material AFTER INSERT OR UPDATE OR DELETE ON connections
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
CREATE CONSTRAINT TRIGGER connection_secrets_material AFTER INSERT OR UPDATE OR DELETE ON connection_secrets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
CREATE CONSTRAINT TRIGGER credentials_material AFTER INSERT OR UPDATE OR DELETE ON credentials
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
CREATE CONSTRAINT TRIGGER credential_versions_material AFTER INSERT OR UPDATE OR DELETE ON credential_versions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
CREATE CONSTRAINT TRIGGER credential_secrets_material AFTER INSERT OR UPDATE OR DELETE ON credential_secrets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
CREATE CONSTRAINT TRIGGER data_keys_material AFTER INSERT OR UPDATE OR DELETE ON data_keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_material_generation();
