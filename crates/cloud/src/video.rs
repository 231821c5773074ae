//! Videos of the gallery: the capture time, place, size and length a phone writes into the
//! container (MP4, MOV, 3GP, WebM, MKV; read with nom-exif), and a frame taken by ffmpeg to
//! make the same two previews a photo gets.
//!
//! Both read a file: the media worker copies the video's chunks into a temporary file (flat
//! memory, removed when done, see [`Scratch`]). ffmpeg runs as a child process with one thread, no
//! standard input and a deadline, on the media worker's blocking thread; its frame then goes
//! through the photo path's bounds (pixel count checked before decoding). Without ffmpeg a video
//! still gets its metadata; its preview is `unsupported`, with the reason.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mica_core::Timestamp;
use nom_exif::{MediaKind, MediaParser, MediaSource, TrackInfoTag};

/// What a video's container says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrackMeta {
    pub taken_at: Option<Timestamp>,
    pub place: Option<(f64, f64)>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
}

/// Reads a video's container metadata. `Err` says, for a person, why it could not be read.
pub fn read_track(path: &Path) -> Result<TrackMeta, String> {
    let source =
        MediaSource::open(path).map_err(|e| format!("the video could not be read: {e}"))?;
    if source.kind() != MediaKind::Track {
        return Err("not a video this server can read (MP4, MOV, 3GP, WebM or MKV)".into());
    }
    let info = MediaParser::new()
        .parse_track(source)
        .map_err(|e| format!("the video is damaged: {e}"))?;
    let taken_at = info
        .get(TrackInfoTag::CreateDate)
        .and_then(|v| v.as_datetime())
        .map(|d| match d.aware() {
            Some(aware) => aware.timestamp_millis(),
            // Containers keep UTC (ISO/IEC 14496-12 `mvhd`); a time without an offset is UTC.
            None => d.into_naive().and_utc().timestamp_millis(),
        })
        .map(Timestamp);
    let place = info
        .gps_info()
        .and_then(|g| Some((g.latitude_decimal()?, g.longitude_decimal()?)))
        .filter(|(lat, lon)| (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon));
    let dim = |tag| {
        info.get(tag)
            .and_then(|v| {
                v.as_u32()
                    .or_else(|| v.as_u64().and_then(|n| n.try_into().ok()))
            })
            .filter(|n| *n > 0)
    };
    Ok(TrackMeta {
        taken_at,
        place,
        width: dim(TrackInfoTag::Width),
        height: dim(TrackInfoTag::Height),
        duration_ms: info.get(TrackInfoTag::DurationMs).and_then(|v| v.as_u64()),
    })
}

/// Why no frame came out of ffmpeg.
#[derive(Debug, Clone, PartialEq)]
pub enum PosterError {
    /// There is no ffmpeg to run.
    NoFfmpeg,
    /// ffmpeg ran and made no frame: the reason, for a person.
    Failed(String),
}

/// One frame of the video at `path`, as PNG bytes: about a second in (half-way through a
/// shorter video), turned upright as the video is meant to be shown.
pub fn poster(
    ffmpeg: &str,
    path: &Path,
    duration_ms: Option<u64>,
    deadline: Duration,
) -> Result<Vec<u8>, PosterError> {
    let at_ms = duration_ms.map_or(0, |d| (d / 2).min(1000));
    let spawned = Command::new(ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "1",
        ])
        .args([
            "-ss",
            &format!("{}.{:03}", at_ms / 1000, at_ms % 1000),
            "-i",
        ])
        .arg(path)
        .args(["-map", "0:v:0", "-frames:v", "1", "-an", "-sn", "-dn"])
        .args(["-f", "image2pipe", "-c:v", "png", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PosterError::NoFfmpeg),
        Err(e) => return Err(PosterError::Failed(format!("ffmpeg could not start: {e}"))),
    };
    // Both pipes are drained while the child runs, so a full pipe never stops it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let frame = stdout.join().unwrap_or_default();
    let errors = stderr.join().unwrap_or_default();
    match status {
        None => Err(PosterError::Failed(format!(
            "making the preview took longer than {} s",
            deadline.as_secs()
        ))),
        Some(s) if s.success() && !frame.is_empty() => Ok(frame),
        Some(_) => {
            let why = String::from_utf8_lossy(&errors);
            let why = why.lines().map(str::trim).find(|l| !l.is_empty());
            Err(PosterError::Failed(match why {
                Some(line) => format!(
                    "no frame could be read from the video: {}",
                    line.chars().take(200).collect::<String>()
                ),
                None => "no frame could be read from the video".into(),
            }))
        }
    }
}

/// A temporary file, removed when dropped.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new, empty file in the system's temporary folder (`TMPDIR`).
    pub fn create() -> std::io::Result<(Scratch, std::fs::File)> {
        let path = std::env::temp_dir().join(format!(
            "mica-media-{}.tmp",
            mica_core::crypto::random_token_string(12)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((Scratch { path }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mica/tests/fixtures/clip.mov"
    );

    #[test]
    fn the_fixture_clip_has_its_time_place_size_and_length() {
        let meta = read_track(Path::new(CLIP)).unwrap_or_default();
        assert_eq!(
            meta.taken_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-07-14T17:32:05Z")
        );
        let (lat, lon) = meta.place.unwrap_or_default();
        assert!(
            (lat - 38.7139).abs() < 1e-4 && (lon + 9.1334).abs() < 1e-4,
            "{lat} {lon}"
        );
        assert_eq!((meta.width, meta.height), (Some(320), Some(240)));
        assert_eq!(meta.duration_ms, Some(2000));
    }

    #[test]
    fn a_clip_cut_short_or_not_a_video_is_refused_with_a_reason() {
        let clip = std::fs::read(CLIP).unwrap_or_default();
        let (cut, mut f) = Scratch::create().unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, &clip[..clip.len() / 2]).unwrap_or_default();
        let why = read_track(cut.path()).err().unwrap_or_default();
        assert!(why.starts_with("the video is damaged"), "{why}");
        let (text, mut f) = Scratch::create().unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, b"just some words, not a video at all")
            .unwrap_or_default();
        let why = read_track(text.path()).err().unwrap_or_default();
        assert!(
            why.starts_with("the video could not be read") || why.starts_with("not a video"),
            "{why}"
        );
        let path = text.path().to_owned();
        drop(text);
        assert!(!path.exists(), "a scratch file goes when dropped");
    }

    #[test]
    fn without_ffmpeg_there_is_no_poster_and_the_reason_says_so() {
        assert_eq!(
            poster(
                "/nonexistent/ffmpeg",
                Path::new(CLIP),
                Some(2000),
                Duration::from_secs(5)
            ),
            Err(PosterError::NoFfmpeg)
        );
    }
}
