//! What a user agent string says, for people reading their login records and sessions: the
//! client ("Chrome 120.0"), the operating system ("Windows 10") and the kind of device.

/// A parsed user agent. Fields are `None` when the string does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    pub client: Option<String>,
    pub os: Option<String>,
    /// `pc`, `smartphone`, `mobilephone`, `appliance`, `crawler`, `misc`.
    pub category: Option<String>,
}

/// Parses a user agent with woothee's rule set; unknown agents (such as `mica-client/0.1`) keep
/// their own product token as the client.
pub fn describe(user_agent: &str) -> Agent {
    let known = |s: &str| !s.is_empty() && s != "UNKNOWN";
    if let Some(r) = woothee::parser::Parser::new().parse(user_agent) {
        if known(r.name) {
            let client = if known(r.version) {
                format!("{} {}", r.name, r.version)
            } else {
                r.name.to_owned()
            };
            let os = known(r.os).then(|| {
                // Windows names carry their version already ("Windows 10" + "NT 10.0").
                let numeric = r
                    .os_version
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit());
                if known(&r.os_version) && numeric && !r.os.contains(r.os_version.as_ref()) {
                    format!("{} {}", r.os, r.os_version)
                } else {
                    r.os.to_owned()
                }
            });
            return Agent {
                client: Some(client),
                os,
                category: known(r.category).then(|| r.category.to_owned()),
            };
        }
    }
    let token = user_agent
        .split_whitespace()
        .next()
        .filter(|t| !t.is_empty())
        .map(|t| t.replace('/', " "));
    Agent {
        client: token,
        os: None,
        category: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_apps() {
        let chrome = describe(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(chrome.client.as_deref(), Some("Chrome 120.0.0.0"));
        assert_eq!(chrome.os.as_deref(), Some("Windows 10"));
        assert_eq!(chrome.category.as_deref(), Some("pc"));
        let iphone = describe(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(iphone.category.as_deref(), Some("smartphone"));
        assert!(iphone.os.as_deref().is_some_and(|o| o.contains("iPhone")));
        assert_eq!(
            describe("mica-client/0.1.0").client.as_deref(),
            Some("mica-client 0.1.0")
        );
        assert_eq!(describe(""), Agent::default());
    }
}
