//! Account deletion (ID-13): step-up, then a confirmation code, then a durable job that removes
//! every row of the account table by table (see `mica_store::ACCOUNT_DATA`) and survives crashes.

use std::time::Duration;

use mica_store::JOB_DELETE_ACCOUNT;

use crate::security::{CodeChannel, CodeSent};
use crate::{ClientInfo, Identity, IdentityError, Principal};

pub(crate) const PURPOSE_DELETE: &str = "delete_account";
const LEASE: Duration = Duration::from_secs(120);

impl Identity {
    /// Sends the confirmation code for deleting the account (step-up required first).
    pub async fn request_deletion(
        &self,
        p: &Principal,
        channel: CodeChannel,
        client: &ClientInfo,
    ) -> Result<CodeSent, IdentityError> {
        self.require_step_up(p).await?;
        self.send_session_code(
            p,
            channel,
            PURPOSE_DELETE,
            client,
            "delete your account and all its data for good",
        )
        .await
    }

    /// Confirms the deletion: the account is signed out everywhere at once and its data removed
    /// in the background.
    pub async fn confirm_deletion(
        &self,
        p: &Principal,
        challenge_id: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.require_step_up(p).await?;
        self.redeem_session_code(p, challenge_id, code, PURPOSE_DELETE)
            .await?;
        self.event(
            p.account,
            "account_deletion",
            client,
            Some(&p.session),
            None,
        )
        .await?;
        let revoked = self
            .store()
            .schedule_account_deletion(p.account, self.now(), None)
            .await?
            .ok_or(IdentityError::Unauthenticated)?;
        self.note_revoked(revoked);
        self.account_changed(p.account);
        tracing::info!(account = %p.account, "account deletion scheduled");
        self.inner.jobs.notify_one();
        Ok(())
    }

    /// A handle that wakes the job runner.
    pub fn jobs_waker(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inner.jobs.clone()
    }

    /// Runs due jobs until none is left; returns how many finished.
    pub async fn run_due_jobs(&self) -> Result<usize, IdentityError> {
        let mut done = 0;
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        while let Some(job) = self.store().claim_job(self.now(), lease).await? {
            // The lease is renewed while the job runs (an export of a large account takes
            // longer than one lease): another node takes the job only if this one died.
            let renewing = {
                let me = self.clone();
                let id = job.id;
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(LEASE / 3);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let until = me.now().plus(LEASE);
                        if let Err(e) = me.store().renew_job_lease(id, until).await {
                            tracing::warn!(error = %e, job = id, "renewing a job's lease");
                        }
                    }
                })
            };
            let result = match job.kind.as_str() {
                JOB_DELETE_ACCOUNT => self.run_deletion_job(job.clone()).await,
                mica_store::JOB_EXPORT => self.run_export_job(&job).await,
                other => {
                    tracing::error!(kind = other, "unknown job kind");
                    Ok(())
                }
            };
            renewing.abort();
            match result {
                Ok(()) => done += 1,
                Err(e) => {
                    let backoff =
                        Duration::from_secs(30u64.saturating_mul(1 << job.attempts.clamp(0, 10)));
                    tracing::warn!(job = job.id, kind = %job.kind, error = %e, "job failed; will retry");
                    self.store()
                        .release_job(job.id, &e.to_string(), self.now().plus(backoff))
                        .await?;
                }
            }
        }
        Ok(done)
    }

    async fn run_deletion_job(&self, mut job: mica_store::JobRow) -> Result<(), IdentityError> {
        let Some(account) = job.account_id else {
            return Ok(());
        };
        // Files first: their rows say where they are.
        self.delete_export_files(account).await?;
        self.forget_in_areas(account).await?;
        while !self.store().account_deletion_step(&job).await? {
            job.step += 1;
        }
        // Once more: a request already under way when the deletion began (an upload's body, a
        // preview being made) may have stored an object and its row between the first sweep
        // and the step that deleted the row. Anything stored later has no row to commit to and
        // is removed with its write intent.
        self.forget_in_areas(account).await?;
        tracing::info!(%account, "account deleted");
        Ok(())
    }

    /// Lets every area forget what it keeps outside the database (idempotent).
    async fn forget_in_areas(&self, account: mica_core::AccountId) -> Result<(), IdentityError> {
        let areas: Vec<_> = self
            .inner
            .areas
            .read()
            .map(|v| v.clone())
            .unwrap_or_default();
        for area in areas {
            area.forget_account(account)
                .await
                .map_err(IdentityError::Internal)?;
        }
        Ok(())
    }
}
