-- Connection test results (issue 6): the newest row is the connection's last result; the
-- store keeps the 20 newest per connection. `result` is the ProbeResult JSON (stages,
-- classes, messages — never secrets).
CREATE TABLE connection_tests (
    id BIGSERIAL PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX connection_tests_connection ON connection_tests(connection_id, id);
