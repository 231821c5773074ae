//! The blob store's integrity check (OP-4, `mica admin check-blobs`): every chunk the database
//! knows is in the blob store with its size (and, with `deep`, its bytes hash to its name); no
//! object of the chunk store is unknown to the database unless it waits in `blob_trash` (being
//! written, or to be deleted); no file is made of a chunk that was forgotten as damaged. Account
//! by account, so its memory is one account's listing. It runs beside a live server: whatever
//! looks wrong is looked at again (the row, the object) before it is reported, since an upload
//! or the collector may have moved on between the listing and the rows; an account being
//! deleted (its objects go before its rows) is left out and counted.

use std::collections::{BTreeSet, HashMap};

use mica_blobs::BlobStore;
use mica_core::AccountId;
use mica_store::{LookupBy, Store};

use crate::CloudError;

/// What a check found.
#[derive(Debug, Default, Clone)]
pub struct BlobCheck {
    pub accounts: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// Accounts being deleted, not checked.
    pub deleting: u64,
    /// Each problem, for a person.
    pub problems: Vec<String>,
}

/// Checks the chunk store against the database (see the module's documentation).
pub async fn check_blobs(
    store: &Store,
    blobs: &BlobStore,
    deep: bool,
) -> Result<BlobCheck, CloudError> {
    let mut report = BlobCheck::default();
    let mut accounts: BTreeSet<i64> = store
        .accounts_with_blobs()
        .await?
        .into_iter()
        .map(AccountId::as_i64)
        .collect();
    for child in blobs.children("chunks/").await? {
        match child.parse::<i64>() {
            Ok(a) => {
                accounts.insert(a);
            }
            Err(_) => report
                .problems
                .push(format!("chunks/{child}/ is not an account's folder")),
        }
    }
    for account in accounts {
        let id = AccountId::from_i64(account);
        if let Some(a) = id {
            if store
                .account(LookupBy::Id(a))
                .await?
                .is_some_and(|r| r.status == "deleting")
            {
                report.deleting += 1;
                continue;
            }
        }
        report.accounts += 1;
        let prefix = mica_blobs::account_prefix(account);
        let mut objects: HashMap<String, u64> = blobs.list(&prefix).await?.into_iter().collect();
        let known = match id {
            Some(a) => store.account_chunks(a).await?,
            None => Vec::new(),
        };
        // Whether the chunk's row still names this object (not collected meanwhile), and the
        // account is not being deleted (its objects go before its rows) since it was listed.
        let still = |hash: String, key: String| async move {
            Ok::<bool, CloudError>(match id {
                Some(a) => {
                    store
                        .chunk(a, &hash)
                        .await?
                        .is_some_and(|c| c.object_key == key)
                        && store
                            .account(LookupBy::Id(a))
                            .await?
                            .is_none_or(|r| r.status != "deleting")
                }
                None => false,
            })
        };
        for (hash, key, size) in known {
            report.chunks += 1;
            report.bytes += u64::try_from(size).unwrap_or(0);
            let listed = objects.remove(&key);
            if listed.and_then(|s| i64::try_from(s).ok()) != Some(size) {
                // Listed before its write ended, or its row came after the listing: look again.
                let now = blobs.size_of(&key).await?;
                if now.and_then(|s| i64::try_from(s).ok()) == Some(size)
                    || !still(hash.clone(), key.clone()).await?
                {
                    continue;
                }
                report.problems.push(match now {
                    None => format!(
                        "account {account}: chunk {hash} is missing from the blob store ({key})"
                    ),
                    Some(s) => format!(
                        "account {account}: chunk {hash} holds {s} bytes, not {size} ({key})"
                    ),
                });
                continue;
            }
            if deep {
                let bytes = match blobs.get(&key).await {
                    Ok(b) => b,
                    Err(mica_blobs::BlobError::Missing(_)) => {
                        if still(hash.clone(), key.clone()).await? {
                            report.problems.push(format!(
                                    "account {account}: chunk {hash} is missing from the blob store ({key})"
                                ));
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let got = tokio::task::spawn_blocking(move || mica_blobs::chunk_hash(&bytes))
                    .await
                    .map_err(|e| CloudError::Internal(format!("hashing a chunk: {e}")))?;
                if got != hash {
                    report.problems.push(format!(
                        "account {account}: chunk {hash}'s bytes have changed ({key})"
                    ));
                }
            }
        }
        // What is left is known to no chunk row: an orphan, unless it is being written or
        // waits for deletion — or went meanwhile (the collector).
        let mut left: Vec<String> = objects.into_keys().collect();
        left.sort();
        for key in left {
            // Its row may have come after the rows were read (an upload's commit takes over
            // its intent and adds the row).
            let hash = key
                .rsplit('/')
                .next()
                .and_then(|f| f.split('.').next())
                .unwrap_or_default()
                .to_owned();
            if !store.blob_pending(&key).await?
                && !still(hash, key.clone()).await?
                && blobs.size_of(&key).await?.is_some()
            {
                report.problems.push(format!(
                    "account {account}: {key} is in the blob store, but nothing refers to it"
                ));
            }
        }
        if let Some(a) = AccountId::from_i64(account) {
            for f in store.files_missing_chunks(a).await? {
                report.problems.push(format!(
                    "account {account}: file {f} lost a chunk (damaged); uploading its content again mends it"
                ));
            }
        }
    }
    Ok(report)
}
