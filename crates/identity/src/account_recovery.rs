//! Recovery when every factor is lost (ID-18): never an instant bypass.
//!
//! 1. Without signing in, a person names the account (number, old email or phone), gives an
//!    address they hold now and says what happened; a code proves the address. The answer is
//!    the same whether or not an account matches.
//! 2. The request then waits (`recovery_wait_hours`, a week by default). Every address the
//!    account knows is told at once, with a code that cancels it, and the signed-in owner sees
//!    it and can cancel it: a real owner who still has any factor stops a stranger's request.
//! 3. After the wait an operator reviews it (`mica admin recovery`), with what the request
//!    brought: the statement, how many security questions were answered right (a weak signal,
//!    never sufficient alone), whether it came from an address the account signed in from.
//! 4. Once approved, the requester asks for a code at the proven address and sets a new
//!    password. The address becomes the account's own; every session and app password is
//!    revoked and two-step (authenticator, recovery codes, passkeys) is turned off, since
//!    those were lost with everything else.

use std::time::Duration;

use mica_core::crypto::{random_digits, random_token_string};
use mica_core::notices::NoticeBody;
use mica_core::{AccountId, Login, Timestamp};
use mica_notify::Message;
use mica_store::{
    NewCode, NewRecoveryRequest, RecoveryCompleted, RecoveryCompletion, RecoveryRequestRow,
    RecoveryStateChange, RECOVERY_ANY, RECOVERY_FILED, RECOVERY_OPEN,
};
use secrecy::{ExposeSecret, SecretString};

use crate::signup::SignupTarget;
use crate::{ClientInfo, Identity, IdentityError, Principal};

const PURPOSE_CONTACT: &str = "recovery_contact";
const PURPOSE_FINISH: &str = "recovery_finish";
const STATEMENT_MAX_CHARS: usize = 2000;
const STATEMENT_MIN_CHARS: usize = 10;
const ANSWERS_MAX: usize = 3;
/// Requests filed a day for one login (as typed): each is told to the owner everywhere.
const FILINGS_PER_DAY: i64 = 3;
const DAY: Duration = Duration::from_secs(86_400);
/// How long a closed request is kept (for the owner's and the operator's history; it holds
/// the requester's address and statement): a year.
const CLOSED_KEPT: Duration = Duration::from_secs(365 * 86_400);

/// The answer to a recovery request: the same whether or not an account matches.
#[derive(Debug, Clone)]
pub struct RecoveryStarted {
    pub request_id: String,
    pub expires_at: Timestamp,
}

/// Where a request stands, as its requester sees it.
#[derive(Debug, Clone)]
pub struct RecoveryStatus {
    pub request_id: String,
    /// `unverified`, `waiting`, `in_review`, `approved`, `completed`, `cancelled`, `denied`
    /// or `expired`.
    pub state: String,
    pub created_at: Timestamp,
    pub wait_until: Option<Timestamp>,
    /// For an approved request: until when it can be finished.
    pub finish_by: Option<Timestamp>,
    /// Why it was denied, cancelled or expired.
    pub reason: Option<String>,
}

/// An open request on the owner's account, as the owner sees it.
#[derive(Debug, Clone)]
pub struct RecoveryRequestView {
    pub id: String,
    pub state: String,
    pub created_at: Timestamp,
    pub wait_until: Option<Timestamp>,
    /// The address the requester proved, partly hidden.
    pub contact: String,
    pub ip: String,
    pub user_agent: String,
}

/// Everything an operator weighs, in clear.
#[derive(Debug, Clone)]
pub struct RecoveryReview {
    pub id: String,
    pub state: String,
    /// `None`: the login given matches no account (deny it).
    pub account: Option<AccountId>,
    pub account_created_at: Option<Timestamp>,
    /// `active`, `suspended` (by an operator) or `deleting`.
    pub account_status: Option<String>,
    pub last_sign_in: Option<Timestamp>,
    pub contact: String,
    pub statement: String,
    pub answers_given: i64,
    pub answers_right: i64,
    pub questions_set: i64,
    /// The request came from an address the account signed in from.
    pub known_ip: bool,
    pub ip: String,
    pub user_agent: String,
    pub created_at: Timestamp,
    pub wait_until: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    /// The operator's note on an approval (never shown to the requester).
    pub note: Option<String>,
    /// Why it was denied, cancelled or expired.
    pub reason: Option<String>,
    /// Other requests for the same account, any state.
    pub other_requests: usize,
}

/// A code sent to finish an approved recovery.
#[derive(Debug, Clone)]
pub struct FinishStarted {
    pub challenge_id: String,
    pub expires_at: Timestamp,
}

fn unknown() -> IdentityError {
    IdentityError::NotFound
}

fn invalid(field: &'static str, message: &str) -> IdentityError {
    IdentityError::Invalid {
        field,
        message: message.into(),
    }
}

impl Identity {
    fn recovery_wait(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.recovery_wait_hours.saturating_mul(3600))
    }

    fn recovery_finish_window(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.recovery_finish_days.saturating_mul(86_400))
    }

    async fn recovery_row(&self, id: &str) -> Result<RecoveryRequestRow, IdentityError> {
        if !mica_core::crypto::is_issued_id(id) {
            return Err(unknown());
        }
        self.store().recovery_request(id).await?.ok_or_else(unknown)
    }

    fn recovery_contact(&self, row: &RecoveryRequestRow) -> Result<SignupTarget, IdentityError> {
        let value = self.keys().open(&row.contact_kind, &row.contact_enc)?;
        SignupTarget::from_stored(&row.contact_kind, &value)
    }

    /// Stores a new code for `purpose`, to be sent to the requester's contact address; the
    /// code and when it expires.
    async fn contact_code(
        &self,
        id: &str,
        purpose: &'static str,
        account: Option<AccountId>,
        contact: &SignupTarget,
        limit_bidx: Vec<u8>,
        payload: Option<String>,
    ) -> Result<(String, Timestamp), IdentityError> {
        let code = random_digits(6);
        let now = self.now();
        let expires_at = now.plus(self.code_ttl());
        self.store()
            .insert_code(&NewCode {
                id: id.to_owned(),
                purpose,
                account_id: account,
                target_kind: contact.kind(),
                target_enc: Some(self.keys().seal("destination", contact.value())),
                target_bidx: limit_bidx,
                code_hash: self.keys().code_hash(id, &code),
                payload,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok((code, expires_at))
    }

    fn status_of(&self, row: &RecoveryRequestRow) -> RecoveryStatus {
        RecoveryStatus {
            request_id: row.id.clone(),
            state: row.state.clone(),
            created_at: row.created_at,
            wait_until: row.wait_until,
            finish_by: (row.state == "approved")
                .then(|| {
                    row.decided_at
                        .map(|d| d.plus(self.recovery_finish_window()))
                })
                .flatten(),
            // An operator's note is theirs; only why it ended is the requester's.
            reason: matches!(row.state.as_str(), "denied" | "cancelled" | "expired")
                .then(|| row.reason.clone())
                .flatten(),
        }
    }

    /// Starts a recovery request: a code goes to `contact`, the address the requester holds
    /// now. `answers` are to the account's security questions, in order, if the requester
    /// remembers them.
    pub async fn request_recovery(
        &self,
        login: &str,
        contact: &str,
        statement: &str,
        answers: &[SecretString],
        client: &ClientInfo,
    ) -> Result<RecoveryStarted, IdentityError> {
        let login = Login::parse(login)?;
        let contact = match Login::parse(contact) {
            Ok(Login::Email(e)) => SignupTarget::Email(e),
            Ok(Login::Phone(p)) => SignupTarget::Phone(p),
            _ => {
                return Err(invalid(
                    "contact",
                    "give an email address or a phone number (+ and country code) you can receive codes at now",
                ))
            }
        };
        let statement = statement.trim();
        let chars = statement.chars().count();
        if !(STATEMENT_MIN_CHARS..=STATEMENT_MAX_CHARS).contains(&chars)
            || statement
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(invalid(
                "statement",
                "say in 10 to 2000 characters what happened and what you remember of the account",
            ));
        }
        if answers.len() > ANSWERS_MAX || answers.iter().any(|a| a.expose_secret().len() > 200) {
            return Err(invalid(
                "answers",
                "give at most three answers, in the order of the questions, each under 200 characters",
            ));
        }
        let contact_key = crate::login_key(&match &contact {
            SignupTarget::Email(e) => Login::Email(e.clone()),
            SignupTarget::Phone(p) => Login::Phone(p.clone()),
        });
        let limit_bidx = self.keys().blind_index("login", &contact_key);
        self.check_destination_limits(&limit_bidx, PURPOSE_CONTACT)
            .await?;
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;
        // A few filings a day per login typed, whether or not it names an account: each is
        // told to the owner everywhere, and requests must not flood them.
        let now = self.now();
        let login_bidx = self.keys().blind_index("login", &crate::login_key(&login));
        self.check_filings(&login_bidx).await?;

        let account = self.account_for_login(&login).await?.map(|a| a.id);
        // The same work whether or not an account matches (every answer hashed, the same
        // query), so neither the answer nor its time says which.
        let answers_right = self.check_security_answers(account, answers).await?;
        let known_ip = self.store().signed_in_from(account, &client.ip).await?;
        let id = format!("ar_{}", random_token_string(18));
        let (code, expires_at) = self
            .contact_code(&id, PURPOSE_CONTACT, account, &contact, limit_bidx, None)
            .await?;
        self.store()
            .insert_recovery_request(&NewRecoveryRequest {
                id: id.clone(),
                account_id: account,
                login_bidx,
                contact_kind: contact.kind(),
                contact_enc: self.keys().seal(contact.kind(), contact.value()),
                contact_bidx: self.keys().blind_index(contact.kind(), contact.value()),
                statement_enc: self.keys().seal("recovery_statement", statement),
                answers_given: answers.len() as i64,
                answers_right: answers_right as i64,
                known_ip,
                ip: client.ip.clone(),
                user_agent: client.user_agent.chars().take(512).collect(),
                created_at: now,
                expires_at,
            })
            .await?;
        let name = &self.inner.cfg.service_name;
        let mins = self.code_ttl().as_secs() / 60;
        self.inner.notifier.dispatch(contact.message(
            &format!("{code} is your {name} account recovery code"),
            &format!(
                "{code} is the code that confirms this address for your {name} account recovery \
                 request. It expires in {mins} minutes. If you did not ask to recover an account, \
                 ignore this message: nothing happens without the code."
            ),
        ));
        Ok(RecoveryStarted {
            request_id: id,
            expires_at,
        })
    }

    /// Proves the contact address: the request starts its waiting period, and the account's
    /// every address is told, with a code that cancels it.
    pub async fn verify_recovery_contact(
        &self,
        request_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<RecoveryStatus, IdentityError> {
        let code_row = self.pending_code(request_id, PURPOSE_CONTACT).await?;
        self.check_code(&code_row, code).await?;
        let row = self.recovery_row(request_id).await?;
        // Again here: requests started together must not all be filed.
        self.check_filings(&row.login_bidx).await?;
        let now = self.now();
        let wait_until = now.plus(self.recovery_wait());
        let cancel_code = random_token_string(12);
        let cancel_hash = self
            .keys()
            .code_hash(&format!("cancel:{}", row.id), &cancel_code);
        if !self
            .store()
            .start_recovery_wait(&row.id, &code_row.id, &cancel_hash, now, wait_until)
            .await?
        {
            return Err(IdentityError::CodeExpired);
        }
        if let Some(account) = row.account_id {
            // In the background: the answer comes as fast whether or not an account matches.
            let this = self.clone();
            let contact = self.recovery_contact(&row)?.masked();
            let (client, id) = (client.clone(), row.id.clone());
            tokio::spawn(async move {
                this.tell_of_request(account, &id, &contact, &cancel_code, wait_until, &client)
                    .await;
            });
        }
        Ok(self.status_of(&self.recovery_row(request_id).await?))
    }

    /// Logs a filed request and tells the owner at every address and on every connected
    /// device, with the code that cancels it.
    async fn tell_of_request(
        &self,
        account: AccountId,
        id: &str,
        contact: &str,
        cancel_code: &str,
        wait_until: Timestamp,
        client: &ClientInfo,
    ) {
        if let Err(e) = self
            .event(
                account,
                "recovery_requested",
                client,
                None,
                Some(format!("to be reached at {contact}")),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot log a recovery request");
        }
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "Someone asked to recover your {name} account {account} without any of its sign-in \
             factors, from the address {ip}, to be reached at {contact}. Unless it is cancelled, \
             an operator will review it after {until}, and if approved that person can set a new \
             password and take the account over.\n\n\
             If this was not you, cancel it now: sign in and open Security, or quote request {id} \
             with cancel code {cancel_code} (POST /api/v1/account-recovery/cancel).",
            ip = client.ip,
            until = wait_until.to_rfc3339(),
        );
        let subject = format!("{name}: a request to recover your account");
        // The devices are told without the cancel code: it is kept only as a hash, and a
        // linked device's user can sign in to cancel. Their notice is stored before the mail
        // goes, so a cancel made with the mail's code finds it to withdraw.
        let device_text = format!(
            "Someone asked to recover your {name} account {account} without any of its sign-in \
             factors, from the address {ip}, to be reached at {contact}. Unless it is cancelled, \
             an operator will review it after {until}, and if approved that person can set a new \
             password and take the account over.\n\n\
             If this was not you, cancel it now: sign in and open Security, or use the cancel \
             code sent to your email and phone with request {id}.",
            ip = client.ip,
            until = wait_until.to_rfc3339(),
        );
        self.tell_devices(
            account,
            "recovery_requested",
            NoticeBody {
                title: subject.clone(),
                text: device_text,
            },
            Some(id),
            wait_until,
        )
        .await;
        self.withdraw_if_closed(id).await;
        self.tell_everywhere(account, &subject, &text).await;
    }

    /// After a notice about a request is stored: withdraws it if the request closed in the
    /// meantime (a cancel between the request's change and the notice's insert withdrew
    /// nothing).
    async fn withdraw_if_closed(&self, request_id: &str) {
        match self.store().recovery_request(request_id).await {
            Ok(Some(r)) if RECOVERY_OPEN.contains(&r.state.as_str()) => {}
            _ => self.withdraw_device_notices(request_id).await,
        }
    }

    /// Withdraws the devices' notices about a request that closed (best effort: a notice left
    /// behind only tells a device of a request that no longer stands, until it expires).
    async fn withdraw_device_notices(&self, request_id: &str) {
        if let Err(e) = self.store().withdraw_device_notices(request_id).await {
            tracing::warn!(error = %e, "cannot withdraw the devices' notices of a recovery request");
        }
    }

    /// At most [`FILINGS_PER_DAY`] requests filed for one login (as typed) in a day.
    async fn check_filings(&self, login_bidx: &[u8]) -> Result<(), IdentityError> {
        let now = self.now();
        let (filed, oldest) = self
            .store()
            .recovery_filings(login_bidx, now.minus(DAY))
            .await?;
        if filed >= FILINGS_PER_DAY {
            return Err(IdentityError::RateLimited {
                retry_after: now.until(oldest.unwrap_or(now).plus(DAY)),
            });
        }
        Ok(())
    }

    /// Where a request stands, for whoever holds its id.
    pub async fn recovery_status(&self, request_id: &str) -> Result<RecoveryStatus, IdentityError> {
        let row = self.recovery_row(request_id).await?;
        Ok(self.status_of(&row))
    }

    /// Cancels a request with the code sent in the notice of it.
    pub async fn cancel_recovery_with_code(
        &self,
        request_id: &str,
        cancel_code: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;
        let row = self.recovery_row(request_id).await?;
        let right = row.cancel_hash.as_deref().is_some_and(|h| {
            self.keys()
                .code_matches(&format!("cancel:{}", row.id), cancel_code.trim(), h)
        });
        match row.account_id {
            Some(account) if right => self.cancel_recovery_row(&row, account, client).await,
            _ => Err(invalid(
                "cancel_code",
                "this cancel code is not the one sent for this request",
            )),
        }
    }

    /// The open recovery requests on the caller's account.
    pub async fn recovery_requests_of(
        &self,
        p: &Principal,
    ) -> Result<Vec<RecoveryRequestView>, IdentityError> {
        self.store()
            .recovery_requests(Some(p.account), RECOVERY_OPEN)
            .await?
            .iter()
            .map(|r| {
                Ok(RecoveryRequestView {
                    id: r.id.clone(),
                    state: r.state.clone(),
                    created_at: r.created_at,
                    wait_until: r.wait_until,
                    contact: self.recovery_contact(r)?.masked(),
                    ip: r.ip.clone(),
                    user_agent: r.user_agent.clone(),
                })
            })
            .collect()
    }

    /// The signed-in owner cancels a request on their account. No step-up: stopping a
    /// takeover must be open to whoever still holds a session.
    pub async fn cancel_recovery(
        &self,
        p: &Principal,
        request_id: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let row = self.recovery_row(request_id).await?;
        if row.account_id != Some(p.account) {
            return Err(unknown());
        }
        self.cancel_recovery_row(&row, p.account, client).await
    }

    async fn cancel_recovery_row(
        &self,
        row: &RecoveryRequestRow,
        account: AccountId,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let reason = "the account's owner cancelled it";
        if !self
            .store()
            .set_recovery_state(
                &row.id,
                RECOVERY_OPEN,
                &RecoveryStateChange {
                    to: "cancelled",
                    at: self.now(),
                    by: Some("owner"),
                    note: None,
                    reason: Some(reason),
                    logged: None,
                },
            )
            .await?
        {
            return Err(IdentityError::RecoveryClosed);
        }
        self.withdraw_device_notices(&row.id).await;
        self.event(
            account,
            "recovery_cancelled",
            client,
            None,
            Some(row.id.clone()),
        )
        .await?;
        let name = &self.inner.cfg.service_name;
        self.inner
            .notifier
            .dispatch(self.recovery_contact(row)?.message(
                &format!("{name}: your account recovery request was cancelled"),
                &format!(
                    "Your {name} account recovery request {} was cancelled: {reason}.",
                    row.id
                ),
            ));
        Ok(())
    }

    /// Moves requests whose wait is over to review (telling `recovery_review_email`), expires
    /// approvals not used in time, and forgets requests whose address was never proven and
    /// closed ones after a year. Run periodically.
    pub async fn recovery_maintenance(&self) -> Result<u64, IdentityError> {
        let now = self.now();
        let due = self.store().recovery_requests_due(now).await?;
        if let (Some(to), false) = (&self.inner.cfg.recovery_review_email, due.is_empty()) {
            match mica_core::Email::parse(to) {
                Ok(to) => {
                    let list = due
                        .iter()
                        .map(|r| format!("  mica admin recovery show {}", r.id))
                        .collect::<Vec<_>>()
                        .join("\n");
                    self.inner.notifier.dispatch(Message::Email {
                        to,
                        subject: format!(
                            "{}: {} account recovery request(s) to review",
                            self.inner.cfg.service_name,
                            due.len()
                        ),
                        body: format!("Their waiting period is over:\n{list}\n"),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "identity.recovery_review_email is not an email address")
                }
            }
        }
        for r in &due {
            tracing::info!(request = %r.id, "account recovery request ready for review");
        }
        let expired = self
            .store()
            .expire_recovery_approvals(now.minus(self.recovery_finish_window()))
            .await?;
        let purged = self
            .store()
            .purge_recovery_requests(now, now.minus(CLOSED_KEPT))
            .await?;
        Ok(due.len() as u64 + expired + purged)
    }

    /// For operators: requests to review (`all`: every request, any state).
    pub async fn recovery_reviews(&self, all: bool) -> Result<Vec<RecoveryReview>, IdentityError> {
        let states: &[&str] = if all {
            RECOVERY_FILED
        } else {
            &["waiting", "in_review"]
        };
        let rows = self.store().recovery_requests(None, states).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.review_of(r).await?);
        }
        Ok(out)
    }

    /// For operators: one request, with everything known about it.
    pub async fn recovery_review(&self, id: &str) -> Result<RecoveryReview, IdentityError> {
        let row = self.recovery_row(id).await?;
        self.review_of(&row).await
    }

    async fn review_of(&self, r: &RecoveryRequestRow) -> Result<RecoveryReview, IdentityError> {
        let (mut created, mut status, mut last, mut questions, mut others) =
            (None, None, None, 0, 0);
        if let Some(a) = r.account_id {
            if let Some(row) = self.store().account(mica_store::LookupBy::Id(a)).await? {
                created = Some(row.created_at);
                status = Some(row.status);
            }
            last = self
                .store()
                .login_events(a, 200)
                .await?
                .iter()
                .find(|e| e.outcome == "success")
                .map(|e| e.at);
            questions = self.store().security_questions(a).await?.len() as i64;
            others = self
                .store()
                .recovery_requests(Some(a), RECOVERY_ANY)
                .await?
                .iter()
                .filter(|o| o.id != r.id)
                .count();
        }
        Ok(RecoveryReview {
            id: r.id.clone(),
            state: r.state.clone(),
            account: r.account_id,
            account_created_at: created,
            account_status: status,
            last_sign_in: last,
            contact: self.recovery_contact(r)?.value().to_owned(),
            statement: self.keys().open("recovery_statement", &r.statement_enc)?,
            answers_given: r.answers_given,
            answers_right: r.answers_right,
            questions_set: questions,
            known_ip: r.known_ip,
            ip: r.ip.clone(),
            user_agent: r.user_agent.clone(),
            created_at: r.created_at,
            wait_until: r.wait_until,
            decided_at: r.decided_at,
            decided_by: r.decided_by.clone(),
            note: r.note.clone(),
            reason: r.reason.clone(),
            other_requests: others,
        })
    }

    /// An operator's decision. Approval only once the waiting period is over (in review) and
    /// for a request that names an account, with an optional note kept from the requester; a
    /// denial at any time before approval, with the reason the requester is told.
    pub async fn decide_recovery(
        &self,
        id: &str,
        approve: bool,
        operator: &str,
        text: Option<&str>,
    ) -> Result<RecoveryReview, IdentityError> {
        let operator = operator.trim();
        if operator.is_empty() || operator.len() > 100 || operator.chars().any(char::is_control) {
            return Err(invalid(
                "operator",
                "say who decides (1 to 100 characters, on one line)",
            ));
        }
        let text = text.map(str::trim).filter(|r| !r.is_empty());
        if text.is_some_and(|t| t.chars().count() > 1000 || t.chars().any(char::is_control)) {
            return Err(invalid(
                "reason",
                "keep it under 1000 characters, on one line",
            ));
        }
        let now = self.now();
        // A request whose wait is over is in review now, even before the maintenance says so.
        self.store().recovery_requests_due(now).await?;
        let row = self.recovery_row(id).await?;
        if row.state == "unverified" {
            return Err(invalid(
                "id",
                "this request's contact address was never confirmed: it was not filed",
            ));
        }
        let (from, to): (&[&str], &str) = if approve {
            if row.state == "waiting" {
                return Err(IdentityError::RecoveryWaiting {
                    until: row.wait_until.unwrap_or(now),
                });
            }
            if row.account_id.is_none() {
                return Err(invalid("id", "this request matches no account: deny it"));
            }
            (&["in_review"], "approved")
        } else {
            (&["waiting", "in_review"], "denied")
        };
        let (note, reason) = if approve { (text, None) } else { (None, text) };
        if !self
            .store()
            .set_recovery_state(
                &row.id,
                from,
                &RecoveryStateChange {
                    to,
                    at: now,
                    by: Some(operator),
                    note,
                    reason,
                    logged: Some(mica_store::OperatorEntry {
                        operator,
                        action: if approve {
                            "recovery_approved"
                        } else {
                            "recovery_denied"
                        },
                        account: row.account_id,
                        subject: Some(&row.id),
                        detail: text.unwrap_or_default(),
                    }),
                },
            )
            .await?
        {
            return Err(IdentityError::RecoveryClosed);
        }
        let name = &self.inner.cfg.service_name;
        let operator_client = ClientInfo {
            ip: "operator".into(),
            user_agent: format!("mica admin ({operator})"),
            ..ClientInfo::default()
        };
        let contact = self.recovery_contact(&row)?;
        if approve {
            let until = now.plus(self.recovery_finish_window());
            if let Some(account) = row.account_id {
                self.event(
                    account,
                    "recovery_approved",
                    &operator_client,
                    None,
                    Some(row.id.clone()),
                )
                .await?;
                let subject = format!("{name}: a request to recover your account was approved");
                let text = format!(
                    "An operator approved request {id} to recover your {name} account {account}, \
                     to be reached at {masked}. Until {until} that person can set a new password. \
                     If this was not you, cancel it now: sign in and open Security, or use the \
                     cancel code sent when it was made.",
                    id = row.id,
                    masked = contact.masked(),
                    until = until.to_rfc3339(),
                );
                self.tell_everywhere(account, &subject, &text).await;
                self.tell_devices(
                    account,
                    "recovery_approved",
                    NoticeBody {
                        title: subject,
                        text,
                    },
                    Some(&row.id),
                    until,
                )
                .await;
                self.withdraw_if_closed(&row.id).await;
            }
            self.inner.notifier.dispatch(contact.message(
                &format!("{name}: your account recovery request was approved"),
                &format!(
                    "Your {name} account recovery request {id} was approved. Before {until}, ask \
                     for a code to finish it (POST /api/v1/account-recovery/finish with the \
                     request id), then set a new password with that code.",
                    id = row.id,
                    until = until.to_rfc3339(),
                ),
            ));
        } else {
            self.withdraw_device_notices(&row.id).await;
            if let Some(account) = row.account_id {
                self.event(
                    account,
                    "recovery_denied",
                    &operator_client,
                    None,
                    Some(row.id.clone()),
                )
                .await?;
            }
            let why = reason
                .unwrap_or("the request could not be confirmed as the account's owner's")
                .trim_end_matches('.');
            self.inner.notifier.dispatch(contact.message(
                &format!("{name}: your account recovery request was not approved"),
                &format!(
                    "Your {name} account recovery request {} was not approved: {why}.",
                    row.id
                ),
            ));
        }
        self.recovery_review(&row.id).await
    }

    /// For an approved request: sends a code to the proven address, to set a new password
    /// with.
    pub async fn finish_recovery(
        &self,
        request_id: &str,
        client: &ClientInfo,
    ) -> Result<FinishStarted, IdentityError> {
        let row = self.recovery_row(request_id).await?;
        let now = self.now();
        if row.state != "approved" {
            return Err(IdentityError::RecoveryNotApproved { state: row.state });
        }
        let deadline = row
            .decided_at
            .unwrap_or(now)
            .plus(self.recovery_finish_window());
        if deadline <= now {
            self.store()
                .set_recovery_state(
                    &row.id,
                    &["approved"],
                    &RecoveryStateChange {
                        to: "expired",
                        at: now,
                        by: None,
                        note: None,
                        reason: Some("it was not finished in time"),
                        logged: None,
                    },
                )
                .await?;
            return Err(IdentityError::RecoveryNotApproved {
                state: "expired".into(),
            });
        }
        let contact = self.recovery_contact(&row)?;
        let limit_bidx = self
            .keys()
            .blind_index("login", &format!("recovery:{}", row.id));
        self.check_destination_limits(&limit_bidx, PURPOSE_FINISH)
            .await?;
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;
        let id = format!("rf_{}", random_token_string(18));
        let (code, expires_at) = self
            .contact_code(
                &id,
                PURPOSE_FINISH,
                row.account_id,
                &contact,
                limit_bidx,
                Some(row.id.clone()),
            )
            .await?;
        let name = &self.inner.cfg.service_name;
        let mins = self.code_ttl().as_secs() / 60;
        self.inner.notifier.dispatch(contact.message(
            &format!("{code} is your {name} code to finish recovering your account"),
            &format!(
                "{code} finishes your {name} account recovery: with it you set a new password. \
                 It expires in {mins} minutes."
            ),
        ));
        Ok(FinishStarted {
            challenge_id: id,
            expires_at,
        })
    }

    /// Sets a new password with the finishing code: the proven address becomes the
    /// account's own, every session and app password is revoked and two-step is turned off.
    pub async fn complete_recovery(
        &self,
        challenge_id: &str,
        code: &str,
        new_password: SecretString,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let code_row = self.pending_code(challenge_id, PURPOSE_FINISH).await?;
        self.check_code(&code_row, code).await?;
        let request_id = code_row.payload.clone().ok_or(IdentityError::CodeExpired)?;
        let row = self.recovery_row(&request_id).await?;
        if row.state != "approved" {
            return Err(IdentityError::RecoveryNotApproved { state: row.state });
        }
        let account = row.account_id.ok_or(IdentityError::CodeExpired)?;
        let contact = self.recovery_contact(&row)?;
        let id_text = account.to_string();
        crate::password::check_policy(new_password.expose_secret(), &[&id_text, contact.value()])?;
        // Who to tell afterwards: every address the account had (they are removed), and the
        // new one.
        let mut told = self.known_addresses(account).await;
        if !told.iter().any(|t| t.value() == contact.value()) {
            told.push(contact.clone());
        }
        let hash = self.inner.hasher.hash(&new_password).await?;
        let now = self.now();
        let sealed = self.keys().seal(contact.kind(), contact.value());
        let bidx = self.keys().blind_index(contact.kind(), contact.value());
        let revoked = match self
            .store()
            .complete_recovery(&RecoveryCompletion {
                request_id: &row.id,
                code_id: &code_row.id,
                account,
                password_hash: &hash,
                contact_kind: contact.kind(),
                contact_enc: &sealed,
                contact_bidx: &bidx,
                now,
                approved_since: now.minus(self.recovery_finish_window()),
            })
            .await?
        {
            RecoveryCompleted::Done { revoked } => revoked,
            RecoveryCompleted::Stale => {
                return Err(match self.recovery_row(&row.id).await?.state.as_str() {
                    "approved" => IdentityError::RecoveryNotApproved {
                        state: "expired".into(),
                    },
                    _ => IdentityError::CodeExpired,
                })
            }
            RecoveryCompleted::ContactTaken => return Err(IdentityError::IdentifierTaken),
        };
        self.note_revoked(revoked);
        self.account_changed(account);
        // The notices asking the owner to act on it no longer hold.
        self.withdraw_device_notices(&row.id).await;
        self.event(
            account,
            "account_recovered",
            client,
            None,
            Some(format!(
                "request {}; now reached at {}",
                row.id,
                contact.masked()
            )),
        )
        .await?;
        tracing::info!(%account, request = %row.id, "account recovered; every session signed out, two-step off");
        let name = &self.inner.cfg.service_name;
        let subject = format!("{name}: your account was recovered");
        let text = format!(
            "Your {name} account {account} was recovered through request {}: its password was \
             set anew, every device was signed out, two-step verification and the recovery \
             addresses were removed, and {} is now its only address. If this was not you, contact \
             the operator of {name} at once.",
            row.id,
            contact.masked()
        );
        for to in told {
            self.inner.notifier.dispatch(to.message(&subject, &text));
        }
        Ok(())
    }
}
