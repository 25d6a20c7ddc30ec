-- Credentials: typed, versioned secret bundles shared by connections. A connection's inline
-- secrets become a credential owned by that connection (owner_connection_id), stored the
-- same way and rotated the same way.
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Set for a connection's own (inline) credential; NULL for a shared one.
    owner_connection_id TEXT,
    -- JSON reference to an external manager (vault_kv2, aws_secrets_manager); NULL when the
    -- values are held here.
    external TEXT,
    current_version BIGINT NOT NULL,
    -- Optimistic concurrency for metadata and rotation (ETag).
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (workspace_id, name)
);
CREATE INDEX credentials_owner ON credentials(owner_connection_id);
-- One row per version. state: current | previous (usable until grace_until) | revoked |
-- destroyed (ciphertext deleted).
CREATE TABLE credential_versions (
    credential_id TEXT NOT NULL REFERENCES credentials(id),
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    -- JSON: names of the secret fields set in this version.
    secret_fields TEXT NOT NULL,
    -- JSON: the non-secret field values (user names, client ids, regions).
    public_fields TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    grace_until BIGINT,
    revoked_at BIGINT,
    destroyed_at BIGINT,
    PRIMARY KEY (credential_id, version)
);
CREATE INDEX credential_versions_grace ON credential_versions(state, grace_until);
-- Ciphertext of each secret field of each version. key_id names the data key; the AAD binds
-- workspace, credential, version and field.
CREATE TABLE credential_secrets (
    credential_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    field TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    PRIMARY KEY (credential_id, version, field)
);
CREATE INDEX credential_secrets_key ON credential_secrets(key_id);
-- Who used a credential last, per connection (reveal, resolve, test).
CREATE TABLE credential_uses (
    credential_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    last_used_at BIGINT NOT NULL,
    last_used_by TEXT NOT NULL,
    PRIMARY KEY (credential_id, connection_id)
);
-- OAuth2 tokens obtained at run time (access and refresh token, encrypted together), and
-- the lease that makes refresh single-flight across replicas.
CREATE TABLE oauth_tokens (
    credential_id TEXT PRIMARY KEY,
    key_id TEXT,
    nonce BYTEA,
    ciphertext BYTEA,
    expires_at BIGINT,
    generation BIGINT NOT NULL,
    lease_holder TEXT,
    lease_until BIGINT
);
CREATE INDEX oauth_tokens_key ON oauth_tokens(key_id);
ALTER TABLE connections ADD COLUMN credential_id TEXT;
-- NULL follows the credential's current version; a number pins that version.
ALTER TABLE connections ADD COLUMN credential_version BIGINT;
CREATE INDEX connections_credential ON connections(credential_id);
