//! The blob store: where file bytes live, as content-addressed chunks.
//!
//! One interface over a maintained object-storage crate (`object_store`): a local folder by
//! default, an S3-compatible store (Garage, MinIO, Ceph, AWS) when the configured location is an
//! `s3://bucket/prefix` URL (credentials and endpoint from the standard `AWS_*` variables).
//!
//! Files are cut into fixed-size chunks of [`CHUNK_SIZE`] bytes, each named by its BLAKE3 hash.
//! Which chunks an account has, and who references them, is the database's business (see
//! `mica-store`'s `files` module); this crate only moves bytes. Every object is written once under
//! a key that is never reused (the hash plus a random suffix), so deleting a key that the database
//! no longer knows can never remove bytes that a newer row points to. A `put` returns only once the
//! bytes are durable: on the local folder the file and its directory are fsynced (`object_store`
//! writes to a temporary file and renames it); an object store acknowledges a PUT once stored.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

/// Chunk size: large enough that a 1 GiB file is 256 objects, small enough that an upload in
/// flight holds at most one chunk in memory.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store location {0:?} is not usable: {1}")]
    Config(String, String),
    #[error("blob {0} is missing from the store")]
    Missing(String),
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Set for the local folder: the root whose files are fsynced after each put.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    location: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("location", &self.location)
            .finish()
    }
}

impl BlobStore {
    /// Opens `location`: `s3://bucket[/prefix]` for an S3-compatible store, otherwise a local
    /// folder (created if missing; `file://` is accepted).
    pub fn open(location: &str) -> Result<BlobStore> {
        if location.starts_with("s3://") {
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_url(location)
                .build()
                .map_err(|e| BlobError::Config(location.to_owned(), e.to_string()))?;
            let prefix = location
                .trim_start_matches("s3://")
                .split_once('/')
                .map(|(_, p)| p.trim_matches('/').to_owned())
                .unwrap_or_default();
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
            };
            return Ok(BlobStore {
                inner,
                local: None,
                location: location.to_owned(),
            });
        }
        let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BlobError::Config(location.to_owned(), e.to_string()))?;
        let local = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| BlobError::Config(location.to_owned(), e.to_string()))?
                .with_automatic_cleanup(true),
        );
        Ok(BlobStore {
            inner: local.clone(),
            local: Some(local),
            location: dir.display().to_string(),
        })
    }

    /// Where the bytes are, for logs and `mica config`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `bytes` under `key`; returns once they are durable.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = ObjectPath::from(key);
        self.inner.put(&path, PutPayload::from(bytes)).await?;
        if let Some(local) = &self.local {
            let file = local.path_to_filesystem(&path)?;
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::File::open(&file)?.sync_all()?;
                if let Some(dir) = file.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        Ok(())
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        match self.inner.get(&ObjectPath::from(key)).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::Missing(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Part of an object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        match self.inner.get_range(&ObjectPath::from(key), range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::Missing(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes an object; removing one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let prefix = ObjectPath::from(prefix);
        let mut list = self.inner.list(Some(&prefix));
        let mut n = 0;
        while let Some(meta) = list.next().await {
            let meta = meta?;
            match self.inner.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Objects under `prefix` and their total size: what storage really holds.
    pub async fn stored(&self, prefix: &str) -> Result<(u64, u64)> {
        let prefix = ObjectPath::from(prefix);
        let mut list = self.inner.list(Some(&prefix));
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(meta) = list.next().await {
            let meta = meta?;
            n += 1;
            bytes += meta.size;
        }
        Ok((n, bytes))
    }
}

/// The BLAKE3 hash of a chunk, in hex: its name.
pub fn chunk_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Where a chunk of an account lives. `suffix` is random and unique to the database row that
/// owns the object, so a key is never written twice by different rows.
pub fn chunk_key(account: i64, hash: &str, suffix: &str) -> String {
    let fan = hash.get(..2).unwrap_or("00");
    format!("chunks/{account}/{fan}/{hash}.{suffix}")
}

/// The prefix of every chunk of an account.
pub fn account_prefix(account: i64) -> String {
    format!("chunks/{account}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_put_get_range_delete() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("mica-blobs-{}", std::process::id()));
        let store = BlobStore::open(&dir.display().to_string())?;
        let data = Bytes::from_static(b"hello, blob store");
        let key = chunk_key(7, &chunk_hash(&data), "a1");
        store.put(&key, data.clone()).await?;
        assert_eq!(store.get(&key).await?, data);
        assert_eq!(&store.get_range(&key, 7..11).await?[..], b"blob");
        assert_eq!(
            store.stored(&account_prefix(7)).await?,
            (1, data.len() as u64)
        );
        store.delete(&key).await?;
        store.delete(&key).await?;
        assert!(matches!(store.get(&key).await, Err(BlobError::Missing(_))));
        assert_eq!(store.stored(&account_prefix(7)).await?, (0, 0));
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
