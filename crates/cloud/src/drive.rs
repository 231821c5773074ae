//! The drive (PRODUCT.md CL-5): folders and files, as items of the account's `drive`
//! collection, so devices sync them like any category and the recycle bin works the same way.
//!
//! An entry is a [`DriveEntry`]: a name (NFC, no separators, at most 255 bytes), the folder it
//! is in, and for a file the stored file holding its bytes. The store keeps each live entry's
//! `<parent>/<name>` unique, so a folder never holds two entries of the same name, and lists a
//! folder by an index. Operations here are conveniences over the sync engine's conditional
//! writes: each is one batch, atomic.

use mica_core::{AccountId, Timestamp};
use mica_store::{CollectionRow, ItemRow, RestoreOutcome};
use serde::Serialize;
use utoipa::ToSchema;

use crate::category::{drive_name, DeadProp, DriveEntry};
use crate::{Category, Cloud, CloudError, Write};

/// The collection that holds the drive.
pub const DRIVE: &str = "drive";

/// A drive entry as listings show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriveItem {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    /// `folder` or `file`.
    pub kind: String,
    pub file_id: Option<String>,
    pub mime_type: Option<String>,
    /// Bytes of the file (0 for a folder).
    pub size: i64,
    /// The entry's version: send it back to change the entry.
    pub version: String,
    /// RFC 3339: when the server last changed the entry.
    pub changed_at: String,
    /// RFC 3339, as the client's file system had it.
    pub modified_at: Option<String>,
}

fn new_id() -> String {
    format!("d_{}", mica_core::crypto::random_token_string(12))
}

impl Cloud {
    async fn drive(&self, account: AccountId) -> Result<CollectionRow, CloudError> {
        self.resolve(account, DRIVE).await
    }

    fn open_entry(
        &self,
        account: AccountId,
        c: &CollectionRow,
        row: &ItemRow,
    ) -> Result<DriveEntry, CloudError> {
        let view = self.view(account, c, Category::Drive, row)?;
        let body = view.body.ok_or(CloudError::NotFound)?;
        serde_json::from_value(body)
            .map_err(|e| CloudError::Internal(format!("drive entry {}: {e}", row.id)))
    }

    fn drive_item(
        &self,
        account: AccountId,
        c: &CollectionRow,
        row: &ItemRow,
    ) -> Result<DriveItem, CloudError> {
        let e = self.open_entry(account, c, row)?;
        // The item counts its text and its file's bytes; the text is the entry's compact JSON.
        let text_len = serde_json::to_string(&e).map(|s| s.len()).unwrap_or(0);
        let size = match e.kind.as_str() {
            "file" => row.size - i64::try_from(text_len).unwrap_or(0),
            _ => 0,
        };
        Ok(DriveItem {
            id: row.id.clone(),
            name: e.name,
            parent: e.parent,
            kind: e.kind,
            file_id: e.file_id,
            mime_type: e.mime_type,
            size: size.max(0),
            version: row.seq.to_string(),
            changed_at: row.modified_at.to_rfc3339(),
            modified_at: e.modified_at,
        })
    }

    async fn live_entry(
        &self,
        account: AccountId,
        c: &CollectionRow,
        id: &str,
    ) -> Result<(ItemRow, DriveEntry), CloudError> {
        let row = self
            .store()
            .item(account, &c.id, id)
            .await?
            .filter(|r| r.deleted_at.is_none())
            .ok_or(CloudError::NotFound)?;
        let e = self.open_entry(account, c, &row)?;
        Ok((row, e))
    }

    /// A folder's entries (the top level when `parent` is `None`): folders first, then by name.
    pub async fn drive_list(
        &self,
        account: AccountId,
        parent: Option<&str>,
    ) -> Result<Vec<DriveItem>, CloudError> {
        let c = self.drive(account).await?;
        if let Some(p) = parent {
            let (_, e) = self.live_entry(account, &c, p).await?;
            if e.kind != "folder" {
                return Err(CloudError::NotFound);
            }
        }
        let rows = self
            .store()
            .children(account, &c.id, parent.unwrap_or(""))
            .await?;
        let mut out = rows
            .iter()
            .map(|r| self.drive_item(account, &c, r))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| {
            (a.kind != "folder", a.name.to_lowercase(), &a.name).cmp(&(
                b.kind != "folder",
                b.name.to_lowercase(),
                &b.name,
            ))
        });
        Ok(out)
    }

    pub async fn drive_entry(&self, account: AccountId, id: &str) -> Result<DriveItem, CloudError> {
        let c = self.drive(account).await?;
        let (row, _) = self.live_entry(account, &c, id).await?;
        self.drive_item(account, &c, &row)
    }

    async fn put_entry(
        &self,
        account: AccountId,
        id: &str,
        base: Option<String>,
        e: &DriveEntry,
    ) -> Result<DriveItem, CloudError> {
        self.put_entry_in(account, DRIVE, id, base, e).await?;
        self.drive_entry(account, id).await
    }

    /// Puts one entry into a drive collection, on condition of `base` (its version).
    async fn put_entry_in(
        &self,
        account: AccountId,
        collection: &str,
        id: &str,
        base: Option<String>,
        e: &DriveEntry,
    ) -> Result<(), CloudError> {
        let body =
            serde_json::value::to_raw_value(e).map_err(|e| CloudError::Internal(e.to_string()))?;
        let out = self
            .push(
                account,
                collection,
                vec![Write {
                    id: id.to_owned(),
                    op: "put".into(),
                    base_version: base,
                    body: Some(body),
                }],
                None,
            )
            .await?;
        let r = out
            .results
            .first()
            .ok_or_else(|| CloudError::Internal("empty push result".into()))?;
        if r.status != mica_store::OpStatus::Applied {
            return Err(CloudError::DriveConflict);
        }
        Ok(())
    }

    /// Creates a folder.
    pub async fn drive_create_folder(
        &self,
        account: AccountId,
        parent: Option<&str>,
        name: &str,
    ) -> Result<DriveItem, CloudError> {
        let e = DriveEntry {
            name: drive_name(name)?,
            parent: parent.map(str::to_owned),
            kind: "folder".into(),
            file_id: None,
            mime_type: None,
            modified_at: None,
            props: Vec::new(),
        };
        self.put_entry(account, &new_id(), None, &e).await
    }

    /// Puts an uploaded file into the drive.
    pub async fn drive_add_file(
        &self,
        account: AccountId,
        parent: Option<&str>,
        name: &str,
        file_id: &str,
        modified_at: Option<&str>,
    ) -> Result<DriveItem, CloudError> {
        let file = self
            .file(account, file_id)
            .await
            .map_err(|_| CloudError::UnknownFile(file_id.to_owned()))?;
        let e = DriveEntry {
            name: drive_name(name)?,
            parent: parent.map(str::to_owned),
            kind: "file".into(),
            file_id: Some(file.id),
            mime_type: Some(file.mime_type),
            modified_at: modified_at.map(str::to_owned),
            props: Vec::new(),
        };
        self.put_entry(account, &new_id(), None, &e).await
    }

    /// Renames and/or moves an entry. `base_version`, when given, must be the entry's version.
    pub async fn drive_update(
        &self,
        account: AccountId,
        id: &str,
        name: Option<&str>,
        parent: Option<Option<&str>>,
        base_version: Option<&str>,
    ) -> Result<DriveItem, CloudError> {
        let c = self.drive(account).await?;
        let (row, mut e) = self.live_entry(account, &c, id).await?;
        if let Some(v) = base_version {
            if v != row.seq.to_string() {
                return Err(CloudError::DriveConflict);
            }
        }
        if let Some(n) = name {
            e.name = drive_name(n)?;
        }
        if let Some(p) = parent {
            e.parent = p.map(str::to_owned);
        }
        self.put_entry(account, id, Some(row.seq.to_string()), &e)
            .await
    }

    /// The entry at a path of names from the top level (`None` when there is none; the top
    /// level itself is not an entry). Names are compared in NFC, as they are stored.
    pub async fn drive_lookup(
        &self,
        account: AccountId,
        names: &[&str],
    ) -> Result<Option<DriveItem>, CloudError> {
        use unicode_normalization::UnicodeNormalization;
        let c = self.drive(account).await?;
        let mut parent = String::new();
        let mut found = None;
        for name in names {
            let name: String = name.nfc().collect();
            let Some(row) = self
                .store()
                .item_at(account, &c.id, &format!("{parent}/{name}"))
                .await?
            else {
                return Ok(None);
            };
            parent = row.id.clone();
            found = Some(row);
        }
        found
            .map(|row| self.drive_item(account, &c, &row))
            .transpose()
    }

    /// Gives a drive file new contents: an uploaded file.
    pub async fn drive_set_file(
        &self,
        account: AccountId,
        id: &str,
        file_id: &str,
    ) -> Result<DriveItem, CloudError> {
        let c = self.drive(account).await?;
        let (row, mut e) = self.live_entry(account, &c, id).await?;
        if e.kind != "file" {
            return Err(CloudError::Invalid {
                field: "id",
                message: "a folder has no contents to replace".into(),
            });
        }
        let file = self
            .file(account, file_id)
            .await
            .map_err(|_| CloudError::UnknownFile(file_id.to_owned()))?;
        e.file_id = Some(file.id);
        e.mime_type = Some(file.mime_type);
        e.modified_at = Some(self.now().to_rfc3339());
        self.put_entry(account, id, Some(row.seq.to_string()), &e)
            .await
    }

    /// An entry's WebDAV dead properties.
    pub async fn drive_props(
        &self,
        account: AccountId,
        id: &str,
    ) -> Result<Vec<DeadProp>, CloudError> {
        let c = self.drive(account).await?;
        Ok(self.live_entry(account, &c, id).await?.1.props)
    }

    /// Sets (`true`) or removes (`false`) WebDAV dead properties, all at once.
    pub async fn drive_patch_props(
        &self,
        account: AccountId,
        id: &str,
        patch: Vec<(bool, DeadProp)>,
    ) -> Result<(), CloudError> {
        let c = self.drive(account).await?;
        let (row, mut e) = self.live_entry(account, &c, id).await?;
        for (set, prop) in patch {
            e.props
                .retain(|p| !(p.name == prop.name && p.namespace == prop.namespace));
            if set {
                e.props.push(prop);
            }
        }
        self.put_entry(account, id, Some(row.seq.to_string()), &e)
            .await?;
        Ok(())
    }

    /// Copies an entry (a folder with everything in it) into `parent` under `name` (its own
    /// name by default). A copied file shares the stored bytes: it costs usage, not storage.
    pub async fn drive_copy(
        &self,
        account: AccountId,
        id: &str,
        parent: Option<&str>,
        name: Option<&str>,
    ) -> Result<DriveItem, CloudError> {
        let c = self.drive(account).await?;
        let (_, e) = self.live_entry(account, &c, id).await?;
        let mut writes = Vec::new();
        let top = new_id();
        let mut root = e.clone();
        root.parent = parent.map(str::to_owned);
        if let Some(n) = name {
            root.name = drive_name(n)?;
        }
        // Breadth-first over the folder, each copy pointing at its parent's copy.
        let mut queue = vec![(id.to_owned(), top.clone(), root)];
        while let Some((from, to, entry)) = queue.pop() {
            if entry.kind == "folder" {
                for child in self.store().children(account, &c.id, &from).await? {
                    let mut ce = self.open_entry(account, &c, &child)?;
                    ce.parent = Some(to.clone());
                    queue.push((child.id.clone(), new_id(), ce));
                }
            }
            writes.push(Write {
                id: to,
                op: "put".into(),
                base_version: None,
                body: Some(
                    serde_json::value::to_raw_value(&entry)
                        .map_err(|e| CloudError::Internal(e.to_string()))?,
                ),
            });
            if writes.len() > self.inner.cfg.max_tree {
                return Err(CloudError::FolderTooLarge(self.inner.cfg.max_tree));
            }
        }
        self.apply(account, DRIVE, writes, None, true).await?;
        self.drive_entry(account, &top).await
    }

    /// Puts the file `id` — moved, or a copy of it when `copy` — where the file `replaced` is,
    /// and `replaced` into the recycle bin, in one transaction: either both happen or neither
    /// (a copy past the quota leaves `replaced` where it was). What WebDAV's overwriting
    /// `MOVE` and `COPY` of one file onto another mean.
    pub async fn drive_replace(
        &self,
        account: AccountId,
        id: &str,
        replaced: &str,
        copy: bool,
    ) -> Result<DriveItem, CloudError> {
        let c = self.drive(account).await?;
        let (row, mut e) = self.live_entry(account, &c, id).await?;
        let (old, there) = self.live_entry(account, &c, replaced).await?;
        if id == replaced || e.kind != "file" || there.kind != "file" {
            return Err(CloudError::DriveConflict);
        }
        e.parent = there.parent;
        e.name = there.name;
        let (target, base) = if copy {
            (new_id(), None)
        } else {
            (id.to_owned(), Some(row.seq.to_string()))
        };
        let body =
            serde_json::value::to_raw_value(&e).map_err(|e| CloudError::Internal(e.to_string()))?;
        // The batch deletes before it puts, so the name is free when the file takes it.
        let writes = vec![
            Write {
                id: replaced.to_owned(),
                op: "delete".into(),
                base_version: Some(old.seq.to_string()),
                body: None,
            },
            Write {
                id: target.clone(),
                op: "put".into(),
                base_version: base,
                body: Some(body),
            },
        ];
        self.apply(account, DRIVE, writes, None, true).await?;
        self.drive_entry(account, &target).await
    }

    /// A drive entry just restored from the bin (into the drive collection `c`) into a folder
    /// that is gone for good (neither live nor in the bin to come back) returns at the top
    /// level — with " (restored)" after its name if the name is taken there — rather than where
    /// no listing reaches it. One whose folder waits in the bin stays in it, and shows again
    /// when the folder is restored. So does one whose folders lead back to itself (an old place
    /// given back by the bin, where a later entry reusing an id had taken the folder above it)
    /// or nest deeper than a drive allows.
    pub(crate) async fn drive_rehome(
        &self,
        account: AccountId,
        c: &CollectionRow,
        id: &str,
        bin_since: Timestamp,
    ) -> Result<(), CloudError> {
        let (row, mut e) = self.live_entry(account, c, id).await?;
        let Some(parent) = e.parent.clone() else {
            return Ok(());
        };
        if let Ok((_, p)) = self.live_entry(account, c, &parent).await {
            if p.kind == "folder" && parent != id && !self.leads_back(account, c, id, p).await? {
                return Ok(());
            }
        } else {
            let waiting = self
                .store()
                .bin_holds(account, &c.id, &parent, bin_since)
                .await?;
            if waiting {
                return Ok(());
            }
        }
        e.parent = None;
        let base = Some(row.seq.to_string());
        let name = e.name.clone();
        for n in 0..10 {
            e.name = match n {
                0 => name.clone(),
                1 => restored_name(&name, " (restored)"),
                n => restored_name(&name, &format!(" (restored {n})")),
            };
            match self
                .put_entry_in(account, &c.id, id, base.clone(), &e)
                .await
            {
                Err(CloudError::NameTaken) => continue,
                r => return r,
            }
        }
        Err(CloudError::NameTaken)
    }

    /// After the folder `folder` came back from the bin: the entries deleted with it (a
    /// folder's deletion bins everything in it at one moment, `deleted_at`) come back into it,
    /// folders with their own contents, up to `cloud.max_tree` entries. Each is its own restore,
    /// so one whose name was taken meanwhile stays in the bin and the rest still come back.
    /// Returns the newest version written (0 when nothing was) and how many came back.
    pub(crate) async fn drive_restore_contents(
        &self,
        account: AccountId,
        c: &CollectionRow,
        folder: &str,
        deleted_at: Timestamp,
        since: Timestamp,
    ) -> Result<(i64, u64), CloudError> {
        let max = self.inner.cfg.max_tree;
        let mut newest = 0;
        let mut restored = 0usize;
        let mut queue = vec![folder.to_owned()];
        while let Some(parent) = queue.pop() {
            let left = i64::try_from(max.saturating_sub(restored)).unwrap_or(i64::MAX);
            if left == 0 {
                tracing::info!(folder, max, "a restored folder's contents stop at max_tree");
                break;
            }
            for (bin_id, item_id) in self
                .store()
                .bin_children(account, &c.id, &parent, deleted_at, left)
                .await?
            {
                if let RestoreOutcome::Restored { version, .. } = self
                    .store()
                    .restore_from_bin(account, &bin_id, since, self.now())
                    .await?
                {
                    newest = newest.max(version);
                    restored += 1;
                    queue.push(item_id);
                }
            }
        }
        Ok((newest, restored as u64))
    }

    /// Whether the folders above `id`, from its parent `first`, come back to it or go deeper
    /// than [`mica_store::MAX_TREE_DEPTH`] before they reach the top level.
    async fn leads_back(
        &self,
        account: AccountId,
        c: &CollectionRow,
        id: &str,
        first: DriveEntry,
    ) -> Result<bool, CloudError> {
        let mut up = first.parent;
        for _ in 0..mica_store::MAX_TREE_DEPTH {
            let Some(p) = up else {
                return Ok(false);
            };
            if p == id {
                return Ok(true);
            }
            up = match self.live_entry(account, c, &p).await {
                Ok((_, e)) => e.parent,
                // A gone folder further up: not this entry's to fix here.
                Err(_) => return Ok(false),
            };
        }
        Ok(true)
    }

    /// Moves an entry (a folder with everything in it) to the recycle bin.
    pub async fn drive_delete(&self, account: AccountId, id: &str) -> Result<u64, CloudError> {
        let c = self.drive(account).await?;
        let (row, _) = self.live_entry(account, &c, id).await?;
        let mut writes = vec![Write {
            id: id.to_owned(),
            op: "delete".into(),
            base_version: Some(row.seq.to_string()),
            body: None,
        }];
        let mut queue = vec![id.to_owned()];
        while let Some(folder) = queue.pop() {
            for child in self.store().children(account, &c.id, &folder).await? {
                queue.push(child.id.clone());
                writes.push(Write {
                    id: child.id.clone(),
                    op: "delete".into(),
                    base_version: Some(child.seq.to_string()),
                    body: None,
                });
            }
            if writes.len() > self.inner.cfg.max_tree {
                return Err(CloudError::FolderTooLarge(self.inner.cfg.max_tree));
            }
        }
        let n = writes.len() as u64;
        // All or nothing: an entry changed meanwhile leaves the whole folder as it was.
        self.apply(account, DRIVE, writes, None, true).await?;
        Ok(n)
    }
}

/// `name` with `suffix` before its extension ("Report (restored).pdf"), shortened to fit.
/// An extension is what follows the last dot when that is short (a name like "a." followed by
/// 250 letters has none): the suffix goes before it, and the rest of the name is shortened.
fn restored_name(name: &str, suffix: &str) -> String {
    const MAX_EXT: usize = 32;
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= MAX_EXT => name.split_at(i),
        _ => (name, ""),
    };
    let room = crate::category::MAX_NAME_BYTES.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", stem[..cut].trim_end())
}

#[cfg(test)]
mod tests {
    use super::restored_name;
    use crate::category::MAX_NAME_BYTES;

    #[test]
    fn a_restored_name_keeps_its_extension_and_fits() {
        assert_eq!(
            restored_name("Report.pdf", " (restored)"),
            "Report (restored).pdf"
        );
        assert_eq!(
            restored_name("Photos", " (restored 2)"),
            "Photos (restored 2)"
        );
        assert_eq!(
            restored_name(".bashrc", " (restored)"),
            ".bashrc (restored)"
        );
        let long = format!("{}.txt", "é".repeat(126));
        let r = restored_name(&long, " (restored)");
        assert!(r.len() <= MAX_NAME_BYTES, "{}", r.len());
        assert!(r.ends_with(" (restored).txt"), "{r}");
        // A "name.extension" that is nearly all extension: no extension, and still a name.
        let odd = format!("a.{}", "x".repeat(250));
        for suffix in [" (restored)", " (restored 9)"] {
            let r = restored_name(&odd, suffix);
            assert!(crate::category::drive_name(&r).is_ok(), "{r}");
            assert!(r.starts_with("a.xxx") && r.ends_with(suffix), "{r}");
        }
    }
}
