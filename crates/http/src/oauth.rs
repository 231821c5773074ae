//! The OpenID provider's endpoints (ID-16) for the operator's other products: discovery, the
//! keys, the token endpoint, userinfo, revocation and device authorization. The authorization
//! endpoint is a portal page (`/web/authorize`: it needs the browser's session). See
//! docs/design/oidc.md.
//!
//! These speak OAuth's own error shape (`{"error": "invalid_grant", "error_description": …}`,
//! RFC 6749 §5.2), which every OAuth library reads, not the API's. They answer any origin's
//! scripts (`Access-Control-Allow-Origin: *`): nothing here rides on a cookie, so a page of
//! another site gains nothing it could not do from a server.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mica_identity::oidc::{ClientCredentials, OAuthError, TokenRequest, DEVICE_INTERVAL, SCOPES};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::Client;
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(discovery))
        .routes(routes!(jwks))
        .routes(routes!(token))
        .routes(routes!(userinfo_get, userinfo_post))
        .routes(routes!(revoke))
        .routes(routes!(device_authorization))
}

/// Whether a path is one of these endpoints (which any origin's scripts may call).
fn is_oauth_path(path: &str) -> bool {
    path.starts_with("/oauth/") || path == "/.well-known/openid-configuration"
}

/// Lets any origin's scripts call these endpoints: a preflight is answered here, and every
/// answer says `Access-Control-Allow-Origin: *`.
pub(crate) async fn cors(req: Request, next: axum::middleware::Next) -> Response {
    if !is_oauth_path(req.uri().path()) {
        return next.run(req).await;
    }
    if req.method() == Method::OPTIONS {
        let mut r = (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "Authorization, Content-Type",
                ),
                (header::ACCESS_CONTROL_MAX_AGE, "600"),
            ],
        )
            .into_response();
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        return r;
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The issuer: the server's public URL, without a trailing slash.
pub(crate) fn issuer(app: &AppState) -> String {
    app.public_url.trim_end_matches('/').to_owned()
}

/// An OAuth error as the client's library expects it.
struct OAuthFailure(OAuthError, /* client sent HTTP Basic */ bool);

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let OAuthFailure(e, basic) = self;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (
            status,
            Json(serde_json::json!({ "error": e.error, "error_description": e.description })),
        )
            .into_response();
        if e.error == "invalid_token" {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        } else if status == StatusCode::UNAUTHORIZED && basic {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mica\""),
            );
        }
        r
    }
}

fn failure(error: &'static str, description: &str) -> OAuthFailure {
    OAuthFailure(
        OAuthError {
            status: 400,
            error,
            description: description.into(),
        },
        false,
    )
}

/// A form body (`application/x-www-form-urlencoded`), refused in OAuth's terms.
struct OAuthForm<T>(T);

impl<S, T> FromRequest<S> for OAuthForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = OAuthFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthFailure> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(OAuthForm(v)),
            Err(e) => Err(failure(
                "invalid_request",
                &format!(
                    "send the parameters as a form (application/x-www-form-urlencoded): {}",
                    e.body_text()
                ),
            )),
        }
    }
}

/// A form of an endpoint where clients authenticate (token, revocation, device
/// authorization): the form, and the client's credentials from it or from HTTP Basic.
struct ClientForm<T> {
    form: T,
    creds: ClientCredentials,
    /// The client sent HTTP Basic (its failures say `WWW-Authenticate: Basic`).
    basic: bool,
}

/// A form that may carry the client's id and secret (`client_secret_post`).
trait ClientFields {
    fn client_fields(&self) -> (Option<&str>, Option<&str>);
}

impl<S, T> FromRequest<S> for ClientForm<T>
where
    T: DeserializeOwned + ClientFields,
    S: Send + Sync,
{
    type Rejection = OAuthFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthFailure> {
        let mut authorization = HeaderMap::new();
        if let Some(v) = req.headers().get(header::AUTHORIZATION) {
            authorization.insert(header::AUTHORIZATION, v.clone());
        }
        let OAuthForm(form) = OAuthForm::<T>::from_request(req, state).await?;
        let (id, secret) = form.client_fields();
        let (creds, basic) = credentials(&authorization, id, secret)?;
        Ok(ClientForm { form, creds, basic })
    }
}

/// The client's credentials: HTTP Basic (`client_secret_basic`), or the form's
/// `client_id` and `client_secret` (`client_secret_post`, or `none` for a public client) —
/// one way only (RFC 6749 §2.3).
fn credentials(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<(ClientCredentials, bool), OAuthFailure> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..6)
                .filter(|p| p.eq_ignore_ascii_case("basic "))
                .map(|_| v[6..].trim())
        });
    let Some(b64) = basic else {
        return Ok((
            ClientCredentials {
                id: form_id.unwrap_or("").to_owned(),
                secret: form_secret.map(str::to_owned),
            },
            false,
        ));
    };
    let bad = || {
        OAuthFailure(
            OAuthError {
                status: 401,
                error: "invalid_client",
                description: "the Authorization header is not a client id and secret".into(),
            },
            true,
        )
    };
    if form_secret.is_some() {
        return Err(failure(
            "invalid_request",
            "send the client's credentials one way: HTTP Basic or the form, not both",
        ));
    }
    let raw = STANDARD.decode(b64).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    // Both halves are form-encoded before they are joined (RFC 6749 §2.3.1).
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad())
    };
    let id = decode(id)?;
    if form_id.is_some_and(|f| f != id) {
        return Err(failure(
            "invalid_request",
            "client_id in the form is not the one in the Authorization header",
        ));
    }
    Ok((
        ClientCredentials {
            id,
            secret: Some(decode(secret)?),
        },
        true,
    ))
}

/// OpenID Provider metadata (OpenID Connect Discovery 1.0).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "openid",
    responses((status = 200, description = "The provider's metadata", body = serde_json::Value)))]
async fn discovery(State(app): State<AppState>) -> Response {
    let iss = issuer(&app);
    (
        [(header::CACHE_CONTROL, "public, max-age=3600")],
        Json(serde_json::json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/web/authorize"),
            "token_endpoint": format!("{iss}/oauth/token"),
            "userinfo_endpoint": format!("{iss}/oauth/userinfo"),
            "jwks_uri": format!("{iss}/oauth/jwks"),
            "revocation_endpoint": format!("{iss}/oauth/revoke"),
            "device_authorization_endpoint": format!("{iss}/oauth/device_authorization"),
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code"
            ],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "prompt_values_supported": ["none", "login", "consent"],
            "claims_supported": [
                "sub", "iss", "aud", "azp", "exp", "iat", "auth_time", "nonce", "sid",
                "name", "nickname", "locale", "gender", "address",
                "email", "email_verified", "phone_number", "phone_number_verified"
            ],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
        })),
    )
        .into_response()
}

/// The keys ID tokens are signed with (a JSON Web Key Set). A key being retired stays here
/// until every token it signed has expired.
#[utoipa::path(get, path = "/oauth/jwks", tag = "openid",
    responses((status = 200, description = "The JSON Web Key Set", body = serde_json::Value)))]
async fn jwks(State(app): State<AppState>) -> Response {
    match app.identity.jwks().await {
        Ok(set) => ([(header::CACHE_CONTROL, "public, max-age=300")], Json(set)).into_response(),
        Err(e) => OAuthFailure(e.into(), false).into_response(),
    }
}

/// The token endpoint's form (RFC 6749 §4.1.3, §6; RFC 8628 §3.4).
#[derive(Deserialize, ToSchema)]
pub struct TokenForm {
    /// `authorization_code`, `refresh_token` or `urn:ietf:params:oauth:grant-type:device_code`.
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    /// PKCE (RFC 7636).
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    device_code: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl ClientFields for TokenForm {
    fn client_fields(&self) -> (Option<&str>, Option<&str>) {
        (self.client_id.as_deref(), self.client_secret.as_deref())
    }
}

/// Exchanges an authorization code, a refresh token or a device code for tokens.
#[utoipa::path(post, path = "/oauth/token", tag = "openid",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`access_token`, `token_type`, `expires_in`, `id_token`, `refresh_token` (with `offline_access`), `scope`", body = serde_json::Value),
        (status = 400, description = "`invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`, `authorization_pending`, `slow_down`, `access_denied`, `expired_token`", body = serde_json::Value),
        (status = 401, description = "`invalid_client`", body = serde_json::Value),
    ))]
async fn token(
    State(app): State<AppState>,
    client: Client,
    ClientForm {
        form: f,
        creds,
        basic,
    }: ClientForm<TokenForm>,
) -> Response {
    let req = TokenRequest {
        grant_type: f.grant_type,
        code: f.code,
        redirect_uri: f.redirect_uri,
        code_verifier: f.code_verifier,
        refresh_token: f.refresh_token,
        device_code: f.device_code,
        scope: f.scope,
        client_id: f.client_id,
        client_secret: None,
    };
    match app
        .identity
        .oauth_token(&issuer(&app), &creds, &req, &client.info(None))
        .await
    {
        Ok(t) => (
            [(header::PRAGMA, HeaderValue::from_static("no-cache"))],
            Json(t),
        )
            .into_response(),
        Err(e) => OAuthFailure(e, basic).into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| v[7..].trim())
}

async fn userinfo(app: &AppState, headers: &HeaderMap) -> Response {
    let Some(token) = bearer(headers) else {
        let mut r = OAuthFailure(
            OAuthError {
                status: 401,
                error: "invalid_token",
                description: "send the access token as `Authorization: Bearer …`".into(),
            },
            false,
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    match app.identity.oidc_userinfo(token).await {
        Ok(claims) => Json(claims).into_response(),
        Err(e) => OAuthFailure(e, false).into_response(),
    }
}

/// The claims about the signed-in person that the token's scope allows.
#[utoipa::path(get, path = "/oauth/userinfo", tag = "openid",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`sub` and the claims of the granted scopes", body = serde_json::Value),
        (status = 401, description = "`invalid_token`", body = serde_json::Value),
    ))]
async fn userinfo_get(State(app): State<AppState>, headers: HeaderMap) -> Response {
    userinfo(&app, &headers).await
}

/// The same as `GET`.
#[utoipa::path(post, path = "/oauth/userinfo", tag = "openid",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`sub` and the claims of the granted scopes", body = serde_json::Value),
        (status = 401, description = "`invalid_token`", body = serde_json::Value),
    ))]
async fn userinfo_post(State(app): State<AppState>, headers: HeaderMap) -> Response {
    userinfo(&app, &headers).await
}

#[derive(Deserialize, ToSchema)]
pub struct RevokeForm {
    token: Option<String>,
    /// `refresh_token` or `access_token`; a hint only.
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl ClientFields for RevokeForm {
    fn client_fields(&self) -> (Option<&str>, Option<&str>) {
        (self.client_id.as_deref(), self.client_secret.as_deref())
    }
}

/// Revokes a refresh or access token (RFC 7009): the session it belongs to ends.
#[utoipa::path(post, path = "/oauth/revoke", tag = "openid",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or the token was not a live one of this client"),
        (status = 401, description = "`invalid_client`", body = serde_json::Value),
    ))]
async fn revoke(
    State(app): State<AppState>,
    client: Client,
    ClientForm {
        form: f,
        creds,
        basic,
    }: ClientForm<RevokeForm>,
) -> Response {
    let _ = f.token_type_hint;
    let Some(token) = f.token else {
        return failure("invalid_request", "token is missing").into_response();
    };
    match app
        .identity
        .oidc_revoke(&creds, &token, &client.info(None))
        .await
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => OAuthFailure(e, basic).into_response(),
    }
}

#[derive(Deserialize, ToSchema)]
pub struct DeviceForm {
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl ClientFields for DeviceForm {
    fn client_fields(&self) -> (Option<&str>, Option<&str>) {
        (self.client_id.as_deref(), self.client_secret.as_deref())
    }
}

/// Starts the device authorization grant (RFC 8628) for a TV or a command line: it shows the
/// person `user_code` and `verification_uri`, then polls the token endpoint.
#[utoipa::path(post, path = "/oauth/device_authorization", tag = "openid",
    request_body(content = DeviceForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`device_code`, `user_code`, `verification_uri`, `verification_uri_complete`, `expires_in`, `interval`", body = serde_json::Value),
        (status = 400, description = "`invalid_scope`, `invalid_request`", body = serde_json::Value),
        (status = 401, description = "`invalid_client`", body = serde_json::Value),
    ))]
async fn device_authorization(
    State(app): State<AppState>,
    client: Client,
    ClientForm {
        form: f,
        creds,
        basic,
    }: ClientForm<DeviceForm>,
) -> Response {
    match app
        .identity
        .start_device_authorization(&creds, f.scope.as_deref(), &client.info(None))
        .await
    {
        Ok(d) => {
            let uri = format!("{}/web/device", issuer(&app));
            Json(serde_json::json!({
                "device_code": d.device_code,
                "user_code": d.user_code,
                "verification_uri": uri,
                "verification_uri_complete": format!("{uri}?user_code={}", d.user_code),
                "expires_in": d.expires_in,
                "interval": d.interval.max(DEVICE_INTERVAL.as_secs()),
            }))
            .into_response()
        }
        Err(e) => OAuthFailure(e, basic).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode("my%20app:s%2Bcret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        let (c, basic) = credentials(&h, None, None).ok().unwrap();
        assert!(basic);
        assert_eq!(c.id, "my app");
        assert_eq!(c.secret.as_deref(), Some("s+cret"));
        assert!(credentials(&h, None, Some("x")).is_err());
        assert!(credentials(&h, Some("other"), None).is_err());
    }
}
