//! Commerce's part of an account's data export (ID-14): the wallet and its whole history, the
//! plan, what was bought, and the reports sent to the operator with their attachments and
//! answers — under `commerce/` in the archive, a page at a time.

use mica_core::archive::{ArchiveWriter, Entry, JsonArray};
use mica_core::AccountId;

use crate::{Commerce, CommerceError, Result};

/// Rows read at a time.
const PAGE: usize = 200;

fn out_err(e: String) -> CommerceError {
    CommerceError::Store(mica_store::StoreError::Corrupt(format!(
        "writing the export: {e}"
    )))
}

impl Commerce {
    /// Writes the account's commerce data into its export archive.
    pub async fn export_into<W: ArchiveWriter>(&self, account: AccountId, out: &W) -> Result<()> {
        let first = self.wallet(account, None, PAGE).await?;
        let purchases = self.purchases(account, None, PAGE).await?;
        let reports = self.my_feedback(account).await?;
        let plan = self.subscription(account).await?;
        if first.entries.is_empty()
            && purchases.purchases.is_empty()
            && reports.is_empty()
            && plan.is_none()
        {
            return Ok(());
        }

        // The wallet: its balance, then every line of its history, newest first.
        let mut entry = Entry::start(out, "commerce/wallet.json".into())
            .await
            .map_err(out_err)?;
        entry
            .write(format!("{{\n\"balance\": {},\n\"entries\": ", first.balance).as_bytes())
            .await
            .map_err(out_err)?;
        let mut lines = JsonArray::within(entry);
        let mut page = first;
        loop {
            for e in &page.entries {
                lines.push(e).await.map_err(out_err)?;
            }
            match page.next.take() {
                Some(next) => page = self.wallet(account, Some(&next), PAGE).await?,
                None => break,
            }
        }
        let mut entry = lines.close().await.map_err(out_err)?;
        entry.write(b"\n}\n").await.map_err(out_err)?;
        entry.finish().await.map_err(out_err)?;

        let mut bought = JsonArray::start(out, "commerce/purchases.json".into())
            .await
            .map_err(out_err)?;
        let mut page = purchases;
        loop {
            for p in &page.purchases {
                bought.push(p).await.map_err(out_err)?;
            }
            match page.next.take() {
                Some(next) => page = self.purchases(account, Some(&next), PAGE).await?,
                None => break,
            }
        }
        bought.finish().await.map_err(out_err)?;

        if let Some(plan) = plan {
            let mut entry = Entry::start(out, "commerce/plan.json".into())
                .await
                .map_err(out_err)?;
            entry.write_json(&plan).await.map_err(out_err)?;
            entry.finish().await.map_err(out_err)?;
        }

        if !reports.is_empty() {
            let mut list = JsonArray::start(out, "commerce/feedback.json".into())
                .await
                .map_err(out_err)?;
            for r in &reports {
                list.push(r).await.map_err(out_err)?;
            }
            list.finish().await.map_err(out_err)?;
            // Each attachment as the file it was, under its report.
            for r in &reports {
                for n in 1..=r.attachments.len() {
                    let (name, bytes) = self.report_attachment(&r.id, n).await?;
                    out.file(format!("commerce/feedback/{}/{n}-{name}", r.id), bytes)
                        .await
                        .map_err(out_err)?;
                }
            }
        }
        Ok(())
    }
}
