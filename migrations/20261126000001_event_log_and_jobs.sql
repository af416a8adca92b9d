-- The event log and the job queue (DESIGN.md §3).

-- events: the append-only log. One row per verified inbound delivery and per internal fact.
CREATE TABLE events (
    -- Global order of the log; auditors read a deal's history in this order.
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    -- The configured account slug (an agency runs many Kommo accounts).
    account     text        NOT NULL,
    source      text        NOT NULL CHECK (source IN ('kommo', 'stripe', 'lemonsqueezy', 'internal')),
    -- The provider's event type (e.g. `checkout.session.completed`, `leads.status`).
    kind        text        NOT NULL,
    -- The provider's event id, or a key derived from the payload where there is none.
    -- Unique per account and source: a redelivery is recognised and changes nothing.
    dedup_key   text        NOT NULL,
    lead_id     bigint,
    caused_by_event uuid,
    caused_by_job   bigint,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL,
    -- A safe subset of the request headers: never signatures, secrets or cookies.
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT events_dedup UNIQUE (account, source, dedup_key)
);

CREATE INDEX events_account_lead ON events (account, lead_id, seq) WHERE lead_id IS NOT NULL;
-- The log only grows in time order, so a BRIN index serves time ranges at almost no write cost.
CREATE INDEX events_received_at ON events USING brin (received_at);

CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only_rows
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();

CREATE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- jobs: the queue. Rows are updated in place (claim, heartbeat, outcome); their facts live on
-- in `events`, so completed rows can be pruned.
CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    args         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    account      text        NOT NULL,
    lead_id      bigint,
    -- The event whose arrival implied this job.
    event_id     uuid        REFERENCES events (id),
    state        text        NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'retryable', 'completed', 'dead', 'discarded')),
    -- Attempts are counted when an outcome is written (or a crashed run is rescued), not at
    -- claim time, so releasing a claimed job on shutdown costs it nothing.
    attempt      integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts integer     NOT NULL CHECK (max_attempts > 0),
    run_at       timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    locked_at    timestamptz,
    heartbeat_at timestamptz,
    finished_at  timestamptz,
    -- One entry per failed attempt: {"at", "attempt", "error"}.
    errors       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- The same work is never queued twice.
    unique_key   text,
    -- A job created by replaying a dead one points at it.
    replay_of    bigint      REFERENCES jobs (id)
);

CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX jobs_claimable ON jobs (run_at, id) WHERE state IN ('available', 'retryable');
CREATE INDEX jobs_event ON jobs (event_id);
CREATE INDEX jobs_account_lead ON jobs (account, lead_id) WHERE lead_id IS NOT NULL;
CREATE INDEX jobs_dead ON jobs (kind, id) WHERE state = 'dead';
