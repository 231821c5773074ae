//! The wire format of CardDAV (RFC 6352), CalDAV (RFC 4791) and collection synchronisation
//! (RFC 6578): the bodies a client sends — PROPFIND, REPORT, MKCOL (RFC 5689), MKCALENDAR,
//! PROPPATCH — read into types, and the multistatus answers written back. What the answers
//! hold is the server's business (`mica-http`); this module only knows the XML.
//!
//! A body is read whole by the caller (bounded), refused when it declares a DTD (no entity of
//! any kind is expanded) or nests deeper than [`MAX_XML_DEPTH`], and only then parsed.

use std::borrow::Cow;
use std::fmt::Write as _;

use mica_cloud::category::{xml_depth, MAX_XML_DEPTH};
use xmltree::{Element, XMLNode};

use crate::filter::{CalFilter, CardFilter};

pub const DAV: &str = "DAV:";
pub const CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";
pub const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";
/// Apple's CalendarServer extensions (`getctag`), which many clients still read.
pub const CALSERVER: &str = "http://calendarserver.org/ns/";
/// Mica's own namespace: the stable code and message of an error.
pub const MICA: &str = "https://mica.invalid/ns/dav";

/// What is wrong with a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// Not XML, or not the element the method expects: `400`.
    Malformed(String),
    /// Well formed, but asks for what the server does not do: `403` with the precondition the
    /// RFC names (`supported-filter`, `supported-collation`, …).
    Unsupported {
        ns: &'static str,
        precondition: &'static str,
        message: String,
    },
}

impl XmlError {
    pub(crate) fn malformed(m: impl Into<String>) -> Self {
        XmlError::Malformed(m.into())
    }
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XmlError::Malformed(m) => f.write_str(m),
            XmlError::Unsupported { message, .. } => f.write_str(message),
        }
    }
}

/// A property's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prop {
    pub ns: String,
    pub name: String,
}

impl Prop {
    pub fn new(ns: &str, name: &str) -> Self {
        Prop {
            ns: ns.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    fn of(e: &Element) -> Self {
        Prop {
            ns: e.namespace.clone().unwrap_or_default(),
            name: e.name.clone(),
        }
    }
}

/// What a PROPFIND asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropFind {
    /// Every property the server would show (an empty body asks the same).
    AllProp,
    /// The names only.
    PropName,
    Props(Vec<Prop>),
}

/// A REPORT.
#[derive(Debug, Clone)]
pub enum Report {
    /// RFC 6578: what changed since the token ("" for everything).
    SyncCollection {
        token: String,
        limit: Option<usize>,
        props: Vec<Prop>,
    },
    /// `addressbook-multiget` or `calendar-multiget`: these resources.
    Multiget {
        hrefs: Vec<String>,
        props: Vec<Prop>,
    },
    AddressbookQuery {
        filter: CardFilter,
        limit: Option<usize>,
        props: Vec<Prop>,
    },
    CalendarQuery {
        filter: CalFilter,
        props: Vec<Prop>,
    },
    /// A report this server does not make (its name).
    Unsupported(Prop),
}

/// What MKCOL (extended, RFC 5689) or MKCALENDAR asks to make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewCollection {
    pub name: Option<String>,
    /// The `resourcetype` asked for (MKCOL): `addressbook`, `calendar`, `collection`.
    pub resource_types: Vec<Prop>,
}

/// Parses a body: refused when it declares a DTD or nests too deep.
fn parse(body: &[u8]) -> Result<Element, XmlError> {
    if contains_ci(body, b"<!DOCTYPE") || contains_ci(body, b"<!ENTITY") {
        return Err(XmlError::malformed(
            "a document type declaration is not accepted here",
        ));
    }
    if xml_depth(body) > MAX_XML_DEPTH {
        return Err(XmlError::malformed(format!(
            "the XML nests deeper than {MAX_XML_DEPTH} elements"
        )));
    }
    Element::parse(body).map_err(|e| XmlError::malformed(format!("the body is not XML: {e}")))
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

pub(crate) fn is(e: &Element, ns: &str, name: &str) -> bool {
    e.namespace.as_deref() == Some(ns) && e.name == name
}

pub(crate) fn kids(e: &Element) -> impl Iterator<Item = &Element> {
    e.children.iter().filter_map(XMLNode::as_element)
}

pub(crate) fn kid<'a>(e: &'a Element, ns: &str, name: &str) -> Option<&'a Element> {
    kids(e).find(|k| is(k, ns, name))
}

pub(crate) fn text(e: &Element) -> String {
    e.get_text().map(Cow::into_owned).unwrap_or_default()
}

fn expect(root: &Element, ns: &str, name: &str) -> Result<(), XmlError> {
    if is(root, ns, name) {
        Ok(())
    } else {
        Err(XmlError::malformed(format!(
            "expected a {name} element ({ns}), found {}",
            root.name
        )))
    }
}

/// The property names inside a `prop` element.
fn prop_names(prop: Option<&Element>) -> Vec<Prop> {
    prop.map(|p| kids(p).map(Prop::of).collect())
        .unwrap_or_default()
}

pub fn parse_propfind(body: &[u8]) -> Result<PropFind, XmlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PropFind::AllProp);
    }
    let root = parse(body)?;
    expect(&root, DAV, "propfind")?;
    if let Some(p) = kid(&root, DAV, "prop") {
        return Ok(PropFind::Props(prop_names(Some(p))));
    }
    if kid(&root, DAV, "propname").is_some() {
        return Ok(PropFind::PropName);
    }
    if kid(&root, DAV, "allprop").is_some() {
        return Ok(PropFind::AllProp);
    }
    Err(XmlError::malformed(
        "a propfind holds prop, propname or allprop",
    ))
}

fn limit(root: &Element) -> Result<Option<usize>, XmlError> {
    let Some(l) = kids(root).find(|k| k.name == "limit") else {
        return Ok(None);
    };
    let n = kids(l)
        .find(|k| k.name == "nresults")
        .map(text)
        .ok_or_else(|| XmlError::malformed("limit holds nresults"))?;
    n.trim()
        .parse::<usize>()
        .map(Some)
        .map_err(|_| XmlError::malformed("nresults is a whole number"))
}

pub fn parse_report(body: &[u8]) -> Result<Report, XmlError> {
    let root = parse(body)?;
    let props = prop_names(kids(&root).find(|k| is(k, DAV, "prop")));
    let ns = root.namespace.as_deref().unwrap_or_default();
    Ok(match (ns, root.name.as_str()) {
        (DAV, "sync-collection") => Report::SyncCollection {
            token: kid(&root, DAV, "sync-token")
                .map(text)
                .unwrap_or_default()
                .trim()
                .to_owned(),
            limit: limit(&root)?,
            props,
        },
        (CARDDAV, "addressbook-multiget") | (CALDAV, "calendar-multiget") => Report::Multiget {
            hrefs: kids(&root)
                .filter(|k| is(k, DAV, "href"))
                .map(|h| text(h).trim().to_owned())
                .collect(),
            props,
        },
        (CARDDAV, "addressbook-query") => Report::AddressbookQuery {
            filter: CardFilter::parse(kid(&root, CARDDAV, "filter"))?,
            limit: limit(&root)?,
            props,
        },
        (CALDAV, "calendar-query") => Report::CalendarQuery {
            filter: CalFilter::parse(kid(&root, CALDAV, "filter"))?,
            props,
        },
        _ => Report::Unsupported(Prop::of(&root)),
    })
}

/// MKCOL's (RFC 5689) or MKCALENDAR's body; an empty one asks for defaults.
pub fn parse_mkcol(body: &[u8]) -> Result<NewCollection, XmlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NewCollection::default());
    }
    let root = parse(body)?;
    if !is(&root, DAV, "mkcol") && !is(&root, CALDAV, "mkcalendar") {
        return Err(XmlError::malformed("expected mkcol or mkcalendar"));
    }
    let mut out = NewCollection::default();
    for set in kids(&root).filter(|k| is(k, DAV, "set")) {
        for prop in kids(set).filter(|k| is(k, DAV, "prop")) {
            for p in kids(prop) {
                if is(p, DAV, "displayname") {
                    out.name = Some(text(p).trim().to_owned());
                } else if is(p, DAV, "resourcetype") {
                    out.resource_types = kids(p).map(Prop::of).collect();
                }
            }
        }
    }
    Ok(out)
}

/// The properties a PROPPATCH sets or removes, in order.
pub fn parse_proppatch(body: &[u8]) -> Result<Vec<Prop>, XmlError> {
    let root = parse(body)?;
    expect(&root, DAV, "propertyupdate")?;
    Ok(kids(&root)
        .filter(|k| is(k, DAV, "set") || is(k, DAV, "remove"))
        .flat_map(|k| kids(k).filter(|p| is(p, DAV, "prop")))
        .flat_map(kids)
        .map(Prop::of)
        .collect())
}

/// Escapes text for an element or an attribute.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'', '\r']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept through parsing, which would make a bare CR of a CRLF a newline.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A property's value.
#[derive(Debug, Clone)]
pub enum Value {
    Text(String),
    /// One `href` element.
    Href(String),
    Hrefs(Vec<String>),
    /// XML the server wrote (its own elements, with the prefixes of [`Multistatus`]).
    Xml(String),
    Empty,
}

fn prefix(ns: &str) -> Option<&'static str> {
    Some(match ns {
        DAV => "d",
        CARDDAV => "card",
        CALDAV => "cal",
        CALSERVER => "cs",
        MICA => "m",
        _ => return None,
    })
}

/// Writes `<prefix:name` (declaring an unknown namespace on the element itself).
fn open_tag(out: &mut String, p: &Prop) {
    match prefix(&p.ns) {
        Some(pre) => {
            let _ = write!(out, "<{pre}:{}", p.name);
        }
        None if p.ns.is_empty() => {
            let _ = write!(out, "<{} xmlns=\"\"", p.name);
        }
        None => {
            let _ = write!(out, "<x:{} xmlns:x=\"{}\"", p.name, escape(&p.ns));
        }
    }
}

fn close_tag(out: &mut String, p: &Prop) {
    match prefix(&p.ns) {
        Some(pre) => {
            let _ = write!(out, "</{pre}:{}>", p.name);
        }
        None if p.ns.is_empty() => {
            let _ = write!(out, "</{}>", p.name);
        }
        None => {
            let _ = write!(out, "</x:{}>", p.name);
        }
    }
}

const HEAD: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n";
const NAMESPACES: &str = " xmlns:d=\"DAV:\" xmlns:card=\"urn:ietf:params:xml:ns:carddav\" \
     xmlns:cal=\"urn:ietf:params:xml:ns:caldav\" xmlns:cs=\"http://calendarserver.org/ns/\" \
     xmlns:m=\"https://mica.invalid/ns/dav\"";

/// A `207 Multi-Status` body, written as it goes.
pub struct Multistatus {
    out: String,
}

impl Default for Multistatus {
    fn default() -> Self {
        Self::new()
    }
}

impl Multistatus {
    pub fn new() -> Self {
        let mut out = String::with_capacity(4096);
        out.push_str(HEAD);
        let _ = write!(out, "<d:multistatus{NAMESPACES}>");
        Multistatus { out }
    }

    /// One resource: the properties it has (`200`) and those it has not (`404`).
    pub fn response(&mut self, href: &str, found: &[(Prop, Value)], missing: &[Prop]) {
        let o = &mut self.out;
        let _ = write!(o, "<d:response><d:href>{}</d:href>", escape(href));
        if !found.is_empty() {
            o.push_str("<d:propstat><d:prop>");
            for (p, v) in found {
                open_tag(o, p);
                match v {
                    Value::Empty => {
                        o.push_str("/>");
                        continue;
                    }
                    Value::Text(t) => {
                        o.push('>');
                        o.push_str(&escape(t));
                    }
                    Value::Href(h) => {
                        let _ = write!(o, "><d:href>{}</d:href>", escape(h));
                    }
                    Value::Hrefs(hs) => {
                        o.push('>');
                        for h in hs {
                            let _ = write!(o, "<d:href>{}</d:href>", escape(h));
                        }
                    }
                    Value::Xml(x) => {
                        o.push('>');
                        o.push_str(x);
                    }
                }
                close_tag(o, p);
            }
            o.push_str("</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>");
        }
        self.propstat(missing, "404 Not Found");
        self.out.push_str("</d:response>");
    }

    /// One resource whose properties all get `status` (PROPPATCH's refusals).
    pub fn refused(&mut self, href: &str, props: &[Prop], status: &str) {
        let _ = write!(self.out, "<d:response><d:href>{}</d:href>", escape(href));
        self.propstat(props, status);
        self.out.push_str("</d:response>");
    }

    fn propstat(&mut self, props: &[Prop], status: &str) {
        if props.is_empty() {
            return;
        }
        let o = &mut self.out;
        o.push_str("<d:propstat><d:prop>");
        for p in props {
            open_tag(o, p);
            o.push_str("/>");
        }
        let _ = write!(
            o,
            "</d:prop><d:status>HTTP/1.1 {status}</d:status></d:propstat>"
        );
    }

    /// A resource known only by its status: a deleted member in a sync report (`404 Not
    /// Found`), or the collection itself when the report was cut short (`507 Insufficient
    /// Storage`).
    pub fn status(&mut self, href: &str, status: &str) {
        let _ = write!(
            self.out,
            "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 {status}</d:status></d:response>",
            escape(href)
        );
    }

    pub fn sync_token(&mut self, token: &str) {
        let _ = write!(self.out, "<d:sync-token>{}</d:sync-token>", escape(token));
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</d:multistatus>\n");
        self.out
    }
}

/// A `DAV:error` body: the precondition the RFC names, and Mica's stable code and a message a
/// person understands.
pub fn error_body(ns: &str, precondition: &str, code: &str, message: &str) -> String {
    let mut out = String::from(HEAD);
    let _ = write!(out, "<d:error{NAMESPACES}>");
    if !precondition.is_empty() {
        open_tag(&mut out, &Prop::new(ns, precondition));
        out.push_str("/>");
    }
    let _ = writeln!(
        out,
        "<m:code>{}</m:code><m:message>{}</m:message></d:error>",
        escape(code),
        escape(message)
    );
    out
}

/// Many stored calendar items as one iCalendar object (an export, a subscription): their
/// components in one VCALENDAR, each time zone once (by `TZID`). The items' text is kept line
/// for line, folded lines included.
pub fn merge_calendars(items: &[&str]) -> String {
    let mut out = String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Mica//Mica//EN\r\n");
    let mut zones: std::collections::HashSet<String> = std::collections::HashSet::new();
    for text in items {
        let mut depth = 0usize;
        // The component being copied, and whether it is a time zone already written.
        let mut block = String::new();
        let mut skip = false;
        let mut tzid: Option<String> = None;
        for line in text.split_inclusive('\n') {
            let bare = line.trim_end_matches(['\r', '\n']);
            let upper = bare.to_ascii_uppercase();
            let continues = bare.starts_with([' ', '\t']);
            if upper.starts_with("BEGIN:") {
                depth += 1;
                if depth == 2 {
                    block.clear();
                    tzid = None;
                    skip = false;
                }
            }
            if depth >= 2 {
                if depth == 2 && upper.starts_with("TZID") && !continues {
                    tzid = bare.split_once(':').map(|(_, v)| v.to_owned());
                }
                block.push_str(bare);
                block.push_str("\r\n");
            }
            if upper.starts_with("END:") {
                if depth == 2 {
                    if upper == "END:VTIMEZONE" {
                        skip = tzid.as_ref().is_some_and(|t| !zones.insert(t.clone()));
                    }
                    if !skip {
                        out.push_str(&block);
                    }
                    block.clear();
                }
                depth = depth.saturating_sub(1);
            }
        }
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendars_merge_with_each_zone_once() {
        let item = |uid: &str| {
            format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//x//EN\r\nBEGIN:VTIMEZONE\r\n\
                 TZID:Europe/Paris\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n\
                 TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n\
                 BEGIN:VEVENT\r\nUID:{uid}\r\nSUMMARY:A long\r\n  title\r\n\
                 DTSTART;TZID=Europe/Paris:20261210T090000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            )
        };
        let (a, b) = (item("a"), item("b"));
        let out = merge_calendars(&[&a, &b]);
        assert_eq!(out.matches("BEGIN:VCALENDAR").count(), 1);
        assert_eq!(out.matches("BEGIN:VTIMEZONE").count(), 1);
        assert_eq!(out.matches("BEGIN:STANDARD").count(), 1);
        assert_eq!(out.matches("BEGIN:VEVENT").count(), 2);
        assert!(out.contains("SUMMARY:A long\r\n  title\r\n"));
        assert!(out.ends_with("END:VEVENT\r\nEND:VCALENDAR\r\n"));
    }

    #[test]
    fn propfind_bodies() {
        assert_eq!(parse_propfind(b"").unwrap(), PropFind::AllProp);
        let p = parse_propfind(
            br#"<?xml version="1.0"?><A:propfind xmlns:A="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav">
            <A:prop><A:getetag/><C:addressbook-home-set/><X:odd xmlns:X="urn:odd"/></A:prop></A:propfind>"#,
        )
        .unwrap();
        assert_eq!(
            p,
            PropFind::Props(vec![
                Prop::new(DAV, "getetag"),
                Prop::new(CARDDAV, "addressbook-home-set"),
                Prop::new("urn:odd", "odd"),
            ])
        );
        assert!(matches!(
            parse_propfind(b"<propfind xmlns='DAV:'><propname/></propfind>"),
            Ok(PropFind::PropName)
        ));
        assert!(parse_propfind(b"<nope/>").is_err());
        assert!(parse_propfind(b"not xml").is_err());
    }

    #[test]
    fn entities_and_deep_nesting_are_refused() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>
            <propfind xmlns="DAV:"><prop><getetag>&b;</getetag></prop></propfind>"#;
        assert!(matches!(parse_propfind(bomb), Err(XmlError::Malformed(_))));
        let deep = format!(
            "<propfind xmlns='DAV:'>{}{}</propfind>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(matches!(
            parse_propfind(deep.as_bytes()),
            Err(XmlError::Malformed(m)) if m.contains("nests")
        ));
    }

    #[test]
    fn reports() {
        let r = parse_report(
            br#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>data:,s1.4.ab</d:sync-token>
            <d:sync-level>1</d:sync-level><d:limit><d:nresults>10</d:nresults></d:limit>
            <d:prop><d:getetag/></d:prop></d:sync-collection>"#,
        )
        .unwrap();
        let Report::SyncCollection {
            token,
            limit,
            props,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(
            (token.as_str(), limit, props),
            ("data:,s1.4.ab", Some(10), vec![Prop::new(DAV, "getetag")])
        );
        let r = parse_report(
            br#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">
            <d:prop><d:getetag/><c:address-data/></d:prop>
            <d:href>/dav/addressbooks/1/contacts/a.vcf</d:href><d:href> /x </d:href>
            </c:addressbook-multiget>"#,
        )
        .unwrap();
        let Report::Multiget { hrefs, props } = r else {
            panic!("{r:?}")
        };
        assert_eq!(hrefs, ["/dav/addressbooks/1/contacts/a.vcf", "/x"]);
        assert_eq!(props.len(), 2);
        assert!(matches!(
            parse_report(b"<d:expand-property xmlns:d='DAV:'/>"),
            Ok(Report::Unsupported(p)) if p.name == "expand-property"
        ));
    }

    #[test]
    fn mkcol_and_proppatch() {
        let m = parse_mkcol(
            br#"<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>
            <D:displayname>Work</D:displayname></D:prop></D:set></C:mkcalendar>"#,
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("Work"));
        let m = parse_mkcol(
            br#"<D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>
            <D:resourcetype><D:collection/><C:addressbook/></D:resourcetype>
            </D:prop></D:set></D:mkcol>"#,
        )
        .unwrap();
        assert!(m
            .resource_types
            .contains(&Prop::new(CARDDAV, "addressbook")));
        assert_eq!(parse_mkcol(b"").unwrap(), NewCollection::default());
        let p = parse_proppatch(
            br#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>x</D:displayname>
            </D:prop></D:set><D:remove><D:prop><Z:color xmlns:Z="urn:z"/></D:prop></D:remove>
            </D:propertyupdate>"#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![Prop::new(DAV, "displayname"), Prop::new("urn:z", "color")]
        );
    }

    #[test]
    fn multistatus_is_well_formed_and_escaped() {
        let mut m = Multistatus::new();
        m.response(
            "/dav/a&b/",
            &[
                (
                    Prop::new(DAV, "displayname"),
                    Value::Text("Tom & <Jerry>".into()),
                ),
                (
                    Prop::new(DAV, "resourcetype"),
                    Value::Xml("<d:collection/><card:addressbook/>".into()),
                ),
                (Prop::new(DAV, "owner"), Value::Href("/p/".into())),
                (
                    Prop::new(CARDDAV, "address-data"),
                    Value::Text("BEGIN:VCARD\r\n".into()),
                ),
            ],
            &[Prop::new("urn:odd", "odd"), Prop::new("", "bare")],
        );
        m.status("/dav/gone", "404 Not Found");
        m.sync_token("data:,s1.1.00");
        let xml = m.finish();
        let root = Element::parse(xml.as_bytes()).unwrap();
        assert!(is(&root, DAV, "multistatus"));
        let first = kids(&root).next().unwrap();
        let ok = kid(first, DAV, "propstat").unwrap();
        let prop = kid(ok, DAV, "prop").unwrap();
        assert_eq!(
            text(kid(prop, DAV, "displayname").unwrap()),
            "Tom & <Jerry>"
        );
        assert_eq!(
            text(kid(prop, CARDDAV, "address-data").unwrap()),
            "BEGIN:VCARD\r\n"
        );
        assert!(xml.contains("<x:odd xmlns:x=\"urn:odd\"/>"));
        let e = error_body(DAV, "valid-sync-token", "sync_token_unknown", "resync");
        let root = Element::parse(e.as_bytes()).unwrap();
        assert!(kid(&root, DAV, "valid-sync-token").is_some());
        assert_eq!(
            text(kid(&root, MICA, "code").unwrap()),
            "sync_token_unknown"
        );
    }
}
