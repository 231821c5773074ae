-- What the periodic maintenance and account deletion look up, without reading whole tables:
-- commands whose time ran out (only open ones are indexed), locations past their retention,
-- and an account's one-time codes (deletion, and the cascade from `accounts`).
CREATE INDEX device_commands_due ON device_commands (expires_at) WHERE state IN ('queued', 'delivered');
CREATE INDEX device_locations_at ON device_locations (at);
CREATE INDEX verification_codes_account ON verification_codes (account_id);
