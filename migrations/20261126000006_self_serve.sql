-- Self-serve buyers: a paid order that names no deal gets one, created once.

-- One row per order: the job creating its deal holds the lease; the deal id is stored the moment
-- Kommo returns it, and every later delivery or replay finds it here.
CREATE TABLE self_serve_orders (
    account        text        NOT NULL,
    provider       text        NOT NULL,
    order_id       text        NOT NULL,
    lead_id        bigint,
    creating_job   bigint,
    creating_since timestamptz,
    PRIMARY KEY (account, provider, order_id)
);

-- The round-robin cursor per account: one atomic increment per assignment, fair across processes.
CREATE TABLE round_robin (
    account text PRIMARY KEY,
    next    bigint NOT NULL DEFAULT 0
);
