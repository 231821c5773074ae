//! Passkeys (WebAuthn, PRODUCT.md ID-7): register, list, remove; sign in with one; prove a fresh
//! factor with one (step-up, ID-6).
//!
//! Ceremonies follow webauthn-rs: the server keeps each ceremony's state in
//! `webauthn_challenges` and the request that finishes it *takes* the row, so one challenge can
//! be answered once — a replayed assertion meets no state and is refused. A registration is
//! bound to the session that started it (which must be stepped up); an authentication is bound to
//! the account it was started for. Passkeys are required to verify the user (PIN or biometrics),
//! so a passkey sign-in is a two-factor sign-in on its own and never asks for a second step.

use std::sync::Arc;
use std::time::Duration;

use mica_core::crypto::random_token_string;
use mica_core::{AccountId, Login, Timestamp};
use mica_store::{PasskeyInsert, PasskeyRow};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::{ClientInfo, Identity, IdentityError, Principal, SignedIn};

const PURPOSE_REGISTER: &str = "register";
const PURPOSE_SIGN_IN: &str = "sign_in";
const PURPOSE_STEP_UP: &str = "step_up";
/// How long a ceremony may take.
const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Passkeys one account may hold.
const MAX_PASSKEYS: i64 = 20;
const MAX_NAME: usize = 64;

/// The relying party: who passkeys are created for.
#[derive(Clone)]
pub struct RelyingParty {
    webauthn: Arc<Webauthn>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty").finish_non_exhaustive()
    }
}

impl RelyingParty {
    /// The relying party for a server reached at `public_url`: its id is the URL's host name and
    /// the only accepted origin is the URL's origin. `None` (with the reason) when the host is an
    /// IP address: WebAuthn needs a domain name.
    pub fn for_public_url(public_url: &str, name: &str) -> Result<RelyingParty, String> {
        let url = Url::parse(public_url).map_err(|e| format!("public_url {public_url:?}: {e}"))?;
        let Some(host) = url.domain() else {
            return Err(format!(
                "passkeys need the server to be reached by a domain name, and public_url {public_url:?} has none"
            ));
        };
        let webauthn = WebauthnBuilder::new(host, &url)
            .and_then(|b| b.rp_name(name).timeout(CEREMONY_TTL).build())
            .map_err(|e| format!("passkeys for {public_url:?}: {e}"))?;
        Ok(RelyingParty {
            webauthn: Arc::new(webauthn),
        })
    }
}

/// A ceremony for the client to run (`options` goes to `navigator.credentials.create()` or
/// `.get()` as is).
#[derive(Debug, Clone)]
pub struct PasskeyCeremony<T> {
    pub challenge_id: String,
    pub options: T,
    pub expires_at: Timestamp,
}

/// A registered passkey, as its owner sees it.
#[derive(Debug, Clone)]
pub struct PasskeyInfo {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

fn rejected(e: WebauthnError) -> IdentityError {
    IdentityError::PasskeyRejected(e.to_string())
}

fn credential_key(raw_id: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw_id)
}

impl Identity {
    fn relying_party(&self) -> Result<&Webauthn, IdentityError> {
        self.inner
            .relying_party
            .as_ref()
            .map(|rp| rp.webauthn.as_ref())
            .ok_or(IdentityError::PasskeysUnavailable)
    }

    /// The user handle authenticators store: derived from the account id, revealing nothing.
    fn user_handle(&self, account: AccountId) -> Uuid {
        let mac = self
            .keys()
            .blind_index("webauthn_user", &account.to_string());
        let mut b = [0u8; 16];
        for (d, s) in b.iter_mut().zip(mac.iter()) {
            *d = *s;
        }
        Uuid::from_bytes(b)
    }

    async fn account_passkeys(
        &self,
        account: AccountId,
    ) -> Result<Vec<(PasskeyRow, Passkey)>, IdentityError> {
        self.store()
            .passkeys(account)
            .await?
            .into_iter()
            .map(|row| {
                let pk: Passkey = serde_json::from_str(&row.credential)
                    .map_err(|e| IdentityError::Internal(format!("stored passkey: {e}")))?;
                Ok((row, pk))
            })
            .collect()
    }

    async fn save_ceremony<S: serde::Serialize>(
        &self,
        prefix: &str,
        purpose: &str,
        account: AccountId,
        session: Option<&mica_core::SessionId>,
        state: &S,
    ) -> Result<(String, Timestamp), IdentityError> {
        let id = format!("{prefix}_{}", random_token_string(18));
        let now = self.now();
        let expires_at = now.plus(CEREMONY_TTL);
        let state = serde_json::to_string(state)
            .map_err(|e| IdentityError::Internal(format!("ceremony state: {e}")))?;
        self.store()
            .insert_webauthn_challenge(&id, purpose, account, session, &state, now, expires_at)
            .await?;
        Ok((id, expires_at))
    }

    /// Takes a ceremony's state; it is gone afterwards whatever the outcome.
    async fn take_ceremony<S: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        purpose: &str,
    ) -> Result<(AccountId, Option<mica_core::SessionId>, S), IdentityError> {
        if !mica_core::crypto::is_issued_id(id) {
            return Err(IdentityError::ChallengeExpired);
        }
        let row = self
            .store()
            .take_webauthn_challenge(id)
            .await?
            .filter(|r| r.purpose == purpose && r.expires_at > self.now())
            .ok_or(IdentityError::ChallengeExpired)?;
        let state = serde_json::from_str(&row.state)
            .map_err(|e| IdentityError::Internal(format!("ceremony state: {e}")))?;
        Ok((row.account_id, row.session_id, state))
    }

    /// Starts registering a passkey for the signed-in account (step-up required).
    pub async fn begin_passkey_registration(
        &self,
        p: &Principal,
    ) -> Result<PasskeyCeremony<CreationChallengeResponse>, IdentityError> {
        self.require_step_up(p).await?;
        let rp = self.relying_party()?;
        let existing = self.account_passkeys(p.account).await?;
        if i64::try_from(existing.len()).unwrap_or(i64::MAX) >= MAX_PASSKEYS {
            return Err(IdentityError::Invalid {
                field: "passkeys",
                message: format!(
                    "an account can hold {MAX_PASSKEYS} passkeys; remove one you no longer use"
                ),
            });
        }
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(p.account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let view = self.view(&row)?;
        let user_name = view
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .or_else(|| view.phone.as_ref().map(|ph| ph.as_str().to_owned()))
            .unwrap_or_else(|| p.account.to_string());
        let exclude = existing
            .iter()
            .map(|(_, pk)| pk.cred_id().clone())
            .collect::<Vec<_>>();
        let (options, state) = rp
            .start_passkey_registration(
                self.user_handle(p.account),
                &user_name,
                &user_name,
                Some(exclude),
            )
            .map_err(|e| IdentityError::Internal(format!("passkey registration: {e}")))?;
        let (challenge_id, expires_at) = self
            .save_ceremony("pr", PURPOSE_REGISTER, p.account, Some(&p.session), &state)
            .await?;
        Ok(PasskeyCeremony {
            challenge_id,
            options,
            expires_at,
        })
    }

    /// Finishes a registration with the authenticator's answer and names the passkey.
    pub async fn finish_passkey_registration(
        &self,
        p: &Principal,
        challenge_id: &str,
        name: &str,
        credential: &RegisterPublicKeyCredential,
        client: &ClientInfo,
    ) -> Result<PasskeyInfo, IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(IdentityError::Invalid {
                field: "name",
                message: format!("give the passkey a name of 1 to {MAX_NAME} characters, such as the device it lives on"),
            });
        }
        let rp = self.relying_party()?;
        let (account, session, state): (_, _, PasskeyRegistration) =
            self.take_ceremony(challenge_id, PURPOSE_REGISTER).await?;
        if account != p.account || session.as_ref() != Some(&p.session) {
            return Err(IdentityError::ChallengeExpired);
        }
        let passkey = rp
            .finish_passkey_registration(credential, &state)
            .map_err(rejected)?;
        let now = self.now();
        let row = PasskeyRow {
            id: format!("pk_{}", random_token_string(12)),
            credential_id: credential_key(passkey.cred_id().as_ref()),
            name_enc: self.keys().seal("passkey_name", name),
            credential: serde_json::to_string(&passkey)
                .map_err(|e| IdentityError::Internal(format!("passkey: {e}")))?,
            created_at: now,
            last_used_at: None,
        };
        match self
            .store()
            .insert_passkey(p.account, &row, MAX_PASSKEYS)
            .await?
        {
            PasskeyInsert::Inserted => {}
            PasskeyInsert::CredentialTaken => {
                return Err(IdentityError::PasskeyRejected(
                    "this passkey is already registered".into(),
                ))
            }
            PasskeyInsert::TooMany => {
                return Err(IdentityError::Invalid {
                    field: "passkeys",
                    message: format!("an account can hold {MAX_PASSKEYS} passkeys"),
                })
            }
        }
        self.event(
            p.account,
            "passkey_added",
            client,
            Some(&p.session),
            Some(name.to_owned()),
        )
        .await?;
        Ok(PasskeyInfo {
            id: row.id,
            name: name.to_owned(),
            created_at: now,
            last_used_at: None,
        })
    }

    /// The account's passkeys.
    pub async fn list_passkeys(&self, p: &Principal) -> Result<Vec<PasskeyInfo>, IdentityError> {
        self.store()
            .passkeys(p.account)
            .await?
            .into_iter()
            .map(|r| {
                Ok(PasskeyInfo {
                    name: self.keys().open("passkey_name", &r.name_enc)?,
                    id: r.id,
                    created_at: r.created_at,
                    last_used_at: r.last_used_at,
                })
            })
            .collect()
    }

    /// Removes a passkey (step-up required).
    pub async fn remove_passkey(
        &self,
        p: &Principal,
        id: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        if !self.store().delete_passkey(p.account, id).await? {
            return Err(IdentityError::NotFound);
        }
        self.event(
            p.account,
            "passkey_removed",
            client,
            Some(&p.session),
            Some(id.to_owned()),
        )
        .await
    }

    async fn begin_assertion(
        &self,
        account: AccountId,
        purpose: &str,
        session: Option<&mica_core::SessionId>,
    ) -> Result<PasskeyCeremony<RequestChallengeResponse>, IdentityError> {
        let rp = self.relying_party()?;
        let keys: Vec<Passkey> = self
            .account_passkeys(account)
            .await?
            .into_iter()
            .map(|(_, pk)| pk)
            .collect();
        if keys.is_empty() {
            return Err(IdentityError::NoPasskey);
        }
        let (options, state) = rp
            .start_passkey_authentication(&keys)
            .map_err(|e| IdentityError::Internal(format!("passkey authentication: {e}")))?;
        let (challenge_id, expires_at) = self
            .save_ceremony("pa", purpose, account, session, &state)
            .await?;
        Ok(PasskeyCeremony {
            challenge_id,
            options,
            expires_at,
        })
    }

    /// Verifies an assertion against a taken ceremony and records the passkey's use.
    async fn finish_assertion(
        &self,
        account: AccountId,
        state: &PasskeyAuthentication,
        credential: &PublicKeyCredential,
    ) -> Result<(), IdentityError> {
        let rp = self.relying_party()?;
        let result = rp
            .finish_passkey_authentication(credential, state)
            .map_err(rejected)?;
        let key = credential_key(result.cred_id().as_ref());
        let mut stored = self
            .account_passkeys(account)
            .await?
            .into_iter()
            .find(|(row, _)| row.credential_id == key)
            .ok_or_else(|| IdentityError::PasskeyRejected("this passkey was removed".into()))?;
        let changed = stored.1.update_credential(&result).unwrap_or(false);
        let credential_json = if changed {
            Some(
                serde_json::to_string(&stored.1)
                    .map_err(|e| IdentityError::Internal(format!("passkey: {e}")))?,
            )
        } else {
            None
        };
        self.store()
            .passkey_used(account, &key, credential_json.as_deref(), self.now())
            .await?;
        Ok(())
    }

    /// Starts a passkey sign-in for `login` (account id, email or phone).
    pub async fn begin_passkey_sign_in(
        &self,
        login: &str,
        client: &ClientInfo,
    ) -> Result<PasskeyCeremony<RequestChallengeResponse>, IdentityError> {
        self.limit(&self.inner.limits.signin_ip, &client.ip)?;
        let login = Login::parse(login)?;
        let account = self
            .find_account(&login)
            .await?
            .filter(|a| a.status == "active")
            .ok_or(IdentityError::NoPasskey)?;
        self.begin_assertion(account.id, PURPOSE_SIGN_IN, None)
            .await
    }

    /// Finishes a passkey sign-in: a new session.
    pub async fn finish_passkey_sign_in(
        &self,
        challenge_id: &str,
        credential: &PublicKeyCredential,
        client: &ClientInfo,
    ) -> Result<SignedIn, IdentityError> {
        client.device.check()?;
        let (account, _, state): (_, _, PasskeyAuthentication) =
            self.take_ceremony(challenge_id, PURPOSE_SIGN_IN).await?;
        if !self.is_active(account).await? {
            return Err(IdentityError::InvalidCredentials);
        }
        self.finish_assertion(account, &state, credential).await?;
        let signed = self.open_session_alerting(account, client).await?;
        self.event(
            account,
            "passkey_sign_in",
            client,
            Some(&signed.session),
            None,
        )
        .await?;
        Ok(signed)
    }

    /// Starts a step-up with one of the account's passkeys.
    pub async fn begin_passkey_step_up(
        &self,
        p: &Principal,
    ) -> Result<PasskeyCeremony<RequestChallengeResponse>, IdentityError> {
        self.begin_assertion(p.account, PURPOSE_STEP_UP, Some(&p.session))
            .await
    }

    /// Checks a step-up assertion for this very session (the caller then grants the step-up).
    pub(crate) async fn check_passkey_step_up(
        &self,
        p: &Principal,
        challenge_id: &str,
        credential: &PublicKeyCredential,
    ) -> Result<(), IdentityError> {
        let (account, session, state): (_, _, PasskeyAuthentication) =
            self.take_ceremony(challenge_id, PURPOSE_STEP_UP).await?;
        if account != p.account || session.as_ref() != Some(&p.session) {
            return Err(IdentityError::ChallengeExpired);
        }
        self.finish_assertion(account, &state, credential).await
    }
}
