//! `mica`: the server and, later, the admin, agent and client commands.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mica::{Config, Server};
use mica_core::SystemClock;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "mica",
    version,
    about = "One account and a personal cloud for all of a person's devices"
)]
struct Cli {
    /// TOML configuration file (settings can also come from MICA_* environment variables).
    #[arg(long, global = true, env = "MICA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. With no configuration: 127.0.0.1:8080, everything under ./mica-data.
    Serve,
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Operator tasks on the configured database.
    #[command(subcommand)]
    Admin(Admin),
    /// The device agent: link this machine to an account, then run Find Device and sync.
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Link this device: sign in with `--login` (password from MICA_AGENT_PASSWORD or standard
    /// input), or with `--code` show a code for the owner to approve from a signed-in device.
    Link {
        /// The agent's configuration file (TOML).
        agent_config: PathBuf,
        /// Account number, email or phone number.
        #[arg(long, required_unless_present = "code", conflicts_with = "code")]
        login: Option<String>,
        /// No password on this device: wait for the owner to approve the code it shows.
        #[arg(long)]
        code: bool,
    },
    /// From this linked device, approve another device that shows a link code (after a
    /// step-up: MICA_AGENT_TOTP, or a code sent to the account's email or phone, read from
    /// standard input).
    Approve {
        agent_config: PathBuf,
        /// The code the other device shows, e.g. BCDF-GHJK.
        user_code: String,
    },
    /// Keep the command channel open, run commands, report the location, sync.
    Run { agent_config: PathBuf },
    /// Linked or not, and whether the activation lock binds this device.
    Status { agent_config: PathBuf },
    /// Leave lost mode with the account password (MICA_AGENT_PASSWORD or standard input).
    Unlock { agent_config: PathBuf },
    /// Stop the ring the running agent is playing, as a person holding the device would.
    StopRing { agent_config: PathBuf },
    /// Back up the device's backup folder: only what no backup of the account holds is sent.
    Backup { agent_config: PathBuf },
    /// List the account's backups, from every device.
    Backups { agent_config: PathBuf },
    /// The reports this account sent the operator, newest first, with their answers.
    Reports { agent_config: PathBuf },
    /// Send the operator a bug report or an idea from this device, with files attached
    /// (its logs, say). The report says which device it came from.
    Feedback {
        agent_config: PathBuf,
        /// One line.
        #[arg(long)]
        subject: String,
        /// What happened, or the idea.
        #[arg(long)]
        message: String,
        /// bug, idea or other.
        #[arg(long, default_value = "bug")]
        kind: String,
        /// The app it is about, with its version.
        #[arg(long)]
        app: Option<String>,
        /// A file to attach (repeatable; up to 5, 2 MiB each).
        #[arg(long)]
        attach: Vec<PathBuf>,
    },
    /// Restore a backup into the backup folder: the newest of this device (else of the
    /// account) unless `--backup`; every part unless `--part` or `--kind` choose some.
    Restore {
        agent_config: PathBuf,
        #[arg(long)]
        backup: Option<String>,
        /// A part's name, or a folder of parts (repeatable).
        #[arg(long = "part")]
        parts: Vec<String>,
        /// apps, home_screen, wallpaper, alarms, notifications, settings, app_data or other
        /// (repeatable).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Write the parts here instead of the backup folder.
        #[arg(long)]
        into: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// Prove that every account's recorded storage usage equals the bytes it stores (per
    /// category, recycle bin and total). Exits non-zero on any difference.
    CheckUsage,
    /// Prove that the blob store holds every chunk the database knows, at its size (`--deep`:
    /// read back and hashed), and nothing else; name files that lost a chunk. Exits non-zero on
    /// any problem.
    CheckBlobs {
        #[arg(long)]
        deep: bool,
    },
    /// Review requests to recover accounts whose every factor is lost.
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Look up an account by its number, email or phone number; suspend, reinstate or delete
    /// it; set its quota.
    #[command(subcommand)]
    Account(AccountCommand),
    /// The apps that sign people in with Mica (OpenID Connect): register, list, remove.
    #[command(subcommand)]
    Oidc(OidcCommand),
    /// Feedback and bug reports people sent from their devices: read, save attachments,
    /// answer, close.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// The theme store: publish a theme (or a new version), list, withdraw.
    #[command(subcommand)]
    Theme(ThemeCommand),
    /// What operators did (suspensions, deletions, quotas, recovery decisions), newest first.
    Log {
        /// Only this account (its number, even once deleted, or an address it has).
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// The account: state, addresses (masked), two-step, sessions, last sign-in.
    Show { login: String },
    /// Suspend an active account: its sessions end now, nobody can sign in, app passwords
    /// stop; its data, devices and activation locks stay. The owner is told `--reason`.
    Suspend {
        login: String,
        /// Who decides (kept in the account's security log).
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
    /// Make a suspended account active again.
    Reinstate {
        login: String,
        #[arg(long)]
        operator: String,
    },
    /// Delete an account and all its data for good (the running server's job does the work);
    /// the owner is told `--reason` first. Its devices' activation locks are released.
    Delete {
        login: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
    /// Set the account's storage quota: `--bytes N`, or `--default` for the server's. Below
    /// what it stores, new writes are refused until it frees space; nothing is removed.
    Quota {
        login: String,
        #[arg(long, required_unless_present = "default", conflicts_with = "default")]
        bytes: Option<i64>,
        #[arg(long)]
        default: bool,
        #[arg(long)]
        operator: String,
    },
    /// Add credits to the account's wallet (`--add N`) or take some back (`--take N`, never
    /// below zero). The owner reads `--reason` in the wallet's history; the operator's log
    /// keeps who did it.
    Credits {
        login: String,
        #[arg(long, required_unless_present = "take", conflicts_with = "take")]
        add: Option<i64>,
        #[arg(long)]
        take: Option<i64>,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum OidcCommand {
    /// Register an app. Prints its client id and — unless `--public` — its secret, shown
    /// this once.
    AddClient {
        /// What people see on the consent page and the Apps page.
        #[arg(long)]
        name: String,
        /// Where the app gets its answer (repeat for several): https, http only to
        /// localhost, or the app's own scheme (com.example.app:/callback).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// An app on a device or in a browser, which cannot keep a secret: it must use PKCE.
        #[arg(long)]
        public: bool,
    },
    /// The registered apps.
    Clients,
    /// Remove an app: every session it holds ends, and everyone's grant to it goes.
    RemoveClient { id: String },
}

#[derive(Subcommand)]
enum ThemeCommand {
    /// Publish a theme, or a new version of one with the same id (those who have it get the
    /// new package).
    Publish {
        /// Stable id: lowercase letters, digits, '-' or '_'.
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        author: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Comma-separated words people search by.
        #[arg(long, default_value = "")]
        tags: String,
        /// In credits; 0 for a free theme.
        #[arg(long, default_value_t = 0)]
        price: i64,
        /// The theme's package (a zip, up to 16 MiB).
        #[arg(long)]
        package: PathBuf,
        /// A PNG, JPEG or WebP preview (up to 2 MiB).
        #[arg(long)]
        preview: Option<PathBuf>,
    },
    /// Every theme, withdrawn ones too.
    List,
    /// Stop offering a theme; those who have it keep it.
    Withdraw { id: String },
    /// Offer a withdrawn theme again.
    Offer { id: String },
}

#[derive(Subcommand)]
enum FeedbackCommand {
    /// Open reports, oldest first (`--all`: closed ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// A report in full, with its attachments numbered.
    Show { id: String },
    /// Save attachment N (as `show` numbers them) of a report into a new file.
    Attachment {
        id: String,
        n: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Answer a report: the owner is told by mail and sees it with the report. `--close`
    /// closes it too.
    Reply {
        id: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        close: bool,
    },
    /// Close a report without answering.
    Close {
        id: String,
        #[arg(long)]
        operator: String,
    },
}

#[derive(Subcommand)]
enum RecoveryCommand {
    /// Requests waiting or ready for review (`--all`: every request).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One request, with everything known about it.
    Show { id: String },
    /// Approve a request whose waiting period is over: its requester can then set a new
    /// password.
    Approve {
        id: String,
        /// Who decides (kept with the request and in the account's security log).
        #[arg(long)]
        operator: String,
        /// A note kept with the decision.
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a request; the requester is told `--reason`.
    Deny {
        id: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mica: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logs(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mica: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve => serve(cfg).await,
            Command::Openapi => {
                println!("{}", mica_http::openapi().to_pretty_json()?);
                Ok(())
            }
            Command::Config => {
                println!("{}", toml_like(&cfg));
                Ok(())
            }
            Command::Admin(Admin::CheckUsage) => check_usage(&cfg).await,
            Command::Admin(Admin::CheckBlobs { deep }) => check_blobs(&cfg, deep).await,
            Command::Admin(Admin::Recovery(r)) => recovery(&cfg, r).await,
            Command::Admin(Admin::Account(a)) => account(&cfg, a).await,
            Command::Admin(Admin::Oidc(c)) => oidc(&cfg, c).await,
            Command::Admin(Admin::Feedback(c)) => feedback(&cfg, c).await,
            Command::Admin(Admin::Theme(c)) => theme(&cfg, c).await,
            Command::Admin(Admin::Log { account, limit }) => {
                operator_log(&cfg, account.as_deref(), limit).await
            }
            Command::Agent(a) => agent(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mica: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn agent(cmd: AgentCommand) -> anyhow::Result<()> {
    use mica::agent::{self, AgentConfig};
    match cmd {
        AgentCommand::Link {
            agent_config,
            login,
            code,
        } => {
            let cfg = AgentConfig::load(&agent_config)?;
            match login {
                Some(login) if !code => agent::link(&cfg, &login).await,
                _ => agent::link_by_code(&cfg).await,
            }
        }
        AgentCommand::Approve {
            agent_config,
            user_code,
        } => agent::approve(&AgentConfig::load(&agent_config)?, &user_code).await,
        AgentCommand::Run { agent_config } => {
            let end = agent::run(AgentConfig::load(&agent_config)?).await?;
            println!("agent stopped: {end:?}");
            Ok(())
        }
        AgentCommand::Status { agent_config } => {
            agent::status(&AgentConfig::load(&agent_config)?).await
        }
        AgentCommand::Unlock { agent_config } => {
            agent::unlock(&AgentConfig::load(&agent_config)?).await
        }
        AgentCommand::StopRing { agent_config } => {
            agent::stop_ring(&AgentConfig::load(&agent_config)?).await
        }
        AgentCommand::Backup { agent_config } => {
            mica::backup::backup(&AgentConfig::load(&agent_config)?)
                .await
                .map(|_| ())
        }
        AgentCommand::Backups { agent_config } => {
            mica::backup::list(&AgentConfig::load(&agent_config)?).await
        }
        AgentCommand::Reports { agent_config } => {
            mica::feedback::list(&AgentConfig::load(&agent_config)?).await
        }
        AgentCommand::Feedback {
            agent_config,
            subject,
            message,
            kind,
            app,
            attach,
        } => {
            let report = mica::feedback::send(
                &AgentConfig::load(&agent_config)?,
                &mica::feedback::FeedbackOptions {
                    kind,
                    subject,
                    message,
                    app,
                    attach,
                },
            )
            .await?;
            println!(
                "sent report {} ({} attachment(s)); the operator's answer comes by mail",
                report["id"].as_str().unwrap_or("?"),
                report["attachments"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        AgentCommand::Restore {
            agent_config,
            backup,
            parts,
            kinds,
            into,
        } => {
            let opts = mica::backup::RestoreOptions {
                backup,
                parts,
                kinds,
                into,
            };
            mica::backup::restore(&AgentConfig::load(&agent_config)?, &opts)
                .await
                .map(|_| ())
        }
    }
}

async fn check_blobs(cfg: &Config, deep: bool) -> anyhow::Result<()> {
    let store = mica::open_store(cfg).await?;
    let blobs = mica_cloud::BlobStore::open(&cfg.blob_location()?)?;
    let r = mica_cloud::integrity::check_blobs(&store, &blobs, deep).await?;
    for p in &r.problems {
        println!("{p}");
    }
    if r.deleting > 0 {
        println!(
            "{} account(s) being deleted were left out: their objects go before their rows",
            r.deleting
        );
    }
    if r.problems.is_empty() {
        println!(
            "the blob store agrees with the database: {} chunks ({} bytes) of {} accounts{}",
            r.chunks,
            r.bytes,
            r.accounts,
            if deep {
                ", every one read back and hashed"
            } else {
                ""
            }
        );
        return Ok(());
    }
    anyhow::bail!("{} problem(s) in the blob store", r.problems.len())
}

async fn check_usage(cfg: &Config) -> anyhow::Result<()> {
    let store = mica::open_store(cfg).await?;
    let problems = store.check_usage().await?;
    if problems.is_empty() {
        println!("usage is consistent: every account's recorded usage equals what it stores");
        return Ok(());
    }
    for p in &problems {
        println!(
            "account {} {}: recorded {} bytes, stored {} bytes",
            p.account, p.category, p.recorded, p.actual
        );
    }
    anyhow::bail!(
        "{} usage record(s) disagree with what is stored",
        problems.len()
    )
}

async fn oidc(cfg: &Config, command: OidcCommand) -> anyhow::Result<()> {
    let identity = mica::operator_identity(cfg, std::sync::Arc::new(SystemClock)).await?;
    match command {
        OidcCommand::AddClient {
            name,
            redirect_uris,
            public,
        } => {
            let (c, secret) = identity
                .register_oidc_client(&name, &redirect_uris, public)
                .await?;
            println!("client_id:     {}", c.id);
            match secret {
                Some(s) => println!(
                    "client_secret: {s}\n(shown this once: keep it in the app's configuration)"
                ),
                None => println!("public client: no secret; it must use PKCE (S256)"),
            }
            println!(
                "discovery:     {}/.well-known/openid-configuration",
                cfg.public_url(cfg.listen).trim_end_matches('/')
            );
        }
        OidcCommand::Clients => {
            let list = identity.oidc_clients().await?;
            if list.is_empty() {
                println!("no apps registered");
            }
            for c in &list {
                println!(
                    "{}  {:<12} {:<24} {}",
                    c.id,
                    if c.public { "public" } else { "confidential" },
                    c.name,
                    c.redirect_uris.join(" ")
                );
            }
        }
        OidcCommand::RemoveClient { id } => {
            if identity.remove_oidc_client(&id).await? {
                println!("removed {id}; its sessions are ended");
            } else {
                anyhow::bail!("there is no app {id}");
            }
        }
    }
    Ok(())
}

async fn recovery(cfg: &Config, command: RecoveryCommand) -> anyhow::Result<()> {
    let identity = mica::operator_identity(cfg, std::sync::Arc::new(SystemClock)).await?;
    let (email, sms) = identity.message_routes();
    if email == "outbox" || sms == "outbox" {
        eprintln!(
            "note: with no SMTP server or SMS gateway configured here, messages go to {}",
            cfg.data_dir.join("outbox.jsonl").display()
        );
    }
    match command {
        RecoveryCommand::List { all } => {
            let list = identity.recovery_reviews(all).await?;
            if list.is_empty() {
                println!(
                    "no account recovery requests{}",
                    if all { "" } else { " to review" }
                );
            }
            for r in &list {
                println!(
                    "{}  {:<10} account {:<12} since {}  waits until {}",
                    r.id,
                    r.state,
                    r.account
                        .map_or_else(|| "(none)".to_owned(), |a| a.to_string()),
                    r.created_at.to_rfc3339(),
                    r.wait_until
                        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
                );
            }
        }
        RecoveryCommand::Show { id } => print_review(&identity.recovery_review(&id).await?),
        RecoveryCommand::Approve { id, operator, note } => {
            let r = identity
                .decide_recovery(&id, true, &operator, note.as_deref())
                .await?;
            print_review(&r);
        }
        RecoveryCommand::Deny {
            id,
            operator,
            reason,
        } => {
            let r = identity
                .decide_recovery(&id, false, &operator, Some(&reason))
                .await?;
            print_review(&r);
        }
    }
    if let Err(e) = identity
        .flush_messages(std::time::Duration::from_secs(60))
        .await
    {
        anyhow::bail!("done, but the messages about it were not all delivered: {e}");
    }
    Ok(())
}

async fn account(cfg: &Config, command: AccountCommand) -> anyhow::Result<()> {
    let (identity, commerce) = operator_commerce(cfg).await?;
    let summary = match command {
        AccountCommand::Show { login } => identity.operator_account(&login).await?,
        AccountCommand::Suspend {
            login,
            operator,
            reason,
        } => identity.suspend_account(&login, &operator, &reason).await?,
        AccountCommand::Reinstate { login, operator } => {
            identity.reinstate_account(&login, &operator).await?
        }
        AccountCommand::Delete {
            login,
            operator,
            reason,
        } => {
            identity
                .delete_account_by_operator(&login, &operator, &reason)
                .await?
        }
        AccountCommand::Quota {
            login,
            bytes,
            default,
            operator,
        } => {
            let quota = if default { None } else { bytes };
            identity.set_quota(&login, quota, &operator).await?
        }
        AccountCommand::Credits {
            login,
            add,
            take,
            operator,
            reason,
        } => {
            let summary = identity.operator_account(&login).await?;
            let credits = match (add, take) {
                (Some(n), _) if n > 0 => n,
                (None, Some(n)) if n > 0 => -n,
                _ => anyhow::bail!("give a number of credits above 0"),
            };
            let entry = commerce
                .adjust_credits(summary.id, credits, &operator, &reason)
                .await?;
            println!(
                "credits          {:+} (balance {})",
                entry.credits, entry.balance
            );
            summary
        }
    };
    let time =
        |t: Option<mica_core::Timestamp>| t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    println!("account          {}", summary.id);
    println!("state            {}", summary.status);
    println!("created          {}", summary.created_at.to_rfc3339());
    println!("addresses        {}", summary.addresses.join(", "));
    println!(
        "two-step         {}",
        if summary.two_step { "on" } else { "off" }
    );
    println!("sessions         {}", summary.sessions);
    let plan = commerce.subscription(summary.id).await?;
    let own = summary.storage_quota.unwrap_or(cfg.cloud.quota_bytes);
    let (quota, whose) = match &plan {
        Some(p) if p.quota_bytes > own => (p.quota_bytes, " (the plan's quota)"),
        _ if summary.storage_quota.is_none() => (own, " (the default quota)"),
        _ => (own, ""),
    };
    println!(
        "storage          {} of {} bytes{}",
        summary.storage_used, quota, whose
    );
    let wallet = commerce.wallet(summary.id, None, 1).await?;
    println!("credits          {}", wallet.balance);
    match plan {
        Some(s) => println!(
            "plan             {} ({} bytes) until {}{}",
            s.name,
            s.quota_bytes,
            s.expires_at,
            if s.auto_renew {
                ", renews"
            } else {
                ", ends then"
            }
        ),
        None => println!("plan             free"),
    }
    println!("last sign-in     {}", time(summary.last_sign_in));
    if summary.locked_until.is_some() {
        println!("sign-in held     until {}", time(summary.locked_until));
    }
    if let Err(e) = identity
        .flush_messages(std::time::Duration::from_secs(60))
        .await
    {
        anyhow::bail!("done, but the messages about it were not all delivered: {e}");
    }
    Ok(())
}

/// Identity and commerce for the operator's commands, on the configured database; the owner
/// is told of what commerce does through identity.
async fn operator_commerce(
    cfg: &Config,
) -> anyhow::Result<(mica_identity::Identity, mica_commerce::Commerce)> {
    let clock: Arc<dyn mica_core::Clock> = Arc::new(SystemClock);
    let identity = mica::operator_identity(cfg, clock.clone()).await?;
    let keys = Arc::new(mica_core::crypto::Keys::from_master(&cfg.master_key()?));
    let commerce =
        mica_commerce::Commerce::new(identity.store().clone(), keys, clock, cfg.commerce.clone());
    commerce.set_owner_notices(Arc::new(identity.clone()));
    Ok((identity, commerce))
}

fn print_report(r: &mica_commerce::feedback::Report) {
    println!("report           {}", r.id);
    println!("kind             {}", r.kind);
    println!("state            {}", r.state);
    println!("sent             {}", r.created_at);
    if let Some(a) = r.account {
        println!("account          {a}");
    }
    if let Some(d) = &r.device {
        println!(
            "device           {} ({}, {}, app {})",
            d.name, d.model, d.os_version, d.app_version
        );
    }
    if let Some(app) = &r.app {
        println!("app              {app}");
    }
    println!("subject          {}", r.subject);
    for (i, a) in r.attachments.iter().enumerate() {
        println!(
            "attachment {:<5} {} ({}, {} bytes)",
            i + 1,
            a.name,
            a.media_type,
            a.size
        );
    }
    println!();
    println!("{}", r.description);
    if let Some(reply) = &r.reply {
        println!();
        println!(
            "answered by {} at {}:",
            r.replied_by.as_deref().unwrap_or("-"),
            r.replied_at.as_deref().unwrap_or("-")
        );
        println!("{reply}");
    }
}

fn print_theme(t: &mica_commerce::themes::Theme) {
    println!(
        "{:<20} v{:<3} {:>6} credits  {:>9} bytes  {}{}  by {}  [{}]",
        t.id,
        t.version,
        t.price,
        t.size,
        t.name,
        if t.withdrawn { " (withdrawn)" } else { "" },
        t.author,
        t.tags.join(", ")
    );
}

async fn theme(cfg: &Config, command: ThemeCommand) -> anyhow::Result<()> {
    let (_, commerce) = operator_commerce(cfg).await?;
    match command {
        ThemeCommand::Publish {
            id,
            name,
            author,
            description,
            tags,
            price,
            package,
            preview,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            };
            let theme = commerce
                .publish_theme(mica_commerce::themes::ThemeUpload {
                    id,
                    name,
                    author,
                    description,
                    tags: tags.split(',').map(str::to_owned).collect(),
                    price,
                    package: read(&package)?,
                    preview: preview
                        .as_ref()
                        .map(|p| read(p).map(|b| (b, String::new())))
                        .transpose()?,
                })
                .await?;
            print!("published ");
            print_theme(&theme);
        }
        ThemeCommand::List => {
            let all = commerce.all_themes().await?;
            if all.is_empty() {
                println!("no themes");
            }
            for t in &all {
                print_theme(t);
            }
        }
        ThemeCommand::Withdraw { id } => {
            commerce.withdraw_theme(&id).await?;
            println!("withdrawn {id}: no longer offered; those who have it keep it");
        }
        ThemeCommand::Offer { id } => {
            commerce.offer_theme(&id).await?;
            println!("offered {id} again");
        }
    }
    Ok(())
}

async fn feedback(cfg: &Config, command: FeedbackCommand) -> anyhow::Result<()> {
    let (identity, commerce) = operator_commerce(cfg).await?;
    match command {
        FeedbackCommand::List { all } => {
            let reports = commerce.reports(all, 1000).await?;
            if reports.is_empty() {
                println!("no {}reports", if all { "" } else { "open " });
            }
            for r in reports {
                println!(
                    "{}  {}  {:<6} {:<6} {} attachment(s)  {}",
                    r.id,
                    r.created_at,
                    r.kind,
                    r.state,
                    r.attachments.len(),
                    r.subject
                );
            }
        }
        FeedbackCommand::Show { id } => print_report(&commerce.report(&id).await?),
        FeedbackCommand::Attachment { id, n, out } => {
            let (name, bytes) = commerce.report_attachment(&id, n).await?;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            println!("saved {name} ({} bytes) to {}", bytes.len(), out.display());
        }
        FeedbackCommand::Reply {
            id,
            operator,
            message,
            close,
        } => print_report(
            &commerce
                .answer_report(&id, &operator, Some(&message), close)
                .await?,
        ),
        FeedbackCommand::Close { id, operator } => {
            print_report(&commerce.answer_report(&id, &operator, None, true).await?)
        }
    }
    if let Err(e) = identity
        .flush_messages(std::time::Duration::from_secs(60))
        .await
    {
        anyhow::bail!("done, but the messages about it were not all delivered: {e}");
    }
    Ok(())
}

async fn operator_log(cfg: &Config, account: Option<&str>, limit: i64) -> anyhow::Result<()> {
    let identity = mica::operator_identity(cfg, std::sync::Arc::new(SystemClock)).await?;
    let rows = identity.operator_log(account, limit).await?;
    if rows.is_empty() {
        println!("nothing recorded");
    }
    for r in rows {
        println!(
            "{}  {:<20} account {:<12} {}by {}{}",
            r.at.to_rfc3339(),
            r.action,
            r.account.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            r.subject.map(|s| format!("{s} ")).unwrap_or_default(),
            r.operator,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", r.detail)
            },
        );
    }
    Ok(())
}

fn print_review(r: &mica_identity::RecoveryReview) {
    let time =
        |t: Option<mica_core::Timestamp>| t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    println!("request          {}", r.id);
    println!("state            {}", r.state);
    match r.account {
        Some(a) => println!("account          {a}"),
        None => println!("account          none matches the login given: deny it"),
    }
    println!("account created  {}", time(r.account_created_at));
    if let Some(status) = &r.account_status {
        println!(
            "account state    {status}{}",
            if status == "suspended" {
                " (suspended by an operator: see `mica admin account show`)"
            } else {
                ""
            }
        );
    }
    println!("last sign-in     {}", time(r.last_sign_in));
    println!("contact          {}", r.contact);
    println!("from             {} ({})", r.ip, r.user_agent);
    println!(
        "known address    {}",
        if r.known_ip {
            "yes: the account signed in from it"
        } else {
            "no"
        }
    );
    println!(
        "security answers {} right of {} given ({} questions set; a weak signal only)",
        r.answers_right, r.answers_given, r.questions_set
    );
    println!("made             {}", r.created_at.to_rfc3339());
    println!("waits until      {}", time(r.wait_until));
    println!("other requests   {}", r.other_requests);
    if let Some(by) = &r.decided_by {
        println!("decided          {} by {by}", time(r.decided_at));
    }
    if let Some(note) = &r.note {
        println!("note             {note}");
    }
    if let Some(reason) = &r.reason {
        println!("reason           {reason}");
    }
    println!("statement:");
    for line in r.statement.lines() {
        println!("  {line}");
    }
}

fn toml_like(cfg: &Config) -> String {
    // Debug output of the config redacts every SecretString.
    format!("{cfg:#?}")
}

fn init_logs(cfg: &Config) {
    let filter = EnvFilter::try_from_env("MICA_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let mut server = Server::start(&cfg, Arc::new(SystemClock)).await?;
    println!(
        "Mica is running at {}  (API reference: {}/api/docs/)",
        server.public_url, server.public_url
    );
    println!(
        "Data folder: {}",
        std::fs::canonicalize(&cfg.data_dir)
            .unwrap_or(cfg.data_dir.clone())
            .display()
    );
    tokio::select! {
        r = server.wait() => return r,
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    server.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
