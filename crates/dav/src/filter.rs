//! The filters of `addressbook-query` (RFC 6352 §10.5) and `calendar-query` (RFC 4791 §9.7),
//! read from their XML and applied to the stored vCard or iCalendar text.
//!
//! Text is matched on the property's value as the client wrote it, unescaped (`\,` is a comma)
//! and folded lines joined, with the collations the RFCs require: `i;unicode-casemap` (the
//! default; compared lower-cased), `i;ascii-casemap` and `i;octet`. A calendar item's time
//! range is its indexed start and end ([`mica_cloud::category::calendar_span`]); a recurring
//! item matches every range from its first start on (clients expand recurrences themselves,
//! and a server may answer a superset, never a subset).

use mica_cloud::category::calendar_span;
use xmltree::Element;

use crate::groupware::{is, kid, kids, text, XmlError, CALDAV, CARDDAV};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collation {
    Octet,
    AsciiCasemap,
    UnicodeCasemap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchType {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone)]
struct TextMatch {
    /// Already folded for the collation.
    text: String,
    negate: bool,
    match_type: MatchType,
    collation: Collation,
}

impl TextMatch {
    fn parse(e: &Element, ns: &'static str, contains_by_default: bool) -> Result<Self, XmlError> {
        let collation = match e.attributes.get("collation").map(String::as_str) {
            None | Some("i;unicode-casemap") => Collation::UnicodeCasemap,
            Some("i;ascii-casemap") => Collation::AsciiCasemap,
            Some("i;octet") => Collation::Octet,
            Some(other) => {
                return Err(XmlError::Unsupported {
                    ns,
                    precondition: "supported-collation",
                    message: format!(
                        "the collation {other} is not supported; use i;unicode-casemap, \
                         i;ascii-casemap or i;octet"
                    ),
                })
            }
        };
        let match_type = match e.attributes.get("match-type").map(String::as_str) {
            None if contains_by_default => MatchType::Contains,
            Some("contains") => MatchType::Contains,
            Some("equals") => MatchType::Equals,
            Some("starts-with") => MatchType::StartsWith,
            Some("ends-with") => MatchType::EndsWith,
            None => MatchType::Contains,
            Some(other) => {
                return Err(XmlError::malformed(format!(
                    "match-type {other} is not one of equals, contains, starts-with, ends-with"
                )))
            }
        };
        let negate = matches!(
            e.attributes.get("negate-condition").map(String::as_str),
            Some("yes")
        );
        Ok(TextMatch {
            text: fold(collation, &text(e)),
            negate,
            match_type,
            collation,
        })
    }

    fn matches(&self, value: &str) -> bool {
        let v = fold(self.collation, value);
        let hit = match self.match_type {
            MatchType::Equals => v == self.text,
            MatchType::Contains => v.contains(&self.text),
            MatchType::StartsWith => v.starts_with(&self.text),
            MatchType::EndsWith => v.ends_with(&self.text),
        };
        hit != self.negate
    }
}

fn fold(c: Collation, s: &str) -> String {
    match c {
        Collation::Octet => s.to_owned(),
        Collation::AsciiCasemap => s.to_ascii_lowercase(),
        Collation::UnicodeCasemap => s.to_lowercase(),
    }
}

#[derive(Debug, Clone)]
struct ParamFilter {
    name: String,
    is_not_defined: bool,
    text_match: Option<TextMatch>,
}

#[derive(Debug, Clone)]
struct PropFilter {
    /// Upper case.
    name: String,
    is_not_defined: bool,
    /// `test="allof"` (CardDAV; CalDAV's are always all of).
    all: bool,
    matches: Vec<TextMatch>,
    params: Vec<ParamFilter>,
}

impl PropFilter {
    fn parse(e: &Element, ns: &'static str) -> Result<Self, XmlError> {
        let name = e
            .attributes
            .get("name")
            .ok_or_else(|| XmlError::malformed("a prop-filter needs a name"))?
            .to_ascii_uppercase();
        let carddav = ns == CARDDAV;
        let all = !carddav || e.attributes.get("test").map(String::as_str) == Some("allof");
        let mut matches = Vec::new();
        let mut params = Vec::new();
        for k in kids(e) {
            if is(k, ns, "text-match") {
                matches.push(TextMatch::parse(k, ns, true)?);
            } else if is(k, ns, "param-filter") {
                let pname = k
                    .attributes
                    .get("name")
                    .ok_or_else(|| XmlError::malformed("a param-filter needs a name"))?
                    .to_ascii_uppercase();
                params.push(ParamFilter {
                    name: pname,
                    is_not_defined: kid(k, ns, "is-not-defined").is_some(),
                    text_match: kid(k, ns, "text-match")
                        .map(|t| TextMatch::parse(t, ns, true))
                        .transpose()?,
                });
            } else if is(k, ns, "time-range") {
                return Err(XmlError::Unsupported {
                    ns,
                    precondition: "supported-filter",
                    message: "a time-range on a property is not supported; filter the \
                              component by time instead"
                        .into(),
                });
            }
        }
        Ok(PropFilter {
            name,
            is_not_defined: kid(e, ns, "is-not-defined").is_some(),
            all,
            matches,
            params,
        })
    }

    fn matches(&self, lines: &[&Line]) -> bool {
        let with_name: Vec<&&Line> = lines.iter().filter(|l| l.name == self.name).collect();
        if self.is_not_defined {
            return with_name.is_empty();
        }
        if with_name.is_empty() {
            return false;
        }
        let tests = self.matches.len() + self.params.len();
        if tests == 0 {
            return true;
        }
        // Each test passes when some instance of the property passes it.
        let results = self
            .matches
            .iter()
            .map(|m| with_name.iter().any(|l| m.matches(&l.value)))
            .chain(self.params.iter().map(|p| {
                with_name.iter().any(|l| {
                    let values: Vec<&String> = l
                        .params
                        .iter()
                        .filter(|(n, _)| *n == p.name)
                        .map(|(_, v)| v)
                        .collect();
                    if p.is_not_defined {
                        return values.is_empty();
                    }
                    match &p.text_match {
                        None => !values.is_empty(),
                        Some(t) => values.iter().any(|v| t.matches(v)),
                    }
                })
            }));
        if self.all {
            results.into_iter().all(|r| r)
        } else {
            results.into_iter().any(|r| r)
        }
    }
}

/// An `addressbook-query` filter.
#[derive(Debug, Clone, Default)]
pub struct CardFilter {
    all: bool,
    props: Vec<PropFilter>,
}

impl CardFilter {
    pub(crate) fn parse(e: Option<&Element>) -> Result<Self, XmlError> {
        let Some(e) = e else {
            return Ok(CardFilter::default());
        };
        Ok(CardFilter {
            all: e.attributes.get("test").map(String::as_str) == Some("allof"),
            props: kids(e)
                .filter(|k| is(k, CARDDAV, "prop-filter"))
                .map(|k| PropFilter::parse(k, CARDDAV))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether the vCard passes (no prop-filter: every card does).
    pub fn matches(&self, vcard: &str) -> bool {
        if self.props.is_empty() {
            return true;
        }
        let tree = Component::parse(vcard);
        let card = tree.children.first().unwrap_or(&tree);
        let lines: Vec<&Line> = card.lines.iter().collect();
        if self.all {
            self.props.iter().all(|p| p.matches(&lines))
        } else {
            self.props.iter().any(|p| p.matches(&lines))
        }
    }
}

#[derive(Debug, Clone)]
struct CompFilter {
    name: String,
    is_not_defined: bool,
    /// UTC milliseconds; either end may be open.
    time_range: Option<(Option<i64>, Option<i64>)>,
    props: Vec<PropFilter>,
    comps: Vec<CompFilter>,
}

impl CompFilter {
    fn parse(e: &Element) -> Result<Self, XmlError> {
        let name = e
            .attributes
            .get("name")
            .ok_or_else(|| XmlError::malformed("a comp-filter needs a name"))?
            .to_ascii_uppercase();
        let time_range = match kid(e, CALDAV, "time-range") {
            None => None,
            Some(t) => {
                let at = |a: &str| {
                    t.attributes
                        .get(a)
                        .map(|v| {
                            utc_millis(v).ok_or_else(|| {
                                XmlError::malformed(format!(
                                    "time-range {a} is not a UTC date-time like 20261203T000000Z"
                                ))
                            })
                        })
                        .transpose()
                };
                let (start, end) = (at("start")?, at("end")?);
                if start.is_none() && end.is_none() {
                    return Err(XmlError::malformed("a time-range needs a start or an end"));
                }
                Some((start, end))
            }
        };
        Ok(CompFilter {
            name,
            is_not_defined: kid(e, CALDAV, "is-not-defined").is_some(),
            time_range,
            props: kids(e)
                .filter(|k| is(k, CALDAV, "prop-filter"))
                .map(|k| PropFilter::parse(k, CALDAV))
                .collect::<Result<_, _>>()?,
            comps: kids(e)
                .filter(|k| is(k, CALDAV, "comp-filter"))
                .map(CompFilter::parse)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether some component of this name among `candidates` passes.
    fn matches(&self, candidates: &[Component], text: &str) -> bool {
        let named: Vec<&Component> = candidates.iter().filter(|c| c.name == self.name).collect();
        if self.is_not_defined {
            return named.is_empty();
        }
        named.iter().any(|c| {
            let lines: Vec<&Line> = c.lines.iter().collect();
            self.time_range
                .is_none_or(|(s, e)| in_range(&self.name, text, s, e))
                && self.props.iter().all(|p| p.matches(&lines))
                && self.comps.iter().all(|f| f.matches(&c.children, text))
        })
    }
}

/// Whether the stored item takes place in `[start, end)`. Only an event's or a task's own
/// range is known; a time range on any other component (an alarm) lets it pass.
fn in_range(component: &str, text: &str, start: Option<i64>, end: Option<i64>) -> bool {
    if component != "VEVENT" && component != "VTODO" {
        return true;
    }
    let Some(span) = calendar_span(text) else {
        return true;
    };
    let Some(from) = span.start else {
        // A task without a start or due date happens whenever.
        return true;
    };
    let (s, e) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
    if from >= e {
        return false;
    }
    if span.recurs {
        return true;
    }
    // Without an end, an event lasts its day (RFC 4791 §9.9 asks a day for a date, none for a
    // date-time; a superset is allowed).
    let to = span.end.unwrap_or(from.saturating_add(86_400_000));
    to > s || (to == from && from >= s)
}

/// `20261203T101500Z` as UTC milliseconds.
fn utc_millis(v: &str) -> Option<i64> {
    let v = v.trim();
    let b = v.as_bytes();
    if b.len() != 16 || b[8] != b'T' || !matches!(b[15], b'Z' | b'z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r).and_then(|s| s.parse::<u32>().ok());
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp() * 1000)
}

/// A `calendar-query` filter: one comp-filter for VCALENDAR.
#[derive(Debug, Clone)]
pub struct CalFilter(CompFilter);

impl CalFilter {
    pub(crate) fn parse(e: Option<&Element>) -> Result<Self, XmlError> {
        let top = e
            .and_then(|f| kid(f, CALDAV, "comp-filter"))
            .ok_or_else(|| XmlError::malformed("a calendar-query needs a comp-filter"))?;
        let f = CompFilter::parse(top)?;
        if f.name != "VCALENDAR" {
            return Err(XmlError::Unsupported {
                ns: CALDAV,
                precondition: "valid-filter",
                message: "the outer comp-filter is VCALENDAR".into(),
            });
        }
        Ok(CalFilter(f))
    }

    pub fn matches(&self, ical: &str) -> bool {
        let tree = Component::parse(ical);
        self.0.matches(&tree.children, ical)
    }
}

/// One content line: its name (upper case, group dropped), parameters and unescaped value.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    params: Vec<(String, String)>,
    value: String,
}

/// A component (`VCARD`, `VCALENDAR`, `VEVENT`, …) with its own lines and its children; the
/// root is nameless.
#[derive(Debug, Clone, Default)]
struct Component {
    name: String,
    lines: Vec<Line>,
    children: Vec<Component>,
}

impl Component {
    fn parse(text: &str) -> Component {
        let mut stack = vec![Component::default()];
        for raw in unfold(text) {
            let Some(line) = content_line(&raw) else {
                continue;
            };
            match line.name.as_str() {
                "BEGIN" => stack.push(Component {
                    name: line.value.to_ascii_uppercase(),
                    ..Component::default()
                }),
                "END" if stack.len() > 1 => {
                    if let Some(done) = stack.pop() {
                        if let Some(parent) = stack.last_mut() {
                            parent.children.push(done);
                        }
                    }
                }
                _ => {
                    if let Some(top) = stack.last_mut() {
                        top.lines.push(line);
                    }
                }
            }
        }
        // An unterminated component still counts (the stored text was validated anyway).
        while stack.len() > 1 {
            if let Some(done) = stack.pop() {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(done);
                }
            }
        }
        stack.pop().unwrap_or_default()
    }
}

/// Joins folded lines (a line starting with a space or a tab continues the one before).
fn unfold(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.split('\n') {
        let l = l.strip_suffix('\r').unwrap_or(l);
        match (l.strip_prefix([' ', '\t']), out.last_mut()) {
            (Some(rest), Some(prev)) => prev.push_str(rest),
            _ => out.push(l.to_owned()),
        }
    }
    out
}

fn content_line(l: &str) -> Option<Line> {
    // The value starts at the first colon outside a quoted parameter value.
    let mut quoted = false;
    let mut colon = None;
    for (i, c) in l.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon?;
    let (head, value) = (&l[..colon], &l[colon + 1..]);
    let mut parts = head.split(';');
    let name = parts.next()?;
    let name = name.rsplit('.').next().unwrap_or(name).to_ascii_uppercase();
    if name.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        for v in v.split(',') {
            params.push((n.to_ascii_uppercase(), v.trim_matches('"').to_owned()));
        }
    }
    Some(Line {
        name,
        params,
        value: unescape(value),
    })
}

fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groupware::{parse_report, Report};

    fn card_filter(xml: &str) -> CardFilter {
        let body = format!(
            r#"<C:addressbook-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav">
            <D:prop><D:getetag/></D:prop>{xml}</C:addressbook-query>"#
        );
        match parse_report(body.as_bytes()).unwrap() {
            Report::AddressbookQuery { filter, .. } => filter,
            r => panic!("{r:?}"),
        }
    }

    fn cal_filter(xml: &str) -> Result<CalFilter, XmlError> {
        let body = format!(
            r#"<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
            <D:prop><D:getetag/></D:prop>{xml}</C:calendar-query>"#
        );
        match parse_report(body.as_bytes())? {
            Report::CalendarQuery { filter, .. } => Ok(filter),
            r => panic!("{r:?}"),
        }
    }

    const ANNA: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Anna M\r\n üller\r\n\
        item1.EMAIL;TYPE=work:anna@example.com\r\nNOTE:a\\, b\r\nEND:VCARD\r\n";

    #[test]
    fn card_filters() {
        let f = |x: &str| card_filter(x).matches(ANNA);
        assert!(f(""));
        assert!(f(
            r#"<C:filter><C:prop-filter name="FN"><C:text-match>MÜLLER</C:text-match></C:prop-filter></C:filter>"#
        ));
        assert!(!f(
            r#"<C:filter><C:prop-filter name="FN"><C:text-match collation="i;octet">MÜLLER</C:text-match></C:prop-filter></C:filter>"#
        ));
        assert!(f(
            r#"<C:filter><C:prop-filter name="email"><C:text-match match-type="equals">ANNA@example.com</C:text-match></C:prop-filter></C:filter>"#
        ));
        assert!(f(
            r#"<C:filter><C:prop-filter name="NOTE"><C:text-match match-type="equals">a, b</C:text-match></C:prop-filter></C:filter>"#
        ));
        assert!(f(
            r#"<C:filter><C:prop-filter name="TEL"><C:is-not-defined/></C:prop-filter></C:filter>"#
        ));
        assert!(!f(
            r#"<C:filter test="allof"><C:prop-filter name="TEL"><C:is-not-defined/></C:prop-filter><C:prop-filter name="FN"><C:text-match negate-condition="yes">anna</C:text-match></C:prop-filter></C:filter>"#
        ));
        assert!(f(
            r#"<C:filter test="anyof"><C:prop-filter name="TEL"/><C:prop-filter name="EMAIL"><C:param-filter name="TYPE"><C:text-match>WORK</C:text-match></C:param-filter></C:prop-filter></C:filter>"#
        ));
        let body = r#"<C:addressbook-query xmlns:C="urn:ietf:params:xml:ns:carddav"><C:filter><C:prop-filter name="FN"><C:text-match collation="i;klingon">x</C:text-match></C:prop-filter></C:filter></C:addressbook-query>"#;
        assert!(matches!(
            parse_report(body.as_bytes()),
            Err(XmlError::Unsupported {
                precondition: "supported-collation",
                ..
            })
        ));
    }

    fn event(start: &str, end: &str, extra: &str) -> String {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:e1\r\n\
             DTSTAMP:20261201T000000Z\r\nDTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:Dentist\r\n\
             {extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    }

    #[test]
    fn calendar_filters() {
        let range = |s: &str, e: &str| {
            cal_filter(&format!(
                r#"<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">
                <C:time-range start="{s}" end="{e}"/></C:comp-filter></C:comp-filter></C:filter>"#
            ))
            .unwrap()
        };
        let once = event("20261210T090000Z", "20261210T100000Z", "");
        assert!(range("20261210T000000Z", "20261211T000000Z").matches(&once));
        assert!(range("20261210T095900Z", "20261210T100100Z").matches(&once));
        assert!(!range("20261210T100000Z", "20261211T000000Z").matches(&once));
        assert!(!range("20261201T000000Z", "20261210T090000Z").matches(&once));
        let weekly = event(
            "20261210T090000Z",
            "20261210T100000Z",
            "RRULE:FREQ=WEEKLY\r\n",
        );
        assert!(range("20270301T000000Z", "20270302T000000Z").matches(&weekly));
        assert!(!range("20261101T000000Z", "20261102T000000Z").matches(&weekly));
        let by_uid = cal_filter(
            r#"<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">
            <C:prop-filter name="UID"><C:text-match collation="i;octet" match-type="equals">e1</C:text-match></C:prop-filter>
            </C:comp-filter></C:comp-filter></C:filter>"#,
        )
        .unwrap();
        assert!(by_uid.matches(&once));
        let todos = cal_filter(
            r#"<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VTODO"/></C:comp-filter></C:filter>"#,
        )
        .unwrap();
        assert!(!todos.matches(&once));
        assert!(cal_filter(r#"<C:filter><C:comp-filter name="VEVENT"/></C:filter>"#).is_err());
        assert!(cal_filter(
            r#"<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT"><C:time-range start="tomorrow"/></C:comp-filter></C:comp-filter></C:filter>"#
        )
        .is_err());
        assert_eq!(utc_millis("19700101T000001Z"), Some(1000));
    }
}
