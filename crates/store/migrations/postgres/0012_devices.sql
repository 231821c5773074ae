-- Linked devices and Find Device (DV-1 … DV-7).
--
-- A device is linked by a signed-in person and gets its own credential (random, stored as a
-- SHA-256 hash like every token; NULL once revoked). Its hardware ids (IMEIs, serial) are
-- personal data: sealed, and findable only through blind indexes in `activation_locks`.
-- Removing or erasing a device sets `unlinked_at`; an erased device's row and locations stay
-- for its owner until they delete it.
CREATE TABLE devices (
    id               TEXT   NOT NULL PRIMARY KEY,
    account_id       BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    session_id       TEXT,
    name             TEXT   NOT NULL,
    model            TEXT   NOT NULL,
    os_version       TEXT   NOT NULL,
    app_version      TEXT   NOT NULL,
    hardware         BYTEA  NOT NULL,
    hardware_bidx    BYTEA  NOT NULL,
    credential_hash  BYTEA  UNIQUE,
    find_enabled     BIGINT NOT NULL,
    battery          BIGINT,
    last_seen_at     BIGINT,
    lost_mode        BYTEA,
    linked_at        BIGINT NOT NULL,
    unlinked_at      BIGINT,
    unlinked_reason  TEXT,
    command_seq      BIGINT NOT NULL
);
CREATE INDEX devices_account ON devices (account_id);
CREATE INDEX devices_hardware ON devices (hardware_bidx);

-- Reported positions, sealed (where a person was is personal data), kept for a configurable
-- retention and served by time range.
CREATE TABLE device_locations (
    device_id    TEXT   NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id   BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    place        BYTEA  NOT NULL
);
CREATE INDEX device_locations_time ON device_locations (device_id, at);
CREATE INDEX device_locations_account ON device_locations (account_id, received_at);

-- Commands to a device: queued → delivered → acknowledged → done / failed, or expired. `seq`
-- grows per device; the device executes a command at most once and refuses any whose seq it
-- has already passed. The payload (a lost-mode message and phone number) is sealed.
CREATE TABLE device_commands (
    id               TEXT   NOT NULL PRIMARY KEY,
    account_id       BIGINT NOT NULL,
    device_id        TEXT   NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq              BIGINT NOT NULL,
    kind             TEXT   NOT NULL,
    payload          BYTEA,
    state            TEXT   NOT NULL,
    reason           TEXT,
    deliveries       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    acknowledged_at  BIGINT,
    finished_at      BIGINT,
    UNIQUE (device_id, seq)
);
CREATE INDEX device_commands_open ON device_commands (device_id, state);
CREATE INDEX device_commands_account ON device_commands (account_id, created_at);

-- Activation lock (DV-7): each hardware id (blind index) of a device linked with Find Device
-- on, bound to its account. Released when the owner removes the device or turns Find Device
-- off, or with the account.
CREATE TABLE activation_locks (
    hardware_id_bidx  BYTEA  NOT NULL PRIMARY KEY,
    account_id        BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    device_id         TEXT   NOT NULL,
    locked_at         BIGINT NOT NULL
);
CREATE INDEX activation_locks_account ON activation_locks (account_id);
