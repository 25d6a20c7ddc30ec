-- Network zones and their agents (issue 7, "agents"). A connection may name a zone of its
-- workspace (`connections.zone`, the zone's name); its tests then run on an agent inside
-- that network. Agents long-poll `agent_jobs`; the job row names the connection and never
-- holds secrets: the replica that hands a job to an agent resolves the material at claim
-- time. `result` is the ProbeResult JSON the agent reported (never secrets); the report
-- commits it with the connection's test history and audit event.
CREATE TABLE zones (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (workspace_id, name)
);
ALTER TABLE connections ADD COLUMN zone TEXT;
-- One agent identity per agent token (api_tokens.kind = 'agent'); version, hostname and
-- the times are what the agent last reported.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    zone_id TEXT NOT NULL REFERENCES zones(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_id TEXT NOT NULL UNIQUE REFERENCES api_tokens(id),
    version TEXT,
    hostname TEXT,
    last_seen_at BIGINT,
    connected_since BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (zone_id, name)
);
CREATE TABLE agent_jobs (
    id TEXT PRIMARY KEY,
    zone_id TEXT NOT NULL REFERENCES zones(id) ON DELETE CASCADE,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    requested_by TEXT NOT NULL,
    -- The test request's id and source address, for the connection.test audit event the
    -- agent's report commits.
    request_id TEXT,
    source_address TEXT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    claimed_by TEXT REFERENCES agents(id) ON DELETE SET NULL,
    claimed_at BIGINT,
    finished_at BIGINT,
    result TEXT
);
CREATE INDEX agent_jobs_queue ON agent_jobs(zone_id, status, created_at);
