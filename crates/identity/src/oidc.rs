//! Mica as an OpenID Connect provider (ID-16): the operator's other products (a store, a forum,
//! partner apps, a TV) sign people in with their Mica account. See docs/design/oidc.md.
//!
//! - Authorization code flow with PKCE (required of public clients, honoured for all), the
//!   device authorization grant (RFC 8628), rotating refresh tokens (`offline_access`),
//!   userinfo, revocation (RFC 7009), discovery and a JWKS with rotating RS256 keys.
//! - What a client is given lives in an ordinary session marked with the client: its refresh
//!   tokens rotate and a reused one revokes the family; signing out everywhere, a password
//!   reset, a suspension, deleting the account, revoking the app or removing the client end it.
//! - A client's access token (`moa1.`) is not an access token of Mica's API (`mat1.`): an app the
//!   person let know who they are can read the claims they allowed, never their cloud.
//! - Consent is asked once per client and remembered as a grant, which the person sees and
//!   revokes on the portal's "Apps" page; asking for more asks again.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crypto_glue::rsa::RS256PrivateKey;
use crypto_glue::traits::{
    LineEndingPem, Pkcs8DecodePrivateKey, Pkcs8EncodePrivateKey, PublicKeyParts,
};
use mica_core::crypto::{is_issued_id, random_token_string, token_hash, AccessClaims};
use mica_core::{AccountId, SessionId, Timestamp};
use mica_store::{
    CodeOutcome, DevicePoll, NewSession, OidcClientRow, OidcCodeRow, OidcGrantRow, OidcKeyRow,
    OidcSession, RefreshOutcome,
};
use serde::{Deserialize, Serialize};

use crate::{ClientInfo, Identity, IdentityError, Principal};

/// The scopes a client may ask for.
pub const SCOPES: &[&str] = &["openid", "profile", "email", "phone", "offline_access"];

/// How long an authorization code can be exchanged.
const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a device authorization waits for the person.
const DEVICE_TTL: Duration = Duration::from_secs(600);
/// How often a device may poll.
pub const DEVICE_INTERVAL: Duration = Duration::from_secs(5);
/// How long an ID token is good for.
const ID_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A signing key is replaced after this long…
const KEY_ROTATION: Duration = Duration::from_secs(90 * 86_400);
/// …and stays published this long after, so every token it signed can still be checked.
const KEY_OVERLAP: Duration = Duration::from_secs(86_400);
/// How long a node keeps the signing key it read before looking again.
const KEY_CACHE: Duration = Duration::from_secs(600);
/// Letters of a user code: no vowels (no words), none that look alike (RFC 8628 §6.1).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const MAX_REDIRECT_URI: usize = 512;
const MAX_STATE: usize = 512;
/// Prefix of an OpenID client's refresh token (Mica's apps' are `mrt_`).
const REFRESH_PREFIX: &str = "mor_";

/// An error of the OAuth endpoints, in RFC 6749's terms: what clients of any OAuth library
/// understand (`{"error": …, "error_description": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }
    fn request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }
    fn grant(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", description)
    }
    fn client() -> Self {
        Self::new(
            401,
            "invalid_client",
            "the client is unknown or its credentials are wrong",
        )
    }
    fn token() -> Self {
        Self::new(
            401,
            "invalid_token",
            "the access token is not valid or has expired",
        )
    }
}

impl From<IdentityError> for OAuthError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::RateLimited { .. } => {
                OAuthError::new(429, "slow_down", "too many requests; try again later")
            }
            IdentityError::AccountSuspended | IdentityError::Unauthenticated => {
                OAuthError::grant("the account can no longer sign in")
            }
            e => {
                tracing::error!(error = %e, "OpenID provider");
                OAuthError::new(500, "server_error", "something went wrong on the server")
            }
        }
    }
}

impl From<mica_store::StoreError> for OAuthError {
    fn from(e: mica_store::StoreError) -> Self {
        IdentityError::from(e).into()
    }
}

/// How a client identified itself at the token, revocation or device endpoint (HTTP Basic or
/// the form's `client_id` and `client_secret`).
#[derive(Debug, Clone, Default)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: Option<String>,
}

/// A registered client as the operator sees it.
#[derive(Debug, Clone)]
pub struct ClientInfoView {
    pub id: String,
    pub name: String,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub created_at: Timestamp,
}

impl From<&OidcClientRow> for ClientInfoView {
    fn from(c: &OidcClientRow) -> Self {
        ClientInfoView {
            id: c.id.clone(),
            name: c.name.clone(),
            public: c.secret_hash.is_none(),
            redirect_uris: c.redirect_uris.clone(),
            created_at: c.created_at,
        }
    }
}

/// The parameters of an authorization request, as the browser brought them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthorizationRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
}

/// A checked authorization request: the client is known, the redirect is one it registered.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<Duration>,
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone)]
pub enum AuthorizeRefusal {
    /// The client or its redirect is not known: the person is told, and nothing is sent
    /// anywhere (an open redirector is what an attacker wants).
    Page(String),
    /// The error goes back to the client, at this address.
    Redirect(String),
}

impl Authorization {
    /// The address the client gets its answer at, with these parameters (and the `state`).
    fn answer(&self, params: &[(&str, &str)]) -> String {
        let mut url = self.redirect_uri.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let state = self.state.as_deref().map(|s| ("state", s));
        for (k, v) in params.iter().copied().chain(state) {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&form_encode(v));
            sep = '&';
        }
        url
    }

    /// The error answer RFC 6749 §4.1.2.1 describes.
    pub fn error(&self, error: &str, description: &str) -> String {
        self.answer(&[("error", error), ("error_description", description)])
    }

    /// The origin the client's answer goes to, as a CSP source (`https://host:port`, or
    /// `scheme:` for an app's own scheme), so the consent form may be sent on there.
    pub fn redirect_origin(&self) -> String {
        match url::Url::parse(&self.redirect_uri) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                u.origin().ascii_serialization()
            }
            Ok(u) => format!("{}:", u.scheme()),
            Err(_) => "'none'".into(),
        }
    }

    /// Whether the person must be asked to sign in again (`prompt=login`, or a sign-in
    /// older than `max_age`).
    pub fn wants_fresh_sign_in(&self, signed_in_at: Timestamp, now: Timestamp) -> bool {
        self.prompt.iter().any(|p| p == "login")
            || self
                .max_age
                .is_some_and(|max| now.minus(max) > signed_in_at)
    }

    pub fn prompts(&self, what: &str) -> bool {
        self.prompt.iter().any(|p| p == what)
    }
}

/// What a scope lets an app know, in words.
pub fn scope_description(scope: &str) -> &'static str {
    match scope {
        "openid" => "Your account number",
        "profile" => "Your nickname, region and language",
        "email" => "Your email address",
        "phone" => "Your phone number",
        "offline_access" => "Stay signed in when you are not using it",
        _ => "",
    }
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a redirect address may be registered: absolute, no fragment; `https`, or `http`
/// only to this very machine (an app on a laptop), or an app's own scheme (RFC 8252).
pub fn valid_redirect_uri(uri: &str) -> bool {
    // The parser drops tabs, line breaks and outer spaces; the address is stored as given,
    // so it must hold none.
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    if uri.len() > MAX_REDIRECT_URI || u.fragment().is_some() {
        return false;
    }
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        "javascript" | "data" | "file" | "vbscript" | "blob" => false,
        s => s.contains('.'),
    }
}

/// Whether an address a request names is this registered one: exactly — except that an
/// address on this very machine (`http://127.0.0.1`, `[::1]`, `localhost`) matches on any port,
/// since a command-line tool listens wherever it can (RFC 8252 §7.3).
fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    let (Ok(r), Ok(g)) = (url::Url::parse(registered), url::Url::parse(given)) else {
        return false;
    };
    let loopback = |u: &url::Url| {
        u.scheme() == "http" && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
    };
    loopback(&r)
        && loopback(&g)
        && r.host_str() == g.host_str()
        && r.path() == g.path()
        && r.query() == g.query()
        && g.fragment().is_none()
        && !given.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The scopes asked for, checked: known, `openid` among them, each once.
fn parse_scopes(scope: Option<&str>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for s in scope.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&s) {
            return Err(format!("the scope {s:?} is not offered"));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if !out.iter().any(|s| s == "openid") {
        return Err("the scope must include openid".into());
    }
    Ok(out)
}

/// `scopes` in SCOPES' order, space-separated.
fn scope_string(scopes: &[String]) -> String {
    SCOPES
        .iter()
        .filter(|s| scopes.iter().any(|g| g == *s))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn has_scope(scope: &str, want: &str) -> bool {
    scope.split(' ').any(|s| s == want)
}

/// What the token endpoint was sent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub device_code: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// What the token endpoint answers.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// A started device authorization.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: String,
    /// As the person types it: `BCDF-GHJK`.
    pub user_code: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// A device authorization waiting for the person, as the portal shows it.
#[derive(Debug, Clone)]
pub struct PendingDevice {
    pub user_code: String,
    pub client_name: String,
    pub scopes: Vec<String>,
}

/// The signing keys a node holds: the one in use and when it was read.
pub(crate) struct SigningKeys {
    kid: String,
    /// ring's: constant-time, and about five times faster than the `rsa` crate that makes it.
    key: ring::signature::RsaKeyPair,
    rng: ring::rand::SystemRandom,
    created_at: Timestamp,
    read_at: Timestamp,
}

pub(crate) type KeyCache = tokio::sync::RwLock<Option<Arc<SigningKeys>>>;

/// A user code as stored: its letters, upper case, without the dash or spaces.
fn normal_user_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .take(16)
        .collect()
}

fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    use crypto_glue::traits::Digest;
    let digest = crypto_glue::rsa::Sha256::digest(verifier.as_bytes());
    let computed = URL_SAFE_NO_PAD.encode(digest);
    // Both are public once the verifier is sent; still compared without an early exit.
    computed.len() == challenge.len()
        && computed
            .bytes()
            .zip(challenge.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Identity {
    // ---- The operator's side ----

    /// Registers a client. A confidential one (a server) gets a secret, shown once; a public
    /// one (an app on a device, a page in a browser) proves itself with PKCE.
    pub async fn register_oidc_client(
        &self,
        name: &str,
        redirect_uris: &[String],
        public: bool,
    ) -> Result<(ClientInfoView, Option<String>), IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 80 || name.chars().any(char::is_control) {
            return Err(IdentityError::Invalid {
                field: "name",
                message: "give the app a name of 1 to 80 characters".into(),
            });
        }
        if redirect_uris.is_empty() || redirect_uris.len() > 10 {
            return Err(IdentityError::Invalid {
                field: "redirect_uri",
                message: "give between 1 and 10 redirect addresses".into(),
            });
        }
        if let Some(bad) = redirect_uris.iter().find(|u| !valid_redirect_uri(u)) {
            return Err(IdentityError::Invalid {
                field: "redirect_uri",
                message: format!(
                    "{bad:?} cannot be a redirect address: it must be an absolute https address \
                     (http only to localhost) or an app's own scheme (com.example.app:/callback), \
                     without a #fragment"
                ),
            });
        }
        let secret = (!public).then(|| format!("mcs_{}", random_token_string(32)));
        let row = OidcClientRow {
            // Prefixed, so an id never begins with '-' (which a command line reads as a flag).
            id: format!("mci_{}", random_token_string(16)),
            name: name.to_owned(),
            secret_hash: secret.as_deref().map(token_hash),
            redirect_uris: redirect_uris.to_vec(),
            created_at: self.now(),
        };
        if !self.store().create_oidc_client(&row).await? {
            return Err(IdentityError::Internal("client id collision".into()));
        }
        tracing::info!(client = %row.id, "OpenID client registered");
        Ok((ClientInfoView::from(&row), secret))
    }

    pub async fn oidc_clients(&self) -> Result<Vec<ClientInfoView>, IdentityError> {
        Ok(self
            .store()
            .oidc_clients()
            .await?
            .iter()
            .map(ClientInfoView::from)
            .collect())
    }

    /// Removes a client: every session it holds ends at once; `false` when there was none.
    pub async fn remove_oidc_client(&self, id: &str) -> Result<bool, IdentityError> {
        match self.store().delete_oidc_client(id, self.now()).await? {
            Some(revoked) => {
                self.note_revoked(revoked);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    // ---- The authorization endpoint (the browser's side) ----

    /// Checks an authorization request before anything is shown.
    pub async fn check_authorization(
        &self,
        r: &AuthorizationRequest,
    ) -> Result<Authorization, AuthorizeRefusal> {
        let unknown = || {
            AuthorizeRefusal::Page(
                "The app that sent you here is not one this server knows, or it gave an address \
                 to return to that it did not register. Nothing was shared with it."
                    .into(),
            )
        };
        let client_id = r
            .client_id
            .as_deref()
            .filter(|c| is_issued_id(c))
            .ok_or_else(unknown)?;
        let client = match self.store().oidc_client(client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(unknown()),
            Err(e) => {
                tracing::error!(error = %e, "reading an OpenID client");
                return Err(AuthorizeRefusal::Page(
                    "Something went wrong on the server. Try again in a moment.".into(),
                ));
            }
        };
        // The one registered address may be left out; otherwise it must be one of them,
        // exactly (no prefix or pattern matching).
        let redirect_uri = match r.redirect_uri.as_deref() {
            Some(u) if client.redirect_uris.iter().any(|c| redirect_matches(c, u)) => u.to_owned(),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            _ => return Err(unknown()),
        };
        let mut az = Authorization {
            client_id: client.id.clone(),
            client_name: client.name.clone(),
            redirect_uri,
            scopes: Vec::new(),
            state: r.state.clone().filter(|s| s.len() <= MAX_STATE),
            nonce: None,
            code_challenge: None,
            prompt: Vec::new(),
            max_age: None,
        };
        let refuse = |az: &Authorization, error: &str, d: &str| {
            AuthorizeRefusal::Redirect(az.error(error, d))
        };
        if r.state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
            return Err(refuse(&az, "invalid_request", "state is too long"));
        }
        if r.response_type.as_deref() != Some("code") {
            return Err(refuse(
                &az,
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        az.scopes =
            parse_scopes(r.scope.as_deref()).map_err(|d| refuse(&az, "invalid_scope", &d))?;
        match (
            r.code_challenge.as_deref(),
            r.code_challenge_method.as_deref(),
        ) {
            (Some(c), Some("S256")) if c.len() == 43 && valid_verifier(&format!("{c}a")) => {
                az.code_challenge = Some(c.to_owned());
            }
            (Some(_), _) => {
                return Err(refuse(
                    &az,
                    "invalid_request",
                    "code_challenge must be a SHA-256 one (code_challenge_method=S256)",
                ))
            }
            (None, _) if client.secret_hash.is_none() => {
                return Err(refuse(
                    &az,
                    "invalid_request",
                    "a public client must use PKCE (code_challenge with S256)",
                ))
            }
            (None, _) => {}
        }
        if let Some(n) = &r.nonce {
            if n.len() > MAX_STATE || n.chars().any(char::is_control) {
                return Err(refuse(
                    &az,
                    "invalid_request",
                    "nonce is too long or holds control characters",
                ));
            }
            az.nonce = Some(n.clone());
        }
        az.prompt = r
            .prompt
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if az.prompts("none") && az.prompt.len() > 1 {
            return Err(refuse(
                &az,
                "invalid_request",
                "prompt=none cannot be combined with other prompts",
            ));
        }
        if let Some(m) = &r.max_age {
            let secs: u64 = m.parse().map_err(|_| {
                refuse(
                    &az,
                    "invalid_request",
                    "max_age must be a number of seconds",
                )
            })?;
            az.max_age = Some(Duration::from_secs(secs));
        }
        Ok(az)
    }

    /// When the browser's session signed in (its `auth_time`).
    pub async fn signed_in_at(&self, p: &Principal) -> Result<Timestamp, IdentityError> {
        self.store()
            .session_started(p.account, &p.session)
            .await?
            .ok_or(IdentityError::Unauthenticated)
    }

    /// Whether the person must be asked: the client asks for more than they allowed before.
    pub async fn consent_needed(
        &self,
        p: &Principal,
        az: &Authorization,
    ) -> Result<bool, IdentityError> {
        let granted = self.store().oidc_grant(p.account, &az.client_id).await?;
        Ok(match granted {
            Some(g) => az.scopes.iter().any(|s| !has_scope(&g, s)),
            None => true,
        })
    }

    /// The person allowed it: the grant is remembered (widened to what is asked now), and the
    /// client gets a code at its redirect address.
    pub async fn approve_authorization(
        &self,
        p: &Principal,
        az: &Authorization,
        client: &ClientInfo,
    ) -> Result<String, IdentityError> {
        let now = self.now();
        let auth_time = self.signed_in_at(p).await?;
        self.grant(p, &az.client_id, &az.client_name, &az.scopes, client)
            .await?;
        let browser_session = p.session.clone();
        let code = format!("moc_{}", random_token_string(32));
        self.store()
            .create_oidc_code(
                &token_hash(&code),
                &OidcCodeRow {
                    client_id: az.client_id.clone(),
                    account_id: p.account,
                    redirect_uri: az.redirect_uri.clone(),
                    scope: scope_string(&az.scopes),
                    nonce: az.nonce.clone(),
                    code_challenge: az.code_challenge.clone(),
                    auth_time,
                    expires_at: now.plus(CODE_TTL),
                    browser_session,
                },
            )
            .await?;
        Ok(az.answer(&[("code", &code)]))
    }

    /// Records what the person allowed the app (on top of what they allowed before); the
    /// first time, the owner is told, as of any change to who can act for them.
    async fn grant(
        &self,
        p: &Principal,
        client_id: &str,
        client_name: &str,
        scopes: &[String],
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let first = self
            .store()
            .widen_oidc_grant(p.account, client_id, self.now(), |before| {
                let mut all: Vec<String> = before
                    .unwrap_or("")
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                all.extend(scopes.iter().cloned());
                scope_string(&all)
            })
            .await?;
        if first {
            self.event(
                p.account,
                "app_access_granted",
                client,
                Some(&p.session),
                Some(client_name.to_owned()),
            )
            .await?;
        }
        Ok(())
    }

    // ---- The token endpoint ----

    /// The client presenting these credentials. Only failures count against the caller's
    /// address: an app's server exchanges every sign-in of its users from one address, and
    /// must not be slowed down by their number, while guesses at a secret are.
    async fn authenticate_client(
        &self,
        creds: &ClientCredentials,
        ip: &str,
    ) -> Result<OidcClientRow, OAuthError> {
        let client = if is_issued_id(&creds.id) {
            self.store().oidc_client(&creds.id).await?
        } else {
            None
        };
        // Some libraries send an empty secret for a public client.
        let secret = creds.secret.as_ref().filter(|s| !s.is_empty());
        if let Some(c) = client {
            let good = match (&c.secret_hash, secret) {
                (Some(h), Some(s)) => s.len() <= 100 && token_hash(s) == *h,
                (None, None) => true,
                _ => false,
            };
            if good {
                return Ok(c);
            }
        }
        self.limit(&self.inner.limits.refresh_ip, ip)?;
        Err(OAuthError::client())
    }

    /// The token endpoint: a code, a refresh token or a device code exchanged for tokens.
    pub async fn oauth_token(
        &self,
        issuer: &str,
        creds: &ClientCredentials,
        req: &TokenRequest,
        from: &ClientInfo,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(creds, &from.ip).await?;
        match req.grant_type.as_deref() {
            Some("authorization_code") => self.exchange_code(issuer, &client, req, from).await,
            Some("refresh_token") => self.refresh_oidc(issuer, &client, req, from).await,
            Some("urn:ietf:params:oauth:grant-type:device_code") => {
                self.exchange_device_code(issuer, &client, req, from).await
            }
            Some(_) => Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or \
                 urn:ietf:params:oauth:grant-type:device_code",
            )),
            None => Err(OAuthError::request("grant_type is missing")),
        }
    }

    async fn exchange_code(
        &self,
        issuer: &str,
        client: &OidcClientRow,
        req: &TokenRequest,
        from: &ClientInfo,
    ) -> Result<TokenResponse, OAuthError> {
        let code = req
            .code
            .as_deref()
            .filter(|c| c.starts_with("moc_") && c.len() <= 100)
            .ok_or_else(|| OAuthError::grant("the code is not valid"))?;
        let session = SessionId::random();
        let check = |row: &OidcCodeRow| -> Option<String> {
            if req.redirect_uri.as_deref() != Some(row.redirect_uri.as_str())
                && !(req.redirect_uri.is_none() && client.redirect_uris.len() == 1)
            {
                return Some("redirect_uri is not the one the code was given for".into());
            }
            match (&row.code_challenge, req.code_verifier.as_deref()) {
                (Some(_), None) => Some("code_verifier is missing".into()),
                (Some(c), Some(v)) if !valid_verifier(v) || !pkce_matches(c, v) => {
                    Some("code_verifier does not match the code_challenge".into())
                }
                // A verifier for a code that had no challenge: a downgrade.
                (None, Some(_)) => Some(
                    "a code_verifier was sent, but the authorization request had no \
                     code_challenge"
                        .into(),
                ),
                _ => None,
            }
        };
        let row = match self
            .store()
            .redeem_oidc_code(&token_hash(code), &client.id, &session, self.now(), check)
            .await?
        {
            CodeOutcome::Redeemed(row) => row,
            CodeOutcome::Refused(reason) => return Err(OAuthError::grant(reason)),
            CodeOutcome::Reused { account, session } => {
                tracing::warn!(%account, client = %client.id, "authorization code reused; its tokens revoked");
                self.note_revoked(session.into_iter().collect());
                return Err(OAuthError::grant(
                    "the code was already used; the tokens given for it have been revoked",
                ));
            }
            CodeOutcome::Invalid => {
                return Err(OAuthError::grant(
                    "the code is not valid, has expired or was given to another client",
                ))
            }
        };
        if !self
            .session_live(row.account_id, &row.browser_session)
            .await?
        {
            return Err(OAuthError::grant(
                "the sign-in that gave this code has ended (signed out, or the password changed)",
            ));
        }
        self.issue(
            issuer,
            client,
            row.account_id,
            session,
            &row.scope,
            row.nonce.as_deref(),
            row.auth_time,
            &row.browser_session,
            from,
        )
        .await
    }

    async fn exchange_device_code(
        &self,
        issuer: &str,
        client: &OidcClientRow,
        req: &TokenRequest,
        from: &ClientInfo,
    ) -> Result<TokenResponse, OAuthError> {
        let code = req
            .device_code
            .as_deref()
            .filter(|c| c.starts_with("mdc_") && c.len() <= 100)
            .ok_or_else(|| OAuthError::grant("the device code is not valid"))?;
        let poll = self
            .store()
            .poll_device_code(&token_hash(code), &client.id, self.now(), DEVICE_INTERVAL)
            .await?;
        let row = match poll {
            DevicePoll::Approved(row) => row,
            DevicePoll::Pending => {
                return Err(OAuthError::new(
                    400,
                    "authorization_pending",
                    "the person has not answered yet",
                ))
            }
            DevicePoll::SlowDown => {
                return Err(OAuthError::new(
                    400,
                    "slow_down",
                    "polling too often; wait 5 seconds more between polls",
                ))
            }
            DevicePoll::Denied => {
                return Err(OAuthError::new(400, "access_denied", "the person declined"))
            }
            DevicePoll::Expired => {
                return Err(OAuthError::new(
                    400,
                    "expired_token",
                    "the device code has expired or was already used; start again",
                ))
            }
            DevicePoll::Invalid => {
                return Err(OAuthError::grant(
                    "the device code is not valid or was given to another client",
                ))
            }
        };
        let (Some(account), Some(auth_time), Some(browser)) =
            (row.account_id, row.auth_time, row.browser_session)
        else {
            return Err(OAuthError::grant("the device code is not valid"));
        };
        if !self.session_live(account, &browser).await? {
            return Err(OAuthError::grant(
                "the sign-in that allowed this device has ended (signed out, or the password \
                 changed)",
            ));
        }
        self.issue(
            issuer,
            client,
            account,
            SessionId::random(),
            &row.scope,
            None,
            auth_time,
            &browser,
            from,
        )
        .await
    }

    async fn refresh_oidc(
        &self,
        issuer: &str,
        client: &OidcClientRow,
        req: &TokenRequest,
        from: &ClientInfo,
    ) -> Result<TokenResponse, OAuthError> {
        let token = req
            .refresh_token
            .as_deref()
            .filter(|t| t.starts_with(REFRESH_PREFIX) && t.len() <= 100)
            .ok_or_else(|| OAuthError::grant("the refresh token is not valid"))?;
        let next = format!("{REFRESH_PREFIX}{}", random_token_string(32));
        let now = self.now();
        // A narrower scope may be asked for; never a wider one (RFC 6749 §6) — checked before
        // the token is spent, so a client that asks wrong keeps its token.
        let asked: Option<Vec<String>> = req
            .scope
            .as_deref()
            .map(|s| {
                s.split(' ')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|a| !a.is_empty());
        let within = |s: &mica_store::SessionRow| {
            let granted = s.oidc_scope.as_deref().unwrap_or("");
            asked
                .as_ref()
                .is_none_or(|a| a.iter().all(|x| has_scope(granted, x)))
        };
        let s = match self
            .store()
            .rotate_refresh(
                &token_hash(token),
                &token_hash(&next),
                Some(&client.id),
                now,
                &from.ip,
                within,
            )
            .await?
        {
            RefreshOutcome::Rotated(s) => s,
            RefreshOutcome::Refused => {
                return Err(OAuthError::new(
                    400,
                    "invalid_scope",
                    "a refresh cannot ask for more than was granted",
                ))
            }
            RefreshOutcome::Reused { session, account } => {
                tracing::warn!(%account, client = %client.id, "OpenID refresh token reused; session revoked");
                self.note_revoked(vec![session]);
                return Err(OAuthError::grant(
                    "the refresh token was already used; its session has been revoked",
                ));
            }
            RefreshOutcome::Invalid => {
                return Err(OAuthError::grant(
                    "the refresh token is not valid, has expired or was revoked",
                ))
            }
        };
        // The answer and the ID token carry what was asked for (the session keeps what was
        // granted, which userinfo answers by).
        let scope = match &asked {
            Some(a) => scope_string(a),
            None => s.oidc_scope.clone().unwrap_or_default(),
        };
        self.store()
            .touch_oidc_grant(s.account_id, &client.id, now)
            .await?;
        let auth_time = s.oidc_auth_time.unwrap_or(s.created_at);
        let access = self.oidc_access(s.account_id, &s.id, s.expires_at);
        let id_token = self
            .id_token(issuer, client, s.account_id, &s.id, &scope, None, auth_time)
            .await?;
        Ok(TokenResponse {
            access_token: access.0,
            token_type: "Bearer",
            expires_in: access.1,
            id_token: Some(id_token),
            refresh_token: Some(next),
            scope,
        })
    }

    fn oidc_access(
        &self,
        account: AccountId,
        session: &SessionId,
        session_expires_at: Timestamp,
    ) -> (String, u64) {
        let now = self.now();
        let expires_at = now.plus(self.access_ttl()).min(session_expires_at);
        let token = self.keys().sign_oidc_access(&AccessClaims {
            account,
            session: session.clone(),
            issued_at: now,
            expires_at,
        });
        (token, now.until(expires_at).as_secs())
    }

    /// Opens the client's session and gives its tokens.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        issuer: &str,
        client: &OidcClientRow,
        account: AccountId,
        session: SessionId,
        scope: &str,
        nonce: Option<&str>,
        auth_time: Timestamp,
        approved_by: &SessionId,
        from: &ClientInfo,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        // Without offline_access the session lives as long as its access token: the client
        // knows who signed in, and may ask the userinfo endpoint for a few minutes.
        let offline = has_scope(scope, "offline_access");
        let refresh = offline.then(|| format!("{REFRESH_PREFIX}{}", random_token_string(32)));
        let expires_at = if offline {
            now.plus(Duration::from_secs(
                self.inner.cfg.session_ttl_days * 86_400,
            ))
        } else {
            now.plus(self.access_ttl())
        };
        let unused = random_token_string(32);
        let opened = self
            .store()
            .create_session(
                &NewSession {
                    id: session.clone(),
                    account_id: account,
                    created_at: now,
                    expires_at,
                    ip: from.ip.clone(),
                    user_agent: from.user_agent.chars().take(512).collect(),
                    device_model: None,
                    os_version: None,
                    client: Some(client.name.clone()),
                    oidc: Some(OidcSession {
                        client: client.id.clone(),
                        scope: scope.to_owned(),
                        auth_time,
                        approved_by: approved_by.clone(),
                    }),
                },
                &token_hash(refresh.as_deref().unwrap_or(&unused)),
            )
            .await?;
        if !opened {
            return Err(OAuthError::grant(
                "the account can no longer sign in, the app's access was taken away, or the code \
                 was presented twice",
            ));
        }
        self.store()
            .touch_oidc_grant(account, &client.id, now)
            .await?;
        let access = self.oidc_access(account, &session, expires_at);
        let id_token = self
            .id_token(issuer, client, account, &session, scope, nonce, auth_time)
            .await?;
        Ok(TokenResponse {
            access_token: access.0,
            token_type: "Bearer",
            expires_in: access.1,
            id_token: Some(id_token),
            refresh_token: refresh,
            scope: scope.to_owned(),
        })
    }

    /// The claims the scope lets the client see.
    async fn claims(
        &self,
        account: AccountId,
        session: &SessionId,
        scope: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, IdentityError> {
        use serde_json::Value;
        let mut c = serde_json::Map::new();
        c.insert("sub".into(), Value::String(account.to_string()));
        let p = Principal {
            account,
            session: session.clone(),
        };
        if has_scope(scope, "email") || has_scope(scope, "phone") {
            let me = self.me(&p).await?;
            if has_scope(scope, "email") {
                if let Some(e) = &me.email {
                    c.insert("email".into(), Value::String(e.as_str().to_owned()));
                    // An address is verified before it is an account's (ID-1).
                    c.insert("email_verified".into(), Value::Bool(true));
                }
            }
            if has_scope(scope, "phone") {
                if let Some(ph) = &me.phone {
                    c.insert("phone_number".into(), Value::String(ph.as_str().to_owned()));
                    c.insert("phone_number_verified".into(), Value::Bool(true));
                }
            }
        }
        if has_scope(scope, "profile") {
            let prof = self.profile(&p).await?;
            if let Some(n) = prof.nickname {
                c.insert("nickname".into(), Value::String(n.clone()));
                c.insert("name".into(), Value::String(n));
            }
            if let Some(l) = prof.locale {
                c.insert("locale".into(), Value::String(l));
            }
            if let Some(g) = prof.gender {
                c.insert("gender".into(), Value::String(g));
            }
            if let Some(country) = prof.country {
                c.insert("address".into(), serde_json::json!({ "country": country }));
            }
        }
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    async fn id_token(
        &self,
        issuer: &str,
        client: &OidcClientRow,
        account: AccountId,
        session: &SessionId,
        scope: &str,
        nonce: Option<&str>,
        auth_time: Timestamp,
    ) -> Result<String, IdentityError> {
        let now = self.now();
        let mut c = self.claims(account, session, scope).await?;
        let secs = |t: Timestamp| serde_json::Value::from(t.millis().div_euclid(1000));
        c.insert("iss".into(), issuer.into());
        c.insert("aud".into(), client.id.clone().into());
        c.insert("azp".into(), client.id.clone().into());
        c.insert("iat".into(), secs(now));
        c.insert("exp".into(), secs(now.plus(ID_TOKEN_TTL)));
        c.insert("auth_time".into(), secs(auth_time));
        c.insert("sid".into(), session.0.clone().into());
        if let Some(n) = nonce {
            c.insert("nonce".into(), n.into());
        }
        let keys = self.signing_keys().await?;
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": keys.kid });
        let mut jwt = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::Value::Object(c).to_string())
        );
        let mut sig = vec![0u8; keys.key.public().modulus_len()];
        keys.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &keys.rng,
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| IdentityError::Internal("signing an ID token failed".into()))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(&sig));
        Ok(jwt)
    }

    // ---- Userinfo and revocation ----

    /// The userinfo endpoint: the claims the access token's scope allows.
    pub async fn oidc_userinfo(
        &self,
        access_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OAuthError> {
        let claims = self
            .keys()
            .verify_oidc_access(access_token)
            .ok_or_else(OAuthError::token)?;
        if claims.expires_at <= self.now() || self.inner.revoked.contains(&claims.session) {
            return Err(OAuthError::token());
        }
        let (_, scope) = self
            .store()
            .oidc_session(claims.account, &claims.session, self.now())
            .await?
            .ok_or_else(OAuthError::token)?;
        match self.claims(claims.account, &claims.session, &scope).await {
            Ok(c) => Ok(c),
            // The account went while the token was being checked.
            Err(IdentityError::Unauthenticated | IdentityError::NotFound) => {
                Err(OAuthError::token())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Revocation (RFC 7009): a refresh or access token of this client ends its session. An
    /// unknown token is not an error (the answer is the same either way).
    pub async fn oidc_revoke(
        &self,
        creds: &ClientCredentials,
        token: &str,
        from: &ClientInfo,
    ) -> Result<(), OAuthError> {
        let client = self.authenticate_client(creds, &from.ip).await?;
        let now = self.now();
        if token.starts_with(REFRESH_PREFIX) && token.len() <= 100 {
            if let Some((_, session)) = self
                .store()
                .revoke_by_refresh(&token_hash(token), &client.id, now)
                .await?
            {
                self.note_revoked(vec![session]);
            }
        } else if let Some(claims) = self.keys().verify_oidc_access(token) {
            let holder = self
                .store()
                .oidc_session(claims.account, &claims.session, now)
                .await?;
            if holder.is_some_and(|(c, _)| c == client.id)
                && self
                    .store()
                    .revoke_session(claims.account, &claims.session, now)
                    .await?
            {
                self.note_revoked(vec![claims.session]);
            }
        }
        Ok(())
    }

    // ---- The device authorization grant ----

    /// A device asks to be signed in: it shows the person a code to type on the portal.
    pub async fn start_device_authorization(
        &self,
        creds: &ClientCredentials,
        scope: Option<&str>,
        from: &ClientInfo,
    ) -> Result<DeviceAuthorization, OAuthError> {
        // Each one is a row until it expires, and a public client's id is no secret.
        self.limit(&self.inner.limits.refresh_ip, &from.ip)?;
        let client = self.authenticate_client(creds, &from.ip).await?;
        let scopes = parse_scopes(scope).map_err(|d| OAuthError::new(400, "invalid_scope", d))?;
        let now = self.now();
        for _ in 0..5 {
            let device_code = format!("mdc_{}", random_token_string(32));
            let letters: String = {
                use rand::Rng;
                let mut rng = rand::thread_rng();
                (0..8)
                    .map(|_| {
                        char::from(USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())])
                    })
                    .collect()
            };
            if self
                .store()
                .create_device_code(
                    &token_hash(&device_code),
                    &letters,
                    &client.id,
                    &scope_string(&scopes),
                    now,
                    now.plus(DEVICE_TTL),
                )
                .await?
            {
                return Ok(DeviceAuthorization {
                    device_code,
                    user_code: format!("{}-{}", &letters[..4], &letters[4..]),
                    expires_in: DEVICE_TTL.as_secs(),
                    interval: DEVICE_INTERVAL.as_secs(),
                });
            }
        }
        Err(OAuthError::new(
            503,
            "temporarily_unavailable",
            "try again in a moment",
        ))
    }

    /// The device authorization waiting for this user code, if any.
    pub async fn pending_device(
        &self,
        p: &Principal,
        user_code: &str,
    ) -> Result<Option<PendingDevice>, IdentityError> {
        let code = normal_user_code(user_code);
        let row = if code.len() == 8 {
            self.store().device_code(&code, self.now()).await?
        } else {
            None
        };
        let Some(row) = row else {
            // Guesses at other people's codes have a budget (RFC 8628 §5.1): a person who
            // mistypes a few times is not slowed down.
            self.limit(
                &self.inner.limits.codes_ip,
                &format!("user-code:{}", p.account),
            )?;
            return Ok(None);
        };
        let Some(client) = self.store().oidc_client(&row.client_id).await? else {
            return Ok(None);
        };
        Ok(Some(PendingDevice {
            user_code: format!("{}-{}", &code[..4], &code[4..]),
            client_name: client.name,
            scopes: row.scope.split(' ').map(str::to_owned).collect(),
        }))
    }

    /// The person approved or declined the device; `false` when it is no longer waiting.
    pub async fn decide_device(
        &self,
        p: &Principal,
        user_code: &str,
        approve: bool,
        client: &ClientInfo,
    ) -> Result<bool, IdentityError> {
        let code = normal_user_code(user_code);
        let now = self.now();
        let Some(row) = self.store().device_code(&code, now).await? else {
            self.limit(
                &self.inner.limits.codes_ip,
                &format!("user-code:{}", p.account),
            )?;
            return Ok(false);
        };
        if approve {
            let auth_time = self.signed_in_at(p).await?;
            let name = self
                .store()
                .oidc_client(&row.client_id)
                .await?
                .map(|c| c.name)
                .unwrap_or_default();
            let scopes: Vec<String> = row.scope.split(' ').map(str::to_owned).collect();
            self.grant(p, &row.client_id, &name, &scopes, client)
                .await?;
            Ok(self
                .store()
                .decide_device_code(&code, Some((p.account, auth_time, &p.session)), now)
                .await?)
        } else {
            Ok(self.store().decide_device_code(&code, None, now).await?)
        }
    }

    // ---- The person's apps ----

    /// The apps the account let in.
    pub async fn app_grants(&self, p: &Principal) -> Result<Vec<OidcGrantRow>, IdentityError> {
        Ok(self.store().oidc_grants(p.account).await?)
    }

    /// Takes an app's access away: it is signed out at once; `false` when it had none.
    pub async fn revoke_app(
        &self,
        p: &Principal,
        client_id: &str,
        client: &ClientInfo,
    ) -> Result<bool, IdentityError> {
        let Some(revoked) = self
            .store()
            .revoke_oidc_grant(p.account, client_id, self.now())
            .await?
        else {
            return Ok(false);
        };
        self.note_revoked(revoked);
        self.event(
            p.account,
            "app_access_revoked",
            client,
            Some(&p.session),
            Some(client_id.to_owned()),
        )
        .await?;
        Ok(true)
    }

    // ---- Keys ----

    /// The key ID tokens are signed with now: read from the store (every node uses the same),
    /// made the first time, replaced once it is older than [`KEY_ROTATION`].
    async fn signing_keys(&self) -> Result<Arc<SigningKeys>, IdentityError> {
        let now = self.now();
        let fresh = |k: &SigningKeys| {
            now.until(k.read_at.plus(KEY_CACHE)) > Duration::ZERO
                && now.until(k.created_at.plus(KEY_ROTATION)) > Duration::ZERO
        };
        if let Some(k) = self.inner.oidc_keys.read().await.as_ref() {
            if fresh(k) {
                return Ok(k.clone());
            }
        }
        let mut slot = self.inner.oidc_keys.write().await;
        if let Some(k) = slot.as_ref() {
            if fresh(k) {
                return Ok(k.clone());
            }
        }
        for _ in 0..3 {
            let stored = self.store().oidc_keys().await?;
            let newest = stored.iter().find(|k| k.retired_at.is_none());
            if let Some(k) =
                newest.filter(|k| now.until(k.created_at.plus(KEY_ROTATION)) > Duration::ZERO)
            {
                let pem = self.keys().open("oidc_key", &k.private_key)?;
                let key = RS256PrivateKey::from_pkcs8_pem(&pem)
                    .map_err(|e| IdentityError::Internal(format!("stored signing key: {e}")))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| IdentityError::Internal(format!("stored signing key: {e}")))?;
                let key = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
                    .map_err(|e| IdentityError::Internal(format!("stored signing key: {e}")))?;
                let keys = Arc::new(SigningKeys {
                    kid: k.kid.clone(),
                    key,
                    rng: ring::rand::SystemRandom::new(),
                    created_at: k.created_at,
                    read_at: now,
                });
                *slot = Some(keys.clone());
                return Ok(keys);
            }
            let key = tokio::task::spawn_blocking(|| crypto_glue::rsa::new_key(2048))
                .await
                .map_err(|e| IdentityError::Internal(format!("making a signing key: {e}")))?
                .map_err(|e| IdentityError::Internal(format!("making a signing key: {e}")))?;
            let pem = key
                .to_pkcs8_pem(LineEndingPem::LF)
                .map_err(|e| IdentityError::Internal(format!("encoding a signing key: {e}")))?;
            let kid = random_token_string(12);
            let public = key.to_public_key();
            let jwk = serde_json::json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.n_bytes()),
                "e": URL_SAFE_NO_PAD.encode(public.e_bytes()),
            });
            let row = OidcKeyRow {
                kid,
                private_key: self.keys().seal("oidc_key", &pem),
                public_jwk: jwk.to_string(),
                created_at: now,
                retired_at: None,
            };
            if self
                .store()
                .add_oidc_key(&row, newest.map(|k| k.kid.as_str()))
                .await?
            {
                tracing::info!(kid = %row.kid, "new ID-token signing key");
            }
        }
        Err(IdentityError::Internal(
            "could not settle on a signing key".into(),
        ))
    }

    /// The JSON Web Key Set: every key whose tokens may still be presented. Read from the store
    /// each time, so a key another node just made is published at once.
    pub async fn jwks(&self) -> Result<serde_json::Value, IdentityError> {
        // Make sure there is a key to publish before anyone needs one.
        self.signing_keys().await?;
        let mut keys = Vec::new();
        for k in self.store().oidc_keys().await? {
            keys.push(
                serde_json::from_str::<serde_json::Value>(&k.public_jwk)
                    .map_err(|e| IdentityError::Internal(format!("stored public key: {e}")))?,
            );
        }
        Ok(serde_json::json!({ "keys": keys }))
    }

    /// Forgets spent codes and keys no token can still need.
    pub(crate) async fn purge_oidc(&self) -> Result<u64, IdentityError> {
        let now = self.now();
        let session_ttl = Duration::from_secs(self.inner.cfg.session_ttl_days * 86_400);
        let codes = self
            .store()
            .purge_oidc_codes(now, now.minus(session_ttl))
            .await?;
        let keys = self
            .store()
            .delete_retired_oidc_keys(now.minus(ID_TOKEN_TTL + KEY_OVERLAP))
            .await?;
        Ok(codes + keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_addresses_are_checked() {
        assert!(valid_redirect_uri("https://forum.example.com/callback"));
        assert!(valid_redirect_uri("http://localhost:8080/cb"));
        assert!(valid_redirect_uri("http://127.0.0.1/cb"));
        assert!(valid_redirect_uri("com.example.app:/oauth"));
        assert!(!valid_redirect_uri("http://forum.example.com/cb"));
        assert!(!valid_redirect_uri("https://forum.example.com/cb#x"));
        assert!(!valid_redirect_uri("javascript:alert(1)"));
        assert!(!valid_redirect_uri("forum/cb"));
        assert!(!valid_redirect_uri("myapp:/cb"));
    }

    #[test]
    fn loopback_addresses_match_on_any_port() {
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53211/cb"
        ));
        assert!(redirect_matches(
            "http://localhost:8000/cb",
            "http://localhost:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example:444/cb"
        ));
        assert!(!redirect_matches(
            "http://localhost/cb",
            "http://127.0.0.1/cb"
        ));
    }

    #[test]
    fn scopes_need_openid_and_known_names() {
        assert_eq!(
            parse_scopes(Some("email openid email")).unwrap(),
            vec!["email".to_owned(), "openid".to_owned()]
        );
        assert!(parse_scopes(Some("email")).is_err());
        assert!(parse_scopes(Some("openid admin")).is_err());
        assert_eq!(
            scope_string(&["phone".into(), "openid".into()]),
            "openid phone"
        );
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_example() {
        // RFC 7636, appendix B.
        assert!(pkce_matches(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!pkce_matches(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXa"
        ));
    }

    #[test]
    fn answers_keep_the_clients_query_and_state() {
        let az = Authorization {
            client_id: "c".into(),
            client_name: "Forum".into(),
            redirect_uri: "https://f.example/cb?x=1".into(),
            scopes: vec![],
            state: Some("a b&c".into()),
            nonce: None,
            code_challenge: None,
            prompt: vec![],
            max_age: None,
        };
        assert_eq!(
            az.error("access_denied", "no"),
            "https://f.example/cb?x=1&error=access_denied&error_description=no&state=a%20b%26c"
        );
        assert_eq!(az.redirect_origin(), "https://f.example");
    }

    #[test]
    fn user_codes_are_read_forgivingly() {
        assert_eq!(normal_user_code("bcdf-ghjk"), "BCDFGHJK");
        assert_eq!(normal_user_code(" BCDF GHJK "), "BCDFGHJK");
    }
}
