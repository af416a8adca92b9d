-- Who is issuing a deal's payment link right now: one `payment_link.issue` job at a time per
-- deal, so that two stage changes arriving together cannot create two links. A lease, not a
-- projection: it says who is working, and is gone when the job ends. One older than five minutes
-- is abandoned (its worker died) and can be taken over.
CREATE TABLE payment_link_issuing (
    account text        NOT NULL,
    lead_id bigint      NOT NULL,
    job_id  bigint      NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, lead_id)
);
