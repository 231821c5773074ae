//! App passwords (for WebDAV and other HTTP Basic clients): a person creates one per device
//! (step-up required), sees it once, and revokes it alone; the main password never travels in
//! Basic authentication. Each is 16 random letters (~75 bits), stored as a SHA-256 hash.

use mica_core::crypto::token_hash;
use mica_core::{AccountId, Login, Timestamp};
use rand::Rng;

use crate::{ClientInfo, Identity, IdentityError, Principal};

/// An app password as its owner sees it (never the secret, except once at creation).
#[derive(Debug, Clone)]
pub struct AppPassword {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// What creating one returns: the password, shown this once.
#[derive(Debug, Clone)]
pub struct NewAppPassword {
    pub app_password: AppPassword,
    pub password: String,
}

/// The most app passwords one account keeps.
const MAX_PER_ACCOUNT: usize = 50;

fn normalise(secret: &str) -> String {
    secret
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn generate() -> String {
    let mut r = rand::rngs::OsRng;
    let letters: Vec<char> = (0..16)
        .map(|_| char::from(b'a' + r.gen_range(0..26u8)))
        .collect();
    letters
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

impl Identity {
    /// Creates an app password named after the device it is for (step-up required).
    pub async fn create_app_password(
        &self,
        p: &Principal,
        name: &str,
        client: &ClientInfo,
    ) -> Result<NewAppPassword, IdentityError> {
        self.require_step_up(p).await?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(IdentityError::Invalid {
                field: "name",
                message: "name the device: 1 to 100 characters".into(),
            });
        }
        let password = generate();
        let id = format!("ap_{}", mica_core::crypto::random_token_string(9));
        let now = self.now();
        let created = self
            .store()
            .create_app_password(
                p.account,
                &id,
                name,
                &token_hash(&normalise(&password)),
                now,
                i64::try_from(MAX_PER_ACCOUNT).unwrap_or(i64::MAX),
            )
            .await?;
        if !created {
            return Err(IdentityError::Invalid {
                field: "name",
                message: format!(
                    "an account keeps at most {MAX_PER_ACCOUNT} app passwords; revoke one first"
                ),
            });
        }
        self.event(
            p.account,
            "app_password_created",
            client,
            Some(&p.session),
            Some(name.to_owned()),
        )
        .await?;
        Ok(NewAppPassword {
            app_password: AppPassword {
                id,
                name: name.to_owned(),
                created_at: now,
                last_used_at: None,
            },
            password,
        })
    }

    pub async fn app_passwords(&self, p: &Principal) -> Result<Vec<AppPassword>, IdentityError> {
        Ok(self
            .store()
            .app_passwords(p.account)
            .await?
            .into_iter()
            .map(|r| AppPassword {
                id: r.id,
                name: r.name,
                created_at: r.created_at,
                last_used_at: r.last_used_at,
            })
            .collect())
    }

    /// Revokes an app password: the device using it is refused from its next request.
    pub async fn revoke_app_password(
        &self,
        p: &Principal,
        id: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        if !self.store().delete_app_password(p.account, id).await? {
            return Err(IdentityError::NotFound);
        }
        self.event(
            p.account,
            "app_password_revoked",
            client,
            Some(&p.session),
            Some(id.to_owned()),
        )
        .await?;
        Ok(())
    }

    /// Checks HTTP Basic credentials: `login` is the account's email, phone or id, `password`
    /// one of its app passwords. Failures count against the address's sign-in limit.
    pub async fn verify_app_password(
        &self,
        login: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<AccountId, IdentityError> {
        // Only failures spend the address's budget (a WebDAV client authenticates every
        // request), but an address over it is refused before its guess is looked at.
        let limiter = &self.inner.limits.signin_ip;
        limiter
            .peek(&client.ip)
            .map_err(|wait| IdentityError::RateLimited { retry_after: wait })?;
        let found = self
            .store()
            .app_password_by_hash(&token_hash(&normalise(password)))
            .await?;
        let account = match (&found, Login::parse(login)) {
            (Some(_), Ok(l)) => self.find_account(&l).await?.map(|a| a.id),
            _ => None,
        };
        let row = match found {
            Some(row) if account == Some(row.account_id) => row,
            _ => {
                self.limit(limiter, &client.ip)?;
                return Err(IdentityError::InvalidCredentials);
            }
        };
        self.store().touch_app_password(&row.id, self.now()).await?;
        Ok(row.account_id)
    }
}
