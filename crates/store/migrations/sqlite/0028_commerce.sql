-- Commerce (CM-1, CM-2, CM-4): the credits wallet, its ledger, storage plans and purchases.
--
-- A wallet's balance changes only together with a ledger row, in one transaction, and never
-- below zero (the CHECK, and the conditional update that spends). Every ledger row has a
-- reference unique across the server — the payment provider's event id, the purchase's id,
-- the renewal's period, the operator's grant — so a webhook delivered twice, a purchase
-- retried, or two nodes renewing the same plan never count a credit twice.
CREATE TABLE wallets (
    account_id  BIGINT NOT NULL PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    balance     BIGINT NOT NULL CHECK (balance >= 0),
    updated_at  BIGINT NOT NULL
);

CREATE TABLE credit_ledger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    at             BIGINT NOT NULL,
    -- Credits added (> 0) or spent (< 0), and the balance this left.
    delta          BIGINT NOT NULL,
    balance_after  BIGINT NOT NULL,
    -- `top_up`, `grant`, `purchase`, `renewal`, `refund`.
    kind           TEXT   NOT NULL,
    reference      TEXT   NOT NULL UNIQUE,
    memo           TEXT   NOT NULL
);
CREATE INDEX credit_ledger_account ON credit_ledger (account_id, id);

-- The plan an account has now (at most one). It ends — the row goes, and the account is back
-- on the free plan — when it expires without a renewal.
CREATE TABLE subscriptions (
    account_id     BIGINT NOT NULL PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    plan_id        TEXT   NOT NULL,
    plan_name      TEXT   NOT NULL,
    quota_bytes    BIGINT NOT NULL,
    premium        BIGINT NOT NULL,
    price          BIGINT NOT NULL,
    period_days    BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    period_start   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    -- Set when the owner turned renewal off.
    renewal_off_at BIGINT,
    -- The expiry the owner was told of ahead (that the plan renews, or ends), told once.
    reminded_for   BIGINT
);
CREATE INDEX subscriptions_expires ON subscriptions (expires_at);

-- What the account bought: plans and their renewals, numbered in order per account (`seq`,
-- under the account's lock). `idempotency_key` is the client's, so a retried purchase is the
-- same purchase.
CREATE TABLE purchases (
    id               TEXT   NOT NULL PRIMARY KEY,
    account_id       BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    seq              BIGINT NOT NULL,
    at               BIGINT NOT NULL,
    kind             TEXT   NOT NULL,
    product_id       TEXT   NOT NULL,
    product_name     TEXT   NOT NULL,
    price            BIGINT NOT NULL,
    -- Credits given back for the unused time of the plan this one replaced.
    credited         BIGINT NOT NULL,
    valid_until      BIGINT,
    idempotency_key  TEXT
);
CREATE UNIQUE INDEX purchases_key ON purchases (account_id, idempotency_key);
CREATE UNIQUE INDEX purchases_seq ON purchases (account_id, seq);

-- The plan's quota, beside the operator's (`quota_bytes`): the account has the larger.
ALTER TABLE cloud_accounts ADD COLUMN plan_quota_bytes BIGINT;
