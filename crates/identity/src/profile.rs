//! Profile (ID-9) and security checkup (ID-10).

use std::io::Cursor;
use std::str::FromStr;
use std::time::Duration;

use mica_store::ProfileRow;

use crate::{Identity, IdentityError, Principal};

/// Largest avatar upload accepted, before re-encoding.
pub const MAX_AVATAR_UPLOAD: usize = 5 * 1024 * 1024;
/// Side of the stored avatar, at most.
pub const AVATAR_SIDE: u32 = 256;
const MAX_SOURCE_SIDE: u32 = 8192;
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;

pub const GENDERS: &[&str] = &["female", "male", "other", "undisclosed"];

/// What a person says about themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub nickname: Option<String>,
    pub gender: Option<String>,
    /// ISO 3166-1 alpha-2 region, e.g. `PT`.
    pub country: Option<String>,
    /// BCP 47 language tag, e.g. `pt-BR`.
    pub locale: Option<String>,
    pub has_avatar: bool,
}

fn invalid(field: &'static str, message: &str) -> IdentityError {
    IdentityError::Invalid {
        field,
        message: message.into(),
    }
}

impl Profile {
    /// Validates and normalises what a client sent.
    pub fn validated(self) -> Result<Profile, IdentityError> {
        let nickname = match self
            .nickname
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
        {
            Some(n) if n.chars().count() > 64 => {
                return Err(invalid("nickname", "at most 64 characters"))
            }
            Some(n) if n.chars().any(char::is_control) => {
                return Err(invalid("nickname", "no control characters"))
            }
            other => other,
        };
        let gender = match self.gender {
            Some(g) if !GENDERS.contains(&g.as_str()) => {
                return Err(invalid("gender", "one of female, male, other, undisclosed"))
            }
            other => other,
        };
        let country = match self.country.map(|c| c.trim().to_ascii_uppercase()) {
            Some(c) if c.len() != 2 || phonenumber::country::Id::from_str(&c).is_err() => {
                return Err(invalid(
                    "country",
                    "a two-letter ISO 3166 region code, such as PT or BR",
                ))
            }
            other => other,
        };
        let locale = match self.locale {
            Some(l) if !valid_locale(&l) => {
                return Err(invalid(
                    "locale",
                    "a language tag such as en, en-GB or pt-BR",
                ))
            }
            other => other,
        };
        Ok(Profile {
            nickname,
            gender,
            country,
            locale,
            has_avatar: self.has_avatar,
        })
    }
}

/// A BCP 47 tag of the common shapes: language (2–3 letters), then subtags of 2–8 alphanumerics.
fn valid_locale(l: &str) -> bool {
    let mut parts = l.split('-');
    let lang_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    lang_ok
        && l.len() <= 35
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Decodes an uploaded image within strict limits and re-encodes it as a PNG of at most
/// 256×256. Anything that is not a PNG, JPEG or WebP, is truncated, or claims dimensions that
/// would take more memory than allowed (a decompression bomb) is refused.
pub fn reencode_avatar(bytes: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let bad = |m: &str| IdentityError::Invalid {
        field: "avatar",
        message: m.into(),
    };
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| bad("the file could not be read"))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => {}
        _ => return Err(bad("not a PNG, JPEG or WebP image")),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut reader = reader;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => bad("the image is too large (at most 8192×8192 pixels)"),
        _ => bad("the image is damaged or incomplete"),
    })?;
    let small = img.thumbnail(AVATAR_SIDE, AVATAR_SIDE);
    let mut out = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| IdentityError::Internal(format!("encoding avatar: {e}")))?;
    Ok(out)
}

/// One step of the security checkup.
#[derive(Debug, Clone)]
pub struct CheckupStep {
    pub id: &'static str,
    pub done: bool,
    pub points: u32,
    pub advice: &'static str,
}

impl Identity {
    pub async fn profile(&self, p: &Principal) -> Result<Profile, IdentityError> {
        let r = self.store().profile(p.account).await?;
        Ok(Profile {
            nickname: r.nickname,
            gender: r.gender,
            country: r.country,
            locale: r.locale,
            has_avatar: r.has_avatar,
        })
    }

    pub async fn set_profile(
        &self,
        p: &Principal,
        profile: Profile,
    ) -> Result<Profile, IdentityError> {
        let v = profile.validated()?;
        let row = ProfileRow {
            nickname: v.nickname.clone(),
            gender: v.gender.clone(),
            country: v.country.clone(),
            locale: v.locale.clone(),
            has_avatar: false,
            updated_at: None,
        };
        self.store()
            .put_profile(p.account, &row, self.now())
            .await?;
        self.profile(p).await
    }

    /// Validates, re-encodes and stores an avatar (decoding runs off the async runtime).
    pub async fn set_avatar(&self, p: &Principal, bytes: Vec<u8>) -> Result<(), IdentityError> {
        if bytes.len() > MAX_AVATAR_UPLOAD {
            return Err(invalid("avatar", "the file is larger than 5 MB"));
        }
        let png = tokio::task::spawn_blocking(move || reencode_avatar(&bytes))
            .await
            .map_err(|e| IdentityError::Internal(format!("avatar task: {e}")))??;
        self.store()
            .put_avatar(p.account, Some(&png), self.now())
            .await?;
        Ok(())
    }

    pub async fn remove_avatar(&self, p: &Principal) -> Result<(), IdentityError> {
        self.store().put_avatar(p.account, None, self.now()).await?;
        Ok(())
    }

    pub async fn avatar(&self, p: &Principal) -> Result<Vec<u8>, IdentityError> {
        self.store()
            .avatar(p.account)
            .await?
            .ok_or(IdentityError::NotFound)
    }

    /// A 0–100 score and the steps that raise it, computed from the account as it is now.
    pub async fn security_checkup(
        &self,
        p: &Principal,
    ) -> Result<(u32, Vec<CheckupStep>), IdentityError> {
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(p.account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let two_step = self.two_step_status(p).await?;
        let has_recovery = !self.store().recovery_factors(p.account).await?.is_empty();
        let now = self.now();
        let day = Duration::from_secs(86_400);
        let (stale, failed) = self
            .store()
            .checkup_facts(p.account, now, now.minus(day * 90), now.minus(day * 30))
            .await?;
        let recovery_requests = self
            .store()
            .recovery_requests(Some(p.account), mica_store::RECOVERY_OPEN)
            .await?
            .len();
        let steps = vec![
            CheckupStep { id: "email", done: row.email_enc.is_some(), points: 10, advice: "Add an email address, so you can recover the account by email." },
            CheckupStep { id: "phone", done: row.phone_enc.is_some(), points: 10, advice: "Add a phone number, so you can recover the account by SMS." },
            CheckupStep {
                id: "recovery_factor",
                done: has_recovery,
                points: 10,
                advice: "Add a recovery email or phone, so you can get back in if you lose your own.",
            },
            CheckupStep { id: "two_step", done: two_step.totp, points: 30, advice: "Turn on two-step verification with an authenticator app." },
            CheckupStep {
                id: "recovery_codes",
                done: two_step.totp && two_step.recovery_codes_left >= 3,
                points: 10,
                advice: "Keep at least three unused recovery codes (regenerate them if you are running out).",
            },
            CheckupStep {
                id: "fresh_password",
                done: row.password_changed_at > now.minus(day * 365),
                points: 10,
                advice: "Your password is more than a year old: change it.",
            },
            CheckupStep { id: "no_stale_sessions", done: stale == 0, points: 5, advice: "Sign out sessions you have not used for 90 days." },
            CheckupStep {
                id: "no_failed_sign_ins",
                done: failed == 0,
                points: 5,
                advice: "Someone typed a wrong password for your account in the last 30 days: if it was not you, change your password.",
            },
            CheckupStep {
                id: "no_recovery_requests",
                done: recovery_requests == 0,
                points: 10,
                advice: "Someone asked to recover your account without its sign-in factors: if it was not you, cancel the request (recovery requests, in Security).",
            },
        ];
        let score = steps.iter().filter(|s| s.done).map(|s| s.points).sum();
        Ok((score, steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_validation() {
        let ok = Profile {
            nickname: Some("  Ana  ".into()),
            gender: Some("female".into()),
            country: Some("pt".into()),
            locale: Some("pt-BR".into()),
            has_avatar: false,
        }
        .validated()
        .unwrap();
        assert_eq!(ok.nickname.as_deref(), Some("Ana"));
        assert_eq!(ok.country.as_deref(), Some("PT"));
        for bad in [
            Profile {
                country: Some("XX".into()),
                ..Default::default()
            },
            Profile {
                country: Some("Portugal".into()),
                ..Default::default()
            },
            Profile {
                gender: Some("robot".into()),
                ..Default::default()
            },
            Profile {
                locale: Some("english please".into()),
                ..Default::default()
            },
            Profile {
                nickname: Some("x".repeat(65)),
                ..Default::default()
            },
        ] {
            assert!(bad.validated().is_err());
        }
    }
}
