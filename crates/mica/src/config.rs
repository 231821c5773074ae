//! Configuration: defaults → TOML file (`--config`) → `MICA_*` environment variables.
//! Nested keys use a double underscore: `MICA_IDENTITY__CODE_TTL_SECS=300`.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use mica_core::crypto::MasterKey;
use mica_identity::IdentityConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder for everything the embedded defaults keep: database, blobs, key, outbox.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://user@host/db`. Default: `sqlite:<data_dir>/mica.db`.
    pub database_url: Option<SecretString>,
    /// Where file contents go: `file:PATH` or `s3://bucket/prefix` (`MICA_BLOB_URL`).
    /// Default: `file:<data_dir>/blobs`.
    pub blob_url: Option<String>,
    /// The URL people reach this server at (links in messages; its host is the passkeys' relying
    /// party). Default: `http://<listen>`, with `localhost` for a loopback address.
    pub public_url: Option<String>,
    /// `smtp://host:port`, `smtp://host:port?tls=required` (STARTTLS) or `smtps://host:port`,
    /// with `user:pass@` when the server needs it. Unset: messages go to the development outbox.
    pub smtp_url: Option<SecretString>,
    /// The From header of every email.
    pub email_from: String,
    /// HTTP endpoint receiving `POST {"to","text"}` for each SMS. Unset: the development outbox.
    pub sms_webhook_url: Option<SecretString>,
    /// The master key (64 hex characters or base64 of 32 bytes). Default: read from, or generated
    /// into, `<data_dir>/secret.key`.
    pub secret_key: Option<SecretString>,
    /// Read the master key from this file instead.
    pub secret_key_file: Option<PathBuf>,
    /// Take client addresses from `X-Forwarded-For` (only behind a reverse proxy).
    pub trust_forwarded: bool,
    /// How long a client may take to send a request head (or sit idle between requests)
    /// before its connection is closed, and how long a request's body may wait for its next
    /// bytes before the request fails (seconds; an upload keeps what arrived).
    pub client_timeout_secs: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// A bearer token that lets Prometheus (or anyone holding it) read `GET /metrics` from
    /// any address. Unset: only clients on a loopback address may.
    pub metrics_token: Option<SecretString>,
    /// Run background jobs (account deletion, …) on this node.
    pub run_jobs: bool,
    pub identity: IdentityConfig,
    pub cloud: mica_cloud::CloudConfig,
    pub devices: mica_devices::DevicesConfig,
    pub commerce: mica_commerce::CommerceConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("mica-data"),
            database_url: None,
            blob_url: None,
            public_url: None,
            smtp_url: None,
            email_from: "Mica <no-reply@localhost>".into(),
            sms_webhook_url: None,
            secret_key: None,
            secret_key_file: None,
            trust_forwarded: false,
            client_timeout_secs: 60,
            log_format: "text".into(),
            metrics_token: None,
            run_jobs: true,
            identity: IdentityConfig::default(),
            cloud: mica_cloud::CloudConfig::default(),
            devices: mica_devices::DevicesConfig::default(),
            commerce: mica_commerce::CommerceConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        // Missing keys take `Config::default()` through `#[serde(default)]`.
        let mut fig = Figment::new();
        if let Some(f) = file {
            if !f.exists() {
                bail!("configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(
            Env::prefixed("MICA_")
                .split("__")
                // Read elsewhere: MICA_CONFIG (the file's path), MICA_LOG (the log filter),
                // MICA_AGENT_* (the device agent's password and code), MICA_TEST_* (the test
                // suite) and MICA_BENCH_* (the benchmarks, whose servers inherit them).
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !matches!(k.as_str(), "config" | "log")
                        && !k.starts_with("test_")
                        && !k.starts_with("agent_")
                        && !k.starts_with("bench_")
                }),
        );
        let cfg: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.metrics_token {
            use secrecy::ExposeSecret;
            let t = t.expose_secret();
            if t.chars().count() < 16 || t.trim() != t || t.contains(char::is_whitespace) {
                bail!("metrics_token must be at least 16 characters, without spaces");
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            );
        }
        if self.identity.hash_cost.memory_kib < 19 * 1024 || self.identity.hash_cost.iterations < 2
        {
            bail!(
                "identity.hash_cost is below OWASP's minimum for argon2id (19 MiB, 2 iterations)"
            );
        }
        self.commerce.check().map_err(|e| anyhow::anyhow!(e))?;
        self.check_ranges()
    }

    /// Values that parse but would make the server misbehave (a zero TTL expires every token
    /// at once, a zero re-send interval floods the database): refused at start, naming the key.
    fn check_ranges(&self) -> anyhow::Result<()> {
        fn at_least(key: &str, value: i128, min: i128) -> anyhow::Result<()> {
            if value < min {
                bail!("{key} is {value}; it must be at least {min}");
            }
            Ok(())
        }
        fn rate(key: &str, r: &mica_identity::Rate) -> anyhow::Result<()> {
            if r.burst == 0 || r.period.is_zero() {
                bail!("{key} needs a burst of at least 1 and a period above 0 seconds");
            }
            Ok(())
        }
        let (i, c, d) = (&self.identity, &self.cloud, &self.devices);
        let checks: [(&str, i128, i128); 25] = [
            ("client_timeout_secs", self.client_timeout_secs.into(), 1),
            ("identity.code_ttl_secs", i.code_ttl_secs.into(), 60),
            ("identity.code_max_attempts", i.code_max_attempts.into(), 1),
            (
                "identity.code_resend_cooldown_secs",
                i.code_resend_cooldown_secs.into(),
                0,
            ),
            (
                "identity.codes_per_destination_per_hour",
                i.codes_per_destination_per_hour.into(),
                1,
            ),
            (
                "identity.access_token_ttl_secs",
                i.access_token_ttl_secs.into(),
                60,
            ),
            ("identity.session_ttl_days", i.session_ttl_days.into(), 1),
            (
                "identity.signin_failures_before_backoff",
                i.signin_failures_before_backoff.into(),
                1,
            ),
            // A request to recover an account waits at least a day: the owner must have time
            // to see the notice and cancel it.
            (
                "identity.recovery_wait_hours",
                i.recovery_wait_hours.into(),
                24,
            ),
            (
                "identity.recovery_finish_days",
                i.recovery_finish_days.into(),
                1,
            ),
            ("cloud.quota_bytes", c.quota_bytes.into(), 0),
            (
                "cloud.max_item_bytes",
                i128::try_from(c.max_item_bytes).unwrap_or(i128::MAX),
                1024,
            ),
            (
                "cloud.max_batch",
                i128::try_from(c.max_batch).unwrap_or(i128::MAX),
                1,
            ),
            (
                "cloud.max_tree",
                i128::try_from(c.max_tree).unwrap_or(i128::MAX),
                1,
            ),
            ("cloud.max_file_bytes", c.max_file_bytes.into(), 1),
            ("cloud.upload_ttl_hours", c.upload_ttl_hours.into(), 1),
            ("cloud.pending_file_hours", c.pending_file_hours.into(), 1),
            (
                "cloud.backups_per_device",
                i128::try_from(c.backups_per_device).unwrap_or(i128::MAX),
                1,
            ),
            ("cloud.backup_verify_days", c.backup_verify_days.into(), 1),
            ("cloud.ffmpeg_timeout_secs", c.ffmpeg_timeout_secs.into(), 1),
            ("devices.command_ttl_hours", d.command_ttl_hours.into(), 1),
            (
                "devices.protective_command_ttl_hours",
                d.protective_command_ttl_hours.map_or(1, i128::from),
                1,
            ),
            ("devices.resend_after_ms", d.resend_after_ms.into(), 100),
            (
                "devices.resend_max_ms",
                d.resend_max_ms.into(),
                d.resend_after_ms.into(),
            ),
            (
                "devices.link_code_ttl_secs",
                d.link_code_ttl_secs.into(),
                60,
            ),
        ];
        for (key, value, min) in checks {
            at_least(key, value, min)?;
        }
        for (key, r) in [
            ("identity.signin_per_ip", &i.signin_per_ip),
            ("identity.codes_per_ip", &i.codes_per_ip),
            ("identity.signups_per_ip", &i.signups_per_ip),
            ("identity.refresh_per_ip", &i.refresh_per_ip),
            ("devices.unlock_attempts", &d.unlock_attempts),
            ("devices.activation_checks", &d.activation_checks),
            ("devices.link_requests", &d.link_requests),
            ("devices.link_code_guesses", &d.link_code_guesses),
            ("devices.link_polls", &d.link_polls),
        ] {
            rate(key, r)?;
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.expose_secret().to_owned(),
            None => format!("sqlite:{}", self.data_dir.join("mica.db").display()),
        }
    }

    /// Where file contents go, as the blob store opens it: a local folder, or an
    /// `s3://bucket/prefix` URL (endpoint and credentials from the standard `AWS_*` variables).
    pub fn blob_location(&self) -> anyhow::Result<String> {
        match &self.blob_url {
            None => Ok(self.data_dir.join("blobs").display().to_string()),
            Some(u) if u.starts_with("s3://") && u.len() > 5 => Ok(u.clone()),
            Some(u) => match u.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(p.trim_start_matches("//").to_owned()),
                _ => bail!("blob_url {u:?} is not supported: use file:PATH or s3://bucket/prefix"),
            },
        }
    }

    /// The local folder for files the server builds itself (export archives): inside the
    /// blob folder when it is local, else `<data_dir>/blobs`.
    pub fn blob_dir(&self) -> anyhow::Result<PathBuf> {
        let loc = self.blob_location()?;
        Ok(if loc.starts_with("s3://") {
            self.data_dir.join("blobs")
        } else {
            PathBuf::from(loc)
        })
    }

    /// The configured public URL or, by default, the bound address — as `localhost` when it is
    /// a loopback one, since passkeys (WebAuthn) need a domain name.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        self.public_url.clone().unwrap_or_else(|| {
            if bound.ip().is_loopback() {
                format!("http://localhost:{}", bound.port())
            } else {
                format!("http://{bound}")
            }
        })
    }

    /// The master key: given, from its file, or from (or generated into) the data folder.
    /// A malformed key is an error: the server must not start and write data it cannot read back.
    pub fn master_key(&self) -> anyhow::Result<MasterKey> {
        if let Some(k) = &self.secret_key {
            return MasterKey::parse(k.expose_secret())
                .context("secret_key (MICA_SECRET_KEY) is malformed");
        }
        if let Some(f) = &self.secret_key_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading secret_key_file {}", f.display()))?;
            return MasterKey::parse(&text)
                .with_context(|| format!("the key in {} is malformed", f.display()));
        }
        let path = self.data_dir.join("secret.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return MasterKey::parse(&text)
                .with_context(|| format!("the key in {} is malformed", path.display()));
        }
        let key = MasterKey::generate();
        write_private(&path, key.to_hex().as_bytes())?;
        tracing::warn!(path = %path.display(), "generated a new master key; back it up: without it personal data cannot be read");
        Ok(key)
    }
}

/// Writes a file only its owner can read, atomically (temp + fsync + rename).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
