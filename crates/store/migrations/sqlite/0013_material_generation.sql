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
-- SQLite has only row triggers; its single writer makes the extra row update cheap.
CREATE TRIGGER connections_material_insert AFTER INSERT ON connections
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER connections_material_update AFTER UPDATE ON connections
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER connections_material_delete AFTER DELETE ON connections
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER connection_secrets_material_insert AFTER INSERT ON connection_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER connection_secrets_material_update AFTER UPDATE ON connection_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER connection_secrets_material_delete AFTER DELETE ON connection_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credentials_material_insert AFTER INSERT ON credentials
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credentials_material_update AFTER UPDATE ON credentials
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credentials_material_delete AFTER DELETE ON credentials
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_versions_material_insert AFTER INSERT ON credential_versions
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_versions_material_update AFTER UPDATE ON credential_versions
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_versions_material_delete AFTER DELETE ON credential_versions
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_secrets_material_insert AFTER INSERT ON credential_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_secrets_material_update AFTER UPDATE ON credential_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER credential_secrets_material_delete AFTER DELETE ON credential_secrets
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER data_keys_material_insert AFTER INSERT ON data_keys
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER data_keys_material_update AFTER UPDATE ON data_keys
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER data_keys_material_delete AFTER DELETE ON data_keys
BEGIN
    UPDATE material_generation SET n = n + 1 WHERE id = 1;
END;
