//! Validated identifiers a person signs in with: email addresses and phone numbers.

use std::fmt;
use std::str::FromStr;

use crate::ids::AccountId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("{0}")]
    InvalidEmail(&'static str),
    #[error("{0}")]
    InvalidPhone(&'static str),
    #[error("enter your account number, email address or phone number (with its country code, e.g. +44 20 7946 0958)")]
    UnknownLogin,
}

impl IdentError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            IdentError::InvalidEmail(_) => "invalid_email",
            IdentError::InvalidPhone(_) => "invalid_phone",
            IdentError::UnknownLogin => "invalid_login",
        }
    }
}

/// A syntactically valid email address, normalised: trimmed and lower-cased.
///
/// Mica treats addresses case-insensitively, as every major provider does in practice, so the
/// normalised form is the look-up key (its blind index) and the form mail is sent to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, IdentError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(IdentError::InvalidEmail("the email address is empty"));
        }
        if s.len() > 254 {
            return Err(IdentError::InvalidEmail(
                "the email address is longer than 254 characters",
            ));
        }
        let lowered = s.to_lowercase();
        let parsed = email_address::EmailAddress::from_str(&lowered).map_err(|_| {
            IdentError::InvalidEmail(
                "this is not a valid email address (expected name@example.com)",
            )
        })?;
        if parsed.display_part() != "" || parsed.email() != lowered {
            return Err(IdentError::InvalidEmail(
                "enter only the address, without a display name",
            ));
        }
        let domain = parsed.domain();
        if domain.starts_with('[') || !domain.contains('.') || domain.ends_with('.') {
            return Err(IdentError::InvalidEmail(
                "the email address needs a full domain name, such as example.com",
            ));
        }
        Ok(Email(lowered))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `j***@example.com`: enough for a person to recognise their address, not enough to learn it.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.split_once('@').unwrap_or((&self.0, ""));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Personal data: never whole in logs.
        write!(f, "Email({})", self.masked())
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid phone number in E.164 form (`+442079460958`), checked against the numbering plan.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneE164(String);

impl PhoneE164 {
    pub fn parse(input: &str) -> Result<Self, IdentError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(IdentError::InvalidPhone("the phone number is empty"));
        }
        if s.len() > 32 {
            return Err(IdentError::InvalidPhone("the phone number is too long"));
        }
        let international = s.starts_with('+') || s.starts_with("00");
        if !international {
            return Err(IdentError::InvalidPhone(
                "include the country code, starting with + (for example +44 20 7946 0958)",
            ));
        }
        let s = if let Some(rest) = s.strip_prefix("00") {
            format!("+{rest}")
        } else {
            s.to_owned()
        };
        let number = phonenumber::parse(None, &s).map_err(|e| match e {
            phonenumber::ParseError::InvalidCountryCode => {
                IdentError::InvalidPhone("the country code of this phone number does not exist")
            }
            _ => IdentError::InvalidPhone("this is not a phone number"),
        })?;
        if !phonenumber::is_valid(&number) {
            return Err(IdentError::InvalidPhone(
                "this number is not valid for its country or region",
            ));
        }
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        Ok(PhoneE164(e164))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `+44*******958`.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        let head: String = self.0.chars().take(3).collect();
        let tail: String = self.0.chars().skip(n.saturating_sub(3)).collect();
        format!("{head}{}{tail}", "*".repeat(n.saturating_sub(6)))
    }
}

impl fmt::Debug for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

impl fmt::Display for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a person types in the "account" box of the sign-in form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Id(AccountId),
    Email(Email),
    Phone(PhoneE164),
}

impl Login {
    pub fn parse(input: &str) -> Result<Self, IdentError> {
        let s = input.trim();
        if s.contains('@') {
            return Email::parse(s).map(Login::Email);
        }
        if let Ok(id) = s.parse::<AccountId>() {
            return Ok(Login::Id(id));
        }
        if s.starts_with('+') || s.starts_with("00") {
            return PhoneE164::parse(s).map(Login::Phone);
        }
        if s.chars().any(|c| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_digit() || " -()".contains(c))
        {
            return Err(IdentError::InvalidPhone(
                "include the country code, starting with + (for example +44 20 7946 0958)",
            ));
        }
        Err(IdentError::UnknownLogin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse("  Ana@Example.COM ").map(|e| e.0),
            Ok("ana@example.com".into())
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@localhost",
            "Ana <ana@example.com>",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Email::parse("ana@example.com").map(|e| e.masked()),
            Ok("a***@example.com".into())
        );
    }

    #[test]
    fn phones_need_a_country_code_and_a_valid_number() {
        assert_eq!(
            PhoneE164::parse("+44 20 7946 0958").map(|p| p.0),
            Ok("+442079460958".into())
        );
        assert_eq!(
            PhoneE164::parse("0044 20 7946 0958").map(|p| p.0),
            Ok("+442079460958".into())
        );
        assert_eq!(
            PhoneE164::parse("+1 (415) 555-2671").map(|p| p.0),
            Ok("+14155552671".into())
        );
        let no_cc = PhoneE164::parse("020 7946 0958").unwrap_err();
        assert!(no_cc.to_string().contains("country code"));
        assert!(PhoneE164::parse("+44 12").is_err());
        assert!(PhoneE164::parse("+999 1234567").is_err());
        assert!(PhoneE164::parse("+1 555 0100 99999").is_err());
    }

    #[test]
    fn login_kinds() {
        assert!(matches!(Login::parse("1624635123"), Ok(Login::Id(_))));
        assert!(matches!(
            Login::parse("ana@example.com"),
            Ok(Login::Email(_))
        ));
        assert!(matches!(Login::parse("+14155552671"), Ok(Login::Phone(_))));
        assert!(matches!(
            Login::parse("415 555 2671"),
            Err(IdentError::InvalidPhone(_))
        ));
        assert!(matches!(Login::parse("ana"), Err(IdentError::UnknownLogin)));
    }
}
