-- Recovery factors (ID-8): a verified recovery email and phone, and security questions whose
-- answers are stored only as argon2id hashes.

CREATE TABLE recovery_factors (
    account_id   BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind         TEXT   NOT NULL,
    value_enc    BLOB   NOT NULL,
    value_bidx   BLOB   NOT NULL,
    verified_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, kind)
);
CREATE INDEX recovery_factors_bidx ON recovery_factors (value_bidx);

CREATE TABLE security_questions (
    account_id   BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    position     BIGINT NOT NULL,
    question     TEXT   NOT NULL,
    answer_hash  TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, position)
);
