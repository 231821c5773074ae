//! The `mica` binary's library half: configuration and server start-up, shared by `main` and
//! the integration tests (which start the real server on a random port).

pub mod agent;
pub mod backup;
pub mod config;
pub mod feedback;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mica_cloud::{BlobStore, Cloud};
use mica_core::crypto::Keys;
use mica_core::Clock;
use mica_devices::Devices;
use mica_http::conns::Connections;
use mica_http::AppState;
use mica_identity::{Identity, IdentitySetup, RelyingParty};
use mica_notify::{Notifier, NotifyConfig};
use mica_store::{Store, StoreOptions};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub public_url: String,
    pub store: Store,
    /// The sync engine, for operator tasks and tests.
    pub cloud: Cloud,
    /// Linked devices, for operator tasks and tests.
    pub devices: Devices,
    /// Accounts, for operator tasks and tests.
    pub identity: Identity,
    /// Credits and plans, for operator tasks and tests.
    pub commerce: mica_commerce::Commerce,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Opens (creating when needed) and migrates the configured database.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data folder {}", cfg.data_dir.display()))?;
    let url = cfg.database_url();
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .with_context(|| format!("opening database {}", mica_store::redact_url(&url)))?;
    let applied = store.migrate().await.context("migrating the database")?;
    tracing::info!(backend = store.backend().name(), migrations = ?applied, "database ready");
    Ok(store)
}

/// Refuses a key that cannot open what the database holds (the key file lost and a new one
/// generated, or another server's key): every stored email and phone would read as garbage,
/// sign-in by them would fail, and they could sign up again.
async fn check_key(cfg: &Config, store: &Store, keys: &Keys) -> anyhow::Result<()> {
    if let Some((field, sealed)) = store.sealed_sample().await? {
        if keys.open(field, &sealed).is_err() {
            anyhow::bail!(
                "the master key does not open this database's data: start with the key it \
                 was written with (secret_key, secret_key_file, or {}); if that file was \
                 just created, the original was missing",
                cfg.data_dir.join("secret.key").display()
            );
        }
    }
    Ok(())
}

/// Email and SMS as configured (the development outbox otherwise).
fn notifier(cfg: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Notifier> {
    Ok(Notifier::new(
        &NotifyConfig {
            smtp_url: cfg.smtp_url.as_ref().map(|s| s.expose_secret().to_owned()),
            email_from: cfg.email_from.clone(),
            sms_webhook_url: cfg
                .sms_webhook_url
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            outbox_file: cfg.data_dir.join("outbox.jsonl"),
        },
        clock,
    )?)
}

/// The identity service without a server, for operator tasks (`mica admin`): the configured
/// database, key and messages.
pub async fn operator_identity(cfg: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Identity> {
    let keys = Arc::new(Keys::from_master(&cfg.master_key()?));
    let store = open_store(cfg).await?;
    check_key(cfg, &store, &keys).await?;
    let identity = Identity::new(IdentitySetup {
        store,
        keys,
        notifier: notifier(cfg, clock.clone())?,
        clock,
        cfg: cfg.identity.clone(),
        hash_slots: 1,
        exports_dir: cfg.blob_dir()?.join("exports"),
        relying_party: None,
    })
    .await?;
    Ok(identity)
}

impl Server {
    /// Starts serving: creates the data folder, loads the key, migrates the database, binds.
    pub async fn start(cfg: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data folder {}", cfg.data_dir.display()))?;
        let blobs = cfg.blob_dir()?;
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("creating blob folder {}", blobs.display()))?;
        let keys = Arc::new(Keys::from_master(&cfg.master_key()?));
        let cloud_keys = keys.clone();
        let device_keys = keys.clone();
        let commerce_keys = keys.clone();

        let store = open_store(cfg).await?;
        check_key(cfg, &store, &keys).await?;
        let notifier = notifier(cfg, clock.clone())?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let public_url = cfg.public_url(addr);
        let relying_party =
            match RelyingParty::for_public_url(&public_url, &cfg.identity.service_name) {
                Ok(rp) => Some(rp),
                Err(why) => {
                    tracing::warn!(%why, "passkeys are off");
                    None
                }
            };
        let identity = Identity::new(IdentitySetup {
            store: store.clone(),
            keys,
            notifier: notifier.clone(),
            clock: clock.clone(),
            cfg: cfg.identity.clone(),
            hash_slots: cores,
            exports_dir: blobs.join("exports"),
            relying_party,
        })
        .await?;
        let (email, sms) = notifier.routes();
        if email == "outbox" || sms == "outbox" {
            tracing::info!(
                file = %cfg.data_dir.join("outbox.jsonl").display(),
                email, sms, "no SMTP server or SMS gateway configured: messages go to the development outbox"
            );
        }

        let blob_store =
            BlobStore::open(&cfg.blob_location()?).context("opening the blob store")?;
        let cloud = Cloud::new(store.clone(), blob_store, cloud_keys, clock.clone(), {
            let mut c = cfg.cloud.clone();
            c.scratch_dir
                .get_or_insert_with(|| cfg.data_dir.join("tmp"));
            c
        });
        identity.add_area(Arc::new(CloudExport(cloud.clone())));
        cloud.set_owner_notices(Arc::new(identity.clone()));
        let devices = Devices::new(
            store.clone(),
            identity.clone(),
            device_keys,
            clock.clone(),
            cfg.devices.clone(),
        );
        identity.add_area(Arc::new(DevicesExport(devices.clone())));
        identity.add_device_notices(Arc::new(devices.clone()));
        identity.add_device_notices(Arc::new(cloud.clone()));
        let commerce = mica_commerce::Commerce::new(
            store.clone(),
            commerce_keys,
            clock.clone(),
            cfg.commerce.clone(),
        );
        commerce.set_owner_notices(Arc::new(identity.clone()));
        identity.add_area(Arc::new(CommerceExport(commerce.clone())));
        // A connection gets `client_timeout_secs` to deliver each request head (and no more
        // to sit idle between requests, or to leave its answer unread): the sweeper (below)
        // closes what waited longer, once a second.
        let connections = Connections::new(Duration::from_secs(cfg.client_timeout_secs));
        let state = AppState::new(mica_http::AppInner {
            identity: identity.clone(),
            cloud: cloud.clone(),
            dav: mica_dav::Dav::new(cloud.clone()),
            devices: devices.clone(),
            commerce: commerce.clone(),
            store: store.clone(),
            clock,
            trust_forwarded: cfg.trust_forwarded,
            public_url: public_url.clone(),
            body_idle_timeout: Duration::from_secs(cfg.client_timeout_secs),
            connections: connections.clone(),
            metrics: Arc::new(mica_http::metrics::Metrics::new()),
            metrics_token: cfg.metrics_token.clone(),
        });
        let app = mica_http::app(state);
        let (tx, rx) = watch::channel(false);
        let mut rx2 = tx.subscribe();
        if cfg.run_jobs {
            // Durable jobs (account deletion, …): woken when one is queued, and every few seconds
            // for jobs whose lease ran out on a node that died.
            let identity = identity.clone();
            let waker = identity.jobs_waker();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = identity.run_due_jobs().await {
                        tracing::warn!(error = %e, "running jobs failed");
                    }
                    tokio::select! {
                        () = waker.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        if cfg.run_jobs {
            // The gallery's media worker: woken when a photo is queued, and every few seconds
            // for work whose lease ran out on a node that died.
            let cloud = cloud.clone();
            let waker = cloud.media_waker();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    cloud.remove_stale_scratch().await;
                    if let Err(e) = cloud.run_media().await {
                        tracing::warn!(error = %e, "media worker failed");
                    }

                    tokio::select! {
                        () = waker.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        if cfg.run_jobs {
            // Backups are read back and checked: woken when one is made or a check is asked
            // for, and every minute for periodic checks and claims that ran out.
            let cloud = cloud.clone();
            let waker = cloud.backups_waker();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = cloud.run_backup_checks().await {
                        tracing::warn!(error = %e, "verifying backups failed");
                    }
                    tokio::select! {
                        () = waker.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        {
            // Commands issued on another node reach the devices connected to this one.
            let devices = devices.clone();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = devices.relay_wakeups() => match r {
                            Ok(()) => break,
                            Err(e) => tracing::warn!(error = %e, "device wake-ups between nodes"),
                        },
                        _ = stop.changed() => break,
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
        {
            // Sessions revoked elsewhere — by another node, or by `mica admin` suspending an
            // account — stop this node's access tokens within seconds, not when they expire.
            let identity = identity.clone();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REVOCATIONS_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = identity.refresh_revocations().await {
                                tracing::warn!(error = %e, "reading revoked sessions failed");
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        let identity_handle = identity.clone();
        let maintenance = cloud.clone();
        let device_maintenance = devices.clone();
        let commerce_maintenance = commerce.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = identity.purge_expired().await {
                            tracing::warn!(error = %e, "purging expired codes failed");
                        }
                        if let Err(e) = identity.recovery_maintenance().await {
                            tracing::warn!(error = %e, "account recovery maintenance failed");
                        }
                        if let Err(e) = maintenance.maintenance().await {
                            tracing::warn!(error = %e, "cloud maintenance failed");
                        }
                        if let Err(e) = device_maintenance.maintenance().await {
                            tracing::warn!(error = %e, "device maintenance failed");
                        }
                        if let Err(e) = commerce_maintenance.maintenance().await {
                            tracing::warn!(error = %e, "renewing plans failed");
                        }
                    }
                    _ = rx2.changed() => break,
                }
            }
        });
        // The connections' sweeper: once the server stops, connections waiting for a head are
        // closed at once, for as long as the shutdown lasts.
        {
            let connections = connections.clone();
            let mut stop = tx.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let closed = connections.sweep();
                            if closed > 0 {
                                tracing::debug!(closed, "connections closed: the client took too long");
                            }
                        }
                        _ = stop.wait_for(|stop| *stop) => break,
                    }
                }
                let until = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                while tokio::time::Instant::now() < until {
                    connections.close_waiting();
                    connections.sweep();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let mut rx = rx;
        let task = tokio::spawn(async move {
            axum::serve(
                mica_http::conns::Listener::new(listener, connections),
                axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                    mica_http::conns::Peer,
                >(app),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
        });
        Ok(Server {
            addr,
            public_url,
            store,
            cloud,
            devices,
            identity: identity_handle,
            commerce,
            shutdown: tx,
            task,
        })
    }

    /// Stops accepting connections, lets in-flight requests finish, closes the database.
    /// Open event streams get [`SHUTDOWN_GRACE`]; then the server stops without them.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(ended) => ended.context("server task")??,
            Err(_) => {
                tracing::warn!("connections still open after the shutdown grace: closing them");
                task.abort();
            }
        }
        self.store.close().await;
        Ok(())
    }

    /// Waits until the server stops by itself (it only does on a fatal listener error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task")??;
        Ok(())
    }
}

/// The cloud's part of a data export.
struct CloudExport(Cloud);

impl mica_identity::export::AccountArea for CloudExport {
    fn export_files<'a>(
        &'a self,
        account: mica_core::AccountId,
        sink: &'a mica_identity::export::ExportSink,
    ) -> mica_identity::export::AreaFuture<'a, ()> {
        Box::pin(async move {
            self.0
                .export_into(account, sink)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn forget_account(
        &self,
        account: mica_core::AccountId,
    ) -> mica_identity::export::AreaFuture<'_, ()> {
        Box::pin(async move {
            self.0
                .forget_blobs(account)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Commerce's part of a data export (its rows go with the database's in a deletion).
struct CommerceExport(mica_commerce::Commerce);

impl mica_identity::export::AccountArea for CommerceExport {
    fn export_files<'a>(
        &'a self,
        account: mica_core::AccountId,
        sink: &'a mica_identity::export::ExportSink,
    ) -> mica_identity::export::AreaFuture<'a, ()> {
        Box::pin(async move {
            self.0
                .export_into(account, sink)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn forget_account(
        &self,
        _account: mica_core::AccountId,
    ) -> mica_identity::export::AreaFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The devices' part of a data export, and of an account's deletion (its rows go with the
/// database's; what is outside it is the devices' open channels).
struct DevicesExport(Devices);

impl mica_identity::export::AccountArea for DevicesExport {
    fn export_files<'a>(
        &'a self,
        account: mica_core::AccountId,
        sink: &'a mica_identity::export::ExportSink,
    ) -> mica_identity::export::AreaFuture<'a, ()> {
        Box::pin(async move {
            self.0
                .export_into(account, sink)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn forget_account(
        &self,
        account: mica_core::AccountId,
    ) -> mica_identity::export::AreaFuture<'_, ()> {
        Box::pin(async move {
            self.0
                .forget_account(account)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// How long requests in flight (and open event streams, which end only when their client
/// goes) get to end once the server is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often a node reads the sessions revoked elsewhere.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(2);
