-- Per Kommo account, what every process must agree on before calling Kommo's API.
CREATE TABLE kommo_api_state (
    account        text PRIMARY KEY,
    -- The earliest time the next request may be sent; each request moves it on by one spacing
    -- (1 / rate), so all processes together stay under the account's rate.
    next_slot      timestamptz NOT NULL DEFAULT now(),
    -- After a 429: nobody calls before this.
    paused_until   timestamptz,
    -- After a 403 (Kommo blocks abusive clients): nobody calls until an operator unblocks.
    blocked_at     timestamptz,
    blocked_reason text
);
