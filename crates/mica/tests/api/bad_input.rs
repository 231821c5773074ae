//! Whatever a client sends, the answer is a clear 4xx in the one error shape — never a 500.

use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::{TestApp, PASSWORD};

on_both_backends!(
    malformed_bodies_get_clear_4xx,
    bogus_tokens_and_ids_are_refused,
    unknown_routes_and_methods,
    garbage_on_every_endpoint_is_never_a_500,
);

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["error"]["code"], code, "{text}");
    let msg = v["error"]["message"].as_str().unwrap().to_owned();
    assert!(!msg.is_empty());
    msg
}

async fn malformed_bodies_get_clear_4xx(app: &TestApp) {
    let url = app.url("/api/v1/sessions");
    let post = |body: Vec<u8>, ct: &'static str| {
        app.http
            .post(&url)
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
    };

    let msg = expect_error(
        post(b"{\"login\": ".to_vec(), "application/json")
            .await
            .unwrap(),
        400,
        "malformed_json",
    )
    .await;
    assert!(msg.contains("not valid JSON"), "{msg}");
    expect_error(
        post(
            b"{\"login\": \"\xff\xfe\", \"password\": \"x\"}".to_vec(),
            "application/json",
        )
        .await
        .unwrap(),
        400,
        "malformed_json",
    )
    .await;
    let msg = expect_error(
        post(
            br#"{"login": 5, "password": "x"}"#.to_vec(),
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(msg.contains("login"), "{msg}");
    let msg = expect_error(
        post(br#"{"login": "a@b.c"}"#.to_vec(), "application/json")
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(msg.contains("password"), "{msg}");
    let msg = expect_error(
        post(
            br#"{"login": "a@b.c", "password": "x", "admin": true}"#.to_vec(),
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(msg.contains("unknown field"), "{msg}");
    expect_error(
        post(
            br#"{"login": "a@b.c", "password": "x"}"#.to_vec(),
            "text/plain",
        )
        .await
        .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        post(b"[]".to_vec(), "application/json").await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    expect_error(
        post(Vec::new(), "application/json").await.unwrap(),
        400,
        "malformed_json",
    )
    .await;

    // Oversized bodies are refused before they are parsed.
    let big = json!({ "login": "x".repeat(100_000), "password": PASSWORD })
        .to_string()
        .into_bytes();
    expect_error(
        post(big, "application/json").await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;

    // Values that parse but make no sense.
    let msg = expect_error(
        app.http
            .post(&url)
            .json(&json!({"login": "not an identifier", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_login",
    )
    .await;
    assert!(msg.contains("account number"), "{msg}");
    expect_error(
        app.http
            .post(app.url("/api/v1/signup"))
            .json(&json!({"email": "a@b.c", "phone": "+14155552671", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_input",
    )
    .await;
    expect_error(
        app.http
            .post(app.url("/api/v1/signup"))
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_input",
    )
    .await;
    expect_error(
        app.http
            .post(app.url("/api/v1/signup"))
            .json(&json!({"email": "no-at-sign", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_email",
    )
    .await;
    let long_model =
        json!({"login": "a@b.co", "password": PASSWORD, "device": {"model": "m".repeat(500)}});
    expect_error(
        app.http.post(&url).json(&long_model).send().await.unwrap(),
        422,
        "invalid_input",
    )
    .await;
    expect_error(
        app.http
            .get(app.url("/api/v1/me/logins?limit=lots"))
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
}

async fn bogus_tokens_and_ids_are_refused(app: &TestApp) {
    let t = app.signup_email("xia@example.com").await;
    let me = app.url("/api/v1/me");
    for auth in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer mat1..",
        "Bearer mat1.AAAA.BBBB",
        "Bearer garbage",
    ] {
        let resp = app
            .http
            .get(&me)
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert!(resp.headers().contains_key("www-authenticate"));
        expect_error(resp, 401, "unauthenticated").await;
    }
    // A token with one character changed.
    let mut forged = t.access_token.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    expect_error(
        app.http.get(&me).bearer_auth(&forged).send().await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    // A malformed query on an authenticated route.
    expect_error(
        app.http
            .get(app.url("/api/v1/me/logins?limit=lots"))
            .bearer_auth(&t.access_token)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_query",
    )
    .await;
    // Ids with path characters, or of nothing.
    for id in ["..%2F..%2Fetc", "x".repeat(200).as_str(), "does-not-exist"] {
        let resp = app
            .http
            .delete(app.url(&format!("/api/v1/sessions/{id}")))
            .bearer_auth(&t.access_token)
            .send()
            .await
            .unwrap();
        expect_error(resp, 404, "not_found").await;
    }
    for id in [
        "../../etc/passwd",
        "su_' OR 1=1 --",
        "",
        &"a".repeat(10_000),
    ] {
        let resp = app
            .http
            .post(app.url("/api/v1/signup/verify"))
            .json(&json!({"signup_id": id, "code": "123456"}))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "code_expired").await;
    }
    let resp = app
        .http
        .post(app.url("/api/v1/sessions/refresh"))
        .json(&json!({"refresh_token": "x".repeat(5000)}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_refresh_token").await;
}

async fn unknown_routes_and_methods(app: &TestApp) {
    expect_error(
        app.http
            .get(app.url("/api/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.http.put(app.url("/api/v1/me")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers().contains_key("x-request-id"),
        "every response carries a request id"
    );
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
}

async fn garbage_on_every_endpoint_is_never_a_500(app: &TestApp) {
    let t = app.signup_email("yan@example.com").await;
    let doc: Value = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"login\": null, \"password\": null}".to_vec(),
        b"{\"signup_id\": 1e999, \"code\": [1,2]}".to_vec(),
        b"{\"email\": \"\\u0000@x.y\", \"password\": \"\\ud800\"}".to_vec(),
        vec![0xff; 64],
        b"{\"refresh_token\": {\"$ne\": 1}}".to_vec(),
    ];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = path.replace("{id}", "abc");
            for body in &bodies {
                for auth in [None, Some(t.access_token.as_str())] {
                    let mut req = app
                        .http
                        .request(method.to_uppercase().parse().unwrap(), app.url(&path))
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    if let Some(a) = auth {
                        req = req.bearer_auth(a);
                    }
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    assert!(
                        status < 500,
                        "{method} {path} {:?} → {status}: {}",
                        String::from_utf8_lossy(body),
                        resp.text().await.unwrap()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
}
