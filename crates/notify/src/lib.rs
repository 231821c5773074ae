//! Outgoing messages to people: email over SMTP, SMS through an HTTP webhook, and — when neither is
//! configured — a development outbox printed on the console and appended to a file.
//!
//! Architecture invariant: callers never wait on delivery. [`Notifier::dispatch`] hands the message
//! to a background task that retries with back-off, so a slow mail server neither slows a request
//! nor reveals (by timing) whether an account exists.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mica_core::{Clock, Email, PhoneE164};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("invalid sender address {0:?}")]
    From(String),
    #[error("invalid SMS webhook URL: {0}")]
    WebhookUrl(String),
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// Refused for good (a 5xx SMTP reply, a 4xx from the SMS gateway): trying again is
    /// pointless.
    #[error("delivery refused for good: {0}")]
    Refused(String),
}

/// One message to one person.
#[derive(Debug, Clone)]
pub enum Message {
    Email {
        to: Email,
        subject: String,
        body: String,
    },
    Sms {
        to: PhoneE164,
        text: String,
    },
}

#[derive(Clone)]
enum EmailRoute {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Outbox,
}

#[derive(Clone)]
enum SmsRoute {
    Webhook {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    Outbox,
}

/// Where messages go.
#[derive(Clone)]
pub struct Notifier {
    email: EmailRoute,
    sms: SmsRoute,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    /// Messages dispatched and not yet delivered or given up on.
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
    /// Messages given up on since this notifier was made.
    failed: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "email",
                &matches!(self.email, EmailRoute::Smtp { .. })
                    .then_some("smtp")
                    .unwrap_or("outbox"),
            )
            .field(
                "sms",
                &matches!(self.sms, SmsRoute::Webhook { .. })
                    .then_some("webhook")
                    .unwrap_or("outbox"),
            )
            .finish()
    }
}

/// Configuration of the routes.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port`
    /// (TLS); credentials as `smtp://user:pass@host`. `None`: the development outbox.
    pub smtp_url: Option<String>,
    /// The From address of every email.
    pub email_from: String,
    /// An HTTP(S) endpoint that receives `POST {"to": "+…", "text": "…"}`. `None`: the outbox.
    pub sms_webhook_url: Option<String>,
    /// The development outbox file (JSON lines).
    pub outbox_file: PathBuf,
}

impl Notifier {
    pub fn new(cfg: &NotifyConfig, clock: Arc<dyn Clock>) -> Result<Notifier, NotifyError> {
        let email = match &cfg.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| NotifyError::SmtpUrl(e.to_string()))?
                    .timeout(Some(Duration::from_secs(20)))
                    .build();
                let from: Mailbox = cfg
                    .email_from
                    .parse()
                    .map_err(|_| NotifyError::From(cfg.email_from.clone()))?;
                EmailRoute::Smtp { transport, from }
            }
            None => EmailRoute::Outbox,
        };
        let sms = match &cfg.sms_webhook_url {
            Some(url) => {
                let url =
                    reqwest::Url::parse(url).map_err(|e| NotifyError::WebhookUrl(e.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(NotifyError::WebhookUrl(
                        "the scheme must be http or https".into(),
                    ));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| NotifyError::WebhookUrl(e.to_string()))?;
                SmsRoute::Webhook { client, url }
            }
            None => SmsRoute::Outbox,
        };
        Ok(Notifier {
            email,
            sms,
            outbox: Outbox::new(cfg.outbox_file.clone()),
            clock,
            in_flight: Arc::new(tokio::sync::watch::Sender::new(0)),
            failed: Arc::default(),
        })
    }

    /// Whether a real channel is configured for email / SMS (otherwise: the outbox).
    pub fn routes(&self) -> (&'static str, &'static str) {
        (
            if matches!(self.email, EmailRoute::Smtp { .. }) {
                "smtp"
            } else {
                "outbox"
            },
            if matches!(self.sms, SmsRoute::Webhook { .. }) {
                "webhook"
            } else {
                "outbox"
            },
        )
    }

    /// Queues a message for delivery in the background, with retries.
    pub fn dispatch(&self, msg: Message) {
        let this = self.clone();
        self.in_flight.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            if !this.deliver(msg).await {
                this.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            this.in_flight.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    /// Waits (at most `limit`) until every dispatched message is delivered or given up on.
    /// An error when one was given up on or is still on its way. For a process that exits
    /// once its work is done (an operator command).
    pub async fn flush(&self, limit: Duration) -> Result<(), NotifyError> {
        let mut rx = self.in_flight.subscribe();
        let settled = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !settled {
            return Err(NotifyError::Delivery(format!(
                "messages still undelivered after {} s",
                limit.as_secs()
            )));
        }
        match self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(NotifyError::Delivery(format!(
                "{failed} message(s) could not be delivered"
            ))),
        }
    }

    /// Delivers with retries (five tries, the gap tripling from half a second); whether it
    /// was delivered.
    async fn deliver(&self, msg: Message) -> bool {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=5u32 {
            match self.send(&msg).await {
                Ok(()) => return true,
                Err(e @ NotifyError::Refused(_)) => {
                    tracing::warn!(attempt, error = %e, channel = msg.channel(), "message refused; not retrying");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, channel = msg.channel(), "message delivery failed");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(3);
                }
            }
        }
        tracing::error!(
            channel = msg.channel(),
            "message dropped after 5 failed deliveries"
        );
        false
    }

    /// Delivers one message now.
    pub async fn send(&self, msg: &Message) -> Result<(), NotifyError> {
        match (msg, &self.email, &self.sms) {
            (Message::Email { to, subject, body }, EmailRoute::Smtp { transport, from }, _) => {
                let to_box: Mailbox = to
                    .as_str()
                    .parse()
                    .map_err(|_| NotifyError::Delivery("bad recipient".into()))?;
                let email = lettre::Message::builder()
                    .from(from.clone())
                    .to(to_box)
                    .subject(subject.clone())
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    .body(body.clone())
                    .map_err(|e| NotifyError::Delivery(e.to_string()))?;
                // Only the reply's code: its text often repeats the recipient's address, and
                // what is logged carries no one's address.
                transport.send(email).await.map_err(|e| {
                    let code = e
                        .status()
                        .map_or_else(|| "no reply code".to_owned(), |c| format!("SMTP {c}"));
                    if e.is_permanent() {
                        NotifyError::Refused(code)
                    } else if e.is_transient() {
                        NotifyError::Delivery(code)
                    } else {
                        NotifyError::Delivery(format!("{code}: connection or TLS failure"))
                    }
                })?;
                Ok(())
            }
            (Message::Sms { to, text }, _, SmsRoute::Webhook { client, url }) => {
                let resp = client
                    .post(url.clone())
                    .json(&SmsPayload {
                        to: to.as_str(),
                        text,
                    })
                    .send()
                    .await
                    .map_err(|e| NotifyError::Delivery(e.without_url().to_string()))?;
                let status = resp.status();
                if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    return Err(NotifyError::Refused(format!(
                        "SMS gateway answered {status}"
                    )));
                }
                if !status.is_success() {
                    return Err(NotifyError::Delivery(format!(
                        "SMS gateway answered {status}"
                    )));
                }
                Ok(())
            }
            _ => self.outbox.write(self.clock.now().to_rfc3339(), msg).await,
        }
    }
}

impl Message {
    fn channel(&self) -> &'static str {
        match self {
            Message::Email { .. } => "email",
            Message::Sms { .. } => "sms",
        }
    }
}

#[derive(Serialize)]
struct SmsPayload<'a> {
    to: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
struct OutboxLine<'a> {
    at: String,
    channel: &'static str,
    to: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    text: &'a str,
}

/// The development outbox: every message printed and appended to a JSON-lines file.
#[derive(Clone, Debug)]
struct Outbox {
    file: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl Outbox {
    fn new(file: PathBuf) -> Self {
        Outbox {
            file,
            lock: Arc::new(Mutex::new(())),
        }
    }

    async fn write(&self, at: String, msg: &Message) -> Result<(), NotifyError> {
        let line = match msg {
            Message::Email { to, subject, body } => OutboxLine {
                at,
                channel: "email",
                to: to.as_str(),
                subject: Some(subject),
                text: body,
            },
            Message::Sms { to, text } => OutboxLine {
                at,
                channel: "sms",
                to: to.as_str(),
                subject: None,
                text,
            },
        };
        let mut json =
            serde_json::to_string(&line).map_err(|e| NotifyError::Delivery(e.to_string()))?;
        json.push('\n');
        let _guard = self.lock.lock().await;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .await
            .map_err(|e| NotifyError::Delivery(format!("outbox {}: {e}", self.file.display())))?;
        f.write_all(json.as_bytes())
            .await
            .map_err(|e| NotifyError::Delivery(format!("outbox {}: {e}", self.file.display())))?;
        f.flush()
            .await
            .map_err(|e| NotifyError::Delivery(e.to_string()))?;
        // The console copy is the point of the development outbox: no SMTP server is configured.
        println!(
            "outbox: {} to {}{}\n  {}",
            line.channel,
            line.to,
            line.subject.map(|s| format!(" — {s}")).unwrap_or_default(),
            line.text.replace('\n', "\n  ")
        );
        Ok(())
    }
}
