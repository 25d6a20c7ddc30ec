-- Users (local accounts), their workspace memberships, custom roles, and tokens owned by
-- users. Built-in roles live in code (patchbay_core::roles); `role` names either one of them
-- or a row of workspace_roles of the same workspace.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    -- PHC string (argon2id); never the password.
    password_hash TEXT NOT NULL,
    -- Instance administrators reach every workspace with every permission.
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);
CREATE TABLE workspace_roles (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    permissions TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
CREATE TABLE workspace_members (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX workspace_members_user ON workspace_members(user_id);
ALTER TABLE api_tokens ADD COLUMN user_id TEXT REFERENCES users(id);
