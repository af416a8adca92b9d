-- A deal's money events are put in the provider's order, not the order their jobs ran in
-- (ADR 14): a subscription invoice stands at the start of the billing period it is for. NULL
-- for everything else, which stands at its own time (paid_at, failed_at).
ALTER TABLE payments ADD COLUMN billed_for timestamptz;
ALTER TABLE dunning ADD COLUMN billed_for timestamptz;
