//! The test harness: the real server on a random port, its own fresh database (SQLite, or a new
//! PostgreSQL database when `MICA_TEST_POSTGRES_URL` is set), a real SMTP sink, an SMS webhook
//! sink, and a manual clock.

pub mod browser;
pub mod sms;
pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mica::{Config, Server};
use mica_client::Client;
use mica_core::ManualClock;
use secrecy::SecretString;
use sqlx::Connection;

pub use sms::SmsSink;
pub use smtp::{six_digits, SmtpSink};

pub const PASSWORD: &str = "correct-Horse-battery-9";
/// The secret the payment provider's webhook is signed with in the tests.
pub const WEBHOOK_SECRET: &str = "whsec_mica-test-0f3c9a71d2e84b5c6a17";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub server: Option<Server>,
    pub base: String,
    pub clock: ManualClock,
    pub smtp: SmtpSink,
    pub sms: SmsSink,
    pub client: Client,
    pub http: reqwest::Client,
    pub cfg: Config,
    pub backend: Backend,
    dir: PathBuf,
    pg: Option<(String, String)>,
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..12)
        .map(|_| char::from(b'a' + r.gen_range(0..26)))
        .collect()
}

/// The PostgreSQL server to test against, when configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("MICA_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

impl TestApp {
    /// `None` when PostgreSQL is asked for but not configured (the test is then skipped).
    pub async fn start(backend: Backend) -> Option<TestApp> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let dir = std::env::temp_dir().join(format!("mica-test-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let smtp = SmtpSink::start().await;
        let sms = SmsSink::start().await;
        let mut cfg = Config::default();
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.data_dir = dir.clone();
        cfg.smtp_url = Some(SecretString::from(smtp.url()));
        cfg.sms_webhook_url = Some(SecretString::from(sms.url.clone()));
        cfg.email_from = "Mica <no-reply@mica.test>".into();
        // A device waiting for its link code's approval polls every second, not every five.
        cfg.devices.link_poll_secs = 1;
        // The payment provider's webhook is on, with a secret the tests sign with.
        cfg.commerce.webhook_secret = Some(SecretString::from(WEBHOOK_SECRET));
        let mut pg = None;
        if backend == Backend::Postgres {
            let admin = postgres_url()?;
            let name = format!("mica_test_{}", random_suffix());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to MICA_TEST_POSTGRES_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            conn.close().await.ok();
            let url = with_database(&admin, &name);
            cfg.database_url = Some(SecretString::from(url));
            pg = Some((admin, name));
        }
        tweak(&mut cfg);
        let clock = ManualClock::starting_now();
        let server = Server::start(&cfg, Arc::new(clock.clone()))
            .await
            .expect("server starts");
        let base = format!("http://{}", server.addr);
        Some(TestApp {
            client: Client::new(base.clone()),
            http: reqwest::Client::new(),
            server: Some(server),
            base,
            clock,
            smtp,
            sms,
            cfg,
            backend,
            dir,
            pg,
        })
    }

    /// The running server's sync engine (to run its maintenance now rather than on its timer).
    pub fn server_cloud(&self) -> mica_cloud::Cloud {
        self.server
            .as_ref()
            .map(|s| s.cloud.clone())
            .expect("server running")
    }

    /// The running server's commerce (to renew plans now rather than on its timer).
    pub fn server_commerce(&self) -> mica_commerce::Commerce {
        self.server
            .as_ref()
            .map(|s| s.commerce.clone())
            .expect("server running")
    }

    /// The running server's identity service (operator tasks, maintenance now rather than on
    /// its timer).
    pub fn server_identity(&self) -> mica_identity::Identity {
        self.server
            .as_ref()
            .map(|s| s.identity.clone())
            .expect("server running")
    }

    /// The URL the server says it is reached at: the origin its passkeys belong to.
    pub fn public_url(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.public_url.clone())
            .expect("server running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's current time in Unix seconds.
    pub fn clock_secs(&self) -> i64 {
        use mica_core::Clock;
        self.clock.now().millis() / 1000
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Signs up by email with the code read from the SMTP sink; returns the tokens.
    pub async fn signup_email(&self, email: &str) -> mica_client::Tokens {
        let before = self.smtp.count_to(email);
        let s = self
            .client
            .signup_email(email, PASSWORD)
            .await
            .expect("signup accepted");
        let mail = self.smtp.nth_to(email, before + 1).await;
        let code = six_digits(&mail.subject()).expect("code in subject");
        self.client
            .signup_verify(&s.signup_id, &code, None)
            .await
            .expect("verify")
    }

    /// Every value stored in the database, as text (for "a dump never shows …" checks).
    pub async fn dump(&self) -> String {
        match self.backend {
            Backend::Sqlite => {
                // Read by another process: closing a descriptor of the database file in this
                // one would drop every POSIX lock the server's SQLite connections hold on it
                // (locks are per process), and the next `mica admin` would then take itself
                // for the last user, checkpoint and drop the WAL the server still reads.
                let mut all = Vec::new();
                for f in ["mica.db", "mica.db-wal"] {
                    let path = self.dir.join(f);
                    if path.exists() {
                        let out = std::process::Command::new("cat")
                            .arg(&path)
                            .output()
                            .expect("cat runs");
                        all.extend(out.stdout);
                    }
                }
                String::from_utf8_lossy(&all).into_owned()
            }
            Backend::Postgres => {
                let url = self.cfg.database_url();
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                let mut out = String::new();
                for t in [
                    "accounts",
                    "verification_codes",
                    "sessions",
                    "refresh_tokens",
                    "login_events",
                ] {
                    let rows: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT CAST(t AS TEXT) FROM {t} t"))
                            .fetch_all(&mut conn)
                            .await
                            .expect("dump");
                    for (r,) in rows {
                        out.push_str(&r);
                        out.push('\n');
                    }
                }
                out
            }
        }
    }

    /// Runs `mica admin …` (the real binary) on the test's database, its mail to the test's
    /// SMTP sink; whether it succeeded, and what it printed.
    pub fn admin(&self, args: &[&str]) -> (bool, String) {
        use secrecy::ExposeSecret;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mica"));
        cmd.arg("admin")
            .args(args)
            .env("MICA_DATA_DIR", &self.cfg.data_dir)
            .env("MICA_SMTP_URL", self.smtp.url())
            .env("MICA_EMAIL_FROM", "Mica <no-reply@mica.test>")
            .env("MICA_LOG", "warn");
        if let Some(url) = &self.cfg.database_url {
            cmd.env("MICA_DATABASE_URL", url.expose_secret());
        }
        let out = cmd.output().expect("mica admin runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn store(&self) -> &mica_store::Store {
        &self.server.as_ref().expect("running").store
    }

    /// Stops the server (as a crash would: nothing is tidied up in the database) and starts a new
    /// one on the same database, folder and clock, with `tweak` applied to the configuration.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("stop");
        }
        tweak(&mut self.cfg);
        let server = Server::start(&self.cfg, Arc::new(self.clock.clone()))
            .await
            .expect("restart");
        self.base = format!("http://{}", server.addr);
        self.client = Client::new(self.base.clone());
        self.server = Some(server);
    }

    /// Stops the server and drops its database and folder.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean shutdown");
        }
        if let Some((admin, name)) = self.pg.take() {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host_part = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// Runs each listed `async fn name(app: TestApp)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::support::TestApp::start($crate::support::Backend::Sqlite)
                        .await
                        .expect("sqlite always runs");
                    super::$name(&app).await;
                    app.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(app) = $crate::support::TestApp::start($crate::support::Backend::Postgres).await else {
                        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
                        return;
                    };
                    super::$name(&app).await;
                    app.stop().await;
                }
            }
        )*
    };
}
