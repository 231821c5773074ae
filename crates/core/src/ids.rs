//! Identifiers.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// An account's public number: ten random decimal digits, never sequential (ID-2).
///
/// Serialised as a JSON string so no client loses precision or strips a digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(u64);

impl AccountId {
    pub const MIN: u64 = 1_000_000_000;
    pub const MAX: u64 = 9_999_999_999;

    /// A fresh random id. Collisions are resolved by the store (unique key, retry).
    pub fn random() -> Self {
        AccountId(rand::rngs::OsRng.gen_range(Self::MIN..=Self::MAX))
    }
    pub fn new(v: u64) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&v).then_some(AccountId(v))
    }
    pub fn get(self) -> u64 {
        self.0
    }
    /// The id as stored in the database (a signed 64-bit column).
    pub fn as_i64(self) -> i64 {
        // Always fits: MAX < 2^34.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
    pub fn from_i64(v: i64) -> Option<Self> {
        u64::try_from(v).ok().and_then(Self::new)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for AccountId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse::<u64>().ok().and_then(AccountId::new).ok_or(())
    }
}

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom("an account id is ten digits"))
    }
}

impl utoipa::PartialSchema for AccountId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[1-9][0-9]{9}$"))
            .description(Some("The account's ten-digit number"))
            .into()
    }
}
impl utoipa::ToSchema for AccountId {}

/// A random opaque identifier for a session (a refresh-token family), as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl SessionId {
    pub fn random() -> Self {
        SessionId(crate::crypto::random_token_string(16))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_ten_digits_and_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| AccountId::random()).collect();
        assert!(ids.len() > 995);
        for id in ids {
            assert_eq!(id.to_string().len(), 10);
            assert_eq!(id.to_string().parse::<AccountId>(), Ok(id));
        }
    }

    #[test]
    fn parse_rejects_non_ids() {
        for s in [
            "",
            "123",
            "0123456789",
            "12345678901",
            "12345abcde",
            "+123456789",
        ] {
            assert!(s.parse::<AccountId>().is_err(), "{s}");
        }
    }
}
