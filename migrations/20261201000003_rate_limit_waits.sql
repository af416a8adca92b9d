-- A job whose account has no provider slot soon gives its worker slot back and waits (ADR 15):
-- deferred, not failed (no attempt used, no error written). `waiting_for` names the provider
-- whose rate limit it waits for, until it is claimed again.
ALTER TABLE jobs ADD COLUMN waiting_for text;

-- The slot last offered to a request, reserved or not: a request whose slot is too far away
-- is deferred and reserves nothing, so giving up costs the account no budget.
ALTER TABLE api_limits ADD COLUMN offered_slot timestamptz;
