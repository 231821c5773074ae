//! The data categories (PRODUCT.md CL-2), each with its format, its rules and its validation.
//!
//! Contacts are vCard (3.0 or 4.0) and calendar items iCalendar (VEVENT or VTODO), parsed with
//! calcard and kept byte for byte; every other category is a JSON document whose schema is the
//! struct below (published in the OpenAPI document), stored as the compact JSON of the validated
//! value. (calcard's strict mode refuses any nested BEGIN in 0.3, so parsing is lenient and the
//! structure — one component, VERSION, FN, UID — is checked here.)

use base64::Engine as _;
use calcard::icalendar::{ICalendar, ICalendarComponentType, ICalendarProperty};
use calcard::vcard::{VCardProperty, VCardVersion};
use calcard::{Entry, Parser};
use mica_core::crypto::is_issued_id;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::CloudError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Contacts,
    Calendar,
    Notes,
    Messages,
    Calls,
    Bookmarks,
    BrowserHistory,
    Wifi,
    Settings,
    Gallery,
    Recordings,
    Drive,
}

/// How an item's text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    VCard,
    ICalendar,
    Json,
}

impl Category {
    pub const ALL: [Category; 12] = [
        Category::Contacts,
        Category::Calendar,
        Category::Notes,
        Category::Messages,
        Category::Calls,
        Category::Bookmarks,
        Category::BrowserHistory,
        Category::Wifi,
        Category::Settings,
        Category::Gallery,
        Category::Recordings,
        Category::Drive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Contacts => "contacts",
            Category::Calendar => "calendar",
            Category::Notes => "notes",
            Category::Messages => "messages",
            Category::Calls => "calls",
            Category::Bookmarks => "bookmarks",
            Category::BrowserHistory => "browser_history",
            Category::Wifi => "wifi",
            Category::Settings => "settings",
            Category::Gallery => "gallery",
            Category::Recordings => "recordings",
            Category::Drive => "drive",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn format(self) -> Format {
        match self {
            Category::Contacts => Format::VCard,
            Category::Calendar => Format::ICalendar,
            _ => Format::Json,
        }
    }

    /// Records that only accumulate: they merge by id and never conflict.
    pub fn append_only(self) -> bool {
        matches!(
            self,
            Category::Messages | Category::Calls | Category::BrowserHistory
        )
    }

    /// Deleted items go to the recycle bin (CL-6).
    pub fn recyclable(self) -> bool {
        matches!(
            self,
            Category::Contacts
                | Category::Calendar
                | Category::Notes
                | Category::Messages
                | Category::Gallery
                | Category::Recordings
                | Category::Drive
        )
    }

    pub fn rules(self) -> mica_store::CategoryRules {
        mica_store::CategoryRules {
            append_only: self.append_only(),
            recyclable: self.recyclable(),
            media: self == Category::Gallery,
            tree: self == Category::Drive,
        }
    }
}

/// A validated item, ready to seal and store.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// What is stored and served back.
    pub text: String,
    /// What listings show.
    pub summary: String,
    pub uid: Option<String>,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    /// The file whose bytes the item stands for.
    pub file_id: Option<String>,
    /// A drive entry's place: `<parent id>/<name>`.
    pub path_key: Option<String>,
    /// The albums a gallery item is in, each once.
    pub albums: Vec<String>,
}

/// The most albums one photo is in, and the longest album name.
pub const MAX_ALBUMS: usize = 100;
pub const MAX_ALBUM_NAME: usize = 200;

fn invalid(category: Category, why: impl std::fmt::Display) -> CloudError {
    CloudError::InvalidItem(format!("not a valid {} item: {why}", category.as_str()))
}

/// Validates an item's body for its category. vCard and iCalendar come as a string, kept as is;
/// the JSON categories come as an object.
pub fn prepare(category: Category, body: &serde_json::Value) -> Result<Prepared, CloudError> {
    let p = match category.format() {
        Format::VCard => {
            let text = body
                .as_str()
                .ok_or_else(|| invalid(category, "send the vCard as a string"))?;
            prepare_vcard(text)?
        }
        Format::ICalendar => {
            let text = body
                .as_str()
                .ok_or_else(|| invalid(category, "send the iCalendar object as a string"))?;
            prepare_icalendar(text)?
        }
        Format::Json => prepare_json(category, body)?,
    };
    // The fields indexed as text: what every database can hold and compare (PostgreSQL's text
    // cannot hold a NUL, and the parsers keep control characters in values).
    if p.uid
        .as_deref()
        .is_some_and(|u| u.chars().any(char::is_control))
    {
        return Err(invalid(category, "its UID holds a control character"));
    }
    if p.file_id.as_deref().is_some_and(|f| !is_issued_id(f)) {
        return Err(invalid(
            category,
            "file_id is not the id of an uploaded file",
        ));
    }
    Ok(p)
}

/// Whether the text's last line is `END:<what>` (the lenient parser accepts a missing one).
fn ends_with_end(text: &str, what: &str) -> bool {
    let last = text
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .trim();
    last.len() == 4 + what.len()
        && last
            .get(..4)
            .is_some_and(|e| e.eq_ignore_ascii_case("END:"))
        && last.get(4..).is_some_and(|w| w.eq_ignore_ascii_case(what))
}

fn prepare_vcard(text: &str) -> Result<Prepared, CloudError> {
    let c = Category::Contacts;
    if !ends_with_end(text, "VCARD") && !text.trim().is_empty() {
        return Err(invalid(c, "END:VCARD is missing"));
    }
    let mut parser = Parser::new(text);
    let card = match parser.entry() {
        Entry::VCard(card) => card,
        Entry::Eof => return Err(invalid(c, "it is empty")),
        Entry::InvalidLine(l) => {
            return Err(invalid(
                c,
                format!(
                    "line {:?} is not vCard",
                    l.chars().take(60).collect::<String>()
                ),
            ))
        }
        Entry::UnterminatedComponent(_) => return Err(invalid(c, "END:VCARD is missing")),
        _ => return Err(invalid(c, "it is not a vCard")),
    };
    if !matches!(parser.entry(), Entry::Eof) {
        return Err(invalid(c, "send one vCard per item"));
    }
    match card.version() {
        Some(VCardVersion::V3_0 | VCardVersion::V4_0) => {}
        Some(_) => return Err(invalid(c, "only vCard 3.0 and 4.0 are accepted")),
        None => return Err(invalid(c, "VERSION is missing")),
    }
    let name = card
        .property(&VCardProperty::Fn)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
        .map(str::trim)
        .unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(c, "FN (the formatted name) is missing"));
    }
    Ok(Prepared {
        summary: name.to_owned(),
        uid: card.uid().map(str::to_owned),
        text: text.to_owned(),
        starts_at: None,
        ends_at: None,
        file_id: None,
        path_key: None,
        albums: Vec::new(),
    })
}

fn component_time(cal: &ICalendar, idx: usize, prop: &ICalendarProperty) -> Option<i64> {
    let dt = cal
        .components
        .get(idx)?
        .property(prop)?
        .values
        .first()?
        .as_partial_date_time()?;
    if let Some(ts) = dt.to_timestamp() {
        return Some(ts);
    }
    // An all-day date: its midnight, UTC.
    let date = time::Date::from_calendar_date(
        i32::from(dt.year?),
        time::Month::try_from(dt.month?).ok()?,
        dt.day?,
    )
    .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// When a calendar item takes place, as CalDAV's time-range queries need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// `VEVENT` or `VTODO`.
    pub component: &'static str,
    /// Its start and end in UTC milliseconds, as indexed (an all-day date from its midnight,
    /// UTC); a task's end is its due time.
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// It repeats (`RRULE` or `RDATE`): it may also take place after its first end.
    pub recurs: bool,
}

/// The span of a stored calendar item; `None` when the text is not one.
pub fn calendar_span(text: &str) -> Option<Span> {
    let prepared = prepare_icalendar(text).ok()?;
    let Entry::ICalendar(cal) = Parser::new(text).entry() else {
        return None;
    };
    let mut main = cal.components.iter().filter(|c| {
        matches!(
            c.component_type,
            ICalendarComponentType::VEvent | ICalendarComponentType::VTodo
        )
    });
    let first = main.next()?;
    let recurs = std::iter::once(first).chain(main).any(|c| {
        c.property(&ICalendarProperty::Rrule).is_some()
            || c.property(&ICalendarProperty::Rdate).is_some()
            || c.property(&ICalendarProperty::RecurrenceId).is_some()
    });
    Some(Span {
        component: if first.component_type == ICalendarComponentType::VTodo {
            "VTODO"
        } else {
            "VEVENT"
        },
        start: prepared.starts_at,
        end: prepared.ends_at,
        recurs,
    })
}

fn prepare_icalendar(text: &str) -> Result<Prepared, CloudError> {
    let c = Category::Calendar;
    if !ends_with_end(text, "VCALENDAR") && !text.trim().is_empty() {
        return Err(invalid(c, "END:VCALENDAR is missing"));
    }
    let mut parser = Parser::new(text);
    let cal = match parser.entry() {
        Entry::ICalendar(cal) => cal,
        Entry::Eof => return Err(invalid(c, "it is empty")),
        Entry::InvalidLine(l) => {
            return Err(invalid(
                c,
                format!(
                    "line {:?} is not iCalendar",
                    l.chars().take(60).collect::<String>()
                ),
            ))
        }
        Entry::UnterminatedComponent(what) => {
            return Err(invalid(c, format!("END:{what} is missing")))
        }
        _ => return Err(invalid(c, "it is not an iCalendar object")),
    };
    if !matches!(parser.entry(), Entry::Eof) {
        return Err(invalid(c, "send one VCALENDAR per item"));
    }
    if cal.components.first().map(|c| &c.component_type) != Some(&ICalendarComponentType::VCalendar)
    {
        return Err(invalid(c, "it must be a VCALENDAR"));
    }
    let main: Vec<usize> = cal
        .components
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            matches!(
                c.component_type,
                ICalendarComponentType::VEvent | ICalendarComponentType::VTodo
            )
        })
        .map(|(i, _)| i)
        .collect();
    let Some(&first) = main.first() else {
        return Err(invalid(c, "it holds no VEVENT or VTODO"));
    };
    let uids: Vec<&str> = main
        .iter()
        .filter_map(|&i| cal.components.get(i).and_then(|c| c.uid()))
        .collect();
    if uids.len() != main.len() {
        return Err(invalid(c, "every VEVENT and VTODO needs a UID"));
    }
    if uids.iter().any(|u| *u != uids[0]) {
        return Err(invalid(c, "one item holds one event or task (one UID)"));
    }
    let summary = cal
        .components
        .get(first)
        .and_then(|comp| comp.property(&ICalendarProperty::Summary))
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
        .unwrap_or_default()
        .to_owned();
    let starts_at = component_time(&cal, first, &ICalendarProperty::Dtstart);
    let ends_at = component_time(&cal, first, &ICalendarProperty::Dtend)
        .or_else(|| component_time(&cal, first, &ICalendarProperty::Due));
    Ok(Prepared {
        summary,
        uid: Some(uids[0].to_owned()),
        starts_at: starts_at.map(|s| s * 1000),
        ends_at: ends_at.map(|s| s * 1000),
        text: text.to_owned(),
        file_id: None,
        path_key: None,
        albums: Vec::new(),
    })
}

/// An RFC 3339 time, checked.
fn check_time(category: Category, field: &str, v: &str) -> Result<(), CloudError> {
    parse_time(category, field, v).map(|_| ())
}

/// An RFC 3339 time, in milliseconds since the epoch.
fn parse_time(category: Category, field: &str, v: &str) -> Result<i64, CloudError> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok())
        .ok_or_else(|| invalid(category, format!("{field} must be an RFC 3339 time")))
}

fn check_len(category: Category, field: &str, v: &str, max: usize) -> Result<(), CloudError> {
    if v.chars().count() > max {
        return Err(invalid(
            category,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

fn check_nonempty(category: Category, field: &str, v: &str) -> Result<(), CloudError> {
    if v.trim().is_empty() {
        return Err(invalid(category, format!("{field} is empty")));
    }
    Ok(())
}

/// A note.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Note {
    #[serde(default)]
    pub title: String,
    /// The text (Markdown or plain).
    pub body: String,
    pub folder: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// An SMS or MMS message. Messages group into threads by `thread_id`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub thread_id: String,
    /// `sms` or `mms`.
    pub kind: String,
    /// `in` or `out`.
    pub direction: String,
    /// The other parties' numbers or addresses.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub body: String,
    /// RFC 3339.
    pub sent_at: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// An MMS part; its bytes live in the files area.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub name: String,
    pub mime_type: String,
    pub size: u64,
    pub file_id: Option<String>,
}

/// A call-history entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub number: String,
    pub name: Option<String>,
    /// `incoming`, `outgoing`, `missed`, `rejected` or `blocked`.
    pub direction: String,
    /// RFC 3339.
    pub started_at: String,
    pub duration_secs: u64,
}

/// A bookmark, or a folder of bookmarks (`url` absent).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bookmark {
    pub title: String,
    pub url: Option<String>,
    /// The id of the folder it is in; absent at the top.
    pub parent_id: Option<String>,
    #[serde(default)]
    pub position: u32,
}

/// A visited page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub url: String,
    #[serde(default)]
    pub title: String,
    /// RFC 3339, the last visit.
    pub visited_at: String,
    #[serde(default = "one")]
    pub visit_count: u32,
}

fn one() -> u32 {
    1
}

/// A saved Wi-Fi network.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WifiNetwork {
    pub ssid: String,
    /// `open`, `wep`, `wpa`, `wpa2`, `wpa3` or `enterprise`.
    pub security: String,
    pub password: Option<String>,
    #[serde(default)]
    pub hidden: bool,
}

/// One app's settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The app's identifier, such as `com.example.clock`.
    pub app: String,
    /// The settings, as the app writes them.
    #[schema(value_type = Object)]
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Where a photo was taken.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub latitude: f64,
    pub longitude: f64,
}

/// The record of a photo or video; its bytes arrive through the files API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GalleryItem {
    pub file_id: Option<String>,
    pub name: String,
    pub mime_type: String,
    pub size: u64,
    /// RFC 3339.
    pub taken_at: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_secs: Option<f64>,
    pub place: Option<Place>,
    #[serde(default)]
    pub albums: Vec<String>,
    #[serde(default)]
    pub favorite: bool,
}

/// The record of a call or voice recording; its bytes arrive through the files API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    pub file_id: Option<String>,
    pub name: String,
    /// `call` or `voice`.
    pub kind: String,
    pub mime_type: String,
    pub size: u64,
    pub duration_secs: f64,
    /// RFC 3339.
    pub recorded_at: String,
    /// For a call recording: the other party.
    pub number: Option<String>,
    /// For a call recording: `incoming` or `outgoing`.
    #[serde(default)]
    pub direction: Option<String>,
}

fn one_of(category: Category, field: &str, v: &str, allowed: &[&str]) -> Result<(), CloudError> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            category,
            format!("{field} must be one of {}", allowed.join(", ")),
        ))
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    category: Category,
    body: &serde_json::Value,
) -> Result<T, CloudError> {
    if !body.is_object() {
        return Err(invalid(category, "send a JSON object"));
    }
    serde_json::from_value(body.clone()).map_err(|e| invalid(category, e))
}

fn check_url(category: Category, field: &str, v: &str) -> Result<(), CloudError> {
    check_len(category, field, v, 8192)?;
    let scheme_ok = v.split_once(':').is_some_and(|(s, rest)| {
        !s.is_empty()
            && !rest.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    if !scheme_ok {
        return Err(invalid(
            category,
            format!("{field} must be an absolute URL"),
        ));
    }
    Ok(())
}

fn prepare_json(category: Category, body: &serde_json::Value) -> Result<Prepared, CloudError> {
    let c = category;
    let mut file_id: Option<String> = None;
    // A gallery item's capture time as its device recorded it: the timeline's order.
    let mut starts_at: Option<i64> = None;
    let mut albums: Vec<String> = Vec::new();
    if category == Category::Drive {
        return prepare_drive(body);
    }
    let summary = match category {
        Category::Notes => {
            let n: Note = parse(c, body)?;
            check_len(c, "title", &n.title, 1000)?;
            check_time(c, "created_at", &n.created_at)?;
            check_time(c, "updated_at", &n.updated_at)?;
            if n.title.trim().is_empty() {
                n.body
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(100)
                    .collect()
            } else {
                n.title
            }
        }
        Category::Messages => {
            let m: Message = parse(c, body)?;
            check_nonempty(c, "thread_id", &m.thread_id)?;
            one_of(c, "kind", &m.kind, &["sms", "mms"])?;
            one_of(c, "direction", &m.direction, &["in", "out"])?;
            if m.addresses.is_empty() {
                return Err(invalid(c, "addresses is empty"));
            }
            check_time(c, "sent_at", &m.sent_at)?;
            m.addresses.join(", ")
        }
        Category::Calls => {
            let call: Call = parse(c, body)?;
            check_nonempty(c, "number", &call.number)?;
            one_of(
                c,
                "direction",
                &call.direction,
                &["incoming", "outgoing", "missed", "rejected", "blocked"],
            )?;
            check_time(c, "started_at", &call.started_at)?;
            call.name.unwrap_or(call.number)
        }
        Category::Bookmarks => {
            let b: Bookmark = parse(c, body)?;
            check_nonempty(c, "title", &b.title)?;
            check_len(c, "title", &b.title, 1000)?;
            if let Some(u) = &b.url {
                check_url(c, "url", u)?;
            }
            b.title
        }
        Category::BrowserHistory => {
            let h: HistoryEntry = parse(c, body)?;
            check_url(c, "url", &h.url)?;
            check_time(c, "visited_at", &h.visited_at)?;
            if h.title.is_empty() {
                h.url
            } else {
                h.title
            }
        }
        Category::Wifi => {
            let w: WifiNetwork = parse(c, body)?;
            if w.ssid.is_empty() || w.ssid.len() > 32 {
                return Err(invalid(c, "ssid must be 1 to 32 bytes"));
            }
            one_of(
                c,
                "security",
                &w.security,
                &["open", "wep", "wpa", "wpa2", "wpa3", "enterprise"],
            )?;
            w.ssid
        }
        Category::Settings => {
            let s: AppSettings = parse(c, body)?;
            check_nonempty(c, "app", &s.app)?;
            check_len(c, "app", &s.app, 255)?;
            s.app
        }
        Category::Gallery => {
            let g: GalleryItem = parse(c, body)?;
            check_nonempty(c, "name", &g.name)?;
            if let Some(t) = &g.taken_at {
                starts_at = Some(parse_time(c, "taken_at", t)?);
            }
            if let Some(p) = &g.place {
                if !(-90.0..=90.0).contains(&p.latitude) || !(-180.0..=180.0).contains(&p.longitude)
                {
                    return Err(invalid(c, "place is not on Earth"));
                }
            }
            file_id = g.file_id.clone();
            if g.albums.len() > MAX_ALBUMS {
                return Err(invalid(
                    c,
                    format!("a photo is in at most {MAX_ALBUMS} albums"),
                ));
            }
            for a in &g.albums {
                check_nonempty(c, "an album name", a)?;
                check_len(c, "an album name", a, MAX_ALBUM_NAME)?;
                if !albums.contains(a) {
                    albums.push(a.clone());
                }
            }
            g.name
        }
        Category::Recordings => {
            let r: Recording = parse(c, body)?;
            check_nonempty(c, "name", &r.name)?;
            one_of(c, "kind", &r.kind, &["call", "voice"])?;
            check_time(c, "recorded_at", &r.recorded_at)?;
            if let Some(d) = &r.direction {
                one_of(c, "direction", d, &["incoming", "outgoing"])?;
            }
            if r.kind == "call" && r.number.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(invalid(
                    c,
                    "a call recording needs the number of the other party",
                ));
            }
            file_id = r.file_id.clone();
            r.name
        }
        Category::Contacts | Category::Calendar | Category::Drive => {
            return Err(invalid(c, "not a JSON category"));
        }
    };
    Ok(Prepared {
        text: body.to_string(),
        summary,
        uid: None,
        starts_at,
        ends_at: None,
        file_id,
        path_key: None,
        albums,
    })
}

/// A file or folder of the drive. The name is kept in Unicode NFC.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriveEntry {
    pub name: String,
    /// The id of the folder holding the entry; absent at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `folder` or `file`.
    pub kind: String,
    /// For a file: the file holding its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// RFC 3339, as the client's file system had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    /// WebDAV dead properties set on the entry (PROPPATCH).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub props: Vec<DeadProp>,
}

/// A WebDAV property a client stored on a drive entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadProp {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The property element's XML, base64.
    pub xml: String,
}

/// How deep XML that WebDAV will parse may nest: a request's body, or a dead property kept on
/// a drive entry (dav-server parses both). Real XML goes five or six levels deep; dav-server
/// builds its tree by recursion, so thousands of nested elements would exhaust a thread's
/// stack — and end the process — if they got there.
pub const MAX_XML_DEPTH: usize = 64;

/// How deep `xml`'s elements nest (counting up to just past [`MAX_XML_DEPTH`]), read as a
/// stream: nothing here recurses. What is not XML counts as flat (its parser refuses it).
pub fn xml_depth(xml: &[u8]) -> usize {
    use xml::reader::{EventReader, XmlEvent};
    if xml.is_empty() {
        return 0;
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    for event in EventReader::new(xml) {
        match event {
            Ok(XmlEvent::StartElement { .. }) => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_XML_DEPTH {
                    break;
                }
            }
            Ok(XmlEvent::EndElement { .. }) => depth = depth.saturating_sub(1),
            Ok(XmlEvent::EndDocument) | Err(_) => break,
            Ok(_) => {}
        }
    }
    deepest
}

/// The longest name, in bytes of UTF-8 (what common file systems allow).
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a drive name and returns it in NFC: not empty, not `.` or `..`, no `/`, `\`, NUL or
/// other control characters, at most 255 bytes, no leading or trailing spaces.
pub fn drive_name(name: &str) -> Result<String, CloudError> {
    use unicode_normalization::UnicodeNormalization;
    let c = Category::Drive;
    let name: String = name.nfc().collect();
    if name.is_empty() || name == "." || name == ".." {
        return Err(invalid(c, "a name cannot be empty, \".\" or \"..\""));
    }
    if name
        .chars()
        .any(|ch| ch == '/' || ch == '\\' || ch.is_control())
    {
        return Err(invalid(
            c,
            "a name cannot hold / or \\ or control characters",
        ));
    }
    if name.trim() != name {
        return Err(invalid(c, "a name cannot begin or end with spaces"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            c,
            format!("a name is at most {MAX_NAME_BYTES} bytes of UTF-8"),
        ));
    }
    Ok(name)
}

fn prepare_drive(body: &serde_json::Value) -> Result<Prepared, CloudError> {
    let c = Category::Drive;
    let mut e: DriveEntry = parse(c, body)?;
    e.name = drive_name(&e.name)?;
    one_of(c, "kind", &e.kind, &["folder", "file"])?;
    match (e.kind.as_str(), &e.file_id) {
        ("file", None) => return Err(invalid(c, "a file needs file_id")),
        ("folder", Some(_)) => return Err(invalid(c, "a folder has no file_id")),
        _ => {}
    }
    if let Some(p) = &e.parent {
        let ok = !p.is_empty()
            && p.len() <= 200
            && p.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@' | b'+' | b'=')
            });
        if !ok {
            return Err(invalid(c, "parent is not an entry id"));
        }
    }
    if let Some(m) = &e.mime_type {
        if !crate::files::valid_mime(m) {
            return Err(invalid(c, "mime_type is not a media type"));
        }
    }
    if let Some(t) = &e.modified_at {
        check_time(c, "modified_at", t)?;
    }
    if e.props.len() > 100
        || e.props
            .iter()
            .map(|p| p.xml.len() + p.name.len())
            .sum::<usize>()
            > 64 * 1024
    {
        return Err(invalid(c, "at most 100 properties and 64 KiB of them"));
    }
    for p in &e.props {
        let xml = base64::engine::general_purpose::STANDARD
            .decode(&p.xml)
            .map_err(|_| invalid(c, "a property's xml is base64 of its XML"))?;
        if xml_depth(&xml) > MAX_XML_DEPTH {
            return Err(invalid(
                c,
                format!("a property's XML nests deeper than {MAX_XML_DEPTH} elements"),
            ));
        }
    }
    let text = serde_json::to_string(&e).map_err(|e| CloudError::Internal(e.to_string()))?;
    Ok(Prepared {
        text,
        summary: e.name.clone(),
        uid: None,
        starts_at: None,
        ends_at: None,
        path_key: Some(format!("{}/{}", e.parent.as_deref().unwrap_or(""), e.name)),
        file_id: e.file_id,
        albums: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcards_of_both_versions_are_kept_byte_for_byte() {
        for v in ["3.0", "4.0"] {
            let text = format!(
                "BEGIN:VCARD\r\nVERSION:{v}\r\nUID:abc-1\r\nFN:Ana Lima\r\nN:Lima;Ana;;;\r\nTEL;TYPE=cell:+351 912 345 678\r\nEND:VCARD\r\n"
            );
            let p = prepare(Category::Contacts, &serde_json::Value::String(text.clone())).unwrap();
            assert_eq!(p.text, text);
            assert_eq!(p.summary, "Ana Lima");
            assert_eq!(p.uid.as_deref(), Some("abc-1"));
        }
    }

    #[test]
    fn broken_vcards_are_refused() {
        for bad in [
            "",
            "hello",
            "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Ana\r\n",
            "BEGIN:VCARD\r\nVERSION:2.1\r\nFN:Ana\r\nEND:VCARD\r\n",
            "BEGIN:VCARD\r\nVERSION:4.0\r\nEND:VCARD\r\n",
            "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:A\r\nEND:VCARD\r\nBEGIN:VCARD\r\nVERSION:4.0\r\nFN:B\r\nEND:VCARD\r\n",
        ] {
            assert!(
                prepare(Category::Contacts, &serde_json::Value::String(bad.into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn events_are_indexed_by_time() {
        let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:ev-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260301T100000Z\r\nDTEND:20260301T110000Z\r\nSUMMARY:Dentist\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let p = prepare(Category::Calendar, &serde_json::Value::String(text.into())).unwrap();
        assert_eq!(p.summary, "Dentist");
        assert_eq!(p.uid.as_deref(), Some("ev-1"));
        assert_eq!(p.starts_at, Some(1_772_359_200_000));
        assert_eq!(p.ends_at, Some(1_772_362_800_000));
        let all_day = text
            .replace("DTSTART:20260301T100000Z", "DTSTART;VALUE=DATE:20260301")
            .replace("DTEND:20260301T110000Z\r\n", "");
        let p = prepare(Category::Calendar, &serde_json::Value::String(all_day)).unwrap();
        assert_eq!(p.starts_at, Some(1_772_323_200_000));
        for bad in [
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n",
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\n",
        ] {
            assert!(
                prepare(Category::Calendar, &serde_json::Value::String(bad.into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_categories_follow_their_schema() {
        let ok = serde_json::json!({"title": "", "body": "Buy milk\nand bread", "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z"});
        assert_eq!(prepare(Category::Notes, &ok).unwrap().summary, "Buy milk");
        for bad in [
            serde_json::json!("just text"),
            serde_json::json!({"body": "x", "created_at": "yesterday", "updated_at": "2026-01-01T10:00:00Z"}),
            serde_json::json!({"body": "x", "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z", "colour": "red"}),
        ] {
            assert!(prepare(Category::Notes, &bad).is_err(), "{bad}");
        }
        let wifi = serde_json::json!({"ssid": "home", "security": "wpa9"});
        assert!(prepare(Category::Wifi, &wifi).is_err());
    }
}
