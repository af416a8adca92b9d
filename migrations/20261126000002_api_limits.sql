-- Per provider and account, what every process must agree on before calling a provider's API
-- (Kommo, Lemon Squeezy): see docs/adr/0006.
CREATE TABLE api_limits (
    provider       text NOT NULL,
    account        text NOT NULL,
    -- The earliest time the next request may be sent; each request moves it on by one spacing
    -- (1 / rate), so all processes together stay under the account's rate.
    next_slot      timestamptz NOT NULL DEFAULT now(),
    -- After a 429: nobody calls before this.
    paused_until   timestamptz,
    -- After a block (Kommo's 403): nobody calls until an operator clears it.
    blocked_at     timestamptz,
    blocked_reason text,
    PRIMARY KEY (provider, account)
);
