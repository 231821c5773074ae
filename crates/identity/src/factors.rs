//! Recovery factors (ID-8): a recovery email and a recovery phone, each verified by its own code,
//! through which "forgot password" can reach the person when the main factor is gone; and
//! security questions, stored as argon2id hashes of the normalised answers, which are a weak
//! factor: they never suffice alone (they only add evidence to an operator-reviewed recovery).

use secrecy::SecretString;

use crate::security::CodeSent;
use crate::signup::SignupTarget;
use crate::{ClientInfo, Identity, IdentityError, Principal};

const PURPOSE_RECOVERY: &str = "recovery_factor";
pub const QUESTIONS: usize = 3;

/// The recovery setup, as its owner sees it (addresses masked).
#[derive(Debug, Clone, Default)]
pub struct RecoveryOverview {
    pub recovery_email: Option<String>,
    pub recovery_phone: Option<String>,
    pub security_questions: Vec<String>,
}

fn normalise_answer(a: &str) -> String {
    a.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl Identity {
    /// Sends a code to a new recovery address (step-up required); it is added once confirmed.
    pub async fn add_recovery_factor(
        &self,
        p: &Principal,
        target: SignupTarget,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        self.require_step_up(p).await?;
        let row = self
            .store()
            .account(mica_store::LookupBy::Id(p.account))
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        let view = self.view(&row)?;
        let same_as_primary = match &target {
            SignupTarget::Email(e) => view.email.as_ref() == Some(e),
            SignupTarget::Phone(ph) => view.phone.as_ref() == Some(ph),
        };
        if same_as_primary {
            return Err(IdentityError::Invalid {
                field: "recovery",
                message: "a recovery address must differ from the account's own".into(),
            });
        }
        self.send_code_to_new_address(
            p,
            target,
            PURPOSE_RECOVERY,
            "make this your recovery address for",
            client,
        )
        .await
    }

    /// Sends a code to an address the account does not own yet (a recovery address, a new
    /// email or phone), redeemable only by the session that asked for it.
    pub(crate) async fn send_code_to_new_address(
        &self,
        p: &Principal,
        target: SignupTarget,
        purpose: &'static str,
        what: &str,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        let (id, code, expires_at) = self
            .issue_code(p.account, &target, purpose, None, Some(&p.session), client)
            .await?;
        let name = &self.inner.cfg.service_name;
        let text = format!(
            "{code} is your code to {what} the {name} account {}. If you did not ask for it, ignore this message.",
            p.account
        );
        let subject = format!("{code} is your {name} verification code");
        Ok(self.deliver_code(target, id, expires_at, subject, text))
    }

    /// Confirms a new recovery address with its code.
    pub async fn confirm_recovery_factor(
        &self,
        p: &Principal,
        challenge_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        let row = self
            .redeem_session_code(p, challenge_id, code, PURPOSE_RECOVERY)
            .await?;
        let target = self.stored_target(&row)?;
        let (kind, field) = match &target {
            SignupTarget::Email(_) => ("email", "recovery_email"),
            SignupTarget::Phone(_) => ("phone", "recovery_phone"),
        };
        let sealed = self.keys().seal(field, target.value());
        self.store()
            .put_recovery_factor(p.account, kind, &sealed, &row.target_bidx, self.now())
            .await?;
        self.event(
            p.account,
            "recovery_factor_added",
            client,
            Some(&p.session),
            Some(format!("{kind} {}", target.masked())),
        )
        .await
    }

    /// Removes the recovery email (`email`) or phone (`phone`) (step-up required).
    pub async fn remove_recovery_factor(
        &self,
        p: &Principal,
        kind: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        if !matches!(kind, "email" | "phone")
            || !self.store().delete_recovery_factor(p.account, kind).await?
        {
            return Err(IdentityError::NotFound);
        }
        self.event(
            p.account,
            "recovery_factor_removed",
            client,
            Some(&p.session),
            Some(kind.into()),
        )
        .await
    }

    /// Replaces the security questions (step-up required): exactly three, answers hashed.
    pub async fn set_security_questions(
        &self,
        p: &Principal,
        qa: Vec<(String, SecretString)>,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        use secrecy::ExposeSecret;
        self.require_step_up(p).await?;
        let bad = |m: &str| IdentityError::Invalid {
            field: "security_questions",
            message: m.into(),
        };
        if qa.len() != QUESTIONS {
            return Err(bad("give exactly three questions with their answers"));
        }
        let mut stored = Vec::with_capacity(QUESTIONS);
        let mut seen = Vec::new();
        for (q, a) in qa {
            let q = q.trim().to_owned();
            if !(5..=200).contains(&q.chars().count()) || q.chars().any(char::is_control) {
                return Err(bad("each question has 5 to 200 printable characters"));
            }
            if seen.contains(&q.to_lowercase()) {
                return Err(bad("the three questions must differ"));
            }
            seen.push(q.to_lowercase());
            let answer = normalise_answer(a.expose_secret());
            if answer.chars().count() < 2 || answer.chars().count() > 200 {
                return Err(bad("each answer has 2 to 200 characters"));
            }
            let hash = self.inner.hasher.hash(&SecretString::from(answer)).await?;
            stored.push((q, hash));
        }
        self.store()
            .put_security_questions(p.account, &stored, self.now())
            .await?;
        self.event(
            p.account,
            "security_questions_set",
            client,
            Some(&p.session),
            None,
        )
        .await
    }

    /// Checks answers to the security questions: a weak signal for a reviewed recovery, never a
    /// way into the account by itself. Every answer is hashed, whether or not there is a
    /// question for it or an account at all (`None`), so the time says nothing.
    pub async fn check_security_answers(
        &self,
        account: Option<mica_core::AccountId>,
        answers: &[SecretString],
    ) -> Result<usize, IdentityError> {
        use secrecy::ExposeSecret;
        let stored = match account {
            Some(a) => self.store().security_questions(a).await?,
            None => Vec::new(),
        };
        let mut right = 0;
        for (i, a) in answers.iter().enumerate() {
            let n = SecretString::from(normalise_answer(a.expose_secret()));
            let hash = stored.get(i).map(|(_, h)| h.as_str());
            if self.inner.hasher.verify(&n, hash).await? && hash.is_some() {
                right += 1;
            }
        }
        Ok(right)
    }

    pub async fn recovery_overview(
        &self,
        p: &Principal,
    ) -> Result<RecoveryOverview, IdentityError> {
        let mut o = RecoveryOverview::default();
        for f in self.store().recovery_factors(p.account).await? {
            let field = if f.kind == "email" {
                "recovery_email"
            } else {
                "recovery_phone"
            };
            let value = self.keys().open(field, &f.value_enc)?;
            let target = SignupTarget::from_stored(&f.kind, &value)?;
            match f.kind.as_str() {
                "email" => o.recovery_email = Some(target.masked()),
                _ => o.recovery_phone = Some(target.masked()),
            }
        }
        o.security_questions = self
            .store()
            .security_questions(p.account)
            .await?
            .into_iter()
            .map(|(q, _)| q)
            .collect();
        Ok(o)
    }
}
