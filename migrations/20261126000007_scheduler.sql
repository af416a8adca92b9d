-- Subscriptions whose payment failed and is not yet made good ("dunning"). A failure opens a row
-- (the first failure of a run keeps its time); any later payment for the deal deletes it. The
-- scheduler marks a row overdue once, when it has stayed open past the account's grace period.
CREATE TABLE dunning (
    account         text        NOT NULL,
    provider        text        NOT NULL CHECK (provider IN ('stripe', 'lemonsqueezy')),
    subscription_id text        NOT NULL,
    -- This run of failures (a later run of the same subscription is another).
    run_id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    lead_id         bigint      NOT NULL,
    -- When the run of failures began.
    failed_at       timestamptz NOT NULL,
    -- What failed, for the manager's task (e.g. "invoice in_1 of 49.90 EUR").
    what            text        NOT NULL,
    -- Set once the deal was marked overdue.
    overdue_at      timestamptz,
    PRIMARY KEY (account, provider, subscription_id)
);
CREATE INDEX dunning_lead ON dunning (account, lead_id);

-- How far reconciliation has read each provider's history, per account.
CREATE TABLE reconcile_cursors (
    account    text        NOT NULL,
    provider   text        NOT NULL CHECK (provider IN ('stripe', 'lemonsqueezy', 'kommo')),
    -- Everything that happened before this time has been read.
    read_until timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, provider)
);

-- Housekeeping prunes finished jobs by age, keeping those a replay points at.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('completed', 'discarded');
CREATE INDEX jobs_replay_of ON jobs (replay_of) WHERE replay_of IS NOT NULL;
