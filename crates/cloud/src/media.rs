//! The gallery's media worker: for each photo a gallery item references, read its EXIF capture
//! time and GPS place (kamadak-exif), and make two JPEG previews (256 and 1024 pixels on the
//! long side) in the background; for each video, read the same from its container and make the
//! previews from one of its frames (see [`crate::video`]). The original is never touched.
//!
//! Decoding is bounded: the pixel count is read from the header and refused above
//! `max_preview_megapixels` before anything is decoded (a decompression bomb declares huge
//! dimensions in a few bytes), the decoder's allocations are capped, a JPEG must end with its
//! end-of-image marker, files above `max_preview_bytes` are not read, and the work runs on a
//! blocking thread, one file at a time. A damaged or hostile file ends as `failed` with a reason,
//! never as a crash.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use image::{DynamicImage, ImageDecoder};
use mica_core::crypto::Keys;
use mica_core::{AccountId, Timestamp};
use mica_store::{Album, ItemAlbums, MediaDone, MediaRow, TimelineCursor};
use serde::Serialize;
use utoipa::ToSchema;

use crate::category::{GalleryItem, Place};
use crate::{video, Category, Cloud, CloudError};

/// Long side of the small and the large preview, in pixels.
pub const SMALL: u32 = 256;
pub const LARGE: u32 = 1024;
/// How long a worker holds a file before another may take it over.
const LEASE: Duration = Duration::from_secs(300);
/// Attempts before a file that keeps failing (a crash mid-way, say) is given up.
const MAX_ATTEMPTS: i64 = 3;

/// What reading a photo found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Analysis {
    pub taken_at: Option<Timestamp>,
    pub place: Option<(f64, f64)>,
    pub width: u32,
    pub height: u32,
    pub small: Vec<u8>,
    pub large: Vec<u8>,
}

/// What a photo's EXIF says: when it was taken, and where (latitude, longitude).
pub type Exif = (Option<Timestamp>, Option<(f64, f64)>);

/// EXIF capture time (with its offset when recorded; UTC otherwise) and GPS place.
pub fn read_exif(bytes: &[u8]) -> Exif {
    use exif::{In, Tag, Value};
    // Tolerant: cameras and tools write quirky EXIF; what can be read is used.
    let ex = match exif::Reader::new()
        .continue_on_error(true)
        .read_from_container(&mut Cursor::new(bytes))
    {
        Ok(ex) => ex,
        Err(exif::Error::PartialResult(partial)) => partial.into_inner().0,
        Err(_) => return (None, None),
    };
    let ascii = |tag| match ex.get_field(tag, In::PRIMARY).map(|f| &f.value) {
        Some(Value::Ascii(v)) => v.first().cloned(),
        _ => None,
    };
    let taken_at = ascii(Tag::DateTimeOriginal)
        .or_else(|| ascii(Tag::DateTime))
        .and_then(|a| {
            let mut dt = exif::DateTime::from_ascii(&a).ok()?;
            if let Some(off) = ascii(Tag::OffsetTimeOriginal) {
                let _ = dt.parse_offset(&off);
            }
            let month = time::Month::try_from(dt.month).ok()?;
            let date = time::Date::from_calendar_date(i32::from(dt.year), month, dt.day).ok()?;
            let t = time::Time::from_hms(dt.hour, dt.minute, dt.second).ok()?;
            let offset =
                time::UtcOffset::from_whole_seconds(i32::from(dt.offset.unwrap_or(0)) * 60).ok()?;
            let odt = time::PrimitiveDateTime::new(date, t).assume_offset(offset);
            Some(Timestamp(
                i64::try_from(odt.unix_timestamp_nanos() / 1_000_000).ok()?,
            ))
        });
    let coord = |value: Tag, reference: Tag, negative: &str| -> Option<f64> {
        let Value::Rational(parts) = &ex.get_field(value, In::PRIMARY)?.value else {
            return None;
        };
        if parts.len() < 3 || parts.iter().any(|r| r.denom == 0) {
            return None;
        }
        let deg = parts[0].to_f64() + parts[1].to_f64() / 60.0 + parts[2].to_f64() / 3600.0;
        let sign = if ascii(reference).as_deref() == Some(negative.as_bytes()) {
            -1.0
        } else {
            1.0
        };
        Some(sign * deg)
    };
    let place = match (
        coord(Tag::GPSLatitude, Tag::GPSLatitudeRef, "S"),
        coord(Tag::GPSLongitude, Tag::GPSLongitudeRef, "W"),
    ) {
        (Some(lat), Some(lon))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
        {
            Some((lat, lon))
        }
        _ => None,
    };
    (taken_at, place)
}

/// Whether a JPEG's main image is whole. Walks its segments from the start-of-image marker,
/// each skipped by its length — so the end marker of a thumbnail embedded in the EXIF segment,
/// which a camera photo cut in half still holds, does not count — and each scan's coded data up
/// to the next marker, until the end-of-image marker. A file cut short runs out before it;
/// bytes after it (a motion photo's video) do not matter. The decoder alone would not say: it
/// fills what is missing with grey.
fn jpeg_complete(b: &[u8]) -> bool {
    if b.get(..2) != Some(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // A marker: 0xFF (fill bytes may repeat it), then its code.
        if b.get(i) != Some(&0xFF) {
            return false;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return false;
        };
        i += 1;
        match code {
            0xD9 => return true,
            // Markers without a segment: restarts, and TEM.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let Some(&[hi, lo]) = b.get(i..i + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            return false;
        }
        i += len;
        if code == 0xDA {
            // The scan's coded data: 0xFF only as 0xFF00 (a data byte) or a restart marker,
            // until the marker after it.
            loop {
                let Some(at) = b.get(i..).and_then(|r| r.iter().position(|&x| x == 0xFF)) else {
                    return false;
                };
                i += at;
                match b.get(i + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

fn jpeg(img: &DynamicImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let rgb = img.to_rgb8();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
        .encode_image(&rgb)
        .map_err(|e| format!("encoding the preview failed: {e}"))?;
    Ok(out)
}

fn fit(img: &DynamicImage, side: u32) -> DynamicImage {
    if img.width() <= side && img.height() <= side {
        img.clone()
    } else {
        img.resize(side, side, image::imageops::FilterType::Triangle)
    }
}

/// Reads a photo and makes its previews, within bounds. `Err` says why a person's file could
/// not be previewed.
pub fn analyse(bytes: &[u8], max_megapixels: u64) -> Result<Analysis, String> {
    let reader = || {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("the file could not be read: {e}"))
    };
    let format = reader()?
        .format()
        .ok_or_else(|| "not an image this server can preview (JPEG, PNG or WebP)".to_owned())?;
    if format == image::ImageFormat::Jpeg && !jpeg_complete(bytes) {
        return Err("the image is damaged: it ends before its last byte (truncated)".into());
    }
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format!("the image is damaged: {e}"))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_megapixels * 1_000_000 {
        return Err(format!(
            "the image is {w}×{h} pixels; previews stop at {max_megapixels} megapixels"
        ));
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Four bytes a pixel and room for the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(4).saturating_add(64 << 20));
    r.limits(limits);
    let mut decoder = r
        .into_decoder()
        .map_err(|e| format!("the image is damaged: {e}"))?;
    let orientation = decoder.orientation().ok();
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| format!("the image is damaged: {e}"))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let (taken_at, place) = read_exif(bytes);
    let large = fit(&img, LARGE);
    let small = fit(&large, SMALL);
    Ok(Analysis {
        taken_at,
        place,
        width: img.width(),
        height: img.height(),
        small: jpeg(&small)?,
        large: jpeg(&large)?,
    })
}

/// A photo's previews, or why there are none — with what its EXIF still says of when and where
/// it was taken: an iPhone's HEIC (or a TIFF, an AVIF) that this server cannot decode keeps
/// its place on the timeline and on the map.
pub fn examine(bytes: &[u8], max_megapixels: u64) -> Result<Analysis, (String, Exif)> {
    analyse(bytes, max_megapixels).map_err(|why| (why, read_exif(bytes)))
}

/// A photo or video of the gallery, as the timeline shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GalleryEntry {
    /// The gallery item's id.
    pub id: String,
    pub file_id: Option<String>,
    pub name: String,
    pub mime_type: String,
    /// RFC 3339: as the device recorded it, or else from the photo's EXIF or the video's
    /// container.
    pub taken_at: Option<String>,
    /// As the device recorded it, or else from the photo's EXIF GPS or the video's container.
    pub place: Option<Place>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub albums: Vec<String>,
    pub favorite: bool,
    /// `ready`, `pending`, `failed` (see `preview_error`), `unsupported` or `none` (no file).
    pub preview: String,
    pub preview_error: Option<String>,
}

impl Cloud {
    /// Wakes the media worker (after a gallery item referencing a file was written).
    pub fn media_waker(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inner.media.clone()
    }

    /// Processes queued files until none is left; returns how many were processed.
    pub async fn run_media(&self) -> Result<usize, CloudError> {
        let mut n = 0;
        while let Some(row) = self
            .store()
            .claim_media(self.now(), self.now().plus(LEASE))
            .await?
        {
            self.process_media(row).await?;
            n += 1;
        }
        Ok(n)
    }

    async fn process_media(&self, row: MediaRow) -> Result<(), CloudError> {
        let account = row.account_id;
        let Ok(file) = self.file(account, &row.file_id).await else {
            // The file went meanwhile; its row goes with the next collection.
            self.store()
                .finish_media(
                    account,
                    &row.file_id,
                    &MediaDone {
                        status: "failed".into(),
                        error: Some("the file is gone".into()),
                        ..MediaDone::default()
                    },
                    self.now(),
                )
                .await?;
            return Ok(());
        };
        let fail = |why: String| MediaDone {
            status: "failed".into(),
            error: Some(why),
            ..MediaDone::default()
        };
        let cfg = &self.inner.cfg;
        let video = file.mime_type.starts_with("video/");
        let done = if !video
            && !file.mime_type.starts_with("image/")
            && !file.mime_type.starts_with("application/octet")
        {
            MediaDone {
                status: "unsupported".into(),
                error: Some(format!(
                    "previews are made for photos and videos, not {}",
                    file.mime_type
                )),
                ..MediaDone::default()
            }
        } else if row.attempts > MAX_ATTEMPTS {
            fail("reading this file failed several times".into())
        } else if video {
            self.process_video(account, &file).await?
        } else if file.size > cfg.max_preview_bytes {
            fail(format!(
                "the file is larger than {} bytes; no preview is made",
                cfg.max_preview_bytes
            ))
        } else {
            let (_, stream) = self.read_file(account, &file.id, None).await?;
            let mut bytes = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
            let mut stream = std::pin::pin!(stream);
            while let Some(piece) = stream.next().await {
                bytes.extend_from_slice(&piece?);
            }
            let max = cfg.max_preview_megapixels;
            let result = tokio::task::spawn_blocking(move || examine(&bytes, max))
                .await
                .map_err(|e| CloudError::Internal(format!("media task: {e}")))?;
            match result {
                Err((why, (taken_at, place))) => MediaDone {
                    taken_at,
                    place: place.map(|p| self.seal_place(account, &file.id, p)),
                    ..fail(why)
                },
                Ok(a) => self.store_previews(account, &file.id, a).await?,
            }
        };
        // The reason may quote a decoder or ffmpeg, which quote the file: kept printable (a
        // database's text may not hold every character a file can).
        let done = MediaDone {
            error: done.error.map(|e| {
                e.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            }),
            ..done
        };
        let keys: Vec<String> = [&done.thumb_small, &done.thumb_large]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !self
            .store()
            .finish_media(account, &file.id, &done, self.now())
            .await?
        {
            for k in keys {
                self.store().discard_blob(account, &k, self.now()).await?;
            }
        }
        Ok(())
    }

    /// A video: its container's metadata, then a frame from ffmpeg made into the two previews.
    async fn process_video(
        &self,
        account: AccountId,
        file: &crate::files::FileInfo,
    ) -> Result<MediaDone, CloudError> {
        let cfg = &self.inner.cfg;
        if file.size > cfg.max_video_preview_bytes {
            return Ok(MediaDone {
                status: "failed".into(),
                error: Some(format!(
                    "the video is larger than {} bytes; no preview is made",
                    cfg.max_video_preview_bytes
                )),
                ..MediaDone::default()
            });
        }
        let io = |e: std::io::Error| CloudError::Internal(format!("media scratch file: {e}"));
        let dir = self.scratch_dir();
        let (scratch, out) = tokio::task::spawn_blocking(move || video::Scratch::create(&dir))
            .await
            .map_err(|e| CloudError::Internal(format!("media task: {e}")))?
            .map_err(io)?;
        let mut out = tokio::fs::File::from_std(out);
        let (_, stream) = self.read_file(account, &file.id, None).await?;
        let mut stream = std::pin::pin!(stream);
        while let Some(piece) = stream.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut out, &piece?)
                .await
                .map_err(io)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(io)?;
        drop(out);
        let ffmpeg = cfg.ffmpeg.clone();
        let deadline = Duration::from_secs(cfg.ffmpeg_timeout_secs);
        let max = cfg.max_preview_megapixels;
        let work = move || {
            let meta = video::read_track(scratch.path())?;
            // A frame over the pixel limit is not asked of ffmpeg at all.
            let declared = u64::from(meta.width.unwrap_or(0)) * u64::from(meta.height.unwrap_or(0));
            if declared > max * 1_000_000 {
                let why =
                    format!("the video's frames are over {max} megapixels; no preview is made");
                return Ok((meta, Err(video::PosterError::Failed(why))));
            }
            let frame = video::poster(&ffmpeg, scratch.path(), meta.duration_ms, LARGE, deadline)
                .and_then(|png| analyse(&png, max).map_err(video::PosterError::Failed));
            Ok::<_, String>((meta, frame))
        };
        let (meta, frame) = match tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| CloudError::Internal(format!("media task: {e}")))?
        {
            Ok(found) => found,
            Err(why) => {
                return Ok(MediaDone {
                    status: "failed".into(),
                    error: Some(why),
                    ..MediaDone::default()
                })
            }
        };
        let mut done = match frame {
            Ok(a) => self.store_previews(account, &file.id, a).await?,
            Err(video::PosterError::NoFfmpeg) => MediaDone {
                status: "unsupported".into(),
                error: Some("video previews need ffmpeg, which this server does not have".into()),
                ..MediaDone::default()
            },
            Err(video::PosterError::Failed(why)) => MediaDone {
                status: "failed".into(),
                error: Some(why),
                ..MediaDone::default()
            },
        };
        // The container's time and place, whatever became of the frame; its size when there is
        // no frame (a frame's size is the upright one, as the video is shown).
        done.taken_at = meta.taken_at;
        done.place = meta.place.map(|p| self.seal_place(account, &file.id, p));
        done.width = done.width.or(meta.width.map(i64::from));
        done.height = done.height.or(meta.height.map(i64::from));
        Ok(done)
    }

    fn scratch_dir(&self) -> std::path::PathBuf {
        self.inner
            .cfg
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    /// Removes what a media worker that died left in the scratch folder (an hour after).
    pub async fn remove_stale_scratch(&self) {
        let dir = self.scratch_dir();
        let _ = tokio::task::spawn_blocking(move || {
            video::Scratch::remove_stale(&dir, Duration::from_secs(3600));
        })
        .await;
    }

    fn seal_place(&self, account: AccountId, file_id: &str, (lat, lon): (f64, f64)) -> Vec<u8> {
        let json = serde_json::json!({"latitude": lat, "longitude": lon}).to_string();
        self.inner
            .keys
            .seal(&format!("place\0{account}\0{file_id}"), &json)
    }

    async fn store_previews(
        &self,
        account: AccountId,
        file_id: &str,
        a: Analysis,
    ) -> Result<MediaDone, CloudError> {
        let mut keys = Vec::new();
        for (size, bytes) in [("small", a.small), ("large", a.large)] {
            let key = format!(
                "thumbs/{}/{file_id}/{size}.{}.jpg",
                account.as_i64(),
                mica_core::crypto::random_token_string(6)
            );
            // Recorded before it is written, so a crash before the outcome is recorded leaves
            // an object the collector removes, not one nobody knows about.
            self.store()
                .blob_intent(account, &key, self.now().plus(crate::files::WRITE_GRACE))
                .await?;
            self.blobs().put(&key, Bytes::from(bytes)).await?;
            keys.push(key);
        }
        let place = a.place.map(|p| self.seal_place(account, file_id, p));
        let mut keys = keys.into_iter();
        Ok(MediaDone {
            status: "done".into(),
            taken_at: a.taken_at,
            place,
            width: Some(i64::from(a.width)),
            height: Some(i64::from(a.height)),
            thumb_small: keys.next(),
            thumb_large: keys.next(),
            error: None,
        })
    }

    fn open_place(&self, account: AccountId, row: &MediaRow) -> Option<Place> {
        let sealed = row.place.as_ref()?;
        let text = self
            .inner
            .keys
            .open(&format!("place\0{account}\0{}", row.file_id), sealed)
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A photo's preview (`large` or else small), as JPEG bytes.
    pub async fn preview(
        &self,
        account: AccountId,
        file_id: &str,
        large: bool,
    ) -> Result<Bytes, CloudError> {
        self.file(account, file_id).await?;
        let row = self
            .store()
            .media(account, file_id)
            .await?
            .ok_or(CloudError::NoPreview(
                "no gallery item refers to this file".into(),
            ))?;
        match row.status.as_str() {
            "done" => {}
            "pending" => return Err(CloudError::PreviewPending),
            _ => {
                return Err(CloudError::NoPreview(
                    row.error.unwrap_or_else(|| "no preview".into()),
                ))
            }
        }
        let key = if large {
            row.thumb_large
        } else {
            row.thumb_small
        }
        .ok_or_else(|| CloudError::NoPreview("no preview".into()))?;
        Ok(self.blobs().get(&key).await?)
    }

    /// A page of the gallery as a timeline, newest first (undated ones last); `album` keeps one
    /// album's photos and videos; `cursor` is the `next` of the page before. Only the page's
    /// items are opened: the order comes from the database (the device's capture time, indexed
    /// as the item's `starts_at`, or else the media worker's).
    pub async fn gallery(
        &self,
        account: AccountId,
        album: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<GalleryPage, CloudError> {
        let c = self.resolve(account, Category::Gallery.as_str()).await?;
        let mut after = cursor.map(parse_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_GALLERY_PAGE);
        let album_key = match album {
            Some(a) => {
                if self.store().albums_unindexed(account, &c.id).await? {
                    self.index_albums(account, &c).await?;
                }
                Some(album_index(&self.inner.keys, account, a))
            }
            None => None,
        };
        // One more than the page, to know whether another follows.
        let mut out: Vec<(GalleryEntry, TimelineCursor)> = Vec::with_capacity(limit + 1);
        let scan = i64::try_from((limit + 1).max(100)).unwrap_or(100);
        'pages: loop {
            let rows = self
                .store()
                .timeline_page(account, &c.id, album_key.as_deref(), after.as_ref(), scan)
                .await?;
            let exhausted = rows.len() < usize::try_from(scan).unwrap_or(0);
            for r in rows {
                let at = TimelineCursor {
                    at: r.at,
                    id: r.item.id.clone(),
                };
                after = Some(at.clone());
                let Some(e) = self.gallery_entry(account, &c, &r.item, r.media.as_ref())? else {
                    continue;
                };
                // The index said so; the sealed body is what the owner wrote.
                if album.is_some_and(|a| !e.albums.iter().any(|x| x == a)) {
                    continue;
                }
                out.push((e, at));
                if out.len() > limit {
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        let next = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|(_, at)| cursor_text(at))
        } else {
            None
        };
        Ok(GalleryPage {
            entries: out.into_iter().map(|(e, _)| e).collect(),
            next,
        })
    }

    /// The gallery's albums that hold at least one photo or video, in the order of their names
    /// (ignoring case), each with its size and its newest entry.
    pub async fn albums(&self, account: AccountId) -> Result<Vec<AlbumSummary>, CloudError> {
        let c = self.resolve(account, Category::Gallery.as_str()).await?;
        if self.store().albums_unindexed(account, &c.id).await? {
            self.index_albums(account, &c).await?;
        }
        let mut out = Vec::new();
        for row in self.store().album_list(account, &c.id).await? {
            let name = self
                .inner
                .keys
                .open(&album_aad(account, &c.id, &row.key), &row.name)
                .map_err(|e| CloudError::Internal(format!("an album's name: {e}")))?;
            let newest = self
                .store()
                .timeline_page(account, &c.id, Some(&row.key), None, 1)
                .await?;
            let cover = match newest.first() {
                Some(r) => self.gallery_entry(account, &c, &r.item, r.media.as_ref())?,
                None => None,
            };
            out.push(AlbumSummary {
                name,
                photos: u64::try_from(row.photos).unwrap_or(0),
                cover,
            });
        }
        out.sort_by_cached_key(|a| (a.name.to_lowercase(), a.name.clone()));
        Ok(out)
    }

    /// Indexes the albums of a gallery written before albums were indexed (they were only in
    /// its sealed bodies), a page at a time, each item at the version read: an item written
    /// meanwhile was indexed by its write. Done once per gallery, on the first album asked for.
    async fn index_albums(
        &self,
        account: AccountId,
        c: &mica_store::CollectionRow,
    ) -> Result<(), CloudError> {
        const PAGE: i64 = 500;
        let mut after = String::new();
        loop {
            let rows = self
                .store()
                .live_items_page(account, &c.id, &after, PAGE)
                .await?;
            let done = rows.len() < usize::try_from(PAGE).unwrap_or(0);
            let mut items = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut names: Vec<String> = Vec::new();
                if let Some(body) = self.view(account, c, Category::Gallery, r)?.body {
                    let g: GalleryItem = serde_json::from_value(body)
                        .map_err(|e| CloudError::Internal(format!("gallery item {}: {e}", r.id)))?;
                    names = g.albums;
                    names.sort_unstable();
                    names.dedup();
                }
                items.push(ItemAlbums {
                    id: r.id.clone(),
                    version: r.seq,
                    albums: names
                        .iter()
                        .map(|a| album(&self.inner.keys, account, &c.id, a))
                        .collect(),
                });
            }
            if let Some(last) = rows.last() {
                after.clone_from(&last.id);
            }
            self.store()
                .index_albums(account, &c.id, &items, done)
                .await?;
            if done {
                tracing::info!(account = %account, "gallery albums indexed");
                return Ok(());
            }
        }
    }

    fn gallery_entry(
        &self,
        account: AccountId,
        c: &mica_store::CollectionRow,
        row: &mica_store::ItemRow,
        m: Option<&MediaRow>,
    ) -> Result<Option<GalleryEntry>, CloudError> {
        let view = self.view(account, c, Category::Gallery, row)?;
        let Some(body) = view.body else {
            return Ok(None);
        };
        let g: GalleryItem = serde_json::from_value(body)
            .map_err(|e| CloudError::Internal(format!("gallery item {}: {e}", row.id)))?;
        let (preview, preview_error) = match m {
            None if g.file_id.is_none() => ("none".to_owned(), None),
            None => ("pending".to_owned(), None),
            Some(m) if m.status == "done" => ("ready".to_owned(), None),
            Some(m) => (m.status.clone(), m.error.clone()),
        };
        Ok(Some(GalleryEntry {
            id: row.id.clone(),
            file_id: g.file_id.clone(),
            name: g.name,
            mime_type: g.mime_type,
            taken_at: g
                .taken_at
                .or_else(|| m.and_then(|m| m.taken_at).map(|t| t.to_rfc3339())),
            place: g
                .place
                .or_else(|| m.and_then(|m| self.open_place(account, m))),
            width: g
                .width
                .or_else(|| m.and_then(|m| m.width).and_then(|w| u32::try_from(w).ok())),
            height: g
                .height
                .or_else(|| m.and_then(|m| m.height).and_then(|h| u32::try_from(h).ok())),
            albums: g.albums,
            favorite: g.favorite,
            preview,
            preview_error,
        }))
    }
}

/// An album name's blind index, what the database compares (the name stays sealed in the
/// item's body); keyed by the account too, so two accounts' albums of one name do not match.
pub(crate) fn album_index(keys: &Keys, account: AccountId, name: &str) -> Vec<u8> {
    keys.blind_index("album", &format!("{}\u{0}{name}", account.as_i64()))
}

/// What sealing an album's name is bound to: the account, the gallery and the blind index.
fn album_aad(account: AccountId, collection: &str, key: &[u8]) -> String {
    use base64::Engine;
    Cloud::aad(
        "album",
        account,
        collection,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
    )
}

/// An album as the store keeps it: its blind index and its sealed name.
pub(crate) fn album(keys: &Keys, account: AccountId, collection: &str, name: &str) -> Album {
    let key = album_index(keys, account, name);
    let name = keys.seal(&album_aad(account, collection, &key), name);
    Album { key, name }
}

/// An album of the gallery, as its list shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlbumSummary {
    pub name: String,
    /// Its live photos and videos.
    pub photos: u64,
    /// Its newest photo or video on the timeline.
    pub cover: Option<GalleryEntry>,
}

/// The most entries on one page of the timeline.
pub const MAX_GALLERY_PAGE: usize = 500;

/// A page of the timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GalleryPage {
    pub entries: Vec<GalleryEntry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// A cursor: `<time in ms>~<item id>` (`-~<item id>` for an undated item) in unpadded
/// base64url, so that it goes into an address as it is.
pub(crate) fn cursor_text(c: &TimelineCursor) -> String {
    use base64::Engine;
    let text = match c.at {
        Some(t) => format!("{t}~{}", c.id),
        None => format!("-~{}", c.id),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

pub(crate) fn parse_cursor(cursor: &str) -> Result<TimelineCursor, CloudError> {
    use base64::Engine;
    let bad = || CloudError::Invalid {
        field: "cursor",
        message: "not a cursor this server gave: pass the `next` of the page before".into(),
    };
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (at, id) = text.split_once('~').ok_or_else(bad)?;
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(bad());
    }
    let at = match at {
        "-" => None,
        t => Some(t.parse::<i64>().map_err(|_| bad())?),
    };
    Ok(TimelineCursor {
        at,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG of `w`×`h` with an APP1 segment that holds an end-of-image marker, as a camera's
    /// EXIF thumbnail does.
    fn jpeg_with_thumbnail(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        }));
        let plain = jpeg(&img).unwrap_or_default();
        let thumbnail: &[u8] = b"Exif\0\0\xFF\xD8 thumbnail \xFF\xD9";
        let mut out = plain[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(
            &u16::try_from(thumbnail.len() + 2)
                .unwrap_or(0)
                .to_be_bytes(),
        );
        out.extend_from_slice(thumbnail);
        out.extend_from_slice(&plain[2..]);
        out
    }

    #[test]
    fn a_jpeg_cut_short_is_found_whatever_its_thumbnail_holds() {
        let whole = jpeg_with_thumbnail(64, 48);
        assert!(jpeg_complete(&whole));
        assert!(analyse(&whole, 10).is_ok());
        // A motion photo: a video after the image's end.
        let mut motion = whole.clone();
        motion.extend_from_slice(b"\0\0\0\x18ftypmp42 a video follows");
        assert!(jpeg_complete(&motion));
        // Cut anywhere — in the thumbnail, the tables or the coded data — it is refused, though
        // the thumbnail's end marker is still there past the middle.
        for cut in [3, 10, 40, whole.len() / 2, whole.len() - 2] {
            let part = &whole[..cut];
            assert!(!jpeg_complete(part), "cut at {cut}");
            assert!(analyse(part, 10).is_err(), "cut at {cut}");
        }
        let photo = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mica/tests/fixtures/photo.jpg"
        ))
        .unwrap_or_default();
        assert!(jpeg_complete(&photo));
        assert!(!jpeg_complete(&photo[..photo.len() / 2]));
    }

    #[test]
    fn a_large_photo_gets_both_previews_at_their_sizes_and_keeps_its_shape() {
        // A 3000 × 2000 photo (6 MP), as a phone takes it.
        let img = image::RgbImage::from_fn(3000, 2000, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut photo = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut photo, 90)
            .encode_image(&img)
            .unwrap_or_default();
        let a = analyse(&photo, 40).unwrap_or_default();
        assert_eq!((a.width, a.height), (3000, 2000));
        let dims = |b: &[u8]| {
            image::load_from_memory_with_format(b, image::ImageFormat::Jpeg)
                .map(|i| (i.width(), i.height()))
                .unwrap_or_default()
        };
        assert_eq!(dims(&a.large), (LARGE, 683));
        assert_eq!(dims(&a.small), (SMALL, 171));
        // Over the limit it is refused before any pixel is decoded.
        let refused = analyse(&photo, 5).err().unwrap_or_default();
        assert!(refused.contains("3000×2000"), "{refused}");
    }

    #[test]
    fn exif_time_and_place_of_the_fixture_photo() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mica/tests/fixtures/photo.jpg"
        );
        let bytes = std::fs::read(path).unwrap_or_default();
        let (t, p) = read_exif(&bytes);
        assert_eq!(
            t.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-07-14T17:32:05Z")
        );
        let (lat, lon) = p.unwrap_or_default();
        assert!(
            (lat - 38.7139).abs() < 1e-4 && (lon + 9.1334).abs() < 1e-4,
            "{lat} {lon}"
        );
    }

    #[test]
    fn a_heic_photo_gets_no_preview_but_keeps_its_time_and_place() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mica/tests/fixtures/photo.heic"
        );
        let bytes = std::fs::read(path).unwrap_or_default();
        assert!(bytes.len() > 1000, "fixture missing");
        let Err((why, (t, p))) = examine(&bytes, 40) else {
            panic!("HEIC decoded: the image crate is built for JPEG, PNG and WebP only");
        };
        assert!(why.contains("JPEG, PNG or WebP"), "{why}");
        assert_eq!(
            t.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-07-14T17:32:05Z")
        );
        let (lat, lon) = p.unwrap_or_default();
        assert!(
            (lat - 38.7139).abs() < 1e-4 && (lon + 9.1334).abs() < 1e-4,
            "{lat} {lon}"
        );
    }
}
