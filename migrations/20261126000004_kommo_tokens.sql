-- Kommo OAuth 2.0 tokens per account. Kommo rotates the refresh token at every refresh, so the
-- new pair is stored (committed) before the access token is used; a refresh is serialised per
-- account by a lock on this row.
CREATE TABLE kommo_tokens (
    account       text PRIMARY KEY,
    access_token  text,
    refresh_token text,
    expires_at    timestamptz,
    refreshed_at  timestamptz
);
