//! Forgot password (ID-4): a code to the registered email or phone. Every answer is identical
//! whether or not an account matches; a reset signs out every session.

use mica_core::crypto::{random_digits, random_token_string};
use mica_core::{Login, Timestamp};
use mica_notify::Message;
use mica_store::NewCode;
use secrecy::{ExposeSecret, SecretString};

use crate::signup::SignupTarget;
use crate::{ClientInfo, Identity, IdentityError};

const PURPOSE_RESET: &str = "reset";

/// The (deliberately uninformative) answer to "forgot password".
#[derive(Debug, Clone)]
pub struct ResetStarted {
    pub reset_id: String,
    pub expires_at: Timestamp,
    pub resend_after: Timestamp,
}

impl Identity {
    /// The account behind what a person who cannot sign in types: its number, email or phone,
    /// or one of its verified recovery addresses.
    pub(crate) async fn account_for_login(
        &self,
        login: &Login,
    ) -> Result<Option<mica_store::AccountRow>, IdentityError> {
        if let Some(a) = self.find_account(login).await? {
            return Ok(Some(a));
        }
        let by_recovery = match login {
            Login::Email(e) => self.keys().blind_index("email", e.as_str()),
            Login::Phone(p) => self.keys().blind_index("phone", p.as_str()),
            Login::Id(_) => return Ok(None),
        };
        match self.store().account_by_recovery(&by_recovery).await? {
            Some((id, _)) => Ok(self.store().account(mica_store::LookupBy::Id(id)).await?),
            None => Ok(None),
        }
    }

    /// Sends a reset code to the account behind `login`, if there is one.
    pub async fn forgot_password(
        &self,
        login: &str,
        client: &ClientInfo,
    ) -> Result<ResetStarted, IdentityError> {
        let login = Login::parse(login)?;
        let key = crate::login_key(&login);
        // Limits are keyed by what was typed, never by what exists, so they behave the same.
        let bidx = self.keys().blind_index("login", &key);
        self.check_destination_limits(&bidx, PURPOSE_RESET).await?;
        self.limit(&self.inner.limits.codes_ip, &client.ip)?;

        let account = self.account_for_login(&login).await?;
        let destination = match (&account, &login) {
            (None, _) => None,
            (Some(_), Login::Email(e)) => Some(SignupTarget::Email(e.clone())),
            (Some(_), Login::Phone(p)) => Some(SignupTarget::Phone(p.clone())),
            (Some(a), Login::Id(_)) => {
                let v = self.view(a)?;
                v.email
                    .map(SignupTarget::Email)
                    .or(v.phone.map(SignupTarget::Phone))
            }
        };
        let now = self.now();
        let id = format!("pr_{}", random_token_string(18));
        let code = random_digits(6);
        let expires_at = now.plus(self.code_ttl());
        self.store()
            .insert_code(&NewCode {
                id: id.clone(),
                purpose: PURPOSE_RESET,
                account_id: account.as_ref().map(|a| a.id),
                target_kind: destination
                    .as_ref()
                    .map(SignupTarget::kind)
                    .unwrap_or("none"),
                target_enc: destination
                    .as_ref()
                    .map(|d| self.keys().seal("destination", d.value())),
                target_bidx: bidx,
                code_hash: self.keys().code_hash(&id, &code),
                payload: None,
                created_at: now,
                expires_at,
            })
            .await?;
        if let Some(d) = destination {
            let name = &self.inner.cfg.service_name;
            let mins = self.code_ttl().as_secs() / 60;
            let text = format!(
                "{code} is your {name} password reset code. It expires in {mins} minutes. \
                 If you did not ask to reset your password, ignore this message: nothing changes without the code."
            );
            self.inner.notifier.dispatch(match d {
                SignupTarget::Email(e) => Message::Email {
                    to: e,
                    subject: format!("{code} is your {name} password reset code"),
                    body: text,
                },
                SignupTarget::Phone(p) => Message::Sms { to: p, text },
            });
        }
        Ok(ResetStarted {
            reset_id: id,
            expires_at,
            resend_after: now.plus(self.resend_cooldown()),
        })
    }

    /// Sets a new password with a reset code; every session of the account is signed out.
    pub async fn reset_password(
        &self,
        reset_id: &str,
        code: &str,
        new_password: SecretString,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let row = self.pending_code(reset_id, PURPOSE_RESET).await?;
        self.check_code(&row, code).await?;
        // Only reachable with a code that was really sent, i.e. for an existing account.
        let account_id = row.account_id.ok_or(IdentityError::CodeExpired)?;
        let account = self
            .store()
            .account(mica_store::LookupBy::Id(account_id))
            .await?
            .ok_or(IdentityError::CodeExpired)?;
        let view = self.view(&account)?;
        let id_text = view.id.to_string();
        let mut context: Vec<&str> = vec![&id_text];
        if let Some(e) = &view.email {
            context.push(e.as_str());
        }
        if let Some(p) = &view.phone {
            context.push(p.as_str());
        }
        crate::password::check_policy(new_password.expose_secret(), &context)?;
        let hash = self.inner.hasher.hash(&new_password).await?;
        let now = self.now();
        let Some(revoked) = self
            .store()
            .reset_password_consuming_code(&row.id, account_id, &hash, now)
            .await?
        else {
            return Err(IdentityError::CodeExpired);
        };
        self.note_revoked(revoked);
        self.account_changed(account_id);
        self.event(
            account_id,
            "password_reset",
            client,
            None,
            Some("every session signed out".into()),
        )
        .await?;
        tracing::info!(account = %account_id, "password reset; every session signed out");
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "The password of your {name} account {account_id} was just reset and every device was signed out. \
             If this was not you, reset it again now and check your recovery options."
        );
        // At every address the account knows: a reset through one of them (a recovery address
        // an attacker added, a swapped SIM) is seen at the others.
        self.tell_everywhere(
            account_id,
            &format!("Your {name} password was reset"),
            &text,
        )
        .await;
        Ok(())
    }
}
