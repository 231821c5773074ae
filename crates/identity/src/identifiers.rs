//! Changing or adding the account's own email address or phone number (ID-6): step-up, then a
//! code to the new address; the old address is told.

use mica_notify::Message;

use crate::security::CodeSent;
use crate::signup::SignupTarget;
use crate::{ClientInfo, Identity, IdentityError, Principal};

const PURPOSE_CHANGE: &str = "change_identifier";

impl Identity {
    /// Sends a code to the new email or phone (step-up required).
    pub async fn start_identifier_change(
        &self,
        p: &Principal,
        target: SignupTarget,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        self.require_step_up(p).await?;
        let bidx = self.keys().blind_index(target.kind(), target.value());
        let (e, ph) = match &target {
            SignupTarget::Email(_) => (Some(bidx.as_slice()), None),
            SignupTarget::Phone(_) => (None, Some(bidx.as_slice())),
        };
        // Said before any code is sent: the person is signed in and stepped up, and the address
        // cannot be used anyway.
        if self.store().identifier_taken(e, ph).await? {
            return Err(IdentityError::IdentifierTaken);
        }
        self.send_code_to_new_address(p, target, PURPOSE_CHANGE, "use this address for", client)
            .await
    }

    /// Confirms the new email or phone with its code; it replaces the old one at once.
    pub async fn confirm_identifier_change(
        &self,
        p: &Principal,
        challenge_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        let row = self
            .redeem_session_code(p, challenge_id, code, PURPOSE_CHANGE)
            .await?;
        let target = self.stored_target(&row)?;
        let old = self
            .store()
            .account(mica_store::LookupBy::Id(p.account))
            .await?
            .map(|a| self.view(&a))
            .transpose()?;
        let kind = target.kind();
        let sealed = self.keys().seal(kind, target.value());
        match self
            .store()
            .set_identifier(p.account, kind, &sealed, &row.target_bidx)
            .await
        {
            Ok(()) => {}
            Err(mica_store::StoreError::Conflict) => return Err(IdentityError::IdentifierTaken),
            Err(e) => return Err(e.into()),
        }
        self.account_changed(p.account);
        self.event(
            p.account,
            &format!("{kind}_changed"),
            client,
            Some(&p.session),
            Some(target.masked()),
        )
        .await?;
        // Tell the address that was replaced, so a takeover does not go unnoticed.
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "The {kind} of your {name} account {} was changed to {}. If this was not you, reset your password \
             and contact support.",
            p.account,
            target.masked()
        );
        match (kind, old) {
            ("email", Some(v)) => {
                if let Some(e) = v.email {
                    self.inner.notifier.dispatch(Message::Email {
                        to: e,
                        subject: format!("Your {name} email was changed"),
                        body: text,
                    });
                }
            }
            (_, Some(v)) => {
                if let Some(ph) = v.phone {
                    self.inner.notifier.dispatch(Message::Sms { to: ph, text });
                }
            }
            _ => {}
        }
        Ok(())
    }
}
