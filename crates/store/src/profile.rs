//! Profiles and avatars.

use mica_core::{AccountId, Timestamp};
use sqlx::Row;

use crate::{Result, Store};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRow {
    pub nickname: Option<String>,
    pub gender: Option<String>,
    pub country: Option<String>,
    pub locale: Option<String>,
    pub has_avatar: bool,
    pub updated_at: Option<Timestamp>,
}

impl Store {
    pub async fn profile(&self, account: AccountId) -> Result<ProfileRow> {
        let row = sqlx::query(
            "SELECT nickname, gender, country, locale, avatar_png IS NOT NULL AS has_avatar, updated_at \
             FROM profiles WHERE account_id = $1",
        )
        .bind(account.as_i64())
        .fetch_optional(&self.reader)
        .await?;
        let Some(r) = row else {
            return Ok(ProfileRow::default());
        };
        // A boolean expression is an integer on SQLite and a boolean on PostgreSQL.
        let has_avatar = match r.try_get::<bool, _>("has_avatar") {
            Ok(b) => b,
            Err(_) => r.try_get::<i64, _>("has_avatar")? != 0,
        };
        Ok(ProfileRow {
            nickname: r.try_get("nickname")?,
            gender: r.try_get("gender")?,
            country: r.try_get("country")?,
            locale: r.try_get("locale")?,
            has_avatar,
            updated_at: Some(Timestamp(r.try_get("updated_at")?)),
        })
    }

    /// Replaces the profile's fields (not the avatar).
    pub async fn put_profile(
        &self,
        account: AccountId,
        p: &ProfileRow,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO profiles (account_id, nickname, gender, country, locale, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id) DO UPDATE SET nickname = excluded.nickname, \
             gender = excluded.gender, country = excluded.country, locale = excluded.locale, \
             updated_at = excluded.updated_at",
        )
        .bind(account.as_i64())
        .bind(p.nickname.clone())
        .bind(p.gender.clone())
        .bind(p.country.clone())
        .bind(p.locale.clone())
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Sets (or, with `None`, removes) the avatar.
    pub async fn put_avatar(
        &self,
        account: AccountId,
        png: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO profiles (account_id, avatar_png, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET avatar_png = excluded.avatar_png, updated_at = excluded.updated_at",
        )
        .bind(account.as_i64())
        .bind(png.map(<[u8]>::to_vec))
        .bind(now.millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn avatar(&self, account: AccountId) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT avatar_png FROM profiles WHERE account_id = $1")
            .bind(account.as_i64())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<Vec<u8>>, _>("avatar_png"))
            .transpose()?
            .flatten())
    }

    /// Facts the security checkup scores: sessions unused for `stale_before`, failed sign-ins since
    /// `since`.
    pub async fn checkup_facts(
        &self,
        account: AccountId,
        now: Timestamp,
        stale_before: Timestamp,
        since: Timestamp,
    ) -> Result<(i64, i64)> {
        let stale = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM sessions WHERE account_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 AND last_used_at < $3",
        )
        .bind(account.as_i64())
        .bind(now.millis())
        .bind(stale_before.millis())
        .fetch_one(&self.reader)
        .await?
        .try_get("n")?;
        let failed = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM login_events WHERE account_id = $1 AND outcome <> 'success' \
             AND at >= $2",
        )
        .bind(account.as_i64())
        .bind(since.millis())
        .fetch_one(&self.reader)
        .await?
        .try_get("n")?;
        Ok((stale, failed))
    }
}
