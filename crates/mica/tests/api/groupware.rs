//! CardDAV and CalDAV over the same contacts and calendars as the sync API: discovery from the
//! server's name, the same versions and bytes both ways, conditional writes, the change feed as
//! `sync-collection`, queries, new calendars, refusals — and vdirsyncer, a real client people
//! use, syncing a folder of vCards and iCalendar files both ways.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::on_both_backends;
use crate::support::{TestApp, PASSWORD};
use crate::sync::vcard;
use crate::webdav::{basic, with_app_password};

on_both_backends!(
    contacts_and_calendars_are_served_over_carddav_and_caldav,
    carddav_refuses_bad_input_and_other_accounts,
    vdirsyncer_syncs_contacts_and_calendars_both_ways,
);

/// A DAV client signed in with an app password; redirects are the test's to follow.
struct Dav {
    http: reqwest::Client,
    base: String,
    auth: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn etag(&self) -> String {
        self.headers["etag"].to_str().unwrap().to_owned()
    }
    /// The text of every `<prefix:name>` element (the server writes fixed prefixes).
    fn all(&self, tag: &str) -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        self.text
            .split(&open)
            .skip(1)
            .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_owned()))
            .collect()
    }
    /// The `<d:response>` whose href is `href`.
    fn response(&self, href: &str) -> Option<String> {
        self.all("d:response")
            .into_iter()
            .find(|r| r.starts_with(&format!("<d:href>{href}</d:href>")))
    }
}

/// XML text as the server escapes it (a vCard's CRs are character references).
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\r', "&#13;")
}

impl Dav {
    fn new(app: &TestApp, user: &str, password: &str) -> Self {
        Dav {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.url(""),
            auth: basic(user, password),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut r = self
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .header("authorization", &self.auth)
            .body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().await.unwrap();
        Answer {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    async fn propfind(&self, path: &str, depth: &str, props: &str) -> Answer {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cal="urn:ietf:params:xml:ns:caldav" xmlns:cs="http://calendarserver.org/ns/"><d:prop>{props}</d:prop></d:propfind>"#
        );
        let a = self.send("PROPFIND", path, &[("depth", depth)], body).await;
        assert_eq!(a.status, StatusCode::MULTI_STATUS, "{path}: {}", a.text);
        a
    }

    async fn report(&self, path: &str, body: &str) -> Answer {
        self.send(
            "REPORT",
            path,
            &[("depth", "1"), ("content-type", "application/xml")],
            body.to_owned(),
        )
        .await
    }

    async fn sync(&self, path: &str, token: &str) -> Answer {
        let a = self
            .report(
                path,
                &format!(
                    r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
                ),
            )
            .await;
        assert_eq!(a.status, StatusCode::MULTI_STATUS, "{}", a.text);
        a
    }
}

fn event(uid: &str, summary: &str, start: &str, end: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Mica//Test//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

async fn contacts_and_calendars_are_served_over_carddav_and_caldav(app: &TestApp) {
    let email = "dora@example.com";
    let (account, token, password) = with_app_password(app, email).await;
    let api = app.client.with_token(&token);
    let dav = Dav::new(app, email, &password);

    // Discovery from the server's name alone (RFC 6764), as phones do it.
    for service in ["carddav", "caldav"] {
        let a = dav
            .send("PROPFIND", &format!("/.well-known/{service}"), &[], "")
            .await;
        assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(a.headers["location"], "/dav/");
    }
    let principal = format!("/dav/principals/{account}/");
    let a = dav
        .propfind("/dav/", "0", "<d:current-user-principal/>")
        .await;
    assert_eq!(a.all("d:href")[1], principal, "{}", a.text);
    let a = dav
        .propfind(
            &principal,
            "0",
            "<card:addressbook-home-set/><cal:calendar-home-set/><cal:calendar-user-address-set/><d:displayname/>",
        )
        .await;
    let books = format!("/dav/addressbooks/{account}/");
    let calendars = format!("/dav/calendars/{account}/");
    let hrefs = a.all("d:href");
    assert!(
        hrefs.contains(&books) && hrefs.contains(&calendars),
        "{}",
        a.text
    );
    assert!(hrefs.contains(&format!("mailto:{email}")), "{}", a.text);
    assert_eq!(a.all("d:displayname"), [email]);

    // The phone's contact, pushed through the API, is in the default address book.
    let phone_card = vcard("p1", "Paula Phone");
    let r = api
        .push(
            "contacts",
            json!([{"id": "p1", "op": "put", "body": phone_card}]),
            None,
        )
        .await
        .unwrap();
    let p1_version = r["results"][0]["version"].as_str().unwrap().to_owned();
    let a = dav
        .propfind(
            &books,
            "1",
            "<d:resourcetype/><d:displayname/><cs:getctag/><d:sync-token/><d:getetag/><d:quota-used-bytes/>",
        )
        .await;
    let book = format!("{books}contacts/");
    let listed = a.response(&book).unwrap_or_else(|| panic!("{}", a.text));
    assert!(listed.contains("<card:addressbook/>"), "{listed}");
    assert!(
        listed.contains("<d:displayname>Contacts</d:displayname>"),
        "{listed}"
    );
    assert!(!a.all("d:quota-used-bytes")[0].is_empty());
    let a = dav
        .propfind(&book, "1", "<d:getetag/><d:sync-token/>")
        .await;
    let p1 = a
        .response(&format!("{book}p1"))
        .unwrap_or_else(|| panic!("{}", a.text));
    // One version for both protocols.
    assert!(
        p1.contains(&format!("<d:getetag>&quot;{p1_version}&quot;</d:getetag>")),
        "{p1}"
    );
    let listing_token = a.all("d:sync-token")[0].clone();

    // A DAV client adds a contact: the API sees the same bytes and version.
    let dav_card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:3F2A-uid\r\nFN:Anna Müller\r\nN:Müller;Anna;;;\r\nEMAIL;TYPE=INTERNET:anna@example.com\r\nEND:VCARD\r\n";
    let href = format!("{book}3F2A-uid.vcf");
    let put = dav
        .send(
            "PUT",
            &href,
            &[("if-none-match", "*"), ("content-type", "text/vcard")],
            dav_card,
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);
    let anna_etag = put.etag();
    let got = dav.send("GET", &href, &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text, dav_card, "byte for byte");
    assert_eq!(got.etag(), anna_etag);
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/vcard"));
    let item = api.item("contacts", "3F2A-uid.vcf").await.unwrap();
    assert_eq!(item["body"], dav_card);
    assert_eq!(
        format!("\"{}\"", item["version"].as_str().unwrap()),
        anna_etag
    );
    let cached = dav
        .send("GET", &href, &[("if-none-match", &anna_etag)], "")
        .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

    // A second create at the same address, and a write on a stale version, are refused.
    let again = dav
        .send("PUT", &href, &[("if-none-match", "*")], dav_card)
        .await;
    assert_eq!(
        again.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        again.text
    );
    let edited = dav_card.replace("Anna Müller", "Anna Maria Müller");
    let ok = dav
        .send("PUT", &href, &[("if-match", &anna_etag)], edited.clone())
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text);
    let stale = dav
        .send("PUT", &href, &[("if-match", &anna_etag)], dav_card)
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text
    );
    assert_eq!(
        dav.send("GET", &href, &[], "").await.text,
        edited,
        "the newer edit is kept"
    );

    // sync-collection: everything, then exactly what changed since, deletions included.
    let first = dav.sync(&book, "").await;
    assert!(
        first.response(&format!("{book}p1")).is_some(),
        "{}",
        first.text
    );
    assert!(first.response(&href).is_some(), "{}", first.text);
    let t1 = first.all("d:sync-token")[0].clone();
    // Nothing changed since the listing: the collection's token is the report's.
    let listing = dav.propfind(&book, "0", "<d:sync-token/>").await;
    assert_eq!(listing.all("d:sync-token")[0], t1);
    assert_ne!(
        listing_token, t1,
        "the token moved with the DAV client's writes"
    );
    let quiet = dav.sync(&book, &t1).await;
    assert!(quiet.all("d:response").is_empty(), "{}", quiet.text);
    let r = api
        .push(
            "contacts",
            json!([{"id": "p1", "op": "put", "base_version": p1_version, "body": vcard("p1", "Paula P. Phone")}]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r["results"][0]["status"], "applied");
    let current = dav.send("GET", &href, &[], "").await.etag();
    let stale_delete = dav
        .send("DELETE", &href, &[("if-match", &anna_etag)], "")
        .await;
    assert_eq!(stale_delete.status, StatusCode::PRECONDITION_FAILED);
    let gone = dav
        .send("DELETE", &href, &[("if-match", &current)], "")
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    assert_eq!(
        dav.send("GET", &href, &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    let delta = dav.sync(&book, &t1).await;
    assert_eq!(delta.all("d:response").len(), 2, "{}", delta.text);
    let p1 = delta.response(&format!("{book}p1")).unwrap();
    assert!(p1.contains("<d:getetag>"), "{p1}");
    let deleted = delta.response(&href).unwrap();
    assert!(deleted.contains("HTTP/1.1 404 Not Found"), "{deleted}");
    // Deleted over CardDAV, it waits in the recycle bin like any contact.
    let bin = api.recycle_bin(Some("contacts")).await.unwrap();
    assert_eq!(bin.len(), 1);
    assert_eq!(bin[0]["item_id"], "3F2A-uid.vcf");

    // Multiget and query.
    let both = dav
        .report(
            &book,
            &format!(
                r#"<card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop><d:href>{book}p1</d:href><d:href>{href}</d:href></card:addressbook-multiget>"#
            ),
        )
        .await;
    assert_eq!(both.status, StatusCode::MULTI_STATUS, "{}", both.text);
    let p1 = both.response(&format!("{book}p1")).unwrap();
    assert!(
        p1.contains(&xml_text(&vcard("p1", "Paula P. Phone"))),
        "{p1}"
    );
    assert!(both.response(&href).unwrap().contains("404 Not Found"));
    for (i, name) in [("a1", "Zoë Zeta"), ("a2", "Yann Young")] {
        let r = dav
            .send("PUT", &format!("{book}{i}.vcf"), &[], vcard(i, name))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let found = dav
        .report(
            &book,
            r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><card:filter><card:prop-filter name="FN"><card:text-match match-type="starts-with">ZOË</card:text-match></card:prop-filter></card:filter></card:addressbook-query>"#,
        )
        .await;
    assert_eq!(found.status, StatusCode::MULTI_STATUS, "{}", found.text);
    let hits = found.all("d:href");
    assert_eq!(hits, [format!("{book}a1.vcf")], "{}", found.text);

    // The whole address book, as one file to import elsewhere.
    let all = dav.send("GET", &book, &[], "").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.text.matches("BEGIN:VCARD").count(), 3, "{}", all.text);

    // CalDAV: a new calendar made by the client is a collection of the API too.
    let work = format!("{calendars}work/");
    let made = dav
        .send(
            "MKCALENDAR",
            &work,
            &[],
            r#"<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:set><d:prop><d:displayname>Work</d:displayname></d:prop></d:set></c:mkcalendar>"#,
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let twice = dav.send("MKCALENDAR", &work, &[], "").await;
    assert_eq!(twice.status, StatusCode::METHOD_NOT_ALLOWED);
    let cols = api.collections().await.unwrap();
    let w = cols.iter().find(|c| c["id"] == "work").unwrap();
    assert_eq!(
        (w["category"].as_str(), w["name"].as_str()),
        (Some("calendar"), Some("Work"))
    );
    let a = dav
        .propfind(
            &calendars,
            "1",
            "<d:resourcetype/><d:displayname/><cal:supported-calendar-component-set/>",
        )
        .await;
    let listed = a.response(&work).unwrap_or_else(|| panic!("{}", a.text));
    assert!(
        listed.contains("<cal:calendar/>") && listed.contains("Work"),
        "{listed}"
    );
    assert!(
        a.response(&format!("{calendars}calendar/")).is_some(),
        "{}",
        a.text
    );
    assert!(a.response(&format!("{calendars}work/")).is_some());
    let standup = event("s1", "Stand-up", "20261210T090000Z", "20261210T091500Z");
    let review = event("s2", "Review", "20270115T140000Z", "20270115T150000Z");
    for (id, text) in [("s1.ics", &standup), ("s2.ics", &review)] {
        let r = dav
            .send(
                "PUT",
                &format!("{work}{id}"),
                &[("if-none-match", "*")],
                text.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let december = dav
        .report(
            &work,
            r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:time-range start="20261201T000000Z" end="20270101T000000Z"/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#,
        )
        .await;
    assert_eq!(
        december.status,
        StatusCode::MULTI_STATUS,
        "{}",
        december.text
    );
    assert_eq!(
        december.all("d:href"),
        [format!("{work}s1.ics")],
        "{}",
        december.text
    );
    assert!(december.text.contains(&xml_text(&standup)));
    let (changes, _) = {
        let page = api.pull("work", None, None).await.unwrap();
        (page.changes, page.token)
    };
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].body.as_ref().unwrap(), &json!(standup));
    let ics = dav.send("GET", &work, &[], "").await;
    assert_eq!(ics.text.matches("BEGIN:VEVENT").count(), 2);
    assert_eq!(ics.text.matches("BEGIN:VCALENDAR").count(), 1);
    // A contact is not an event.
    let wrong = dav
        .send("PUT", &format!("{work}x.ics"), &[], vcard("x", "X"))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.text);
    assert!(
        wrong.text.contains("<cal:valid-calendar-data/>"),
        "{}",
        wrong.text
    );
}

async fn carddav_refuses_bad_input_and_other_accounts(app: &TestApp) {
    let email = "eli@example.com";
    let (account, _, password) = with_app_password(app, email).await;
    let dav = Dav::new(app, email, &password);
    let book = format!("/dav/addressbooks/{account}/contacts/");

    // Without credentials, with the main password, or a wrong one: a Basic challenge.
    let anonymous = reqwest::Client::new()
        .request(Method::from_bytes(b"PROPFIND").unwrap(), app.url(&book))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    for wrong in [PASSWORD, "abcd-efgh-ijkl-mnop"] {
        let a = Dav::new(app, email, wrong)
            .send("PROPFIND", &book, &[("depth", "0")], "")
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }

    // Bad items: refused with the RFC's precondition and Mica's code; nothing stored.
    let an_event = event("e", "E", "20261210T090000Z", "20261210T100000Z");
    let cases: [(&str, &[u8], StatusCode, &str); 4] = [
        (
            "broken.vcf",
            b"BEGIN:VCARD\r\nVERSION:4.0\r\nN:x;;;;\r\n",
            StatusCode::FORBIDDEN,
            "<card:valid-address-data/>",
        ),
        (
            "event.vcf",
            an_event.as_bytes(),
            StatusCode::FORBIDDEN,
            "<card:valid-address-data/>",
        ),
        (
            "latin1.vcf",
            b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Jos\xe9\r\nEND:VCARD\r\n",
            StatusCode::FORBIDDEN,
            "<card:valid-address-data/>",
        ),
        (
            "big.vcf",
            &[b'a'; 2 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "<card:max-resource-size/>",
        ),
    ];
    for (name, body, status, precondition) in cases {
        let a = dav
            .send("PUT", &format!("{book}{name}"), &[], body.to_vec())
            .await;
        assert_eq!(a.status, status, "{name}: {}", a.text);
        assert!(a.text.contains(precondition), "{name}: {}", a.text);
        assert!(a.text.contains("<m:code>"), "{name}: {}", a.text);
    }
    let listing = dav.propfind(&book, "1", "<d:getetag/>").await;
    assert_eq!(
        listing.all("d:response").len(),
        1,
        "only the book: {}",
        listing.text
    );
    // An id that is not one: a clear 4xx, nothing stored.
    let a = dav
        .send("PUT", &format!("{book}a%2Fb.vcf"), &[], vcard("ab", "A B"))
        .await;
    assert!(a.status.is_client_error(), "{}: {}", a.status, a.text);

    // Bad protocol input.
    let a = dav
        .report(&book, r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>data:,s1.99999.ffffffff</d:sync-token><d:prop/></d:sync-collection>"#)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(a.text.contains("<d:valid-sync-token/>"), "{}", a.text);
    let a = dav
        .report(&book, r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>http://other/1</d:sync-token><d:prop/></d:sync-collection>"#)
        .await;
    assert!(a.text.contains("<d:valid-sync-token/>"), "{}", a.text);
    let a = dav
        .report(&book, r#"<d:expand-property xmlns:d="DAV:"/>"#)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text.contains("<d:supported-report/>"), "{}", a.text);
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">]><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
    let a = dav.send("PROPFIND", &book, &[("depth", "0")], bomb).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("invalid_xml"));
    let a = dav.send("PROPFIND", &book, &[("depth", "2")], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = dav
        .send("PROPFIND", &book, &[("depth", "0")], "<oops")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = dav
        .report(&book, r#"<c:addressbook-query xmlns:c="urn:ietf:params:xml:ns:carddav"><c:filter><c:prop-filter name="FN"><c:text-match collation="i;klingon">x</c:text-match></c:prop-filter></c:filter></c:addressbook-query>"#)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text.contains("<card:supported-collation/>"), "{}", a.text);
    let a = dav
        .send(
            "MKCALENDAR",
            &format!("/dav/addressbooks/{account}/cal/"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = dav.send("DELETE", &book, &[], "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = dav
        .send(
            "PROPFIND",
            &format!("/dav/addressbooks/{account}/nowhere/"),
            &[("depth", "0")],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // The calendar is not an address book.
    let a = dav
        .send(
            "PROPFIND",
            &format!("/dav/addressbooks/{account}/calendar/"),
            &[("depth", "0")],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // Another account: its own credentials never reach this one's addresses.
    let card = vcard("mine", "Mine Only");
    assert_eq!(
        dav.send("PUT", &format!("{book}mine.vcf"), &[], card)
            .await
            .status,
        StatusCode::CREATED
    );
    let (_, _, other_password) = with_app_password(app, "fay@example.com").await;
    let other = Dav::new(app, "fay@example.com", &other_password);
    for (method, path) in [
        ("PROPFIND", format!("/dav/principals/{account}/")),
        ("PROPFIND", book.clone()),
        ("GET", format!("{book}mine.vcf")),
        ("PUT", format!("{book}theirs.vcf")),
        ("DELETE", format!("{book}mine.vcf")),
        ("REPORT", book.clone()),
    ] {
        let a = other
            .send(method, &path, &[("depth", "0")], vcard("theirs", "T"))
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(
        dav.send("GET", &format!("{book}mine.vcf"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
}

/// vdirsyncer (pip) between local folders and the server: discovery, a calendar it creates,
/// and changes both ways.
async fn vdirsyncer_syncs_contacts_and_calendars_both_ways(app: &TestApp) {
    let installed = std::process::Command::new("python3")
        .args(["-m", "vdirsyncer", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("MICA_TEST_REQUIRE_VDIRSYNCER").is_none(),
            "vdirsyncer is required here (pip install vdirsyncer)"
        );
        eprintln!("vdirsyncer is not installed: CardDAV/CalDAV client test skipped");
        return;
    }
    let email = "gus@example.com";
    let (_, token, password) = with_app_password(app, email).await;
    let api = app.client.with_token(&token);
    api.push(
        "contacts",
        json!([{"id": "srv1", "op": "put", "body": vcard("srv1", "Sam Server")}]),
        None,
    )
    .await
    .unwrap();

    let dir = app.cfg.data_dir.join("vdirsyncer");
    let local_card =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:loc1\r\nFN:Lou Local\r\nN:Local;Lou;;;\r\nEND:VCARD\r\n";
    let local_event = event("trip1", "Trip", "20261220T080000Z", "20261220T200000Z");
    std::fs::create_dir_all(dir.join("contacts/contacts")).unwrap();
    std::fs::create_dir_all(dir.join("calendars/trips")).unwrap();
    std::fs::write(dir.join("contacts/contacts/loc1.vcf"), local_card).unwrap();
    std::fs::write(dir.join("calendars/trips/trip1.ics"), &local_event).unwrap();
    let base = app.url("/");
    let config = format!(
        r#"[general]
status_path = "{d}/status/"

[pair contacts]
a = "contacts_local"
b = "contacts_remote"
collections = ["from a", "from b"]
conflict_resolution = "b wins"

[storage contacts_local]
type = "filesystem"
path = "{d}/contacts/"
fileext = ".vcf"

[storage contacts_remote]
type = "carddav"
url = "{base}"
username = "{email}"
password = "{password}"

[pair calendars]
a = "calendars_local"
b = "calendars_remote"
collections = ["from a", "from b"]
conflict_resolution = "b wins"

[storage calendars_local]
type = "filesystem"
path = "{d}/calendars/"
fileext = ".ics"

[storage calendars_remote]
type = "caldav"
url = "{base}"
username = "{email}"
password = "{password}"
"#,
        d = dir.display()
    );
    let config_path = dir.join("config");
    std::fs::write(&config_path, config).unwrap();
    let run = |args: &'static [&'static str]| {
        let config_path = config_path.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut child = std::process::Command::new("python3")
                    .env("VDIRSYNCER_CONFIG", &config_path)
                    .args(["-m", "vdirsyncer"])
                    .args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                // `discover` asks before it makes a collection on the other side: yes.
                let _ = child.stdin.take().unwrap().write_all(b"y\ny\ny\ny\ny\ny\n");
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap();
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "vdirsyncer {args:?} failed:\n{text}");
            text
        }
    };
    run(&["discover"]).await;
    run(&["sync"]).await;

    // The server's contact reached the folder; the folder's contact and calendar reached the
    // server, byte for byte.
    let local: Vec<String> = std::fs::read_dir(dir.join("contacts/contacts"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(
        local.iter().any(|c| c.contains("FN:Sam Server")),
        "{local:?}"
    );
    let (changes, _) = {
        let p = api.pull("contacts", None, None).await.unwrap();
        (p.changes, p.token)
    };
    let lou = changes
        .iter()
        .find(|c| {
            c.body
                .as_ref()
                .and_then(|b| b.as_str())
                .is_some_and(|b| b.contains("Lou Local"))
        })
        .unwrap_or_else(|| panic!("{changes:?}"));
    assert_eq!(lou.body.as_ref().unwrap(), &json!(local_card));
    let cols = api.collections().await.unwrap();
    assert!(
        cols.iter()
            .any(|c| c["id"] == "trips" && c["category"] == "calendar"),
        "{cols:?}"
    );
    let trips = api.pull("trips", None, None).await.unwrap();
    assert_eq!(trips.changes.len(), 1);
    assert_eq!(trips.changes[0].body.as_ref().unwrap(), &json!(local_event));
    assert!(
        dir.join("calendars/calendar").is_dir(),
        "the server's calendar came down"
    );

    // An edit on the phone comes down; a deletion in the folder goes up, to the recycle bin.
    let srv1 = changes.iter().find(|c| c.id == "srv1").unwrap();
    let r = api
        .push(
            "contacts",
            json!([{"id": "srv1", "op": "put", "base_version": srv1.version, "body": vcard("srv1", "Sam S. Server")}]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r["results"][0]["status"], "applied");
    let lou_file = std::fs::read_dir(dir.join("contacts/contacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains("Lou Local"))
        .unwrap();
    std::fs::remove_file(lou_file).unwrap();
    run(&["sync"]).await;
    let local: Vec<String> = std::fs::read_dir(dir.join("contacts/contacts"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(local.len(), 1, "{local:?}");
    assert!(local[0].contains("FN:Sam S. Server"), "{local:?}");
    let after = api.pull("contacts", None, None).await.unwrap();
    let live: Vec<_> = after.changes.iter().filter(|c| !c.deleted).collect();
    assert_eq!(live.len(), 1, "{:?}", after.changes);
    let bin = api.recycle_bin(Some("contacts")).await.unwrap();
    assert_eq!(bin.len(), 1, "{bin:?}");
}
