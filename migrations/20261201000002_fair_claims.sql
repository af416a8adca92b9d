-- Fair claims (ADR 15): runnable jobs are taken account by account, in turns, oldest first
-- within an account, and no account runs more than `worker.max_per_account` jobs at once.
-- The claim walks the accounts that have waiting jobs (a skip scan of the first index) and
-- counts each one's running jobs (the second).
CREATE INDEX jobs_runnable_by_account ON jobs (account, run_at, id) WHERE state IN ('available', 'retryable');
CREATE INDEX jobs_running_by_account ON jobs (account) WHERE state = 'running';
