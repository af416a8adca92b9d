-- A dead job an operator replayed is `replayed` (its replacement points at it through
-- `replay_of`); one an operator discarded is `discarded`, as before.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('available', 'running', 'retryable', 'completed', 'dead', 'discarded', 'replayed'));

-- Operators search the log by kind and time.
CREATE INDEX events_account_kind ON events (account, kind, seq);
