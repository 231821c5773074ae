//! CardDAV (RFC 6352) and CalDAV (RFC 4791) over the sync engine's contacts and calendars, so
//! stock apps (DAVx5, iOS and macOS accounts, Thunderbird, Evolution, vdirsyncer) sync them
//! without a Mica app. Same data, same versions: an item's ETag is its sync version, a write
//! goes through the same push as the API (validation, quota, recycle bin, live notification),
//! and `sync-collection` (RFC 6578) reads the same change feed.
//!
//! ```text
//! /.well-known/carddav, /.well-known/caldav  → /dav/
//! /dav/                                      current-user-principal
//! /dav/principals/{account}/                 the home sets
//! /dav/addressbooks/{account}/{collection}/{item}
//! /dav/calendars/{account}/{collection}/{item}
//! ```
//!
//! Authentication is the drive's (`webdav.rs`): HTTP Basic with an app password, or a bearer
//! token. Another account's paths answer `404`. The XML is `mica_dav::groupware`'s.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use mica_cloud::{Category, CloudError, CollectionInfo, ItemView, Write};
use mica_core::AccountId;
use mica_dav::groupware::{
    self as xml, Multistatus, Prop, PropFind, Report, Value, XmlError, CALDAV, CALSERVER, CARDDAV,
    DAV,
};
use mica_store::OpStatus;

use crate::error::ApiError;
use crate::extract::Client;
use crate::webdav::{authenticate, challenge};
use crate::AppState;

/// The largest PROPFIND, REPORT, MKCOL or PROPPATCH body (a multiget of a few thousand hrefs).
const MAX_XML_BODY: usize = 1 << 20;
/// The most changes one `sync-collection` answer carries; the client asks again for the rest.
const MAX_SYNC: usize = 5_000;
/// A sync token is a URI (RFC 6578): the feed's token in a `data:` URI.
const SYNC_PREFIX: &str = "data:,";
const ALLOW: &str =
    "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, REPORT, MKCOL, MKCALENDAR";

pub(crate) fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/.well-known/carddav", any(well_known))
        .route("/.well-known/caldav", any(well_known))
        .route("/dav", any(groupware))
        .route("/dav/", any(groupware))
        .route("/dav/principals/{account}", any(groupware))
        .route("/dav/principals/{account}/", any(groupware));
    for home in ["addressbooks", "calendars"] {
        r = r
            .route(&format!("/dav/{home}/{{account}}"), any(groupware))
            .route(&format!("/dav/{home}/{{account}}/"), any(groupware))
            .route(&format!("/dav/{home}/{{account}}/{{c}}"), any(groupware))
            .route(&format!("/dav/{home}/{{account}}/{{c}}/"), any(groupware))
            .route(
                &format!("/dav/{home}/{{account}}/{{c}}/{{i}}"),
                any(groupware),
            );
    }
    r.layer(axum::middleware::map_response(crate::user_content_headers))
}

/// RFC 6764: a client given only the server's name finds the service here.
async fn well_known() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, HeaderValue::from_static("/dav/"))],
    )
        .into_response()
}

/// Address books or calendars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Contacts,
    Calendar,
}

impl Kind {
    fn category(self) -> Category {
        match self {
            Kind::Contacts => Category::Contacts,
            Kind::Calendar => Category::Calendar,
        }
    }
    fn home(self) -> &'static str {
        match self {
            Kind::Contacts => "addressbooks",
            Kind::Calendar => "calendars",
        }
    }
    fn ns(self) -> &'static str {
        match self {
            Kind::Contacts => CARDDAV,
            Kind::Calendar => CALDAV,
        }
    }
    /// The property that carries an item's text.
    fn data(self) -> Prop {
        match self {
            Kind::Contacts => Prop::new(CARDDAV, "address-data"),
            Kind::Calendar => Prop::new(CALDAV, "calendar-data"),
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Kind::Contacts => "text/vcard; charset=utf-8",
            Kind::Calendar => "text/calendar; charset=utf-8",
        }
    }
    fn valid_data(self) -> &'static str {
        match self {
            Kind::Contacts => "valid-address-data",
            Kind::Calendar => "valid-calendar-data",
        }
    }
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Root,
    Principal,
    Home(Kind),
    Collection(Kind, String),
    Item(Kind, String, String),
}

/// Reads `/dav/…` into its target and the account it names (`None` for the root).
fn target(path: &str) -> Option<(Target, Option<String>)> {
    let rest = path.strip_prefix("/dav")?;
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let kind = |h: &str| match h {
        "addressbooks" => Some(Kind::Contacts),
        "calendars" => Some(Kind::Calendar),
        _ => None,
    };
    Some(match seg.as_slice() {
        [] => (Target::Root, None),
        ["principals", a] => (Target::Principal, Some((*a).to_owned())),
        [h, a] => (Target::Home(kind(h)?), Some((*a).to_owned())),
        [h, a, c] => (
            Target::Collection(kind(h)?, (*c).to_owned()),
            Some((*a).to_owned()),
        ),
        [h, a, c, i] => (
            Target::Item(kind(h)?, (*c).to_owned(), (*i).to_owned()),
            Some((*a).to_owned()),
        ),
        _ => return None,
    })
}

/// Addresses of one signed-in account's resources.
struct Hrefs {
    account: String,
}

impl Hrefs {
    fn principal(&self) -> String {
        format!("/dav/principals/{}/", self.account)
    }
    fn home(&self, k: Kind) -> String {
        format!("/dav/{}/{}/", k.home(), self.account)
    }
    fn collection(&self, k: Kind, c: &str) -> String {
        format!("{}{c}/", self.home(k))
    }
    /// Item and collection ids are letters, digits and `-_.~@+=`: safe in a path as they are.
    fn item(&self, k: Kind, c: &str, i: &str) -> String {
        format!("{}{i}", self.collection(k, c))
    }
}

/// A refusal in CardDAV's or CalDAV's terms.
struct DavError {
    status: StatusCode,
    /// The precondition element (namespace, name) the RFC names, if any.
    precondition: Option<(&'static str, &'static str)>,
    code: &'static str,
    message: String,
}

impl DavError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        DavError {
            status,
            precondition: None,
            code,
            message: message.into(),
        }
    }
    fn precondition(
        status: StatusCode,
        ns: &'static str,
        name: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        DavError {
            status,
            precondition: Some((ns, name)),
            code,
            message: message.into(),
        }
    }
    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is nothing at this address",
        )
    }
    fn cloud(e: CloudError) -> Self {
        let api = ApiError::from(e);
        DavError::new(api.status, api.code, api.message)
    }
}

impl From<XmlError> for DavError {
    fn from(e: XmlError) -> Self {
        match e {
            XmlError::Malformed(m) => DavError::new(StatusCode::BAD_REQUEST, "invalid_xml", m),
            XmlError::Unsupported {
                ns,
                precondition,
                message,
            } => DavError::precondition(
                StatusCode::FORBIDDEN,
                ns,
                precondition,
                "unsupported_query",
                message,
            ),
        }
    }
}

impl IntoResponse for DavError {
    fn into_response(self) -> Response {
        let (ns, name) = self.precondition.unwrap_or((DAV, ""));
        let body = xml::error_body(ns, name, self.code, &self.message);
        (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            )],
            body,
        )
            .into_response()
    }
}

/// One request, signed in.
struct Ctx {
    app: AppState,
    account: AccountId,
    user: String,
    hrefs: Hrefs,
}

async fn groupware(State(app): State<AppState>, client: Client, req: Request) -> Response {
    let (account, user) = match authenticate(&app, req.headers(), client).await {
        Ok(a) => a,
        Err(e) => return challenge(e),
    };
    let Some((target, named)) = target(req.uri().path()) else {
        return DavError::not_found().into_response();
    };
    // Another account's addresses do not exist, as far as this one can tell.
    if named.is_some_and(|a| a != account.to_string()) {
        return DavError::not_found().into_response();
    }
    let ctx = Ctx {
        app,
        account,
        user,
        hrefs: Hrefs {
            account: account.to_string(),
        },
    };
    match handle(&ctx, target, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(ctx: &Ctx, target: Target, req: Request) -> Result<Response, DavError> {
    let method = req.method().clone();
    match method.as_str() {
        "OPTIONS" => Ok(options()),
        "PROPFIND" => {
            let depth = depth(req.headers())?;
            let body = read_body(req, MAX_XML_BODY).await?;
            propfind(ctx, &target, depth, xml::parse_propfind(&body)?).await
        }
        "REPORT" => {
            let Target::Collection(kind, c) = &target else {
                return Err(unsupported_report());
            };
            let body = read_body(req, MAX_XML_BODY).await?;
            report(ctx, *kind, c, xml::parse_report(&body)?).await
        }
        "GET" | "HEAD" => match &target {
            Target::Item(kind, c, i) => get_item(ctx, *kind, c, i, req.headers()).await,
            Target::Collection(kind, c) => export(ctx, *kind, c).await,
            _ => Err(DavError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this is a folder of address books or calendars: open one with PROPFIND",
            )),
        },
        "PUT" => {
            let Target::Item(kind, c, i) = target else {
                return Err(DavError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "PUT a contact or an event inside an address book or a calendar",
                ));
            };
            put_item(ctx, kind, &c, &i, req).await
        }
        "DELETE" => match &target {
            Target::Item(kind, c, i) => delete_item(ctx, *kind, c, i, req.headers()).await,
            _ => Err(DavError::new(
                StatusCode::FORBIDDEN,
                "not_deletable",
                "address books and calendars are deleted in the web portal or the app; \
                 delete their contacts and events here",
            )),
        },
        "MKCOL" | "MKCALENDAR" => {
            let Target::Collection(kind, c) = target else {
                return Err(DavError::new(
                    StatusCode::FORBIDDEN,
                    "not_allowed_here",
                    "make address books and calendars in your address-book or calendar home",
                ));
            };
            let calendar = method.as_str() == "MKCALENDAR";
            let body = read_body(req, MAX_XML_BODY).await?;
            make_collection(ctx, kind, &c, calendar, xml::parse_mkcol(&body)?).await
        }
        "PROPPATCH" => {
            let href = href_of(ctx, &target);
            let body = read_body(req, MAX_XML_BODY).await?;
            let props = xml::parse_proppatch(&body)?;
            // Names and colours are the app's and the portal's to set; say so per property.
            let mut ms = Multistatus::new();
            ms.refused(&href, &props, "403 Forbidden");
            Ok(multistatus(ms))
        }
        _ => Err(DavError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not supported here; these are: {ALLOW}"),
        )),
    }
}

fn options() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::HeaderName::from_static("dav"),
                HeaderValue::from_static("1, 3, addressbook, calendar-access"),
            ),
            (header::ALLOW, HeaderValue::from_static(ALLOW)),
        ],
    )
        .into_response()
}

fn unsupported_report() -> DavError {
    DavError::precondition(
        StatusCode::FORBIDDEN,
        DAV,
        "supported-report",
        "unsupported_report",
        "this resource makes no such report; address books and calendars make \
         sync-collection, multiget and query reports",
    )
}

/// `Depth`: 0 or 1 (`infinity`, the default, is answered as 1: nothing here nests deeper).
fn depth(h: &HeaderMap) -> Result<u8, DavError> {
    match h.get("depth").map(|v| v.to_str().unwrap_or("?").trim()) {
        Some("0") => Ok(0),
        Some("1") | Some("infinity") | None => Ok(1),
        Some(other) => Err(DavError::new(
            StatusCode::BAD_REQUEST,
            "invalid_depth",
            format!("Depth is 0, 1 or infinity, not {other:?}"),
        )),
    }
}

async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, DavError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            DavError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {limit} bytes"),
            )
        })
}

fn multistatus(ms: Multistatus) -> Response {
    (
        StatusCode::MULTI_STATUS,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        ms.finish(),
    )
        .into_response()
}

fn href_of(ctx: &Ctx, t: &Target) -> String {
    match t {
        Target::Root => "/dav/".into(),
        Target::Principal => ctx.hrefs.principal(),
        Target::Home(k) => ctx.hrefs.home(*k),
        Target::Collection(k, c) => ctx.hrefs.collection(*k, c),
        Target::Item(k, c, i) => ctx.hrefs.item(*k, c, i),
    }
}

/// The properties asked for, out of those a resource has: (found, missing). `allprop` leaves
/// out what RFC 6352 and 4791 keep for explicit requests (an item's text, the quota).
fn select(req: &PropFind, have: Vec<(Prop, Value)>) -> (Vec<(Prop, Value)>, Vec<Prop>) {
    match req {
        PropFind::AllProp => (have, Vec::new()),
        PropFind::PropName => (
            have.into_iter().map(|(p, _)| (p, Value::Empty)).collect(),
            Vec::new(),
        ),
        PropFind::Props(want) => {
            let mut have = have;
            let mut found = Vec::with_capacity(want.len());
            let mut missing = Vec::new();
            for w in want {
                match have.iter().position(|(p, _)| p == w) {
                    Some(i) => found.push(have.swap_remove(i)),
                    None => missing.push(w.clone()),
                }
            }
            (found, missing)
        }
    }
}

fn wants(req: &PropFind, p: &Prop) -> bool {
    matches!(req, PropFind::Props(w) if w.contains(p))
}

fn privileges(write: bool) -> Value {
    let mut x = String::from("<d:privilege><d:read/></d:privilege>");
    x.push_str("<d:privilege><d:read-current-user-privilege-set/></d:privilege>");
    if write {
        for p in ["write", "write-content", "bind", "unbind"] {
            x.push_str(&format!("<d:privilege><d:{p}/></d:privilege>"));
        }
    }
    Value::Xml(x)
}

fn principal_props(ctx: &Ctx) -> Vec<(Prop, Value)> {
    let h = &ctx.hrefs;
    let address = if ctx.user.contains('@') {
        format!("mailto:{}", ctx.user)
    } else {
        h.principal()
    };
    vec![
        (
            Prop::new(DAV, "resourcetype"),
            Value::Xml("<d:collection/><d:principal/>".into()),
        ),
        (Prop::new(DAV, "displayname"), Value::Text(ctx.user.clone())),
        (
            Prop::new(DAV, "current-user-principal"),
            Value::Href(h.principal()),
        ),
        (Prop::new(DAV, "principal-URL"), Value::Href(h.principal())),
        (
            Prop::new(CARDDAV, "addressbook-home-set"),
            Value::Href(h.home(Kind::Contacts)),
        ),
        (
            Prop::new(CALDAV, "calendar-home-set"),
            Value::Href(h.home(Kind::Calendar)),
        ),
        (
            Prop::new(CALDAV, "calendar-user-address-set"),
            Value::Hrefs(vec![address, h.principal()]),
        ),
        (
            Prop::new(DAV, "current-user-privilege-set"),
            privileges(false),
        ),
    ]
}

fn home_props(ctx: &Ctx, kind: Kind) -> Vec<(Prop, Value)> {
    let h = &ctx.hrefs;
    vec![
        (
            Prop::new(DAV, "resourcetype"),
            Value::Xml("<d:collection/>".into()),
        ),
        (
            Prop::new(DAV, "displayname"),
            Value::Text(
                match kind {
                    Kind::Contacts => "Address books",
                    Kind::Calendar => "Calendars",
                }
                .into(),
            ),
        ),
        (
            Prop::new(DAV, "current-user-principal"),
            Value::Href(h.principal()),
        ),
        (Prop::new(DAV, "owner"), Value::Href(h.principal())),
        (
            Prop::new(DAV, "current-user-privilege-set"),
            privileges(true),
        ),
    ]
}

async fn collection_props(
    ctx: &Ctx,
    kind: Kind,
    info: &CollectionInfo,
    token: &str,
    req: &PropFind,
) -> Result<Vec<(Prop, Value)>, DavError> {
    let h = &ctx.hrefs;
    let ns = kind.ns();
    let (resourcetype, reports, data) = match kind {
        Kind::Contacts => (
            "<d:collection/><card:addressbook/>",
            ["card:addressbook-multiget", "card:addressbook-query"],
            (
                Prop::new(CARDDAV, "supported-address-data"),
                "<card:address-data-type content-type=\"text/vcard\" version=\"3.0\"/>\
                 <card:address-data-type content-type=\"text/vcard\" version=\"4.0\"/>",
            ),
        ),
        Kind::Calendar => (
            "<d:collection/><cal:calendar/>",
            ["cal:calendar-multiget", "cal:calendar-query"],
            (
                Prop::new(CALDAV, "supported-calendar-data"),
                "<cal:calendar-data content-type=\"text/calendar\" version=\"2.0\"/>",
            ),
        ),
    };
    let mut report_set = String::from(
        "<d:supported-report><d:report><d:sync-collection/></d:report></d:supported-report>",
    );
    for r in reports {
        report_set.push_str(&format!(
            "<d:supported-report><d:report><{r}/></d:report></d:supported-report>"
        ));
    }
    let sync_token = format!("{SYNC_PREFIX}{token}");
    let mut v = vec![
        (
            Prop::new(DAV, "resourcetype"),
            Value::Xml(resourcetype.into()),
        ),
        (
            Prop::new(DAV, "displayname"),
            Value::Text(info.name.clone()),
        ),
        (
            Prop::new(DAV, "sync-token"),
            Value::Text(sync_token.clone()),
        ),
        (Prop::new(CALSERVER, "getctag"), Value::Text(sync_token)),
        (
            Prop::new(DAV, "supported-report-set"),
            Value::Xml(report_set),
        ),
        (
            Prop::new(DAV, "current-user-principal"),
            Value::Href(h.principal()),
        ),
        (Prop::new(DAV, "owner"), Value::Href(h.principal())),
        (
            Prop::new(DAV, "current-user-privilege-set"),
            privileges(true),
        ),
        (data.0, Value::Xml(data.1.into())),
        (
            Prop::new(ns, "max-resource-size"),
            Value::Text(ctx.app.cloud.config().max_item_bytes.to_string()),
        ),
    ];
    if kind == Kind::Calendar {
        v.push((
            Prop::new(CALDAV, "supported-calendar-component-set"),
            Value::Xml("<cal:comp name=\"VEVENT\"/><cal:comp name=\"VTODO\"/>".into()),
        ));
    }
    // RFC 4331: the account's one quota, asked for by name only (it costs a query).
    let used = Prop::new(DAV, "quota-used-bytes");
    let available = Prop::new(DAV, "quota-available-bytes");
    if wants(req, &used) || wants(req, &available) {
        let u = ctx
            .app
            .cloud
            .usage(ctx.account)
            .await
            .map_err(DavError::cloud)?;
        v.push((used, Value::Text(u.used_bytes.to_string())));
        v.push((
            available,
            Value::Text((u.quota_bytes - u.used_bytes).max(0).to_string()),
        ));
    }
    Ok(v)
}

fn etag(version: &str) -> String {
    format!("\"{version}\"")
}

fn item_text(item: &ItemView) -> &str {
    item.body
        .as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default()
}

fn http_date(t: mica_core::Timestamp) -> String {
    let secs = u64::try_from(t.millis() / 1000).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn item_props(kind: Kind, item: &ItemView, with_data: bool) -> Vec<(Prop, Value)> {
    let text = item_text(item);
    let mut v = vec![
        (Prop::new(DAV, "getetag"), Value::Text(etag(&item.version))),
        (
            Prop::new(DAV, "getcontenttype"),
            Value::Text(kind.content_type().into()),
        ),
        (
            Prop::new(DAV, "getcontentlength"),
            Value::Text(text.len().to_string()),
        ),
        (
            Prop::new(DAV, "getlastmodified"),
            Value::Text(http_date(item.modified_at)),
        ),
        (Prop::new(DAV, "resourcetype"), Value::Xml(String::new())),
    ];
    if with_data {
        v.push((kind.data(), Value::Text(text.to_owned())));
    }
    v
}

/// The collection, which must be of the kind its home says.
async fn collection(ctx: &Ctx, kind: Kind, c: &str) -> Result<(CollectionInfo, String), DavError> {
    let (info, token) = ctx
        .app
        .cloud
        .collection_state(ctx.account, c)
        .await
        .map_err(|e| match e {
            CloudError::Invalid { .. } | CloudError::NotFound => DavError::not_found(),
            e => DavError::cloud(e),
        })?;
    if info.category != kind.category() {
        return Err(DavError::not_found());
    }
    Ok((info, token))
}

async fn propfind(
    ctx: &Ctx,
    target: &Target,
    depth: u8,
    req: PropFind,
) -> Result<Response, DavError> {
    let mut ms = Multistatus::new();
    let add = |ms: &mut Multistatus, href: &str, have: Vec<(Prop, Value)>| {
        let (found, missing) = select(&req, have);
        ms.response(href, &found, &missing);
    };
    match target {
        Target::Root => {
            let h = &ctx.hrefs;
            add(
                &mut ms,
                "/dav/",
                vec![
                    (
                        Prop::new(DAV, "resourcetype"),
                        Value::Xml("<d:collection/>".into()),
                    ),
                    (
                        Prop::new(DAV, "current-user-principal"),
                        Value::Href(h.principal()),
                    ),
                    (
                        Prop::new(CARDDAV, "addressbook-home-set"),
                        Value::Href(h.home(Kind::Contacts)),
                    ),
                    (
                        Prop::new(CALDAV, "calendar-home-set"),
                        Value::Href(h.home(Kind::Calendar)),
                    ),
                ],
            );
            if depth > 0 {
                add(&mut ms, &h.principal(), principal_props(ctx));
            }
        }
        Target::Principal => add(&mut ms, &ctx.hrefs.principal(), principal_props(ctx)),
        Target::Home(kind) => {
            add(&mut ms, &ctx.hrefs.home(*kind), home_props(ctx, *kind));
            if depth > 0 {
                let all = ctx
                    .app
                    .cloud
                    .collections(ctx.account)
                    .await
                    .map_err(DavError::cloud)?;
                for info in all.into_iter().filter(|c| c.category == kind.category()) {
                    let (info, token) = collection(ctx, *kind, &info.id).await?;
                    let props = collection_props(ctx, *kind, &info, &token, &req).await?;
                    add(&mut ms, &ctx.hrefs.collection(*kind, &info.id), props);
                }
            }
        }
        Target::Collection(kind, c) => {
            let (info, token) = collection(ctx, *kind, c).await?;
            let props = collection_props(ctx, *kind, &info, &token, &req).await?;
            add(&mut ms, &ctx.hrefs.collection(*kind, &info.id), props);
            if depth > 0 {
                let with_data = wants(&req, &kind.data());
                let items = ctx
                    .app
                    .cloud
                    .live_items(ctx.account, &info.id)
                    .await
                    .map_err(DavError::cloud)?;
                for item in &items {
                    add(
                        &mut ms,
                        &ctx.hrefs.item(*kind, &info.id, &item.id),
                        item_props(*kind, item, with_data),
                    );
                }
            }
        }
        Target::Item(kind, c, i) => {
            let item = find_item(ctx, *kind, c, i).await?;
            let with_data = wants(&req, &kind.data());
            add(
                &mut ms,
                &ctx.hrefs.item(*kind, c, i),
                item_props(*kind, &item, with_data),
            );
        }
    }
    Ok(multistatus(ms))
}

/// A live item of the collection, or 404.
async fn find_item(ctx: &Ctx, kind: Kind, c: &str, i: &str) -> Result<ItemView, DavError> {
    collection(ctx, kind, c).await?;
    ctx.app
        .cloud
        .item(ctx.account, c, i)
        .await
        .map_err(|e| match e {
            CloudError::Invalid { .. } | CloudError::NotFound => DavError::not_found(),
            e => DavError::cloud(e),
        })
}

/// The item id a multiget's href names in this collection (a path or a full URL).
fn href_item(href: &str, collection_href: &str) -> Option<String> {
    let path = match href.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => href,
    };
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let id = decoded.strip_prefix(collection_href)?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

async fn report(ctx: &Ctx, kind: Kind, c: &str, r: Report) -> Result<Response, DavError> {
    let (info, _) = collection(ctx, kind, c).await?;
    let c = info.id.as_str();
    let chref = ctx.hrefs.collection(kind, c);
    let mut ms = Multistatus::new();
    let data = kind.data();
    let respond = |ms: &mut Multistatus, item: &ItemView, props: &[Prop]| {
        let req = PropFind::Props(props.to_vec());
        let (found, missing) = select(&req, item_props(kind, item, props.contains(&data)));
        ms.response(&ctx.hrefs.item(kind, c, &item.id), &found, &missing);
    };
    match r {
        Report::SyncCollection {
            token,
            limit,
            props,
        } => {
            let since = if token.is_empty() {
                None
            } else {
                Some(
                    token
                        .strip_prefix(SYNC_PREFIX)
                        .ok_or_else(|| invalid_sync_token(CloudError::InvalidToken))?
                        .to_owned(),
                )
            };
            let cap = limit.unwrap_or(MAX_SYNC).clamp(1, MAX_SYNC);
            let mut cursor = since.clone();
            let mut sent = 0usize;
            let mut truncated = false;
            loop {
                let want = i64::try_from((cap - sent).min(1_000)).unwrap_or(1_000);
                let page = ctx
                    .app
                    .cloud
                    .pull(ctx.account, c, cursor.as_deref(), Some(want))
                    .await
                    .map_err(|e| match e {
                        CloudError::InvalidToken
                        | CloudError::UnknownToken
                        | CloudError::TokenExpired => invalid_sync_token(e),
                        e => DavError::cloud(e),
                    })?;
                for ch in &page.changes {
                    if ch.deleted {
                        // An initial sync lists what exists; a later one, what went too.
                        if since.is_some() {
                            ms.status(&ctx.hrefs.item(kind, c, &ch.id), "404 Not Found");
                        }
                    } else {
                        respond(&mut ms, ch, &props);
                    }
                }
                sent += page.changes.len();
                cursor = Some(page.token);
                if !page.more {
                    break;
                }
                if sent >= cap {
                    truncated = true;
                    break;
                }
            }
            if truncated {
                // RFC 6578 §3.6: more changes wait; ask again with this answer's token.
                ms.status(&chref, "507 Insufficient Storage");
            }
            ms.sync_token(&format!("{SYNC_PREFIX}{}", cursor.unwrap_or_default()));
        }
        Report::Multiget { hrefs, props } => {
            if hrefs.len() > 10_000 {
                return Err(DavError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_hrefs",
                    "a multiget asks for at most 10,000 resources; split it",
                ));
            }
            for href in hrefs {
                let item = match href_item(&href, &chref) {
                    Some(id) => ctx.app.cloud.item(ctx.account, c, &id).await,
                    None => Err(CloudError::NotFound),
                };
                match item {
                    Ok(item) => respond(&mut ms, &item, &props),
                    Err(CloudError::NotFound | CloudError::Invalid { .. }) => {
                        ms.status(&href, "404 Not Found")
                    }
                    Err(e) => return Err(DavError::cloud(e)),
                }
            }
        }
        Report::AddressbookQuery {
            filter,
            limit,
            props,
        } => {
            if kind != Kind::Contacts {
                return Err(unsupported_report());
            }
            let items = ctx
                .app
                .cloud
                .live_items(ctx.account, c)
                .await
                .map_err(DavError::cloud)?;
            let cap = limit.unwrap_or(usize::MAX);
            let mut hits = items.iter().filter(|i| filter.matches(item_text(i)));
            for item in hits.by_ref().take(cap) {
                respond(&mut ms, item, &props);
            }
            if hits.next().is_some() {
                // RFC 6352 §8.6.1: the answer was cut at the client's limit.
                ms.status(&chref, "507 Insufficient Storage");
            }
        }
        Report::CalendarQuery { filter, props } => {
            if kind != Kind::Calendar {
                return Err(unsupported_report());
            }
            let items = ctx
                .app
                .cloud
                .live_items(ctx.account, c)
                .await
                .map_err(DavError::cloud)?;
            for item in items.iter().filter(|i| filter.matches(item_text(i))) {
                respond(&mut ms, item, &props);
            }
        }
        Report::Unsupported(_) => return Err(unsupported_report()),
    }
    Ok(multistatus(ms))
}

fn invalid_sync_token(e: CloudError) -> DavError {
    let api = ApiError::from(e);
    DavError::precondition(
        StatusCode::FORBIDDEN,
        DAV,
        "valid-sync-token",
        api.code,
        format!("{}; sync again without a token", api.message),
    )
}

/// An ETag in `If-Match` / `If-None-Match`: `*`, or the versions listed.
fn etags(h: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let v = h.get(name)?.to_str().ok()?;
    Some(
        v.split(',')
            .map(|t| {
                t.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_owned()
            })
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

fn precondition_failed(message: &str) -> DavError {
    DavError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        message,
    )
}

async fn get_item(
    ctx: &Ctx,
    kind: Kind,
    c: &str,
    i: &str,
    headers: &HeaderMap,
) -> Result<Response, DavError> {
    let item = find_item(ctx, kind, c, i).await?;
    let tag = etag(&item.version);
    let mut r = if etags(headers, header::IF_NONE_MATCH)
        .is_some_and(|l| l.iter().any(|t| t == "*" || *t == item.version))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(kind.content_type()),
            )],
            item_text(&item).to_owned(),
        )
            .into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(item.modified_at)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    Ok(r)
}

/// A whole address book as one vCard file, a whole calendar as one iCalendar file: what
/// import dialogs and calendar subscriptions read.
async fn export(ctx: &Ctx, kind: Kind, c: &str) -> Result<Response, DavError> {
    let (info, _) = collection(ctx, kind, c).await?;
    let items = ctx
        .app
        .cloud
        .live_items(ctx.account, &info.id)
        .await
        .map_err(DavError::cloud)?;
    let texts: Vec<&str> = items.iter().map(item_text).collect();
    let body = match kind {
        Kind::Contacts => {
            let mut out = String::new();
            for t in texts {
                out.push_str(t);
                if !t.ends_with('\n') {
                    out.push_str("\r\n");
                }
            }
            out
        }
        Kind::Calendar => xml::merge_calendars(&texts),
    };
    let name = format!(
        "attachment; filename=\"{}.{}\"",
        info.id,
        if kind == Kind::Contacts { "vcf" } else { "ics" }
    );
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(kind.content_type()),
        )],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&name) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// Writes one item through the sync engine's push, honouring `If-Match` and `If-None-Match`:
/// a write based on a version another device has replaced is `412`, never applied.
async fn put_item(
    ctx: &Ctx,
    kind: Kind,
    c: &str,
    i: &str,
    req: Request,
) -> Result<Response, DavError> {
    let (info, _) = collection(ctx, kind, c).await?;
    let if_match = etags(req.headers(), header::IF_MATCH);
    let if_none_match = etags(req.headers(), header::IF_NONE_MATCH);
    let max = ctx.app.cloud.config().max_item_bytes;
    let body = read_body(req, max).await.map_err(|_| {
        DavError::precondition(
            StatusCode::PAYLOAD_TOO_LARGE,
            kind.ns(),
            "max-resource-size",
            "item_too_large",
            format!("a contact or an event is at most {max} bytes"),
        )
    })?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        DavError::precondition(
            StatusCode::FORBIDDEN,
            kind.ns(),
            kind.valid_data(),
            "invalid_item",
            "the body is not UTF-8 text",
        )
    })?;
    let raw = serde_json::value::to_raw_value(&text)
        .map_err(|_| DavError::cloud(CloudError::Internal("a string as JSON".into())))?;
    let create_only = if_none_match
        .as_ref()
        .is_some_and(|l| l.iter().any(|t| t == "*"));
    // Two devices writing at once: a write without a condition takes the version it read,
    // and reads again when another write slipped in between.
    for _ in 0..3 {
        let base = match (&if_match, create_only) {
            (_, true) => None,
            (Some(list), false) if !list.iter().any(|t| t == "*") => {
                if list.len() != 1 {
                    return Err(precondition_failed(
                        "If-Match names one version of the item",
                    ));
                }
                list.first().cloned()
            }
            (m, false) => match ctx.app.cloud.item(ctx.account, &info.id, i).await {
                Ok(cur) => Some(cur.version),
                Err(CloudError::NotFound) if m.is_none() => None,
                Err(CloudError::NotFound) => {
                    return Err(precondition_failed("there is no such item to replace"))
                }
                Err(e) => return Err(item_refused(kind, e)),
            },
        };
        let created = base.is_none();
        let write = Write {
            id: i.to_owned(),
            op: "put".into(),
            base_version: base,
            body: Some(raw.clone()),
        };
        let out = ctx
            .app
            .cloud
            .push(ctx.account, &info.id, vec![write], None)
            .await
            .map_err(|e| item_refused(kind, e))?;
        let Some(result) = out.results.into_iter().next() else {
            return Err(DavError::cloud(CloudError::Internal("no result".into())));
        };
        match result.status {
            OpStatus::Applied | OpStatus::Unchanged => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::NO_CONTENT
                };
                let mut r = status.into_response();
                // The text is stored as sent, so the ETag is that of what the client holds.
                if let Some(v) = result
                    .version
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(&etag(v)).ok())
                {
                    r.headers_mut().insert(header::ETAG, v);
                }
                return Ok(r);
            }
            OpStatus::Conflict => {
                if create_only {
                    return Err(precondition_failed(
                        "an item already exists at this address",
                    ));
                }
                if if_match.is_some() {
                    return Err(precondition_failed(
                        "the item changed on another device; fetch it and edit that version",
                    ));
                }
            }
        }
    }
    Err(precondition_failed(
        "the item keeps changing on another device; try again",
    ))
}

/// A refused write in DAV's terms: what is wrong with the text is the RFC's precondition.
fn item_refused(kind: Kind, e: CloudError) -> DavError {
    let e = match e {
        CloudError::InBatch { source, .. } => *source,
        e => e,
    };
    match e {
        CloudError::InvalidItem(m) => DavError::precondition(
            StatusCode::FORBIDDEN,
            kind.ns(),
            kind.valid_data(),
            "invalid_item",
            m,
        ),
        CloudError::ItemTooLarge(max) => DavError::precondition(
            StatusCode::PAYLOAD_TOO_LARGE,
            kind.ns(),
            "max-resource-size",
            "item_too_large",
            format!("a contact or an event is at most {max} bytes"),
        ),
        e => DavError::cloud(e),
    }
}

async fn delete_item(
    ctx: &Ctx,
    kind: Kind,
    c: &str,
    i: &str,
    headers: &HeaderMap,
) -> Result<Response, DavError> {
    let current = find_item(ctx, kind, c, i).await?;
    let base = match etags(headers, header::IF_MATCH) {
        Some(list) if !list.iter().any(|t| t == "*") => {
            if !list.contains(&current.version) {
                return Err(precondition_failed(
                    "the item changed on another device; fetch it before deleting it",
                ));
            }
            current.version
        }
        _ => current.version,
    };
    let write = Write {
        id: i.to_owned(),
        op: "delete".into(),
        base_version: Some(base),
        body: None,
    };
    let out = ctx
        .app
        .cloud
        .push(ctx.account, c, vec![write], None)
        .await
        .map_err(|e| item_refused(kind, e))?;
    match out.results.first().map(|r| r.status) {
        Some(OpStatus::Applied | OpStatus::Unchanged) => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(precondition_failed(
            "the item changed on another device; fetch it before deleting it",
        )),
    }
}

async fn make_collection(
    ctx: &Ctx,
    kind: Kind,
    c: &str,
    calendar: bool,
    new: xml::NewCollection,
) -> Result<Response, DavError> {
    let wanted = match kind {
        Kind::Contacts => Prop::new(CARDDAV, "addressbook"),
        Kind::Calendar => Prop::new(CALDAV, "calendar"),
    };
    let fits = if calendar {
        kind == Kind::Calendar
    } else {
        new.resource_types.is_empty() || new.resource_types.contains(&wanted)
    };
    if !fits {
        return Err(DavError::precondition(
            StatusCode::FORBIDDEN,
            DAV,
            "valid-resourcetype",
            "wrong_collection_kind",
            format!(
                "only {} can be made here",
                if kind == Kind::Contacts {
                    "address books"
                } else {
                    "calendars"
                }
            ),
        ));
    }
    let exists = ctx
        .app
        .cloud
        .collections(ctx.account)
        .await
        .map_err(DavError::cloud)?
        .iter()
        .any(|x| x.id == c);
    if exists {
        return Err(DavError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "collection_exists",
            "there is already an address book or a calendar at this address",
        ));
    }
    let name = new
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| c.to_owned());
    ctx.app
        .cloud
        .create_collection(ctx.account, c, kind.category().as_str(), &name)
        .await
        .map_err(DavError::cloud)?;
    Ok(StatusCode::CREATED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(target("/dav/"), Some((Target::Root, None)));
        assert_eq!(
            target("/dav/principals/7/"),
            Some((Target::Principal, Some("7".into())))
        );
        assert_eq!(
            target("/dav/calendars/7/work/e%401.ics"),
            Some((
                Target::Item(Kind::Calendar, "work".into(), "e@1.ics".into()),
                Some("7".into())
            ))
        );
        assert_eq!(target("/dav/files/7/a/b"), None);
        assert_eq!(target("/dav/addressbooks/7/c/i/j"), None);
        assert_eq!(target("/dav/addressbooks/7/%FF"), None);
    }

    #[test]
    fn multiget_hrefs() {
        let c = "/dav/addressbooks/7/contacts/";
        assert_eq!(
            href_item("/dav/addressbooks/7/contacts/a.vcf", c).as_deref(),
            Some("a.vcf")
        );
        assert_eq!(
            href_item("https://h:8/dav/addressbooks/7/contacts/a%40b.vcf", c).as_deref(),
            Some("a@b.vcf")
        );
        assert_eq!(href_item("/dav/addressbooks/8/contacts/a.vcf", c), None);
        assert_eq!(href_item(c, c), None);
        assert_eq!(href_item("/dav/addressbooks/7/contacts/x/y", c), None);
    }

    #[test]
    fn preconditions() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MATCH,
            HeaderValue::from_static("\"12\", W/\"13\""),
        );
        assert_eq!(
            etags(&h, header::IF_MATCH),
            Some(vec!["12".to_owned(), "13".to_owned()])
        );
        assert_eq!(etags(&h, header::IF_NONE_MATCH), None);
    }
}
