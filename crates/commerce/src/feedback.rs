//! Feedback and bug reports from a device, with attached logs, to the operator (CM-5).
//!
//! A person (or the app on their device, for them) sends a report; the server adds which of
//! the account's linked devices it came from. What they wrote and attached is sealed at rest.
//! The operator reads reports with `mica admin feedback`, saves an attachment, answers — the
//! owner is told by mail and sees the answer with the report — and closes it.

use mica_core::AccountId;
use mica_store::{NewAttachment, NewReport, OperatorEntry, ReportRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Commerce, CommerceError, Result};

/// The most attachments on one report.
pub const MAX_ATTACHMENTS: usize = 5;
/// The largest attachment, in bytes (a log of a few days).
pub const MAX_ATTACHMENT_BYTES: usize = 2 << 20;
/// The most bytes of attachments on one report.
pub const MAX_ATTACHMENTS_TOTAL: usize = 4 << 20;
/// Reports an account may send in a day.
pub const REPORTS_PER_DAY: i64 = 20;

const BODY_FIELD: &str = "feedback_body";
const REPLY_FIELD: &str = "feedback_reply";
const ATTACHMENT_FIELD: &str = "feedback_attachment";

/// The device a report came from, as the server knows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReportDevice {
    pub id: String,
    pub name: String,
    pub model: String,
    pub os_version: String,
    pub app_version: String,
}

/// What a report says (sealed at rest as one JSON document), with its attachments' names.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    subject: String,
    description: String,
    app: Option<String>,
    device: Option<ReportDevice>,
    #[serde(default)]
    attachments: Vec<AttachmentName>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AttachmentName {
    name: String,
    media_type: String,
}

/// A report about to be sent.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    /// `bug`, `idea` or `other`.
    pub kind: String,
    pub subject: String,
    pub description: String,
    /// The app it is about, with its version (e.g. `Gallery 2.3.1`).
    pub app: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// An attached file.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// An attachment as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttachmentView {
    pub name: String,
    pub media_type: String,
    pub size: i64,
}

/// A report, as its sender and the operator see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    pub id: String,
    pub kind: String,
    pub subject: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The linked device it was sent from (absent from a browser or an unlinked app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<ReportDevice>,
    pub attachments: Vec<AttachmentView>,
    /// When it was sent (RFC 3339).
    pub created_at: String,
    /// `open` or `closed`.
    pub state: String,
    /// The operator's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replied_at: Option<String>,
    /// The account it came from (the operator's view only).
    #[serde(skip)]
    pub account: Option<AccountId>,
    /// Who answered (the operator's view only).
    #[serde(skip)]
    pub replied_by: Option<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> CommerceError {
    CommerceError::Invalid {
        field,
        message: message.into(),
    }
}

/// Text of at most `max` characters: trimmed, required, one line unless `lines`.
fn text(field: &'static str, v: &str, max: usize, lines: bool) -> Result<String> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(field, "say something here"));
    }
    if v.chars().count() > max {
        return Err(invalid(field, format!("at most {max} characters")));
    }
    if v.chars()
        .any(|c| c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(invalid(
            field,
            if lines {
                "text without control characters"
            } else {
                "one line without control characters"
            },
        ));
    }
    Ok(v.to_owned())
}

impl Commerce {
    fn open_report(&self, r: &ReportRow) -> Result<Report> {
        let keys = &self.0.keys;
        let body: Body = keys
            .open(BODY_FIELD, &r.body)
            .ok()
            .and_then(|j| serde_json::from_str(&j).ok())
            .ok_or_else(|| {
                CommerceError::Store(mica_store::StoreError::Corrupt(format!(
                    "report {} does not open with this server's key",
                    r.id
                )))
            })?;
        Ok(Report {
            id: r.id.clone(),
            kind: r.kind.clone(),
            subject: body.subject,
            description: body.description,
            app: body.app,
            device: body.device,
            attachments: body
                .attachments
                .into_iter()
                .zip(&r.attachments)
                .map(|(a, size)| AttachmentView {
                    name: a.name,
                    media_type: a.media_type,
                    size: *size,
                })
                .collect(),
            created_at: r.created_at.to_rfc3339(),
            state: r.state.clone(),
            reply: r
                .reply
                .as_ref()
                .and_then(|s| keys.open(REPLY_FIELD, s).ok()),
            replied_at: r.replied_at.map(|t| t.to_rfc3339()),
            account: Some(r.account),
            replied_by: r.replied_by.clone(),
        })
    }

    /// Sends a report to the operator, from `device` when the session is a linked device's.
    pub async fn send_feedback(
        &self,
        account: AccountId,
        f: NewFeedback,
        device: Option<ReportDevice>,
    ) -> Result<Report> {
        if !matches!(f.kind.as_str(), "bug" | "idea" | "other") {
            return Err(invalid("kind", "bug, idea or other"));
        }
        let mut body = Body {
            subject: text("subject", &f.subject, 200, false)?,
            description: text("description", &f.description, 20_000, true)?,
            app: f
                .app
                .as_deref()
                .filter(|a| !a.trim().is_empty())
                .map(|a| text("app", a, 100, false))
                .transpose()?,
            device,
            attachments: Vec::new(),
        };
        if f.attachments.len() > MAX_ATTACHMENTS {
            return Err(invalid(
                "attachments",
                format!("at most {MAX_ATTACHMENTS} files"),
            ));
        }
        let mut total = 0;
        for a in &f.attachments {
            let name = text("attachments.name", &a.name, 200, false)?;
            if name.contains(['/', '\\']) || name == "." || name == ".." {
                return Err(invalid("attachments.name", "a file name, not a path"));
            }
            let media_type = a.media_type.trim().to_ascii_lowercase();
            let (kind, sub) = media_type.split_once('/').unwrap_or(("", ""));
            let token = |s: &str| {
                !s.is_empty()
                    && s.len() <= 100
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            if !token(kind) || !token(sub) {
                return Err(invalid(
                    "attachments.media_type",
                    "a media type such as text/plain",
                ));
            }
            if a.content.len() > MAX_ATTACHMENT_BYTES {
                return Err(CommerceError::TooLarge(format!(
                    "{name} is over {} MiB; attach the end of the log",
                    MAX_ATTACHMENT_BYTES >> 20
                )));
            }
            total += a.content.len();
            body.attachments.push(AttachmentName { name, media_type });
        }
        if total > MAX_ATTACHMENTS_TOTAL {
            return Err(CommerceError::TooLarge(format!(
                "the attachments come to over {} MiB together",
                MAX_ATTACHMENTS_TOTAL >> 20
            )));
        }
        let now = self.now();
        let keys = &self.0.keys;
        let json = serde_json::to_string(&body)
            .map_err(|e| CommerceError::Store(mica_store::StoreError::Corrupt(e.to_string())))?;
        let sealed_body = keys.seal(BODY_FIELD, &json);
        let sealed: Vec<Vec<u8>> = f
            .attachments
            .iter()
            .map(|a| keys.seal_bytes(ATTACHMENT_FIELD, &a.content))
            .collect();
        let attachments: Vec<NewAttachment<'_>> = f
            .attachments
            .iter()
            .zip(&sealed)
            .map(|(a, content)| NewAttachment {
                size: i64::try_from(a.content.len()).unwrap_or(i64::MAX),
                content,
            })
            .collect();
        let id = format!("fbk_{}", mica_core::crypto::random_token_string(12));
        let stored = self
            .store()
            .insert_report(
                &NewReport {
                    id: &id,
                    account,
                    kind: &f.kind,
                    body: &sealed_body,
                    attachments: &attachments,
                    created_at: now,
                },
                now.minus(std::time::Duration::from_secs(86_400)),
                REPORTS_PER_DAY,
            )
            .await?;
        if !stored {
            return Err(CommerceError::TooManyReports(REPORTS_PER_DAY));
        }
        tracing::info!(%account, report = %id, kind = %f.kind, attachments = attachments.len(), "feedback received");
        let row = self
            .store()
            .report(&id)
            .await?
            .ok_or(CommerceError::NotFound)?;
        self.open_report(&row)
    }

    /// The account's own reports, newest first, with the operator's answers.
    pub async fn my_feedback(&self, account: AccountId) -> Result<Vec<Report>> {
        self.store()
            .account_reports(account, 100)
            .await?
            .iter()
            .map(|r| self.open_report(r))
            .collect()
    }

    /// Reports for the operator, oldest first (`all`: closed ones too).
    pub async fn reports(&self, all: bool, limit: i64) -> Result<Vec<Report>> {
        self.store()
            .reports(!all, limit.clamp(1, 1000))
            .await?
            .iter()
            .map(|r| self.open_report(r))
            .collect()
    }

    pub async fn report(&self, id: &str) -> Result<Report> {
        if !mica_core::crypto::is_issued_id(id) {
            return Err(CommerceError::NotFound);
        }
        let row = self
            .store()
            .report(id)
            .await?
            .ok_or(CommerceError::NotFound)?;
        self.open_report(&row)
    }

    /// An attachment's name and bytes (1-based `n`, as `show` numbers them).
    pub async fn report_attachment(&self, id: &str, n: usize) -> Result<(String, Vec<u8>)> {
        let report = self.report(id).await?;
        let a = n
            .checked_sub(1)
            .and_then(|i| report.attachments.get(i))
            .ok_or(CommerceError::NotFound)?;
        let sealed = self
            .store()
            .report_attachment(id, i64::try_from(n - 1).unwrap_or(i64::MAX))
            .await?
            .ok_or(CommerceError::NotFound)?;
        let bytes = self
            .0
            .keys
            .open_bytes(ATTACHMENT_FIELD, &sealed)
            .map_err(|_| {
                CommerceError::Store(mica_store::StoreError::Corrupt(format!(
                    "an attachment of {id} does not open with this server's key"
                )))
            })?;
        Ok((a.name.clone(), bytes))
    }

    /// The operator answers a report (the owner is told by mail) and/or closes it.
    pub async fn answer_report(
        &self,
        id: &str,
        operator: &str,
        reply: Option<&str>,
        close: bool,
    ) -> Result<Report> {
        let report = self.report(id).await?;
        let operator = text("operator", operator, 100, false)?;
        let reply = reply.map(|r| text("reply", r, 20_000, true)).transpose()?;
        if reply.is_none() && !close {
            return Err(invalid("reply", "answer, close, or both"));
        }
        let sealed = reply.as_deref().map(|r| self.0.keys.seal(REPLY_FIELD, r));
        let action = match (&reply, close) {
            (Some(_), true) => "feedback_answered_closed",
            (Some(_), false) => "feedback_answered",
            _ => "feedback_closed",
        };
        let account = report.account.ok_or(CommerceError::NotFound)?;
        let entry = OperatorEntry {
            operator: &operator,
            action,
            account: Some(account),
            subject: Some(id),
            // What the person wrote is theirs, and goes with their account: the log, which
            // outlives accounts, keeps only what kind of report it was.
            detail: &report.kind,
        };
        if !self
            .store()
            .answer_report(id, sealed.as_deref(), close, &entry, self.now())
            .await?
        {
            return Err(CommerceError::NotFound);
        }
        if let Some(reply) = &reply {
            self.tell(
                account,
                "An answer to your feedback",
                format!(
                    "You wrote: {}\n\nOur answer:\n{reply}\n\nYou can read it again with your reports \
                     (`mica agent reports` on a linked device).",
                    report.subject
                ),
            )
            .await;
        }
        self.report(id).await
    }
}
