//! The web portal: a person whose phone is lost signs in from a real browser (headless
//! Chromium), finds the phone, rings it, locks it with a message and erases it — the real agent
//! binary runs each command — and signs out. Then, over plain HTTP, what a browser cannot
//! show: the cookie's attributes, forged and cross-site forms refused with nothing done,
//! another account's devices not found, bad forms answered with a page, and a session ended
//! elsewhere ending the browser's.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::devices::{get, owner, Agent};
use crate::on_both_backends;
use crate::support::browser::Browser;
use crate::support::{six_digits, TestApp, PASSWORD};

on_both_backends!(
    a_lost_phone_is_found_rung_locked_and_erased_from_a_browser,
    the_portal_refuses_forgeries_and_strangers,
    deleted_notes_come_back_from_the_browsers_recycle_bin,
    the_password_is_changed_from_a_browser_after_a_step_up,
);

const STEP_UP: &str = "confirm a change to your account";

async fn a_lost_phone_is_found_rung_locked_and_erased_from_a_browser(app: &TestApp) {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (ana, account) = owner(app, "ana@example.com").await;
    let mut phone = Agent::new(
        app,
        "ana-phone",
        61,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log",
    );
    let device = phone.link_and_run(&ana, "ana@example.com").await;

    // The front door sends a browser to the portal, which asks it to sign in first.
    browser.goto(&app.url("/")).await;
    assert!(
        browser.url().await.contains("/web/sign-in"),
        "{}",
        browser.url().await
    );
    browser.screenshot("sign-in").await;
    browser.fill("#login", "ana@example.com").await;
    browser.fill("#password", "not-her-Password-1").await;
    browser.click("#sign-in").await;
    browser.until_text("wrong").await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    let overview = browser.until_text("Account number").await;
    assert!(overview.contains(&account), "{overview}");
    assert!(overview.contains("1 linked device"), "{overview}");
    browser.screenshot("overview").await;
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "mica_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], json!(true));
    assert_eq!(session["sameSite"], json!("Lax"));

    // The devices, and the phone: online, with its place.
    browser.click("nav a[href='/web/devices']").await;
    browser.until_text("ana-phone").await;
    browser.click("a.device").await;
    let page = browser.until_text("Online now").await;
    assert!(page.contains("Test Laptop 14"), "{page}");

    // Ring: the agent plays it; the page follows the command until it is done.
    browser.click("#ring").await;
    browser.until_text("Ringing").await;
    let commands = get(&ana, &format!("/api/v1/devices/{device}/commands")).await;
    let ring = commands[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(commands[0]["kind"], "ring");
    phone.until_ringing(&ring).await;
    browser
        .until_text("Ringing until stopped on the device")
        .await;
    // Whoever finds it stops it on the device.
    phone.stop_ring();
    browser.until_text("Done").await;

    // Locate: the fresh place shows on the page.
    browser.click("#locate").await;
    browser.until_text("Locating").await;
    let page = browser.until_text("48.85840, 2.29450").await;
    assert!(page.contains("within 12 m"), "{page}");
    browser.until_settled().await;
    browser.screenshot("device").await;

    // Lost mode, on a page of its own: the device shows the message and the number.
    browser.click("#to-lost-mode").await;
    browser
        .fill("#message", "This phone is lost. Please call me.")
        .await;
    browser.fill("#phone", "+351912345678").await;
    browser.click("#lost-mode-on").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !phone
        .out("lock.log")
        .contains("This phone is lost. Please call me.|+351912345678")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never locked:\n{}",
            phone.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.until_text("In lost mode").await;
    browser.until_settled().await;

    // The phone's backup is listed, and can be read back on demand.
    std::fs::create_dir_all(phone.data().join("backup")).unwrap();
    std::fs::write(
        phone.data().join("backup/alarms.json"),
        br#"[{"at":"07:00"}]"#,
    )
    .unwrap();
    let out = phone.command(&["backup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    browser.click("nav a[href='/web/backups']").await;
    let backups = browser.until_text("ana-phone").await;
    assert!(backups.contains("1 part"), "{backups}");
    browser.click("#backups button").await;
    browser.until_text("is being read back").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !browser.text().await.contains("Checked intact") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            browser.text().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.goto(&app.url("/web/backups")).await;
    }
    browser
        .goto(&app.url(&format!("/web/devices/{device}")))
        .await;
    browser.until_text("In lost mode").await;

    // Erase: refused without the box ticked, then only after a fresh code from the email.
    browser.click("#to-erase").await;
    browser.click("#erase").await;
    browser.until_text("Tick the box").await;
    browser.click("#erase-confirm").await;
    browser.click("#erase").await;
    browser.until_text("Confirm it's you").await;
    assert!(browser.url().await.contains("/web/confirm"));
    assert!(phone.out("erase.log").is_empty(), "erased before step-up");
    let before = app.smtp.count_with("ana@example.com", STEP_UP);
    browser.click("#send-email").await;
    browser.until_text("We sent a code").await;
    browser.screenshot("confirm").await;
    let mail = app
        .smtp
        .nth_with("ana@example.com", STEP_UP, before + 1)
        .await;
    let code = six_digits(&mail.subject()).unwrap();
    browser.fill("#code", &code).await;
    browser.click("#confirm").await;
    browser.until_text("Confirmed").await;
    browser.click("#to-erase").await;
    browser.click("#erase-confirm").await;
    browser.click("#erase").await;
    browser.until_text("The erase is on its way").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while phone.out("erase.log").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "never erased:\n{}",
            phone.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.goto(&app.url("/web/devices")).await;
    browser.until_text("Erased").await;

    // The browser is one of the account's sessions; signing out ends it.
    browser.goto(&app.url("/web/sessions")).await;
    let sessions = browser.until_text("(this browser)").await;
    assert!(sessions.contains("Web browser"), "{sessions}");
    browser.click("#sign-out").await;
    browser.until_text("Sign in to Mica").await;
    browser.goto(&app.url("/web/devices")).await;
    browser.until_text("Sign in to Mica").await;
    assert!(browser.url().await.contains("next=/web/devices"));
    browser.quit().await;
    phone.kill();
}

/// Asks for a step-up code by email from the confirmation page, as a browser does; the
/// challenge and the code from the mail.
async fn emailed_step_up_code(
    app: &TestApp,
    http: &reqwest::Client,
    cookie: &str,
    csrf: &str,
    email: &str,
    next: &str,
) -> (String, String) {
    let before = app.smtp.count_with(email, STEP_UP);
    let (s, _, html) = post_form(
        http,
        &app.url("/web/confirm/send"),
        cookie,
        &[],
        &[("csrf", csrf), ("channel", "email"), ("next", next)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{html}");
    let marker = "name=\"challenge_id\" value=\"";
    let at = html.find(marker).unwrap() + marker.len();
    let challenge = html[at..].split('"').next().unwrap().to_owned();
    let mail = app.smtp.nth_with(email, STEP_UP, before + 1).await;
    (challenge, six_digits(&mail.subject()).unwrap())
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the portal's form; the session cookie (`name=value`).
async fn web_sign_in(app: &TestApp, http: &reqwest::Client, login: &str) -> String {
    let r = http
        .post(app.url("/web/sign-in"))
        .form(&[
            ("login", login),
            ("password", PASSWORD),
            ("next", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // A `next` off the portal is not followed.
    assert_eq!(r.headers()[LOCATION], "/web/");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/web"] {
        assert!(set.contains(attr), "{set}");
    }
    // Forgotten when the browser closes.
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "{set}"
    );
    let pair = set.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("mica_session=mws1."), "{pair}");
    pair
}

/// The anti-forgery token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

async fn page(http: &reqwest::Client, url: &str, cookie: &str) -> (StatusCode, HeaderMap, String) {
    let r = http.get(url).header("cookie", cookie).send().await.unwrap();
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    extra: &[(&str, &str)],
    form: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = http.post(url).header("cookie", cookie).form(form);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

async fn the_portal_refuses_forgeries_and_strangers(app: &TestApp) {
    let http = no_redirects();
    let (bea, bea_account) = owner(app, "bea@example.com").await;
    let (_carl, _) = owner(app, "carl@example.com").await;
    let mut tablet = Agent::new(app, "bea-tablet", 62, "true");
    let device = tablet.link_and_run(&bea, "bea@example.com").await;
    let cookie = web_sign_in(app, &http, "bea@example.com").await;

    // A page: the account, behind a policy that runs no script and forbids framing.
    let (s, h, html) = page(&http, &app.url("/web/"), &cookie).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains(&bea_account));
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let csrf = csrf_of(&html);
    let commands = format!("/web/devices/{device}/commands");
    let no_commands = || async {
        let list = get(&bea, &format!("/api/v1/devices/{device}/commands")).await;
        assert_eq!(list, json!([]), "a refused form queued a command");
    };

    // The cookie is not an access token, and an access token is not a cookie.
    let r = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(cookie.trim_start_matches("mica_session="))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let t = app
        .client
        .sign_in("bea@example.com", PASSWORD, None)
        .await
        .unwrap();
    let (s, h, _) = page(
        &http,
        &app.url("/web/devices"),
        &format!("mica_session={}", t.access_token),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/sign-in?next=/web/devices");

    // Forms without this session's token, or from another site, do nothing.
    for (extra, form) in [
        (vec![], vec![("kind", "ring")]),
        (vec![], vec![("kind", "ring"), ("csrf", "forged")]),
        (
            vec![("origin", "https://evil.example")],
            vec![("kind", "ring"), ("csrf", csrf.as_str())],
        ),
        (
            vec![("sec-fetch-site", "cross-site")],
            vec![("kind", "ring"), ("csrf", csrf.as_str())],
        ),
    ] {
        let (s, _, html) = post_form(&http, &app.url(&commands), &cookie, &extra, &form).await;
        assert!(
            s == StatusCode::FORBIDDEN || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{s} {html}"
        );
        assert!(html.contains("<h1>"), "answered with a page: {html}");
    }
    no_commands().await;

    // Bad forms get a page that says what is wrong, and nothing is stored.
    let long = "x".repeat(5000);
    for form in [
        vec![("csrf", csrf.as_str())],
        vec![("csrf", csrf.as_str()), ("kind", "explode")],
        vec![
            ("csrf", csrf.as_str()),
            ("kind", "lost_mode"),
            ("message", long.as_str()),
        ],
        vec![
            ("csrf", csrf.as_str()),
            ("kind", "lost_mode"),
            ("phone", "call me maybe"),
        ],
        vec![("csrf", csrf.as_str()), ("kind", "erase")],
    ] {
        let (s, _, html) = post_form(&http, &app.url(&commands), &cookie, &[], &form).await;
        assert!(s.is_client_error(), "{form:?}: {s}");
        assert!(html.contains("class=\"error\""), "{form:?}: {html}");
    }
    no_commands().await;

    // Addresses that name nothing are pages too.
    // (An address that is not UTF-8 once decoded is refused for the whole server before any
    // route, with the API's `400 invalid_address`.)
    for path in ["/web/nothing/here", "/web/devices/x?sent=a&sent=b"] {
        let (s, h, html) = page(&http, &app.url(path), &cookie).await;
        assert!(s.is_client_error(), "{path}: {s}");
        assert!(
            h["content-type"].to_str().unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(html.contains("<h1>"), "{path}: {html}");
    }

    // An erase needs a fresh step-up: the browser is sent to confirm it's you.
    let (s, h, _) = post_form(
        &http,
        &app.url(&commands),
        &cookie,
        &[],
        &[("csrf", &csrf), ("kind", "erase"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        h[LOCATION],
        format!("/web/confirm?next=/web/devices/{device}")
    );
    no_commands().await;

    // Another account's browser finds nothing of Bea's, and cannot command her tablet.
    let carl_cookie = web_sign_in(app, &http, "carl@example.com").await;
    let (s, _, html) = page(
        &http,
        &app.url(&format!("/web/devices/{device}")),
        &carl_cookie,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!html.contains("bea-tablet"));
    let (_, _, carl_html) = page(&http, &app.url("/web/"), &carl_cookie).await;
    let carl_csrf = csrf_of(&carl_html);
    assert_ne!(carl_csrf, csrf);
    let (s, _, _) = post_form(
        &http,
        &app.url(&commands),
        &carl_cookie,
        &[],
        &[("csrf", &carl_csrf), ("kind", "ring")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nor does Bea's token pass on Carl's session.
    let (s, _, _) = post_form(
        &http,
        &app.url(&commands),
        &carl_cookie,
        &[],
        &[("csrf", &csrf), ("kind", "ring")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    no_commands().await;

    // A good form does what it says.
    let (s, h, _) = post_form(
        &http,
        &app.url(&commands),
        &cookie,
        &[("origin", &app.base)],
        &[("csrf", &csrf), ("kind", "locate")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{h:?}");
    let list = get(&bea, &format!("/api/v1/devices/{device}/commands")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["kind"], "locate");

    // Managing the tablet: a rename, its places deleted; turning Find Device off and removing
    // it need a fresh step-up, made in the browser with the emailed code.
    let settings = format!("/web/devices/{device}/settings");
    let tablet_page = app.url(&format!("/web/devices/{device}"));
    let (s, h, _) = post_form(
        &http,
        &app.url(&settings),
        &cookie,
        &[],
        &[("csrf", &csrf), ("name", " Bea's <b>tablet</b> ")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], format!("/web/devices/{device}?changed=name"));
    let (_, _, html) = page(&http, &tablet_page, &cookie).await;
    assert!(
        html.contains("Bea&#39;s &#60;b&#62;tablet&#60;/b&#62;"),
        "the name is text, not markup: {html}"
    );
    assert!(!html.contains("<b>tablet</b>"));
    assert_eq!(
        get(&bea, &format!("/api/v1/devices/{device}")).await["name"],
        "Bea's <b>tablet</b>"
    );
    let (s, _, html) = post_form(
        &http,
        &app.url(&settings),
        &cookie,
        &[],
        &[("csrf", &csrf), ("name", "")],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    let places = app.url(&format!("/web/devices/{device}/places/delete"));
    let (s, _, _) = post_form(&http, &places, &cookie, &[], &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, h, _) = post_form(
        &http,
        &places,
        &cookie,
        &[],
        &[("csrf", &csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], format!("/web/devices/{device}?changed=places"));
    let remove = app.url(&format!("/web/devices/{device}/remove"));
    for (url, form) in [
        (
            app.url(&settings),
            [("csrf", csrf.as_str()), ("find_device", "off")],
        ),
        (
            remove.clone(),
            [("csrf", csrf.as_str()), ("confirm", "yes")],
        ),
    ] {
        let (s, h, _) = post_form(&http, &url, &cookie, &[], &form).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        assert_eq!(
            h[LOCATION],
            format!("/web/confirm?next=/web/devices/{device}")
        );
    }
    let (s, _, _) = post_form(&http, &remove, &cookie, &[], &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Carl can neither rename nor remove it.
    let (s, _, _) = post_form(
        &http,
        &app.url(&settings),
        &carl_cookie,
        &[],
        &[("csrf", &carl_csrf), ("name", "mine")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = post_form(
        &http,
        &remove,
        &carl_cookie,
        &[],
        &[("csrf", &carl_csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&bea, "/api/v1/devices").await.as_array().unwrap().len(),
        1
    );
    // The step-up, as a browser does it.
    let (challenge, code) = emailed_step_up_code(
        app,
        &http,
        &cookie,
        &csrf,
        "bea@example.com",
        &format!("/web/devices/{device}"),
    )
    .await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (s, _, html) = post_form(
        &http,
        &app.url("/web/confirm/verify"),
        &cookie,
        &[],
        &[
            ("csrf", &csrf),
            ("challenge_id", &challenge),
            ("code", wrong),
            ("next", "/web/"),
        ],
    )
    .await;
    assert!(s.is_client_error(), "{s}");
    assert!(html.contains("class=\"error\""));
    let (s, h, html) = post_form(
        &http,
        &app.url("/web/confirm/verify"),
        &cookie,
        &[],
        &[
            ("csrf", &csrf),
            ("challenge_id", &challenge),
            ("code", &code),
            ("next", "https://evil.example/"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(h[LOCATION], "/web/?confirmed=1");
    let (s, h, _) = post_form(
        &http,
        &app.url(&settings),
        &cookie,
        &[],
        &[("csrf", &csrf), ("find_device", "off")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        h[LOCATION],
        format!("/web/devices/{device}?changed=find_off")
    );
    assert_eq!(
        get(&bea, &format!("/api/v1/devices/{device}")).await["find_device"],
        json!(false)
    );
    let (s, h, _) = post_form(
        &http,
        &remove,
        &cookie,
        &[],
        &[("csrf", &csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/devices?removed=1");
    assert_eq!(get(&bea, "/api/v1/devices").await, json!([]));
    let (s, _, _) = page(&http, &tablet_page, &cookie).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Ending the browser's session from another device ends it in the browser at once.
    let sessions: Value = bea
        .raw(reqwest::Method::GET, "/api/v1/sessions", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let web = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client"] == "Web browser")
        .unwrap_or_else(|| panic!("the browser's session is listed: {sessions}"));
    bea.revoke_session(web["id"].as_str().unwrap())
        .await
        .unwrap();
    let (s, h, _) = page(&http, &app.url("/web/"), &cookie).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(h[LOCATION].to_str().unwrap().starts_with("/web/sign-in"));
    assert!(h[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let (s, h, _) = post_form(
        &http,
        &app.url(&settings),
        &cookie,
        &[],
        &[("csrf", &csrf), ("name", "signed out")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(h[LOCATION].to_str().unwrap().starts_with("/web/sign-in"));

    // Sign-in mistakes are said on the page, never a server error.
    let r = http
        .post(app.url("/web/sign-in"))
        .form(&[("login", "bea@example.com"), ("password", "nope-Nope-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("class=\"error\""));
    let r = http
        .post(app.url("/web/sign-in"))
        .form(&[("login", "")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());

    // Signing in again from a browser still signed in ends the session it held.
    let first = web_sign_in(app, &http, "bea@example.com").await;
    let r = http
        .post(app.url("/web/sign-in"))
        .header("cookie", &first)
        .form(&[("login", "bea@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let second = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (s, _, _) = page(&http, &app.url("/web/"), &first).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "the first session still works");
    // A browser sending a stale cookie of the same name besides its own is still signed in.
    let (s, _, _) = page(&http, &app.url("/web/"), &format!("{first}; {second}")).await;
    assert_eq!(s, StatusCode::OK);

    // A browser's session lasts a working day, not an app's months.
    app.advance(Duration::from_secs(11 * 3600));
    let (s, _, _) = page(&http, &app.url("/web/"), &second).await;
    assert_eq!(s, StatusCode::OK);
    app.advance(Duration::from_secs(3600 + 60));
    let (s, h, _) = page(&http, &app.url("/web/"), &second).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(h[LOCATION].to_str().unwrap().starts_with("/web/sign-in"));
    tablet.kill();
}

/// The bin entries a page lists, in order: the ids in its forms' addresses.
fn bin_ids(html: &str) -> Vec<String> {
    html.split("action=\"/web/bin/")
        .skip(1)
        .filter_map(|rest| rest.split_once("/restore\""))
        .map(|(id, _)| id.to_owned())
        .collect()
}

async fn deleted_notes_come_back_from_the_browsers_recycle_bin(app: &TestApp) {
    let http = no_redirects();
    let (dee, _) = owner(app, "dee@example.com").await;
    owner(app, "eve@example.com").await;
    let notes = [
        ("groceries", "Groceries"),
        ("evil", "<script>alert(1)</script>"),
    ];
    for (id, title) in notes {
        let note = json!({"title": title, "body": "text", "created_at": "2026-11-01T10:00:00Z",
            "updated_at": "2026-11-01T10:00:00Z"});
        let r = dee
            .push(
                "notes",
                json!([{"id": id, "op": "put", "body": note}]),
                None,
            )
            .await
            .unwrap();
        let version = r["results"][0]["version"].as_str().unwrap().to_owned();
        dee.push(
            "notes",
            json!([{"id": id, "op": "delete", "base_version": version}]),
            None,
        )
        .await
        .unwrap();
    }
    let cookie = web_sign_in(app, &http, "dee@example.com").await;
    let (s, _, html) = page(&http, &app.url("/web/bin"), &cookie).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("Note: <strong>Groceries</strong>"), "{html}");
    assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(!html.contains("<script>"));
    let ids = bin_ids(&html);
    assert_eq!(ids.len(), 2, "{html}");
    let csrf = csrf_of(&html);
    // Newest first: the script-titled note, then the groceries.
    let (evil, groceries) = (&ids[0], &ids[1]);

    // Another account's browser cannot touch them.
    let eve = web_sign_in(app, &http, "eve@example.com").await;
    let (_, _, eve_html) = page(&http, &app.url("/web/bin"), &eve).await;
    assert!(eve_html.contains("The recycle bin is empty."));
    let (s, _, _) = post_form(
        &http,
        &app.url(&format!("/web/bin/{groceries}/restore")),
        &eve,
        &[],
        &[("csrf", &csrf_of(&eve_html))],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Put back: the note is there again, for every device.
    let (s, h, _) = post_form(
        &http,
        &app.url(&format!("/web/bin/{groceries}/restore")),
        &cookie,
        &[],
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/bin?done=restore");
    let item = dee.item("notes", "groceries").await.unwrap();
    assert_eq!(item["body"]["title"], "Groceries");

    // Delete for good: only with the box ticked.
    let purge = app.url(&format!("/web/bin/{evil}/purge"));
    let (s, _, html) = post_form(&http, &purge, &cookie, &[], &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Tick the box"), "{html}");
    let (s, _, _) = post_form(
        &http,
        &purge,
        &cookie,
        &[],
        &[("csrf", &csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, _, html) = page(&http, &app.url("/web/bin"), &cookie).await;
    assert!(html.contains("The recycle bin is empty."), "{html}");
    assert!(dee.recycle_bin(None).await.unwrap().is_empty());
    // A cursor this server never gave is a page that says so.
    let (s, _, html) = page(&http, &app.url("/web/bin?cursor=bogus"), &cookie).await;
    assert!(s.is_client_error(), "{s}");
    assert!(html.contains("class=\"error\""));
}

async fn the_password_is_changed_from_a_browser_after_a_step_up(app: &TestApp) {
    let http = no_redirects();
    let (_, _) = owner(app, "fox@example.com").await;
    // A refused sign-in shows in the history.
    let r = http
        .post(app.url("/web/sign-in"))
        .form(&[
            ("login", "fox@example.com"),
            ("password", "not-It-at-all-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let phone = app
        .client
        .sign_in("fox@example.com", PASSWORD, None)
        .await
        .unwrap();
    let cookie = web_sign_in(app, &http, "fox@example.com").await;
    let (s, _, html) = page(&http, &app.url("/web/security"), &cookie).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("Wrong password") && html.contains("Signed in"),
        "{html}"
    );
    assert!(html.contains("Web browser"), "{html}");
    let csrf = csrf_of(&html);
    let change = app.url("/web/security/password");
    let new = "a-New-password-42!";

    // Typed differently twice: said so, nothing changed.
    let (s, _, html) = post_form(
        &http,
        &change,
        &cookie,
        &[],
        &[
            ("csrf", &csrf),
            ("new_password", new),
            ("repeat", "something else"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("The two passwords differ"), "{html}");
    // Without a fresh step-up: to the confirmation first.
    let (s, h, _) = post_form(
        &http,
        &change,
        &cookie,
        &[],
        &[("csrf", &csrf), ("new_password", new), ("repeat", new)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/confirm?next=/web/security");
    let (challenge, code) = emailed_step_up_code(
        app,
        &http,
        &cookie,
        &csrf,
        "fox@example.com",
        "/web/security",
    )
    .await;
    let (s, h, _) = post_form(
        &http,
        &app.url("/web/confirm/verify"),
        &cookie,
        &[],
        &[
            ("csrf", &csrf),
            ("challenge_id", &challenge),
            ("code", &code),
            ("next", "/web/security"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/security?confirmed=1");
    // A weak password is refused with the reason.
    let (s, _, html) = post_form(
        &http,
        &change,
        &cookie,
        &[],
        &[
            ("csrf", &csrf),
            ("new_password", "password"),
            ("repeat", "password"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("class=\"error\""), "{html}");
    let (s, h, _) = post_form(
        &http,
        &change,
        &cookie,
        &[],
        &[("csrf", &csrf), ("new_password", new), ("repeat", new)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/web/security?changed=password");
    // This browser stays signed in; the phone's session is over; the new password works.
    let (s, _, html) = page(&http, &app.url("/web/security?changed=password"), &cookie).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("Every other device and browser is signed out"));
    let r = app
        .http
        .get(app.url("/api/v1/me"))
        .bearer_auth(&phone.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(app
        .client
        .sign_in("fox@example.com", PASSWORD, None)
        .await
        .is_err());
    app.client
        .sign_in("fox@example.com", new, None)
        .await
        .unwrap();
}
