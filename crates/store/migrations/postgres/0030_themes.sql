-- The theme store (CM-3): themes the operator publishes, free or priced in credits. A theme
-- bought (a `purchases` row of kind `theme`) is the account's on every device. Themes are the
-- operator's, not an account's: they outlive accounts. A theme's package and preview are kept
-- here, beside its entry, so a published version is whole or absent (packages are small:
-- at most 16 MiB).
CREATE TABLE themes (
    id              TEXT   NOT NULL PRIMARY KEY,
    name            TEXT   NOT NULL,
    author          TEXT   NOT NULL,
    description     TEXT   NOT NULL,
    -- Lowercase words, space separated.
    tags            TEXT   NOT NULL,
    -- Lowercase name, author, tags and description: what a search matches.
    search          TEXT   NOT NULL,
    price           BIGINT NOT NULL,
    -- 1, then one more at each update of the package.
    version         BIGINT NOT NULL,
    package         BYTEA   NOT NULL,
    package_size    BIGINT NOT NULL,
    package_sha256  TEXT   NOT NULL,
    preview         BYTEA,
    preview_type    TEXT,
    published_at    BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- No longer offered: not listed or sold, still downloaded by those who have it.
    withdrawn_at    BIGINT
);
CREATE INDEX themes_name ON themes (name, id);
CREATE INDEX purchases_product ON purchases (account_id, kind, product_id);
