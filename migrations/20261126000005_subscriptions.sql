-- Provider subscriptions and the deal each belongs to. Lemon Squeezy's subscription payment events
-- carry no custom data of their own: the deal is found through this mapping, stored when the
-- subscription is created. Snapshots (`subscription_updated`) apply only when newer.
CREATE TABLE subscriptions (
    account         text        NOT NULL,
    provider        text        NOT NULL CHECK (provider IN ('stripe', 'lemonsqueezy')),
    subscription_id text        NOT NULL,
    lead_id         bigint      NOT NULL,
    status          text        NOT NULL,
    -- The provider's `updated_at` of the snapshot stored.
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (account, provider, subscription_id)
);
