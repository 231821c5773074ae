//! Mica as an OpenID Connect provider: an app the operator registered with the real `mica admin`
//! signs a person in from a real browser (headless Chromium) — sign-in, consent, back to the
//! app with a code — and its server exchanges the code, checks the ID token's signature against
//! the published keys, reads userinfo and refreshes; the person takes the app's access away on
//! the Apps page. Then over plain HTTP: what must be refused, and a TV signing in with a code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::on_both_backends;
use crate::support::browser::Browser;
use crate::support::{TestApp, PASSWORD};

on_both_backends!(
    an_app_signs_a_person_in_with_mica_from_a_browser,
    the_provider_refuses_what_it_must,
    a_tv_signs_in_with_a_code_typed_on_the_portal,
);

/// The app's side: where the browser comes back to, recording each address it was sent to.
struct RelyingParty {
    callback: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RelyingParty {
    async fn start() -> RelyingParty {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Some(target) = head
                        .split(' ')
                        .nth(1)
                        .filter(|t| t.starts_with("/oidc/callback"))
                    {
                        record.lock().unwrap().push(target.to_owned());
                    }
                    let body = "<!doctype html><title>Forum</title><p>Welcome back to the forum";
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        RelyingParty {
            callback: format!("http://127.0.0.1:{port}/oidc/callback"),
            seen,
        }
    }

    fn last(&self) -> Option<String> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// A registered app: its id and (for a confidential one) its secret.
struct Registered {
    id: String,
    secret: Option<String>,
}

fn register(app: &TestApp, name: &str, redirect: &str, public: bool) -> Registered {
    let mut args = vec![
        "oidc",
        "add-client",
        "--name",
        name,
        "--redirect-uri",
        redirect,
    ];
    if public {
        args.push("--public");
    }
    let (ok, out) = app.admin(&args);
    assert!(ok, "{out}");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
    };
    Registered {
        id: field("client_id:").unwrap_or_else(|| panic!("{out}")),
        secret: field("client_secret:"),
    }
}

/// A PKCE pair: the verifier and its S256 challenge.
fn pkce(seed: &str) -> (String, String) {
    let verifier = format!("{seed}-verifier-{}", "x".repeat(40));
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_encoding_decode(v))
    })
}

fn percent_encoding_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn authorize_url(
    app: &TestApp,
    client: &str,
    redirect: &str,
    scope: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut url = format!(
        "{}/web/authorize?response_type=code&client_id={}&redirect_uri={}&scope={}",
        app.public_url().trim_end_matches('/'),
        encode(client),
        encode(redirect),
        encode(scope)
    );
    for (k, v) in extra {
        url.push_str(&format!("&{k}={}", encode(v)));
    }
    url
}

/// Posts to the token endpoint as the app's server would.
async fn token(app: &TestApp, c: &Registered, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = app.http.post(app.url("/oauth/token")).form(form);
    req = match &c.secret {
        Some(s) => req.basic_auth(&c.id, Some(s)),
        None => req,
    };
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn userinfo(app: &TestApp, access: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Checks an ID token as a relying party does: its signature against the JWKS the discovery
/// document points to, then its claims. Returns the claims.
async fn verified_id_token(app: &TestApp, jwt: &str, audience: &str) -> Value {
    use crypto_glue::rsa::{BigUint, RS256PublicKey, RS256Signature, RS256VerifyingKey};
    use crypto_glue::traits::Verifier;
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    let jwks: Value = app
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    assert_eq!(key["kty"], "RSA");
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "a 2048-bit key");
    let public = RS256PublicKey::new(
        BigUint::from_be_slice(&n, 2048).unwrap(),
        BigUint::from_be_slice(&e, 64).unwrap(),
    )
    .unwrap();
    let sig =
        RS256Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    RS256VerifyingKey::new(public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("the ID token's signature checks out against the JWKS");
    // A token whose payload was changed does not.
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], discovery["issuer"]);
    assert_eq!(claims["aud"], audience);
    let now = app.clock_secs();
    assert!(claims["iat"].as_i64().unwrap() <= now);
    assert!(claims["exp"].as_i64().unwrap() > now);
    claims
}

async fn an_app_signs_a_person_in_with_mica_from_a_browser(app: &TestApp) {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let rp = RelyingParty::start().await;
    let forum = register(app, "Mica Forum", &rp.callback, false);
    assert!(forum
        .secret
        .as_deref()
        .is_some_and(|s| s.starts_with("mcs_")));
    let ana = app.signup_email("ana@example.com").await;
    let api = app.client.with_token(ana.access_token.clone());
    api.set_profile(json!({ "nickname": "Ana S.", "locale": "pt-PT" }))
        .await
        .unwrap();

    // Discovery says where everything is.
    let d: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = app.public_url().trim_end_matches('/').to_owned();
    assert_eq!(d["issuer"], issuer.as_str());
    assert_eq!(
        d["authorization_endpoint"],
        format!("{issuer}/web/authorize")
    );
    assert_eq!(d["token_endpoint"], format!("{issuer}/oauth/token"));
    assert!(d["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("S256")));

    // The forum sends the browser to Mica, which asks it to sign in first.
    let (verifier, challenge) = pkce("one");
    let scope = "openid email profile offline_access";
    let url = authorize_url(
        app,
        &forum.id,
        &rp.callback,
        scope,
        &[
            ("state", "st-1"),
            ("nonce", "n-1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    browser.goto(&url).await;
    browser.until_text("Sign in").await;
    assert!(browser.url().await.contains("/web/sign-in"));
    browser.fill("#login", "ana@example.com").await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    // Then asks whether the forum may know who she is, in words.
    let consent = browser.until_text("wants to sign you in").await;
    assert!(consent.contains("Mica Forum"), "{consent}");
    assert!(consent.contains(&ana.account_id), "{consent}");
    for what in [
        "Your email address",
        "Your nickname, region and language",
        "Stay signed in",
    ] {
        assert!(consent.contains(what), "{consent}");
    }
    assert!(!consent.contains("Your phone number"), "{consent}");
    browser.screenshot("oidc-consent").await;
    browser.click("#allow").await;
    // Back at the forum, with a code and its own state.
    browser.until_text("Welcome back to the forum").await;
    let back = rp.last().expect("the forum was called back");
    assert!(back.starts_with("/oidc/callback?"), "{back}");
    assert_eq!(query_param(&back, "state").as_deref(), Some("st-1"));
    let code = query_param(&back, "code").expect("a code");
    // Ana is told that a new app can sign her in (the notice is sent after the answer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.smtp.count_with(
        "ana@example.com",
        "The app \"Mica Forum\" can now sign you in",
    ) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no notice of the new app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The forum's server exchanges it.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", rp.callback.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let (s, t) = token(app, &forum, &form).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "openid profile email offline_access");
    assert!(t["expires_in"].as_u64().unwrap() <= 900);
    let claims = verified_id_token(app, t["id_token"].as_str().unwrap(), &forum.id).await;
    assert_eq!(claims["sub"], ana.account_id.as_str());
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["email"], "ana@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Ana S.");
    assert!(claims.get("phone_number").is_none());
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    // Userinfo tells the forum what she allowed, and nothing else.
    let (s, info) = userinfo(app, &access).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(info["sub"], ana.account_id.as_str());
    assert_eq!(info["email"], "ana@example.com");
    assert_eq!(info["locale"], "pt-PT");
    // The forum's token is no key to her cloud.
    let r = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Nor is Mica's own access token a userinfo token.
    let (s, _) = userinfo(app, &ana.access_token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A refresh rotates the refresh token; the spent one, presented again, ends the session.
    let (s, t2) = token(
        app,
        &forum,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t2}");
    assert_ne!(t2["refresh_token"], refresh.as_str());
    let access2 = t2["access_token"].as_str().unwrap().to_owned();
    assert_eq!(userinfo(app, &access2).await.0, StatusCode::OK);
    let (s, e) = token(
        app,
        &forum,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"], "invalid_grant");
    assert_eq!(userinfo(app, &access2).await.0, StatusCode::UNAUTHORIZED);

    // The code, presented again, is refused too.
    let (s, e) = token(app, &forum, &form).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"], "invalid_grant");

    // Signing in to the forum again: allowed before, so straight back, no question.
    let (verifier, challenge) = pkce("two");
    let url = authorize_url(
        app,
        &forum.id,
        &rp.callback,
        "openid email",
        &[
            ("state", "st-2"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    browser.goto(&url).await;
    browser.until_text("Welcome back to the forum").await;
    let back = rp.last().unwrap();
    assert_eq!(query_param(&back, "state").as_deref(), Some("st-2"));
    let code = query_param(&back, "code").unwrap();
    let (s, t3) = token(
        app,
        &forum,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &rp.callback),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t3}");
    // Without offline_access: no refresh token.
    assert!(t3.get("refresh_token").is_none(), "{t3}");
    let access3 = t3["access_token"].as_str().unwrap().to_owned();
    assert_eq!(userinfo(app, &access3).await.0, StatusCode::OK);

    // The Apps page lists the forum with what it may see; removing its access signs it out.
    // (At the address the browser signed in at: the server's public URL.)
    browser
        .goto(&format!(
            "{}/web/apps",
            app.public_url().trim_end_matches('/')
        ))
        .await;
    let apps = browser.until_text("Mica Forum").await;
    assert!(apps.contains("Your email address"), "{apps}");
    browser.screenshot("oidc-apps").await;
    browser.click("#apps button").await;
    let after = browser.until_text("access is taken away").await;
    assert!(
        after.contains("You have not signed in to any app"),
        "{after}"
    );
    assert_eq!(userinfo(app, &access3).await.0, StatusCode::UNAUTHORIZED);
    // The security log says so.
    let log = api
        .raw(reqwest::Method::GET, "/api/v1/me/security-events", None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("app_access_revoked"), "{log}");

    // Asked silently now, the forum learns it must ask again.
    let url = authorize_url(
        app,
        &forum.id,
        &rp.callback,
        "openid",
        &[("prompt", "none"), ("state", "st-3")],
    );
    browser.goto(&url).await;
    browser.until_text("Welcome back to the forum").await;
    let back = rp.last().unwrap();
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("consent_required")
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some("st-3"));
    browser.quit().await;
}

/// Signs in through the portal's form over plain HTTP; the session cookie.
async fn portal_cookie(app: &TestApp, http: &reqwest::Client, login: &str) -> String {
    let r = http
        .post(app.url("/web/sign-in"))
        .form(&[("login", login), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// Goes through the authorization endpoint with a signed-in cookie, allowing when asked;
/// where the browser is sent at the end.
async fn authorize_http(http: &reqwest::Client, url: &str, cookie: &str) -> String {
    let r = http.get(url).header("cookie", cookie).send().await.unwrap();
    if r.status() == StatusCode::SEE_OTHER {
        return r.headers()[LOCATION].to_str().unwrap().to_owned();
    }
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let html = r.text().await.unwrap();
    // The form's fields, as the browser would send them.
    let mut form: Vec<(String, String)> = vec![("decision".into(), "allow".into())];
    // Only the consent form's fields (the page's sign-out form has its own).
    let start = html
        .find("action=\"/web/authorize\"")
        .expect("the consent form");
    let form_html = &html[start..];
    let form_html = &form_html[..form_html.find("</form>").unwrap()];
    let mut rest = form_html;
    while let Some(at) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[at + 27..];
        let name = rest.split('"').next().unwrap().to_owned();
        let v_at = rest.find("value=\"").unwrap() + 7;
        let value = rest[v_at..].split('"').next().unwrap();
        // askama escapes as numeric entities.
        let value = value
            .replace("&#38;", "&")
            .replace("&#39;", "'")
            .replace("&#34;", "\"")
            .replace("&#60;", "<")
            .replace("&#62;", ">");
        form.push((name, value));
    }
    assert!(form.iter().any(|(k, _)| k == "csrf"), "{html}");
    let _ = csp;
    let base = url.split("/web/").next().unwrap();
    let r = http
        .post(format!("{base}/web/authorize"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()[LOCATION].to_str().unwrap().to_owned()
}

async fn the_provider_refuses_what_it_must(app: &TestApp) {
    let http = no_redirects();
    let callback = "https://shop.example.com/cb";
    let shop = register(app, "Shop", callback, false);
    let mobile = register(app, "Shop app", "com.example.shop:/cb", true);
    assert!(mobile.secret.is_none());
    // What cannot be registered is refused with the reason.
    let (ok, out) = app.admin(&[
        "oidc",
        "add-client",
        "--name",
        "Bad",
        "--redirect-uri",
        "http://evil.example.com/cb",
    ]);
    assert!(!ok);
    assert!(out.contains("cannot be a redirect address"), "{out}");
    let (ok, out) = app.admin(&["oidc", "clients"]);
    assert!(
        ok && out.contains("Shop app") && out.contains("public"),
        "{out}"
    );

    let _bea = app.signup_email("bea@example.com").await;
    let cookie = portal_cookie(app, &http, "bea@example.com").await;

    // An unknown app or an address it did not register: a page, and the browser goes nowhere.
    for url in [
        authorize_url(app, "nobody", callback, "openid", &[]),
        authorize_url(app, &shop.id, "https://evil.example.com/cb", "openid", &[]),
        authorize_url(
            app,
            &shop.id,
            "https://shop.example.com/cb/../evil",
            "openid",
            &[],
        ),
    ] {
        let r = http
            .get(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(r.headers().get(LOCATION).is_none());
        assert!(r.text().await.unwrap().contains("Nothing was shared"));
    }
    // Other mistakes go back to the app, in OAuth's terms.
    let back = authorize_http(
        &http,
        &authorize_url(app, &shop.id, callback, "email", &[("state", "s")]),
        &cookie,
    )
    .await;
    assert!(back.starts_with(callback), "{back}");
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_scope")
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some("s"));
    let back = authorize_http(
        &http,
        &authorize_url(app, &mobile.id, "com.example.shop:/cb", "openid", &[]),
        &cookie,
    )
    .await;
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request"),
        "{back}"
    );
    assert!(query_param(&back, "error_description")
        .unwrap()
        .contains("PKCE"));

    // A consent form posted from another site does nothing.
    let r = http
        .post(app.url("/web/authorize"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("client_id", shop.id.as_str()), ("decision", "allow")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A good code, and what the token endpoint refuses.
    let (verifier, challenge) = pkce("shop");
    let url = authorize_url(
        app,
        &shop.id,
        callback,
        "openid offline_access",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    let back = authorize_http(&http, &url, &cookie).await;
    let code = query_param(&back, "code").unwrap_or_else(|| panic!("{back}"));
    let good = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", callback),
        ("code_verifier", verifier.as_str()),
    ];
    let wrong_secret = Registered {
        id: shop.id.clone(),
        secret: Some("mcs_wrong".into()),
    };
    let (s, e) = token(app, &wrong_secret, &good).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Another app cannot use it (a public app has no secret to send).
    let (s, e) = token(
        app,
        &mobile,
        &[
            ("client_id", mobile.id.as_str()),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{e}"
    );
    let (s, e) = token(app, &shop, &[("grant_type", "password")]).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    let (s, e) = token(
        app,
        &shop,
        &[
            good[0],
            good[1],
            good[2],
            ("code_verifier", &"y".repeat(50)),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{e}"
    );
    // The failed tries did not spend it: with the right verifier it works.
    let (s, t) = token(app, &shop, &good).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // A refresh cannot widen the scope — and asking does not cost the app its token.
    let (s, e) = token(
        app,
        &shop,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("scope", "openid email"),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{e}"
    );
    let (s, t) = token(
        app,
        &shop,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    // Narrowed: the answer says so.
    assert_eq!(t["scope"], "openid");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // Another app cannot refresh it, nor revoke it.
    let (s, _) = token(
        app,
        &mobile,
        &[
            ("client_id", mobile.id.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An expired code is refused.
    let (verifier, challenge) = pkce("late");
    let url = authorize_url(
        app,
        &shop.id,
        callback,
        "openid",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    let back = authorize_http(&http, &url, &cookie).await;
    let late = query_param(&back, "code").unwrap();
    app.advance(Duration::from_secs(61));
    let (s, e) = token(
        app,
        &shop,
        &[
            ("grant_type", "authorization_code"),
            ("code", &late),
            ("redirect_uri", callback),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // A client id no server would issue (a NUL, which PostgreSQL cannot even compare) is just
    // an unknown client.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("client_id", "a\0b"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "mor_x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // A bad form gets OAuth's error, not a page.
    let r = app
        .http
        .post(app.url("/oauth/token"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // Scripts of any origin may call the endpoints.
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/oauth/token"))
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    // Signing out everywhere signs the app out too.
    let (s, t) = token(
        app,
        &shop,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // A code given just before, not yet exchanged, dies with the sign-in that gave it.
    let (pending_verifier, challenge) = pkce("pending");
    let url = authorize_url(
        app,
        &shop.id,
        callback,
        "openid",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    let back = authorize_http(&http, &url, &cookie).await;
    let pending = query_param(&back, "code").unwrap();
    let bea = app
        .client
        .sign_in("bea@example.com", PASSWORD, None)
        .await
        .unwrap();
    app.client
        .with_token(bea.access_token)
        .sign_out_everywhere()
        .await
        .unwrap();
    assert_eq!(
        userinfo(app, t["access_token"].as_str().unwrap()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, e) = token(
        app,
        &shop,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (s, e) = token(
        app,
        &shop,
        &[
            ("grant_type", "authorization_code"),
            ("code", &pending),
            ("redirect_uri", callback),
            ("code_verifier", &pending_verifier),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{e}"
    );

    // Revocation (RFC 7009) ends a fresh session; removing the app ends the rest.
    let cookie = portal_cookie(app, &http, "bea@example.com").await;
    let (verifier, challenge) = pkce("again");
    let url = authorize_url(
        app,
        &shop.id,
        callback,
        "openid offline_access",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    let back = authorize_http(&http, &url, &cookie).await;
    let code = query_param(&back, "code").unwrap();
    let (_, t) = token(
        app,
        &shop,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", callback),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let r = app
        .http
        .post(app.url("/oauth/revoke"))
        .basic_auth(&shop.id, shop.secret.as_ref())
        .form(&[("token", t["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        userinfo(app, t["access_token"].as_str().unwrap()).await.0,
        StatusCode::UNAUTHORIZED
    );
    // An app that wants a fresh sign-in (`max_age=0`) gets one, once: back here after it
    // without the demand, not round and round.
    let r = http
        .get(authorize_url(
            app,
            &shop.id,
            callback,
            "openid",
            &[("max_age", "0"), ("prompt", "login consent")],
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with("/web/sign-in?again=1&next="), "{to}");
    let next = percent_encoding_decode(to.split("next=").nth(1).unwrap());
    assert!(
        !next.contains("max_age") && next.contains("prompt=consent"),
        "{next}"
    );
    let (ok, out) = app.admin(&["oidc", "remove-client", &shop.id]);
    assert!(ok, "{out}");
    let r = http
        .get(authorize_url(app, &shop.id, callback, "openid", &[]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

async fn device_poll(app: &TestApp, tv: &Registered, device_code: &str) -> (StatusCode, Value) {
    token(
        app,
        tv,
        &[
            ("client_id", tv.id.as_str()),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ],
    )
    .await
}

async fn start_device(app: &TestApp, tv: &Registered) -> Value {
    let r = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .form(&[("client_id", tv.id.as_str()), ("scope", "openid profile")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn a_tv_signs_in_with_a_code_typed_on_the_portal(app: &TestApp) {
    let http = no_redirects();
    let tv = register(app, "Mica TV", "com.example.tv:/unused", true);
    let carla = app.signup_email("carla@example.com").await;
    let cookie = portal_cookie(app, &http, "carla@example.com").await;

    let d = start_device(app, &tv).await;
    let user_code = d["user_code"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9, "{d}");
    assert_eq!(
        d["verification_uri"],
        format!("{}/web/device", app.public_url().trim_end_matches('/'))
    );
    assert_eq!(d["interval"], 5);
    let device_code = d["device_code"].as_str().unwrap().to_owned();
    let (s, e) = device_poll(app, &tv, &device_code).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending"))
    );
    // Too soon.
    let (_, e) = device_poll(app, &tv, &device_code).await;
    assert_eq!(e["error"], "slow_down");

    // Carla types the code as she reads it (lower case, no dash) and sees who asks.
    let typed = user_code.replace('-', "").to_lowercase();
    let r = http
        .get(app.url(&format!("/web/device?user_code={typed}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Mica TV") && html.contains(&user_code),
        "{html}"
    );
    assert!(
        html.contains("Your nickname, region and language"),
        "{html}"
    );
    // A wrong code says so.
    let r = http
        .get(app.url("/web/device?user_code=BBBB-BBBB"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let csrf = csrf_of(&html);
    let r = http
        .post(app.url("/web/device"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", user_code.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/web/device?done=allowed");

    // The TV's next poll (after the interval it was told) gets its tokens — once.
    app.advance(Duration::from_secs(11));
    let (s, t) = device_poll(app, &tv, &device_code).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let claims = verified_id_token(app, t["id_token"].as_str().unwrap(), &tv.id).await;
    assert_eq!(claims["sub"], carla.account_id.as_str());
    assert_eq!(
        userinfo(app, t["access_token"].as_str().unwrap()).await.0,
        StatusCode::OK
    );
    app.advance(Duration::from_secs(6));
    let (_, e) = device_poll(app, &tv, &device_code).await;
    assert_eq!(e["error"], "expired_token");

    // Declined: the TV is told.
    let d = start_device(app, &tv).await;
    let r = http
        .post(app.url("/web/device"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", d["user_code"].as_str().unwrap()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/web/device?done=declined");
    let (_, e) = device_poll(app, &tv, d["device_code"].as_str().unwrap()).await;
    assert_eq!(e["error"], "access_denied");

    // Not answered in ten minutes: expired, and the code no longer opens anything.
    let d = start_device(app, &tv).await;
    app.advance(Duration::from_secs(601));
    let (_, e) = device_poll(app, &tv, d["device_code"].as_str().unwrap()).await;
    assert_eq!(e["error"], "expired_token");
    let r = http
        .post(app.url("/web/device"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", d["user_code"].as_str().unwrap()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
