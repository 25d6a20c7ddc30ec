-- Token kinds: `personal` (API access tokens, optionally narrowed) and `runner` (short-lived,
-- one workspace, resolve and test only); who minted each.
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'personal';
ALTER TABLE api_tokens ADD COLUMN created_by TEXT;
