//! Extractors that turn every malformed request into a clear 4xx of the API's error shape.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use mica_identity::{ClientInfo, DeviceInfo, Principal};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// JSON body; rejections become `malformed_json` (400), `invalid_body` (422),
/// `unsupported_media_type` (415) or `payload_too_large` (413).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let status = rej.status();
    let text = rej.body_text();
    match rej {
        JsonRejection::JsonDataError(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            text.replace(
                "Failed to deserialize the JSON body into the target type: ",
                "the request body does not fit: ",
            ),
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            text.replace(
                "Failed to parse the request body as JSON: ",
                "the request body is not valid JSON: ",
            ),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", text),
    }
}

/// Query string; a malformed one is `invalid_query` (400).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rej.body_text(),
            )),
            Err(rej) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rej.body_text(),
            )),
        }
    }
}

/// The caller's address and user agent.
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

impl Client {
    pub fn info(self, device: Option<DeviceInfo>) -> ClientInfo {
        ClientInfo {
            ip: self.ip,
            user_agent: self.user_agent,
            device: device.unwrap_or_default(),
        }
    }
}

impl<S> FromRequestParts<S> for Client
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let forwarded = if app.trust_forwarded {
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(|s| s.trim().to_owned())
                .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        } else {
            None
        };
        let ip = forwarded.or(peer).unwrap_or_else(|| "unknown".into());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(512)
            .collect();
        Ok(Client { ip, user_agent })
    }
}

/// The token of `Authorization: Bearer <token>`; `what` names it in the error.
pub(crate) fn bearer<'a>(parts: &'a Parts, what: &str) -> Result<&'a str, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(&format!(
            "sign in first: send `Authorization: Bearer <{what}>`"
        )));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthenticated(&format!(
                "the Authorization header must be `Bearer <{what}>`"
            ))
        })
}

/// A signed-in caller, from `Authorization: Bearer <access token>`.
pub struct Auth(pub Principal);

impl<S> FromRequestParts<S> for Auth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = AppState::from_ref(state);
        let token = bearer(parts, "access token")?;
        app.identity
            .authenticate(token)
            .map(Auth)
            .map_err(ApiError::from)
    }
}

/// The access token an event stream was opened with, to check again while it runs: a stream
/// lasts as long as its token (signing out, a revoked session, a deleted account or the token's
/// expiry ends it, and the client reconnects with a fresh one).
#[derive(Clone)]
pub(crate) struct StreamToken(String);

impl StreamToken {
    /// How often an idle stream checks its token.
    pub(crate) const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

    pub(crate) fn from_headers(headers: &axum::http::HeaderMap) -> StreamToken {
        StreamToken(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.get(7..))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        )
    }

    /// `None` while the token holds; otherwise the stream's last event, `ended` with why
    /// (`token_expired`: reconnect with a fresh token; `signed_out`).
    pub(crate) fn ended(&self, app: &AppState) -> Option<axum::response::sse::Event> {
        let e = app.identity.authenticate(&self.0).err()?;
        let reason = match e {
            mica_identity::IdentityError::TokenExpired => "token_expired",
            _ => "signed_out",
        };
        Some(
            axum::response::sse::Event::default()
                .event("ended")
                .data(format!(r#"{{"reason":"{reason}"}}"#)),
        )
    }

    /// The timer of an idle stream's checks.
    pub(crate) fn ticks() -> tokio::time::Interval {
        tokio::time::interval_at(tokio::time::Instant::now() + Self::RECHECK, Self::RECHECK)
    }
}
