-- What operators did (OP-4): suspensions, reinstatements, deletions, quota changes, decisions on
-- requests to recover an account. Each row is written in the transaction of the change it
-- records. It is the operator's record and outlives the account it names — proof, for one,
-- that an erasure request was carried out — so it holds the account's number and the
-- operator's own words, never the account's data.
CREATE TABLE operator_log (
    id          TEXT   NOT NULL PRIMARY KEY,
    at          BIGINT NOT NULL,
    operator    TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    account_id  BIGINT,
    subject     TEXT,
    detail      TEXT   NOT NULL
);
CREATE INDEX operator_log_at ON operator_log (at);
CREATE INDEX operator_log_account ON operator_log (account_id, at);
