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
//! bytes are durable: on the local folder the file's data and its directory entry (and any folder
//! the put created) are fsynced; an object store acknowledges a PUT once stored.
//!
//! On the local folder a put writes its object straight under its key: no reader looks at a key
//! before the database row that names it commits, which happens after the put returns, and a put
//! cut short by a crash leaves a file that the garbage collector removes through the write intent
//! recorded before it. Chunks are written from [`chunk_buffer`]s, whose start is page-aligned, with
//! direct I/O on Linux: the bytes go from the buffer to the disk without first being copied into
//! the page cache (on a 2-core machine that copy cost as much CPU as receiving the upload). A file
//! system without direct I/O (tmpfs) and unaligned buffers take the ordinary buffered write.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

/// Chunk size: large enough that a 1 GiB file is 256 objects, small enough that an upload in
/// flight holds at most one chunk in memory.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// The alignment direct I/O needs of a buffer's address, length and file offset: a page, which
/// every block device's logical block size divides.
const DIRECT_ALIGN: usize = 4096;

/// Writes smaller than this go through the page cache (thumbnails, small files' last chunks):
/// direct I/O pays off on whole chunks.
const DIRECT_MIN: usize = 64 * 1024;

/// An empty buffer that holds one chunk, starting on a page boundary so that a chunk written from
/// it can use direct I/O. Reuse it (`Bytes::try_into_mut` after the put) rather than allocate one
/// per chunk.
pub fn chunk_buffer() -> BytesMut {
    let mut b = BytesMut::with_capacity(CHUNK_SIZE + DIRECT_ALIGN);
    let skip = b.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    b.resize(skip, 0);
    // The aligned rest; the few bytes before it are released with `b`'s handle (one allocation).
    b.split_off(skip)
}

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
    /// Buffers that whole-object reads of the local folder fill, kept for the next read.
    reads: Arc<ReadBuffers>,
    location: String,
}

/// How many chunk-sized read buffers a store keeps once their bytes are sent: enough for the
/// reads a download keeps in flight and the ones its response still holds, for a few
/// downloads at once (at most 8 × 4 MiB held when idle).
const KEPT_READ_BUFFERS: usize = 8;

/// The free read buffers. A download reads every chunk into a buffer of its own, hands it to the
/// response and drops it once sent; freeing it returned the memory to the system, and the next
/// chunk's buffer was new memory again. Each first touch of a page is a page fault (and in a
/// virtual machine whose host takes back the guest's free memory, a fault on the host too; with
/// the chunks already in the page cache, the kernel's copy into fresh buffers was most of a
/// download's CPU). A buffer kept here is memory already in place; it also keeps the process's
/// peak memory over many downloads lower (the files benchmark: 105–117 MB instead of 136–161).
#[derive(Default)]
struct ReadBuffers {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl ReadBuffers {
    /// An empty buffer that holds `len` bytes: a kept one when `len` fits a chunk.
    fn take(&self, len: usize) -> Vec<u8> {
        if len <= CHUNK_SIZE {
            if let Some(b) = self.free.lock().ok().and_then(|mut f| f.pop()) {
                return b;
            }
            return Vec::with_capacity(CHUNK_SIZE);
        }
        Vec::with_capacity(len)
    }

    fn give_back(&self, mut b: Vec<u8>) {
        if b.capacity() != CHUNK_SIZE {
            return;
        }
        b.clear();
        if let Ok(mut f) = self.free.lock() {
            if f.len() < KEPT_READ_BUFFERS {
                f.push(b);
            }
        }
    }
}

/// A read's bytes, in a buffer that goes back to its store's [`ReadBuffers`] when the last
/// `Bytes` that points into it is dropped.
struct ReadBuffer {
    bytes: Vec<u8>,
    home: Arc<ReadBuffers>,
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.bytes));
    }
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
                reads: Arc::default(),
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
            reads: Arc::default(),
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
        if let Some(local) = &self.local {
            let file = local.path_to_filesystem(&path)?;
            tokio::task::spawn_blocking(move || write_durably(&file, &bytes))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
            return Ok(());
        }
        self.inner.put(&path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_then(key, None).await
    }

    /// The whole object; and, for a download that reads `next` soon, that one is read from the
    /// local disk into the page cache in the background (not into the process's memory) while
    /// the objects before it are sent, so the disk always has reads queued. Nothing is read
    /// ahead on S3.
    pub async fn get_then(&self, key: &str, next: Option<&str>) -> Result<Bytes> {
        if let Some(local) = &self.local {
            let file = local.path_to_filesystem(&ObjectPath::from(key))?;
            if let Some(n) = next {
                let n = local.path_to_filesystem(&ObjectPath::from(n))?;
                // Not awaited: a read ahead that fails costs nothing but the hint.
                drop(tokio::task::spawn_blocking(move || read_ahead(&n)));
            }
            let reads = self.reads.clone();
            let read = move || read_whole(&file, reads);
            return match tokio::task::spawn_blocking(read).await {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(BlobError::Missing(key.to_owned()))
                }
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(std::io::Error::other(e.to_string()).into()),
            };
        }
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

    /// Every object under `prefix`, with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(prefix);
        let mut list = self.inner.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = list.next().await {
            let meta = meta?;
            out.push((meta.location.to_string(), meta.size));
        }
        Ok(out)
    }

    /// The names one level below `prefix` (`chunks/` → the accounts that have chunks).
    pub async fn children(&self, prefix: &str) -> Result<Vec<String>> {
        let listed = self
            .inner
            .list_with_delimiter(Some(&ObjectPath::from(prefix)))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// An object's size, or `None` when it is not there.
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
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

/// Writes a local object and returns once it is durable: its data, its directory entry, and the
/// entry of every folder this write created.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("an object's path has a folder"))?;
    let mut created = Vec::new();
    let mut d = dir;
    while !d.exists() {
        created.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    if !created.is_empty() {
        std::fs::create_dir_all(dir)?;
    }
    let direct = direct_len(bytes);
    let file = match write_direct(path, &bytes[..direct])? {
        Some(f) if direct == bytes.len() => f,
        Some(_) => {
            // The unaligned tail, through the page cache, after the direct part.
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(direct as u64))?;
            f.write_all(&bytes[direct..])?;
            f
        }
        None => {
            let mut f = std::fs::File::create(path)?;
            f.write_all(bytes)?;
            f
        }
    };
    file.sync_data()?;
    std::fs::File::open(dir)?.sync_all()?;
    for c in &created {
        if let Some(parent) = c.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Brings the file at `path` into the page cache: `sendfile` from it to `/dev/null`, which goes
/// through the kernel's ordinary read-ahead (large folios, requests of several MiB) and copies
/// nothing. `posix_fadvise(WILLNEED)` does the same in one call but fills the cache one 4 KiB
/// page at a time: once the machine's free memory is fragmented, a virtio disk (254 segments a
/// request) then gets requests of 1016 + 8 KiB instead of 4 MiB, and the download benchmark
/// fell from ~2 GB/s to ~1.5 GB/s after its first round. Blocks until the bytes are read.
#[cfg(target_os = "linux")]
fn read_ahead(path: &Path) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        return;
    };
    // A chunk is one call; the loop only matters for a larger object.
    while let Ok(n) = rustix::fs::sendfile(&null, &file, None, CHUNK_SIZE) {
        if n == 0 {
            break;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn read_ahead(_path: &Path) {}

/// Reads a whole local object, through the page cache: unlike writes, reads keep the kernel's
/// read-ahead that way (direct reads of whole chunks measured 30 % slower on the download
/// benchmark, though they used half the CPU). The bytes land in one of `reads`' buffers.
fn read_whole(path: &Path, reads: Arc<ReadBuffers>) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    let mut bytes = reads.take(len);
    // Into the buffer's spare capacity: nothing is zeroed first.
    if let Err(e) = f.read_to_end(&mut bytes) {
        reads.give_back(bytes);
        return Err(e);
    }
    Ok(Bytes::from_owner(ReadBuffer { bytes, home: reads }))
}

/// How much of `bytes` can go with direct I/O: its whole pages when it starts on a page boundary
/// and is large enough to be worth it.
fn direct_len(bytes: &[u8]) -> usize {
    if !cfg!(target_os = "linux")
        || bytes.len() < DIRECT_MIN
        || bytes.as_ptr().align_offset(DIRECT_ALIGN) != 0
    {
        return 0;
    }
    bytes.len() - bytes.len() % DIRECT_ALIGN
}

/// Creates `path` and writes `bytes` (page-aligned, whole pages) with direct I/O. `None` when there
/// is nothing to write that way or the file system refuses it (tmpfs has no direct I/O): the
/// caller then writes everything through the page cache.
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, bytes: &[u8]) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    if bytes.is_empty() {
        return Ok(None);
    }
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match f.write_all(bytes) {
        Ok(()) => Ok(Some(f)),
        Err(e) if refused(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_path: &Path, _bytes: &[u8]) -> std::io::Result<Option<std::fs::File>> {
    Ok(None)
}

/// The BLAKE3 hash of a chunk, in hex: its name.
pub fn chunk_hash(bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(bytes);
    chunk_name(&h)
}

/// The name of the chunk whose bytes went through `hasher` (the same as [`chunk_hash`] of them,
/// for a chunk hashed piece by piece as it arrives).
pub fn chunk_name(hasher: &blake3::Hasher) -> String {
    hasher.finalize().to_hex().to_string()
}

/// A file's content id: BLAKE3 over its chunks' hashes and sizes, in order. Two files with the
/// same bytes have the same id; a client computes it with [`ContentHasher`] before uploading, to
/// learn whether the server already holds those bytes (an incremental backup).
pub fn content_id<'a>(chunks: impl IntoIterator<Item = (&'a str, i64)>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"mica-file-v1\0");
    for (hash, size) in chunks {
        h.update(hash.as_bytes());
        h.update(&size.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Computes a file's [`content_id`] from its bytes, given in pieces of any size: they are cut
/// into chunks of [`CHUNK_SIZE`] as the server cuts an upload.
#[derive(Default)]
pub struct ContentHasher {
    chunk: blake3::Hasher,
    in_chunk: usize,
    chunks: Vec<(String, i64)>,
    size: u64,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE - self.in_chunk).min(bytes.len());
            self.chunk.update(&bytes[..take]);
            self.in_chunk += take;
            bytes = &bytes[take..];
            if self.in_chunk == CHUNK_SIZE {
                self.cut();
            }
        }
    }

    fn cut(&mut self) {
        let name = chunk_name(&self.chunk);
        self.chunks.push((name, self.in_chunk as i64));
        self.chunk = blake3::Hasher::new();
        self.in_chunk = 0;
    }

    /// The bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The content id of the bytes given.
    pub fn finish(mut self) -> String {
        if self.in_chunk > 0 {
            self.cut();
        }
        content_id(self.chunks.iter().map(|(h, s)| (h.as_str(), *s)))
    }
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

    #[test]
    fn content_ids_do_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = (0..CHUNK_SIZE * 2 + 1000)
            .map(|i| (i % 253) as u8)
            .collect();
        let whole = content_id([
            (chunk_hash(&data[..CHUNK_SIZE]).as_str(), CHUNK_SIZE as i64),
            (
                chunk_hash(&data[CHUNK_SIZE..CHUNK_SIZE * 2]).as_str(),
                CHUNK_SIZE as i64,
            ),
            (chunk_hash(&data[CHUNK_SIZE * 2..]).as_str(), 1000),
        ]);
        for piece in [1000, 65_536, CHUNK_SIZE, CHUNK_SIZE + 7] {
            let mut h = ContentHasher::new();
            for p in data.chunks(piece) {
                h.update(p);
            }
            assert_eq!(h.size(), data.len() as u64);
            assert_eq!(h.finish(), whole, "pieces of {piece}");
        }
        assert_eq!(ContentHasher::new().finish(), content_id([]));
        let mut other = ContentHasher::new();
        other.update(&data[1..]);
        assert_ne!(other.finish(), whole);
    }

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
        // A chunk from an aligned buffer (direct I/O where the file system has it) with a tail
        // that is not a whole page, in a folder the put creates.
        let mut big = chunk_buffer();
        assert_eq!(big.as_ptr().align_offset(DIRECT_ALIGN), 0);
        assert!(big.capacity() >= CHUNK_SIZE);
        big.extend((0..DIRECT_MIN * 3 + 123).map(|i| (i % 251) as u8));
        let big = big.freeze();
        let big_key = chunk_key(8, &chunk_hash(&big), "b2");
        store.put(&big_key, big.clone()).await?;
        assert_eq!(store.get(&big_key).await?, big);
        assert_eq!(
            store
                .get_range(&big_key, 5..DIRECT_MIN as u64 * 3 + 100)
                .await?,
            big.slice(5..DIRECT_MIN * 3 + 100)
        );
        // A read that names the next object reads that one ahead, on the side.
        assert_eq!(store.get_then(&key, Some(&big_key)).await?, data);
        // A whole read's buffer goes back to the store once its bytes are dropped, and the next
        // read fills the same memory.
        let first = store.get(&big_key).await?;
        let at = first.as_ptr();
        drop(first);
        let again = store.get(&big_key).await?;
        assert_eq!(again.as_ptr(), at);
        assert_eq!(again, big);
        let held = again.slice(10..20);
        drop(again);
        assert!(
            store.reads.free.lock().is_ok_and(|f| f.is_empty()),
            "a slice still holds it"
        );
        drop(held);
        assert!(store.reads.free.lock().is_ok_and(|f| f.len() == 1));
        store.delete(&big_key).await?;
        store.delete(&key).await?;
        store.delete(&key).await?;
        assert!(matches!(store.get(&key).await, Err(BlobError::Missing(_))));
        assert_eq!(store.stored(&account_prefix(7)).await?, (0, 0));
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
