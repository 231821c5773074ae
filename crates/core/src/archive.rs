//! Writing into an account's data export (ID-14). The archive itself is the identity crate's;
//! the parts of Mica that hold account data (the cloud, the devices) write their entries
//! through [`ArchiveWriter`] a page at a time, so an export of any size holds a few pieces
//! in memory, never a whole category.

use std::future::Future;

/// Where an account's export is written: entries one after the other, each one's bytes in
/// pieces (the zip is written as they come).
pub trait ArchiveWriter: Sync {
    /// Starts an entry at `path`, compressed unless it is an original that is compressed
    /// already (photos, videos).
    fn start(
        &self,
        path: String,
        compress: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// More bytes of the entry started last.
    fn data(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;

    /// A whole, small entry (compressed).
    fn file(&self, path: String, bytes: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send
    where
        Self: Sized,
    {
        async move {
            self.start(path, true).await?;
            self.data(bytes).await
        }
    }
}

/// About how many bytes an [`Entry`] gathers before it hands them on.
pub const PIECE: usize = 256 * 1024;

/// One compressed entry being written: its bytes gathered into pieces of about [`PIECE`].
pub struct Entry<'a, W> {
    out: &'a W,
    buf: Vec<u8>,
}

impl<'a, W: ArchiveWriter> Entry<'a, W> {
    pub async fn start(out: &'a W, path: String) -> Result<Entry<'a, W>, String> {
        out.start(path, true).await?;
        Ok(Entry {
            out,
            buf: Vec::new(),
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.out.data(std::mem::take(&mut self.buf)).await?;
        }
        Ok(())
    }

    /// Writes `value` as indented JSON.
    pub async fn write_json(&mut self, value: &impl serde::Serialize) -> Result<(), String> {
        serde_json::to_writer_pretty(&mut self.buf, value).map_err(|e| e.to_string())?;
        self.write(&[]).await
    }

    /// Hands on what is left; the entry is complete.
    pub async fn finish(self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.data(self.buf).await
    }
}

/// A JSON array written into an entry one element at a time.
pub struct JsonArray<'a, W> {
    entry: Entry<'a, W>,
    len: usize,
}

impl<'a, W: ArchiveWriter> JsonArray<'a, W> {
    /// An array as the whole entry at `path`.
    pub async fn start(out: &'a W, path: String) -> Result<JsonArray<'a, W>, String> {
        Ok(JsonArray::within(Entry::start(out, path).await?))
    }

    /// An array inside an entry being written (its value in an object, say).
    pub fn within(entry: Entry<'a, W>) -> JsonArray<'a, W> {
        JsonArray { entry, len: 0 }
    }

    pub async fn push(&mut self, value: &impl serde::Serialize) -> Result<(), String> {
        let sep: &[u8] = if self.len == 0 { b"[\n" } else { b",\n" };
        self.entry.write(sep).await?;
        self.entry.write_json(value).await?;
        self.len += 1;
        Ok(())
    }

    /// Closes the array and gives back its entry.
    pub async fn close(mut self) -> Result<Entry<'a, W>, String> {
        let end: &[u8] = if self.len == 0 { b"[]" } else { b"\n]" };
        self.entry.write(end).await?;
        Ok(self.entry)
    }

    /// Closes the array, which is the whole entry.
    pub async fn finish(self) -> Result<(), String> {
        let mut entry = self.close().await?;
        entry.write(b"\n").await?;
        entry.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// One entry as the writer saw it.
    struct Seen {
        path: String,
        compress: bool,
        bytes: Vec<u8>,
        pieces: usize,
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Seen>>);

    impl ArchiveWriter for Collect {
        async fn start(&self, path: String, compress: bool) -> Result<(), String> {
            self.0.lock().map_err(|e| e.to_string())?.push(Seen {
                path,
                compress,
                bytes: Vec::new(),
                pieces: 0,
            });
            Ok(())
        }

        async fn data(&self, bytes: Vec<u8>) -> Result<(), String> {
            let mut v = self.0.lock().map_err(|e| e.to_string())?;
            let last = v.last_mut().ok_or("data before an entry")?;
            last.bytes.extend_from_slice(&bytes);
            last.pieces += 1;
            Ok(())
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        // No runtime needed: nothing here waits on IO.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn a_json_array_written_piece_by_piece_reads_back_whole() {
        let out = Collect::default();
        run(async {
            let mut a = JsonArray::start(&out, "notes.json".into()).await?;
            for i in 0..5_000 {
                a.push(&serde_json::json!({ "id": i, "text": "x".repeat(100) }))
                    .await?;
            }
            a.finish().await?;
            JsonArray::start(&out, "empty.json".into())
                .await?
                .finish()
                .await
        })
        .unwrap();
        let v = out.0.into_inner().unwrap();
        assert_eq!(v.len(), 2);
        let notes = &v[0];
        assert_eq!((notes.path.as_str(), notes.compress), ("notes.json", true));
        assert!(
            notes.pieces > 1,
            "sent in pieces, not whole: {}",
            notes.pieces
        );
        let all: Vec<serde_json::Value> = serde_json::from_slice(&notes.bytes).unwrap();
        assert_eq!(all.len(), 5_000);
        assert_eq!(all[4_999]["id"], 4_999);
        let empty: Vec<serde_json::Value> = serde_json::from_slice(&v[1].bytes).unwrap();
        assert!(empty.is_empty());
    }
}
