-- The ops console (/console): sessions after sign-in with an ops token, and the facts its
-- overview shows that were only in metrics and logs before.

CREATE TABLE console_sessions (
    -- SHA-256 of the cookie's value: reading this table never yields a cookie that signs in.
    id_hash      bytea       PRIMARY KEY,
    -- The ops token's name: the operator the log records for what this session does.
    operator     text        NOT NULL,
    -- SHA-256 of the token signed in with: removing or changing the token in the configuration
    -- ends its sessions at their next request.
    token_hash   bytea       NOT NULL,
    -- Every state-changing form carries it; a form forged on another site cannot.
    csrf         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- The last check of an account's Kommo webhooks by reconciliation: Kommo disables a hook that
-- keeps failing, and nothing arrives until an admin saves it again.
CREATE TABLE kommo_webhook_checks (
    account      text        PRIMARY KEY,
    checked_at   timestamptz NOT NULL,
    disabled_ids text[]      NOT NULL
);

-- Requests sent per account and provider, in ten-second windows, for "requests per second
-- against the limit": the window counting now and the one before it.
ALTER TABLE api_limits
    ADD COLUMN window_start    timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN window_requests integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_window_requests integer NOT NULL DEFAULT 0;

