//! A typed client of Mica's HTTP API, shared by the command-line tools, the device agent and the
//! integration tests.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An error answer of the API (`{"error": {"code", "message"}}`), or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the password was right; finish with a second factor (challenge {challenge_id})")]
    TwoStepRequired {
        challenge_id: String,
        methods: Vec<String>,
    },
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: StatusCode, body: String },
}

impl ClientError {
    /// The API's stable error code, if this is an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(e) => e.status(),
            ClientError::TwoStepRequired { .. } => Some(StatusCode::ACCEPTED),
        }
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A page of a collection's changes: apply them in order, keep `token` for the next pull, and
/// pull again at once while `more` is true.
#[derive(Debug, Clone, Deserialize)]
pub struct Changes {
    pub changes: Vec<Change>,
    pub token: String,
    pub more: bool,
}

/// An item as the server has it now, or its deletion (`deleted`, no `body`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Change {
    pub id: String,
    /// Send it back as `base_version` when changing the item.
    pub version: String,
    pub deleted: bool,
    pub modified_at: String,
    /// vCard or iCalendar text (a string), or the category's JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SignupStarted {
    pub signup_id: String,
    pub channel: String,
    pub sent_to: String,
    pub expires_at: String,
    pub resend_after: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub account_id: String,
    pub session_id: String,
    pub token_type: String,
    pub access_token: String,
    pub expires_in: u64,
    pub access_token_expires_at: String,
    pub refresh_token: String,
    pub refresh_token_expires_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub account_id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub created_at: String,
    pub password_changed_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    pub current: bool,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoginRecord {
    pub at: String,
    pub outcome: String,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResetStarted {
    pub reset_id: String,
    pub expires_at: String,
    pub resend_after: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeSent {
    pub challenge_id: String,
    pub channel: String,
    pub sent_to: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecurityEvent {
    pub at: String,
    pub kind: String,
    pub ip: String,
    pub user_agent: String,
    pub session_id: Option<String>,
    pub detail: Option<String>,
}

/// What a client declares about its device when signing in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Device {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// A client bound to one server and, once signed in, one access token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `base`: the server's URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("mica-client/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Client {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same client, sending `access_token` from now on.
    #[must_use]
    pub fn with_token(&self, access_token: impl Into<String>) -> Self {
        Client {
            token: Some(access_token.into()),
            ..self.clone()
        }
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let resp = self.raw(method, path, body).await?;
        Self::decode_ok(resp).await
    }

    /// Turns an answer into `T`, or its error into [`ClientError::Api`].
    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let resp = Self::check(resp).await?;
        Self::decode_ok(resp).await
    }

    async fn decode_ok<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(Value::Null).map_err(|_| ClientError::Unexpected {
                status,
                body: String::new(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Sends a request and turns error answers into [`ClientError::Api`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        Self::check(resp).await
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["error"]["code"].is_string() => Err(ClientError::Api {
                status,
                code: v["error"]["code"].as_str().unwrap_or_default().to_owned(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                retry_after,
            }),
            _ => Err(ClientError::Unexpected { status, body: text }),
        }
    }

    pub async fn signup_email(&self, email: &str, password: &str) -> Result<SignupStarted> {
        self.call(
            Method::POST,
            "/api/v1/signup",
            Some(json!({ "email": email, "password": password })),
        )
        .await
    }

    pub async fn signup_phone(&self, phone: &str, password: &str) -> Result<SignupStarted> {
        self.call(
            Method::POST,
            "/api/v1/signup",
            Some(json!({ "phone": phone, "password": password })),
        )
        .await
    }

    pub async fn signup_resend(&self, signup_id: &str) -> Result<SignupStarted> {
        self.call(
            Method::POST,
            "/api/v1/signup/resend",
            Some(json!({ "signup_id": signup_id })),
        )
        .await
    }

    pub async fn signup_verify(
        &self,
        signup_id: &str,
        code: &str,
        device: Option<Device>,
    ) -> Result<Tokens> {
        self.call(
            Method::POST,
            "/api/v1/signup/verify",
            Some(json!({ "signup_id": signup_id, "code": code, "device": device })),
        )
        .await
    }

    /// Signs in. With two-step verification on, fails with [`ClientError::TwoStepRequired`].
    pub async fn sign_in(
        &self,
        login: &str,
        password: &str,
        device: Option<Device>,
    ) -> Result<Tokens> {
        let v: Value = self
            .call(
                Method::POST,
                "/api/v1/sessions",
                Some(json!({ "login": login, "password": password, "device": device })),
            )
            .await?;
        if v["two_step_required"] == json!(true) {
            return Err(ClientError::TwoStepRequired {
                challenge_id: v["challenge_id"].as_str().unwrap_or_default().to_owned(),
                methods: v["methods"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        serde_json::from_value(v.clone()).map_err(|_| ClientError::Unexpected {
            status: StatusCode::CREATED,
            body: v.to_string(),
        })
    }

    /// Finishes a two-step sign-in; `factor` is `"totp"`, `"recovery_code"` or `"code"`.
    pub async fn sign_in_second_factor(
        &self,
        challenge_id: &str,
        factor: &str,
        value: &str,
    ) -> Result<Tokens> {
        let mut body = json!({ "challenge_id": challenge_id });
        body[factor] = json!(value);
        self.call(Method::POST, "/api/v1/sessions/two-step", Some(body))
            .await
    }

    /// Sends a second-factor code (`channel`: `"email"` or `"sms"`) for a pending sign-in.
    pub async fn sign_in_send_code(&self, challenge_id: &str, channel: &str) -> Result<CodeSent> {
        self.call(
            Method::POST,
            "/api/v1/sessions/two-step/send",
            Some(json!({ "challenge_id": challenge_id, "channel": channel })),
        )
        .await
    }

    /// Asks for a step-up code (`channel`: `"email"` or `"sms"`).
    pub async fn step_up_send(&self, channel: &str) -> Result<CodeSent> {
        self.call(
            Method::POST,
            "/api/v1/step-up",
            Some(json!({ "channel": channel })),
        )
        .await
    }

    pub async fn step_up_with_code(&self, challenge_id: &str, code: &str) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/step-up/verify",
            Some(json!({ "challenge_id": challenge_id, "code": code })),
        )
        .await
    }

    pub async fn step_up_with_totp(&self, code: &str) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/step-up/verify",
            Some(json!({ "totp": code })),
        )
        .await
    }

    /// Starts a step-up with a passkey: `{challenge_id, options}` for `navigator.credentials.get()`.
    pub async fn step_up_passkey_begin(&self) -> Result<Value> {
        self.call(Method::POST, "/api/v1/step-up/passkey", None)
            .await
    }

    /// Finishes a passkey step-up with the authenticator's answer.
    pub async fn step_up_with_passkey(
        &self,
        challenge_id: &str,
        credential: Value,
    ) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/step-up/verify",
            Some(json!({ "challenge_id": challenge_id, "passkey": credential })),
        )
        .await
    }

    /// Starts adding a passkey: `{challenge_id, options}` for `navigator.credentials.create()`.
    pub async fn passkey_registration_begin(&self) -> Result<Value> {
        self.call(Method::POST, "/api/v1/me/passkeys/registration", None)
            .await
    }

    /// Finishes adding a passkey; returns it as listed.
    pub async fn passkey_register(
        &self,
        challenge_id: &str,
        name: &str,
        credential: Value,
    ) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/me/passkeys",
            Some(json!({ "challenge_id": challenge_id, "name": name, "credential": credential })),
        )
        .await
    }

    pub async fn passkeys(&self) -> Result<Vec<Value>> {
        self.call(Method::GET, "/api/v1/me/passkeys", None).await
    }

    pub async fn passkey_remove(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/api/v1/me/passkeys/{id}"), None)
            .await
    }

    /// Starts a passkey sign-in for an account number, email or phone.
    pub async fn passkey_sign_in_begin(&self, login: &str) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/sessions/passkey/challenge",
            Some(json!({ "login": login })),
        )
        .await
    }

    /// Signs in with the authenticator's answer.
    pub async fn passkey_sign_in(
        &self,
        challenge_id: &str,
        credential: Value,
        device: Option<Device>,
    ) -> Result<Tokens> {
        self.call(
            Method::POST,
            "/api/v1/sessions/passkey",
            Some(
                json!({ "challenge_id": challenge_id, "credential": credential, "device": device }),
            ),
        )
        .await
    }

    /// The account's collections.
    pub async fn collections(&self) -> Result<Vec<Value>> {
        self.call(Method::GET, "/api/v1/collections", None).await
    }

    /// Changes of a collection since `token` (everything when `None`).
    pub async fn pull(
        &self,
        collection: &str,
        token: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Changes> {
        let mut query = Vec::new();
        if let Some(t) = token {
            query.push(format!("token={t}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.call(
            Method::GET,
            &format!("/api/v1/collections/{collection}/changes{q}"),
            None,
        )
        .await
    }

    /// Pushes a batch of writes (`[{"id", "op", "base_version", "body"}]`), optionally with an
    /// idempotency key.
    pub async fn push(&self, collection: &str, writes: Value, key: Option<&str>) -> Result<Value> {
        self.post_once(
            &format!("/api/v1/collections/{collection}/batch"),
            Some(json!({ "writes": writes })),
            key,
        )
        .await
    }

    pub async fn item(&self, collection: &str, id: &str) -> Result<Value> {
        self.call(
            Method::GET,
            &format!("/api/v1/collections/{collection}/items/{id}"),
            None,
        )
        .await
    }

    /// The whole recycle bin, newest first (every page).
    pub async fn recycle_bin(&self, category: Option<&str>) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page = self
                .recycle_bin_page(category, cursor.as_deref(), None)
                .await?;
            if let Some(Value::Array(entries)) = page.get_mut("entries").map(Value::take) {
                all.extend(entries);
            }
            match page.get("next").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(all),
            }
        }
    }

    /// One page of the recycle bin: `{"entries": [...], "next"}`.
    pub async fn recycle_bin_page(
        &self,
        category: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Value> {
        let mut q = Vec::new();
        if let Some(c) = category {
            q.push(format!("category={c}"));
        }
        if let Some(c) = cursor {
            q.push(format!("cursor={c}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        let q = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.call(Method::GET, &format!("/api/v1/recycle-bin{q}"), None)
            .await
    }

    pub async fn restore(&self, bin_id: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/api/v1/recycle-bin/{bin_id}/restore"),
            None,
        )
        .await
    }

    pub async fn purge(&self, bin_id: &str) -> Result<()> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/recycle-bin/{bin_id}"),
            None,
        )
        .await
    }

    /// Starts a resumable upload (tus) of `length` bytes; returns its id.
    pub async fn create_upload(&self, length: u64) -> Result<String> {
        let mut req = self
            .http
            .post(format!("{}/api/v1/uploads", self.base))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length.to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = Self::check(req.send().await?).await?;
        let status = resp.status();
        resp.headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or(ClientError::Unexpected {
                status,
                body: "an upload without a Location".into(),
            })
    }

    /// Sends `bytes` at `offset` of an upload; returns the new offset.
    pub async fn upload_bytes(&self, id: &str, offset: u64, bytes: Vec<u8>) -> Result<u64> {
        let mut req = self
            .http
            .patch(format!("{}/api/v1/uploads/{id}", self.base))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/offset+octet-stream",
            )
            .body(bytes);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = Self::check(req.send().await?).await?;
        Self::offset_of(&resp)
    }

    /// Where an upload stands (to resume after a failed request).
    pub async fn upload_offset(&self, id: &str) -> Result<u64> {
        let mut req = self
            .http
            .head(format!("{}/api/v1/uploads/{id}", self.base))
            .header("Tus-Resumable", "1.0.0");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = Self::check(req.send().await?).await?;
        Self::offset_of(&resp)
    }

    fn offset_of(resp: &reqwest::Response) -> Result<u64> {
        resp.headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or(ClientError::Unexpected {
                status: resp.status(),
                body: "no Upload-Offset".into(),
            })
    }

    /// An upload as JSON: `file_id` is set once it is complete.
    pub async fn upload_info(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/api/v1/uploads/{id}"), None)
            .await
    }

    /// A file's bytes from `offset` on, as a response to read piece by piece.
    pub async fn file_content(&self, file_id: &str, offset: u64) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(format!("{}/api/v1/files/{file_id}/content", self.base))
            .timeout(Duration::from_secs(3600));
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Self::check(req.send().await?).await
    }

    /// Which parts of a backup to upload first (`upload`) and which the account holds (`held`).
    pub async fn plan_backup(&self, parts: &Value) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/backups/plan",
            Some(json!({ "parts": parts })),
        )
        .await
    }

    /// Creates a backup of this (linked) device from its parts.
    pub async fn create_backup(&self, parts: &Value) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/backups",
            Some(json!({ "parts": parts })),
        )
        .await
    }

    /// The account's backups, newest first.
    pub async fn backups(&self) -> Result<Vec<Value>> {
        self.call(Method::GET, "/api/v1/backups", None).await
    }

    /// A backup with its parts (`part_list`).
    pub async fn backup(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/api/v1/backups/{id}"), None)
            .await
    }

    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        self.call::<Option<()>>(Method::DELETE, &format!("/api/v1/backups/{id}"), None)
            .await
            .map(|_| ())
    }

    /// Asks for a backup to be read back and checked now.
    pub async fn verify_backup(&self, id: &str) -> Result<Value> {
        self.call(Method::POST, &format!("/api/v1/backups/{id}/verify"), None)
            .await
    }

    pub async fn usage(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/usage", None).await
    }

    /// The credits wallet: `{"balance", "entries": [...], "next"}`, newest first.
    pub async fn wallet(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/wallet", None).await
    }

    /// The plans on offer and the account's own: `{"plans", "current", "free_quota_bytes"}`.
    pub async fn plans(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/plans", None).await
    }

    /// Buys a period of a plan with credits, optionally with an idempotency key (a retry with
    /// the same key answers the first purchase, with `"replayed": true`).
    pub async fn buy_plan(&self, plan: &str, key: Option<&str>) -> Result<Value> {
        self.post_once("/api/v1/subscription", Some(json!({ "plan": plan })), key)
            .await
    }

    /// POSTs `body` to `path` with an `Idempotency-Key` when given (a retry is answered with
    /// the first request's result).
    async fn post_once(&self, path: &str, body: Option<Value>, key: Option<&str>) -> Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await?;
        Self::decode(resp).await
    }

    /// Turns the plan's renewal on or off.
    pub async fn set_auto_renew(&self, on: bool) -> Result<Value> {
        self.call(
            Method::PATCH,
            "/api/v1/subscription",
            Some(json!({ "auto_renew": on })),
        )
        .await
    }

    /// Sends feedback or a bug report to the operator (`{"kind", "subject", "description",
    /// "app", "attachments": [{"name", "media_type", "content": base64}]}`).
    pub async fn send_feedback(&self, report: &Value) -> Result<Value> {
        self.call(Method::POST, "/api/v1/feedback", Some(report.clone()))
            .await
    }

    /// The account's reports, newest first, with the operator's answers.
    pub async fn feedback(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/feedback", None).await
    }

    /// The theme store, searched with `q` when given: `{"themes": [...], "next"}`.
    pub async fn themes(&self, q: Option<&str>) -> Result<Value> {
        let mut req = self.http.get(format!("{}/api/v1/themes", self.base));
        if let Some(q) = q {
            req = req.query(&[("q", q)]);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        Self::decode(resp).await
    }

    /// Gets a theme (bought once with credits, or free), optionally with an idempotency key.
    pub async fn buy_theme(&self, id: &str, key: Option<&str>) -> Result<Value> {
        self.post_once(&format!("/api/v1/themes/{id}/purchase"), None, key)
            .await
    }

    /// A theme's package, as downloaded.
    pub async fn theme_package(&self, id: &str) -> Result<Vec<u8>> {
        let resp = self
            .raw(Method::GET, &format!("/api/v1/themes/{id}/package"), None)
            .await?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// What the account bought, newest first: `{"purchases": [...], "next"}`.
    pub async fn purchases(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/purchases", None).await
    }

    /// Chooses the categories this device syncs.
    pub async fn set_device_sync(&self, categories: &[&str]) -> Result<Value> {
        self.call(
            Method::PUT,
            "/api/v1/sync/device",
            Some(json!({ "categories": categories })),
        )
        .await
    }

    pub async fn change_password(&self, new_password: &str) -> Result<()> {
        self.call::<Option<()>>(
            Method::POST,
            "/api/v1/me/password",
            Some(json!({ "new_password": new_password })),
        )
        .await
        .map(|_| ())
    }

    pub async fn two_step_status(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/me/two-step", None).await
    }

    /// Starts TOTP enrolment: `{secret, otpauth_uri, qr_svg}`.
    pub async fn totp_begin(&self) -> Result<Value> {
        self.call(Method::POST, "/api/v1/me/two-step/totp", None)
            .await
    }

    /// Confirms TOTP; returns the recovery codes.
    pub async fn totp_confirm(&self, code: &str) -> Result<Vec<String>> {
        let v: Value = self
            .call(
                Method::POST,
                "/api/v1/me/two-step/totp/confirm",
                Some(json!({ "code": code })),
            )
            .await?;
        Ok(serde_json::from_value(v["recovery_codes"].clone()).unwrap_or_default())
    }

    pub async fn totp_disable(&self) -> Result<()> {
        self.call::<Option<()>>(Method::DELETE, "/api/v1/me/two-step/totp", None)
            .await
            .map(|_| ())
    }

    pub async fn recovery_codes_regenerate(&self) -> Result<Vec<String>> {
        let v: Value = self
            .call(Method::POST, "/api/v1/me/two-step/recovery-codes", None)
            .await?;
        Ok(serde_json::from_value(v["recovery_codes"].clone()).unwrap_or_default())
    }

    /// Asks for the account-deletion code (step-up first).
    pub async fn deletion_request(&self, channel: &str) -> Result<CodeSent> {
        self.call(
            Method::POST,
            "/api/v1/me/deletion",
            Some(json!({ "channel": channel })),
        )
        .await
    }

    /// Confirms the deletion of the account.
    pub async fn deletion_confirm(&self, challenge_id: &str, code: &str) -> Result<Value> {
        self.call(
            Method::POST,
            "/api/v1/me/deletion/confirm",
            Some(json!({ "challenge_id": challenge_id, "code": code })),
        )
        .await
    }

    pub async fn profile(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/me/profile", None).await
    }

    pub async fn set_profile(&self, profile: Value) -> Result<Value> {
        self.call(Method::PUT, "/api/v1/me/profile", Some(profile))
            .await
    }

    /// Starts changing the account's email or phone: `{"email": …}` or `{"phone": …}`.
    pub async fn identifier_change(&self, body: Value) -> Result<CodeSent> {
        self.call(Method::POST, "/api/v1/me/identifiers", Some(body))
            .await
    }

    pub async fn identifier_confirm(&self, challenge_id: &str, code: &str) -> Result<()> {
        self.call::<Option<()>>(
            Method::POST,
            "/api/v1/me/identifiers/confirm",
            Some(json!({ "challenge_id": challenge_id, "code": code })),
        )
        .await
        .map(|_| ())
    }

    pub async fn recovery(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/me/recovery", None).await
    }

    /// Adds a recovery address: `{"email": …}` or `{"phone": …}`.
    pub async fn recovery_add(&self, body: Value) -> Result<CodeSent> {
        self.call(Method::POST, "/api/v1/me/recovery", Some(body))
            .await
    }

    pub async fn recovery_confirm(&self, challenge_id: &str, code: &str) -> Result<()> {
        self.call::<Option<()>>(
            Method::POST,
            "/api/v1/me/recovery/confirm",
            Some(json!({ "challenge_id": challenge_id, "code": code })),
        )
        .await
        .map(|_| ())
    }

    /// Sets the security questions: `[(question, answer)]`.
    pub async fn set_security_questions(&self, qa: &[(&str, &str)]) -> Result<()> {
        let questions: Vec<Value> = qa
            .iter()
            .map(|(q, a)| json!({ "question": q, "answer": a }))
            .collect();
        self.call::<Option<()>>(
            Method::PUT,
            "/api/v1/me/security-questions",
            Some(json!({ "questions": questions })),
        )
        .await
        .map(|_| ())
    }

    pub async fn security_checkup(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/me/security-checkup", None)
            .await
    }

    pub async fn security_events(&self) -> Result<Vec<SecurityEvent>> {
        self.call(Method::GET, "/api/v1/me/security-events", None)
            .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        self.call(
            Method::POST,
            "/api/v1/sessions/refresh",
            Some(json!({ "refresh_token": refresh_token })),
        )
        .await
    }

    pub async fn me(&self) -> Result<Me> {
        self.call(Method::GET, "/api/v1/me", None).await
    }

    pub async fn sessions(&self) -> Result<Vec<Session>> {
        self.call(Method::GET, "/api/v1/sessions", None).await
    }

    pub async fn revoke_session(&self, id: &str) -> Result<()> {
        self.call::<Option<()>>(Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
            .await
            .map(|_| ())
    }

    pub async fn sign_out(&self) -> Result<()> {
        self.call::<Option<()>>(Method::DELETE, "/api/v1/sessions/current", None)
            .await
            .map(|_| ())
    }

    /// Signs out every session; returns how many.
    pub async fn sign_out_everywhere(&self) -> Result<u64> {
        let v: Value = self.call(Method::DELETE, "/api/v1/sessions", None).await?;
        Ok(v["revoked"].as_u64().unwrap_or(0))
    }

    pub async fn login_records(&self, limit: Option<u32>) -> Result<Vec<LoginRecord>> {
        let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
        self.call(Method::GET, &format!("/api/v1/me/logins{q}"), None)
            .await
    }

    pub async fn forgot_password(&self, login: &str) -> Result<ResetStarted> {
        self.call(
            Method::POST,
            "/api/v1/password/forgot",
            Some(json!({ "login": login })),
        )
        .await
    }

    pub async fn reset_password(
        &self,
        reset_id: &str,
        code: &str,
        new_password: &str,
    ) -> Result<()> {
        self.call::<Option<()>>(
            Method::POST,
            "/api/v1/password/reset",
            Some(json!({ "reset_id": reset_id, "code": code, "new_password": new_password })),
        )
        .await
        .map(|_| ())
    }
}
