//! WebDAV for the drive at `/dav/files/{account id}/`, behind HTTP Basic authentication with an
//! app password (the account's email, phone or id as the user name), or a bearer access token.
//! The protocol itself is in `mica-dav`.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use mica_core::AccountId;

use crate::error::ApiError;
use crate::extract::Client;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dav/files/{account}", any(dav))
        .route("/dav/files/{account}/", any(dav))
        .route("/dav/files/{account}/{*rest}", any(dav))
        .layer(axum::middleware::map_response(crate::user_content_headers))
}

pub(crate) fn challenge(e: ApiError) -> Response {
    let mut r = e.into_response();
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Mica\", charset=\"UTF-8\""),
        );
    }
    r
}

/// The account the request speaks for: Basic with an app password, or a bearer token.
pub(crate) async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    client: Client,
) -> Result<(AccountId, String), ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthenticated("sign in with your email and an app password"))?;
    if let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        let p = app.identity.authenticate(token.trim())?;
        return Ok((p.account, p.account.to_string()));
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(|| ApiError::unauthenticated("use HTTP Basic with an app password"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Basic credentials are not base64 of user:password")
        })?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::unauthenticated("the Basic credentials are not user:password"))?;
    let account = app
        .identity
        .verify_app_password(user, password, &client.info(None))
        .await?;
    Ok((account, user.to_owned()))
}

async fn dav(
    State(app): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    client: Client,
    req: Request,
) -> Response {
    let (account, principal) = match authenticate(&app, req.headers(), client).await {
        Ok(a) => a,
        Err(e) => return challenge(e),
    };
    // Another account's drive does not exist, as far as this one can tell.
    if params.get("account").map(String::as_str) != Some(account.to_string().as_str()) {
        return ApiError::not_found().into_response();
    }
    let mut req = req;
    if unreasonable_range(req.headers()) {
        // RFC 9110 lets a server ignore a Range: the whole file it is.
        req.headers_mut().remove(header::RANGE);
    }
    let prefix = format!("/dav/files/{account}");
    app.dav
        .handle(req, prefix, principal, account)
        .await
        .map(axum::body::Body::new)
}

/// A `Range` dav-server should not see: more than 16 ranges (each one a separate read), or a
/// position past any file (its arithmetic would overflow).
fn unreasonable_range(headers: &HeaderMap) -> bool {
    let Some(range) = headers.get(header::RANGE) else {
        return false;
    };
    let Some(spec) = range
        .to_str()
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return false;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    parts.len() > 16
        || parts
            .iter()
            .flat_map(|p| p.split('-'))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .any(|n| n.parse::<u64>().map_or(true, |n| n > 1 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_dav_server_should_not_see() {
        let with = |r: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(r).unwrap());
            unreasonable_range(&h)
        };
        assert!(!unreasonable_range(&HeaderMap::new()));
        assert!(!with("bytes=0-99"));
        assert!(!with("bytes=-500"));
        assert!(!with("bytes=5-, 0-1"));
        assert!(with("bytes=0-18446744073709551615"));
        assert!(with("bytes=0-99999999999999999999999"));
        assert!(with(&format!("bytes={}", vec!["0-0"; 17].join(","))));
    }
}
