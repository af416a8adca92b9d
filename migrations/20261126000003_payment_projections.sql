-- Projections of the event log that the payment flows read. Each row is written in the same
-- transaction as the internal event that records the same fact (payment_link.issued,
-- payment.received), so they can be rebuilt from `events`.

CREATE TABLE payment_links (
    account       text        NOT NULL,
    provider      text        NOT NULL CHECK (provider IN ('stripe', 'lemonsqueezy')),
    -- The provider's id: plink_… for Stripe.
    link_id       text        NOT NULL,
    lead_id       bigint      NOT NULL,
    trigger       text        NOT NULL,
    url           text        NOT NULL,
    amount_minor  bigint      NOT NULL,
    currency      text        NOT NULL,
    -- active: in the card, payable; paid; replaced: a new amount got a new link; deactivated.
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paid', 'replaced', 'deactivated')),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    issued_by_job bigint,
    -- Side effects done once per link, checked before they are repeated by a retry.
    note_added_at    timestamptz,
    salesbot_run_at  timestamptz,
    PRIMARY KEY (account, provider, link_id)
);
CREATE INDEX payment_links_lead ON payment_links (account, lead_id, issued_at);

CREATE TABLE payments (
    account      text        NOT NULL,
    provider     text        NOT NULL CHECK (provider IN ('stripe', 'lemonsqueezy')),
    -- pi_… (one-time) or in_… (subscription invoice) for Stripe: one payment, however many
    -- events announce it.
    payment_id   text        NOT NULL,
    lead_id      bigint      NOT NULL,
    link_id      text,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    paid_at      timestamptz NOT NULL,
    -- Refunded so far (Stripe reports the running total); only ever grows, so refunds and the
    -- payment may arrive in any order and the deal ends in the same state.
    refunded_minor bigint    NOT NULL DEFAULT 0,
    -- When the deal was updated for it; NULL while that is still to do.
    applied_at   timestamptz,
    -- The job updating the deal for it, and since when: one job at a time applies a payment,
    -- however many events announce it at once. A lease older than five minutes is abandoned.
    applying_job   bigint,
    applying_since timestamptz,
    PRIMARY KEY (account, provider, payment_id)
);
CREATE INDEX payments_lead ON payments (account, lead_id);
