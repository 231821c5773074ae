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
        // An unset `mvhd` time is 0, which reads as 1904-01-01: edited, exported and forwarded
        // clips often carry it. No video was recorded before 1970.
        .filter(|ms| *ms > 0)
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
///
/// The frame comes out no larger than `side` pixels on its long side, and at most
/// [`MAX_FRAME_BYTES`] of it are read: a video that declares a huge frame cannot make ffmpeg's
/// answer a memory bomb. ffmpeg may open only local files of the container formats Mica reads.
pub fn poster(
    ffmpeg: &str,
    path: &Path,
    duration_ms: Option<u64>,
    side: u32,
    deadline: Duration,
) -> Result<Vec<u8>, PosterError> {
    let at_ms = duration_ms.map_or(0, |d| (d / 2).min(1000));
    let at = format!("{}.{:03}", at_ms / 1000, at_ms % 1000);
    let fit =
        format!("scale=w=min({side}\\,iw):h=min({side}\\,ih):force_original_aspect_ratio=decrease");
    let spawned = Command::new(ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "1",
        ])
        .args(["-protocol_whitelist", "file"])
        .args(["-format_whitelist", "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm"])
        .args(["-ss", &at, "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-frames:v",
            "1",
            "-an",
            "-sn",
            "-dn",
            "-vf",
            &fit,
        ])
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
    let stdout = drain(child.stdout.take(), MAX_FRAME_BYTES + 1);
    let stderr = drain(child.stderr.take(), 64 * 1024);
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
        Some(s) if s.success() && frame.len() as u64 > MAX_FRAME_BYTES => Err(PosterError::Failed(
            "the video's frame is larger than a preview may be".into(),
        )),
        Some(s) if s.success() && !frame.is_empty() => Ok(frame),
        Some(_) => {
            // ffmpeg names its input; a person knows it as "the video", not as a scratch file.
            let why =
                String::from_utf8_lossy(&errors).replace(&path.display().to_string(), "the video");
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

/// Reads a child's pipe to its end on a thread of its own, keeping the first `keep` bytes
/// (past them, bytes are read and dropped).
fn drain<R: Read + Send + 'static>(pipe: Option<R>, keep: u64) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = (&mut p).take(keep).read_to_end(&mut out);
            let _ = std::io::copy(&mut p, &mut std::io::sink());
        }
        out
    })
}

/// The most bytes of ffmpeg's frame that are read (a PNG of a 1024-pixel frame is far smaller).
pub const MAX_FRAME_BYTES: u64 = 16 << 20;

/// The name every scratch file starts with.
const SCRATCH_PREFIX: &str = "mica-media-";

/// A temporary file, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new, empty file in `dir` (created if missing), open to write and read back, readable
    /// by this user only: it holds a copy of a person's video, or a file arriving over WebDAV.
    pub fn create(dir: &Path) -> std::io::Result<(Scratch, std::fs::File)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{SCRATCH_PREFIX}{}.tmp",
            mica_core::crypto::random_token_string(12)
        ));
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(&path)?;
        Ok((Scratch { path }, file))
    }

    /// Removes the scratch files in `dir` older than `age`: those of a worker that died.
    pub fn remove_stale(dir: &Path, age: Duration) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > age);
            if old && e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
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
        let dir = std::env::temp_dir();
        let (cut, mut f) = Scratch::create(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, &clip[..clip.len() / 2]).unwrap_or_default();
        let why = read_track(cut.path()).err().unwrap_or_default();
        assert!(why.starts_with("the video is damaged"), "{why}");
        let (text, mut f) = Scratch::create(&dir).unwrap_or_else(|e| panic!("{e}"));
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
    fn an_unset_container_time_is_no_time() {
        // The clip with its `mvhd` creation time zeroed, as an edited or exported clip has it.
        let mut clip = std::fs::read(CLIP).unwrap_or_default();
        let at = clip.windows(4).position(|w| w == b"mvhd").unwrap_or(0) + 8;
        clip[at..at + 4].copy_from_slice(&[0; 4]);
        let (file, mut f) =
            Scratch::create(&std::env::temp_dir()).unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, &clip).unwrap_or_default();
        let meta = read_track(file.path()).unwrap_or_default();
        assert_eq!(meta.taken_at, None, "not 1904-01-01");
        assert_eq!((meta.width, meta.height), (Some(320), Some(240)));
    }

    #[test]
    fn without_ffmpeg_there_is_no_poster_and_the_reason_says_so() {
        assert_eq!(
            poster(
                "/nonexistent/ffmpeg",
                Path::new(CLIP),
                Some(2000),
                1024,
                Duration::from_secs(5)
            ),
            Err(PosterError::NoFfmpeg)
        );
    }
}
