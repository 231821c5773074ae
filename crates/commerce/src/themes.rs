//! The theme store (CM-3): themes the operator publishes, free or priced in credits, browsed
//! and searched; bought once by an account and downloaded on every device of it.

use mica_core::AccountId;
use mica_store::{NewPurchase, NewTheme, ThemeOutcome, ThemeRow};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::{check_key, Bought, Commerce, CommerceError, Purchase, Result, MAX_CREDITS};

/// The largest theme package, in bytes.
pub const MAX_PACKAGE_BYTES: usize = 16 << 20;
/// The largest preview image, in bytes.
pub const MAX_PREVIEW_BYTES: usize = 2 << 20;

/// A theme in the store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Theme {
    pub id: String,
    pub name: String,
    pub author: String,
    pub description: String,
    pub tags: Vec<String>,
    /// In credits; 0 for a free theme.
    pub price: i64,
    /// Goes up with each new package the operator publishes.
    pub version: i64,
    /// The package's size in bytes, and its SHA-256 (hex), to check a download.
    pub size: i64,
    pub sha256: String,
    /// Whether it has a preview image (`GET /themes/{id}/preview`).
    pub preview: bool,
    /// Whether this account has it (bought, or got for free): it downloads on every device.
    pub owned: bool,
    /// No longer offered; those who have it keep it.
    pub withdrawn: bool,
    /// When it was last updated (RFC 3339).
    pub updated_at: String,
}

impl From<&ThemeRow> for Theme {
    fn from(t: &ThemeRow) -> Self {
        Theme {
            id: t.id.clone(),
            name: t.name.clone(),
            author: t.author.clone(),
            description: t.description.clone(),
            tags: t.tags.split_whitespace().map(str::to_owned).collect(),
            price: t.price,
            version: t.version,
            size: t.package_size,
            sha256: t.package_sha256.clone(),
            preview: t.preview_type.is_some(),
            owned: t.owned,
            withdrawn: t.withdrawn_at.is_some(),
            updated_at: t.updated_at.to_rfc3339(),
        }
    }
}

/// A page of themes, by name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Themes {
    pub themes: Vec<Theme>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A theme to publish, as the operator gives it.
#[derive(Debug, Clone)]
pub struct ThemeUpload {
    pub id: String,
    pub name: String,
    pub author: String,
    pub description: String,
    pub tags: Vec<String>,
    pub price: i64,
    pub package: Vec<u8>,
    /// The image and its media type.
    pub preview: Option<(Vec<u8>, String)>,
}

/// A downloaded package or preview.
#[derive(Debug, Clone)]
pub struct ThemeFile {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// A file name for it.
    pub name: String,
    /// The package's hash (an entity tag: a new version has another).
    pub sha256: String,
    /// The asker has this version already: `bytes` is empty.
    pub unchanged: bool,
}

fn invalid(field: &'static str, message: impl Into<String>) -> CommerceError {
    CommerceError::Invalid {
        field,
        message: message.into(),
    }
}

fn line(field: &'static str, v: &str, max: usize) -> Result<String> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(invalid(field, format!("one line of 1 to {max} characters")));
    }
    Ok(v.to_owned())
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A cursor: the name and id of the last theme shown, hex-encoded.
fn theme_cursor(c: &str) -> Result<(String, String)> {
    hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (name, id) = s.split_once('\n')?;
            valid_id(id).then(|| (name.to_owned(), id.to_owned()))
        })
        .ok_or(invalid(
            "cursor",
            "not a cursor this server gave: pass the `next` of the page before",
        ))
}

/// The media type of a preview, from its first bytes: PNG, JPEG or WebP only.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

impl Commerce {
    /// Publishes a theme, or a new version of one (same id); returns it as listed.
    pub async fn publish_theme(&self, t: ThemeUpload) -> Result<Theme> {
        if !valid_id(&t.id) {
            return Err(invalid(
                "id",
                "1 to 64 lowercase letters, digits, '-' or '_'",
            ));
        }
        let name = line("name", &t.name, 100)?;
        let author = line("author", &t.author, 100)?;
        let existing = self.store().theme(None, &t.id).await?;
        // A new version without a description keeps the one it had.
        let description = match (t.description.trim(), &existing) {
            ("", Some(e)) => e.description.clone(),
            (d, _) => d.to_owned(),
        };
        let description = description.as_str();
        if description.chars().count() > 2000
            || description.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(invalid("description", "text of up to 2000 characters"));
        }
        let mut tags = Vec::new();
        for tag in &t.tags {
            let tag = tag.trim().to_lowercase();
            if tag.is_empty() {
                continue;
            }
            if tag.chars().count() > 32 || !tag.chars().all(char::is_alphanumeric) {
                return Err(invalid(
                    "tags",
                    "words of letters and digits, up to 32 each",
                ));
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.len() > 16 {
            return Err(invalid("tags", "at most 16 tags"));
        }
        if !(0..=MAX_CREDITS).contains(&t.price) {
            return Err(invalid("price", format!("0 to {MAX_CREDITS} credits")));
        }
        if t.package.is_empty() || t.package.len() > MAX_PACKAGE_BYTES {
            return Err(CommerceError::TooLarge(format!(
                "a theme's package is 1 byte to {} MiB",
                MAX_PACKAGE_BYTES >> 20
            )));
        }
        if !t.package.starts_with(b"PK\x03\x04") {
            return Err(invalid("package", "a theme's package is a zip archive"));
        }
        let preview = match &t.preview {
            None => None,
            Some((bytes, _)) if bytes.len() > MAX_PREVIEW_BYTES => {
                return Err(CommerceError::TooLarge(format!(
                    "a preview is at most {} MiB",
                    MAX_PREVIEW_BYTES >> 20
                )))
            }
            Some((bytes, _)) => Some((
                bytes.as_slice(),
                image_type(bytes).ok_or_else(|| invalid("preview", "a PNG, JPEG or WebP image"))?,
            )),
        };
        let sha256 = hex::encode(Sha256::digest(&t.package));
        let tags = tags.join(" ");
        self.store()
            .publish_theme(
                &NewTheme {
                    id: &t.id,
                    name: &name,
                    author: &author,
                    description,
                    tags: &tags,
                    price: t.price,
                    package: &t.package,
                    package_sha256: &sha256,
                    preview,
                },
                self.now(),
            )
            .await?;
        self.store()
            .theme(None, &t.id)
            .await?
            .map(|t| Theme::from(&t))
            .ok_or(CommerceError::NotFound)
    }

    /// Offers a withdrawn theme again.
    pub async fn offer_theme(&self, id: &str) -> Result<()> {
        if !valid_id(id) || !self.store().offer_theme(id).await? {
            return Err(CommerceError::NotFound);
        }
        Ok(())
    }

    /// Stops offering a theme; those who have it keep it.
    pub async fn withdraw_theme(&self, id: &str) -> Result<()> {
        if !valid_id(id) || !self.store().withdraw_theme(id, self.now()).await? {
            return Err(CommerceError::NotFound);
        }
        Ok(())
    }

    async fn list_themes(
        &self,
        account: Option<AccountId>,
        query: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Theme>, Option<String>)> {
        let words: Vec<String> = query
            .unwrap_or("")
            .split_whitespace()
            .take(8)
            .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
            .collect();
        if words.iter().any(|w| w.chars().any(char::is_control)) {
            return Err(invalid("q", "words without control characters"));
        }
        let after = cursor.map(theme_cursor).transpose()?;
        let limit = limit.clamp(1, 200);
        let mut rows = self
            .store()
            .themes(
                account,
                &words,
                after.as_ref().map(|(n, i)| (n.as_str(), i.as_str())),
                i64::try_from(limit + 1).unwrap_or(201),
            )
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = more
            .then(|| {
                rows.last()
                    .map(|t| hex::encode(format!("{}\n{}", t.name, t.id)))
            })
            .flatten();
        Ok((rows.iter().map(Theme::from).collect(), next))
    }

    /// The themes on offer, and those the account has, matching every word of `query`.
    pub async fn themes(
        &self,
        account: AccountId,
        query: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Themes> {
        let (themes, next) = self
            .list_themes(Some(account), query, cursor, limit)
            .await?;
        Ok(Themes { themes, next })
    }

    /// Every theme, withdrawn ones too (the operator's list).
    pub async fn all_themes(&self) -> Result<Vec<Theme>> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.list_themes(None, None, cursor.as_deref(), 200).await?;
            all.extend(page);
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// One theme, if on offer or the account has it.
    pub async fn theme(&self, account: AccountId, id: &str) -> Result<Theme> {
        if !valid_id(id) {
            return Err(CommerceError::NotFound);
        }
        match self.store().theme(Some(account), id).await? {
            Some(t) if t.withdrawn_at.is_none() || t.owned => Ok(Theme::from(&t)),
            _ => Err(CommerceError::NotFound),
        }
    }

    /// Gets a theme for the account — bought once with credits, or free — to download on
    /// every device. A retry with the same idempotency key answers the first purchase.
    pub async fn buy_theme(
        &self,
        account: AccountId,
        id: &str,
        idempotency_key: Option<&str>,
        expected_price: Option<i64>,
    ) -> Result<Bought> {
        if let Some(k) = idempotency_key {
            check_key(k)?;
        }
        if !valid_id(id) {
            return Err(CommerceError::NotFound);
        }
        let purchase_id = format!("pur_{}", mica_core::crypto::random_token_string(12));
        let outcome = self
            .store()
            .buy_theme(
                account,
                &NewPurchase {
                    id: &purchase_id,
                    idempotency_key,
                    product_id: id,
                },
                expected_price,
                self.now(),
            )
            .await?;
        let (purchase, replayed, balance) = match outcome {
            ThemeOutcome::Bought { purchase, balance } => {
                tracing::info!(%account, theme = %id, price = purchase.price, "theme bought");
                (purchase, false, balance)
            }
            ThemeOutcome::Replayed(p) => (p, true, self.store().balance(account).await?),
            ThemeOutcome::AlreadyOwned(_) => return Err(CommerceError::AlreadyOwned),
            ThemeOutcome::KeyReused => return Err(CommerceError::KeyReused),
            ThemeOutcome::Unavailable => return Err(CommerceError::NotFound),
            ThemeOutcome::PriceChanged(price) => return Err(CommerceError::PriceChanged(price)),
            ThemeOutcome::Insufficient { balance, needed } => {
                return Err(CommerceError::InsufficientCredits { balance, needed })
            }
        };
        Ok(Bought {
            purchase: Purchase::from(&purchase),
            subscription: None,
            balance,
            replayed,
        })
    }

    /// A theme's package, for an account that has it (or any account, for a free theme on
    /// offer); `403 theme_not_owned` otherwise. When the device has this version already
    /// (`known`: the hash it has), nothing is read and `bytes` is empty with `unchanged`.
    pub async fn theme_package(
        &self,
        account: AccountId,
        id: &str,
        known: Option<&str>,
    ) -> Result<ThemeFile> {
        let t = self.theme(account, id).await?;
        let free_on_offer = t.price == 0 && !t.withdrawn;
        if !(t.owned || free_on_offer) {
            return Err(CommerceError::NotOwned);
        }
        let name = format!("{}-{}.zip", t.id, t.version);
        if known == Some(t.sha256.as_str()) {
            return Ok(ThemeFile {
                bytes: Vec::new(),
                media_type: "application/zip".into(),
                name,
                sha256: t.sha256,
                unchanged: true,
            });
        }
        let (bytes, sha256) = self
            .store()
            .theme_bytes(id, false)
            .await?
            .ok_or(CommerceError::NotFound)?;
        Ok(ThemeFile {
            bytes,
            media_type: "application/zip".into(),
            name,
            sha256: sha256.unwrap_or(t.sha256),
            unchanged: false,
        })
    }

    /// A theme's preview image, for anyone who may see the theme.
    pub async fn theme_preview(&self, account: AccountId, id: &str) -> Result<ThemeFile> {
        let t = self.theme(account, id).await?;
        let (bytes, _) = self
            .store()
            .theme_bytes(id, true)
            .await?
            .ok_or(CommerceError::NotFound)?;
        let media_type = image_type(&bytes).ok_or(CommerceError::NotFound)?;
        Ok(ThemeFile {
            media_type: media_type.into(),
            name: format!("{}-preview", t.id),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes,
            unchanged: false,
        })
    }
}
