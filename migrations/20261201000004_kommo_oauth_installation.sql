-- Kommo OAuth installations (`kommo-pay kommo connect`, issue #15).
--
-- A consent URL carries a one-time `state` bound to its account: used once, and no longer than
-- Kommo's authorization code lives (20 minutes).
CREATE TABLE kommo_oauth_states (
    state      text PRIMARY KEY,
    account    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);

-- When the account's integration was installed (its pair stored from an authorization code),
-- and when Kommo said it was uninstalled (its tokens are then gone).
ALTER TABLE kommo_tokens ADD COLUMN connected_at timestamptz, ADD COLUMN revoked_at timestamptz;
