//! Mica's integration tests: one binary (each file under tests/ would be another binary to link).
//! Every test starts the real server on a random port with its own database and drives it over
//! HTTP. Tests listed in `on_both_backends!` run on SQLite and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default,
    clippy::result_large_err
)]

mod support;

mod account_recovery;
mod backups;
mod bad_input;
mod commerce;
mod connections;
mod deletion;
mod devices;
mod export;
mod factors;
mod files;
mod groupware;
mod limits;
mod link_codes;
mod metrics;
mod oidc;
mod operator;
mod passkeys;
mod profile;
mod recovery;
mod security;
mod sessions;
mod signup;
mod startup;
mod sync;
mod web;
mod webdav;
