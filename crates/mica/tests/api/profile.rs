//! Profile, avatar (validated, re-encoded, bounded) and the security checkup.

use std::io::Cursor;

use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use crate::on_both_backends;
use crate::security::enable_totp;
use crate::support::TestApp;

on_both_backends!(
    profile_is_set_validated_and_private,
    avatars_are_checked_and_reencoded,
    checkup_scores_the_account
);

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A tiny PNG whose header claims `w`×`h` pixels: a decompression bomb.
fn bomb(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(1, 1);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); its CRC follows the 13 bytes.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

async fn profile_is_set_validated_and_private(app: &TestApp) {
    let t = app.signup_email("ana@example.com").await;
    let c = app.client.with_token(&t.access_token);
    assert_eq!(
        c.profile().await.unwrap()["nickname"],
        serde_json::Value::Null
    );
    let p = c
        .set_profile(
            json!({"nickname": " Ana ", "gender": "female", "country": "br", "locale": "pt-BR"}),
        )
        .await
        .unwrap();
    assert_eq!(p["nickname"], "Ana");
    assert_eq!(p["country"], "BR");
    assert_eq!(c.profile().await.unwrap()["locale"], "pt-BR");
    for (bad, field) in [
        (json!({"country": "XX"}), "country"),
        (json!({"gender": "robot"}), "gender"),
        (json!({"locale": "not a locale"}), "locale"),
        (json!({"nickname": "n".repeat(65)}), "nickname"),
    ] {
        let err = c.set_profile(bad).await.unwrap_err();
        assert_eq!(err.code(), Some("invalid_input"));
        assert!(err.to_string().contains(field), "{err}");
    }
    assert_eq!(
        c.profile().await.unwrap()["nickname"],
        "Ana",
        "a refused update changes nothing"
    );
    let other = app.signup_email("bea@example.com").await;
    assert_eq!(
        app.client
            .with_token(&other.access_token)
            .profile()
            .await
            .unwrap()["nickname"],
        serde_json::Value::Null
    );
}

async fn avatars_are_checked_and_reencoded(app: &TestApp) {
    let t = app.signup_email("cy@example.com").await;
    // A fresh connection per upload: a server refusing an oversized body closes its connection.
    let put = |body: Vec<u8>, ct: &'static str| {
        reqwest::Client::new()
            .put(app.url("/api/v1/me/avatar"))
            .bearer_auth(&t.access_token)
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
    };
    let get = || {
        app.http
            .get(app.url("/api/v1/me/avatar"))
            .bearer_auth(&t.access_token)
            .send()
    };
    assert_eq!(get().await.unwrap().status().as_u16(), 404);

    assert_eq!(
        put(png(800, 600), "image/png")
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let resp = get().await.unwrap();
    assert_eq!(resp.headers()[CONTENT_TYPE], "image/png");
    let stored = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (stored.width(), stored.height()),
        (256, 192),
        "scaled to fit 256×256, aspect kept"
    );

    let refused = [
        (b"hello, I am text".to_vec(), "image/png", 422),
        (png(10, 10)[..40].to_vec(), "image/png", 422),
        (bomb(60_000, 60_000), "image/png", 422),
        (png(10, 10), "text/plain", 415),
        (vec![0u8; 6 * 1024 * 1024], "image/png", 413),
    ];
    for (body, ct, status) in refused {
        let resp = match put(body, ct).await {
            Ok(resp) => resp,
            // The server answers 413 from the declared length without reading the 6 MiB and
            // closes the connection; a client still writing them may see the close first.
            Err(e) if status == 413 && e.is_request() => continue,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(resp.status().as_u16(), status);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // The earlier avatar is still there, unchanged.
    let again = image::load_from_memory(&get().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!((again.width(), again.height()), (256, 192));
    assert_eq!(
        app.http
            .delete(app.url("/api/v1/me/avatar"))
            .bearer_auth(&t.access_token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    assert_eq!(get().await.unwrap().status().as_u16(), 404);
}

async fn checkup_scores_the_account(app: &TestApp) {
    let t = app.signup_email("dan@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let before = c.security_checkup().await.unwrap();
    let score = before["score"].as_u64().unwrap();
    let steps = before["steps"].as_array().unwrap();
    let done = |id: &str, v: &serde_json::Value| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["done"] == true)
            .unwrap()
    };
    assert!(done("email", &before) && !done("phone", &before) && !done("two_step", &before));
    assert_eq!(
        score,
        steps
            .iter()
            .filter(|s| s["done"] == true)
            .map(|s| s["points"].as_u64().unwrap())
            .sum::<u64>()
    );
    assert!(score < 100);
    assert!(steps
        .iter()
        .all(|s| !s["advice"].as_str().unwrap().is_empty()));

    enable_totp(app, &c, "dan@example.com").await;
    let after = c.security_checkup().await.unwrap();
    assert!(done("two_step", &after) && done("recovery_codes", &after));
    assert_eq!(after["score"].as_u64().unwrap(), score + 40);

    // A wrong password typed by someone else shows up.
    let _ = app
        .client
        .sign_in("dan@example.com", "Wrong-password-1", None)
        .await;
    assert!(!done(
        "no_failed_sign_ins",
        &c.security_checkup().await.unwrap()
    ));
}
