-- Feedback and bug reports from a device, with attached logs, to the operator (CM-5).
--
-- What a person wrote and what they attached may hold anything about them, so both are sealed
-- (`body`, `content`), like every personal value. A report goes with its account.
CREATE TABLE feedback_reports (
    id          TEXT   NOT NULL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    -- `bug`, `idea` or `other`.
    kind        TEXT   NOT NULL,
    -- Sealed JSON: subject, description, app, the device it came from, and the attachments'
    -- names and media types.
    body        BLOB   NOT NULL,
    created_at  BIGINT NOT NULL,
    -- `open` until the operator closes it.
    state       TEXT   NOT NULL,
    -- The operator's answer, sealed; who answered and when.
    reply       BLOB,
    replied_by  TEXT,
    replied_at  BIGINT,
    closed_at   BIGINT
);
CREATE INDEX feedback_reports_account ON feedback_reports (account_id, created_at);
CREATE INDEX feedback_reports_state ON feedback_reports (state, created_at);

CREATE TABLE feedback_attachments (
    report_id   TEXT   NOT NULL REFERENCES feedback_reports(id) ON DELETE CASCADE,
    n           BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    content     BLOB   NOT NULL,
    PRIMARY KEY (report_id, n)
);
