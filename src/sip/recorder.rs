//! Call recordings on disk: the writer task a recorded call feeds, and the
//! repair of files a crash left with a stale header.
//!
//! The call's driver never waits on the disk: it hands each stereo tick to
//! a bounded channel with `try_send` (a full channel drops the frame and
//! counts it), and a task of its own writes the file through a small
//! buffer, rewriting the WAV header's sizes every second, so a `kill -9`
//! leaves a playable file whose header is at most about a second behind
//! its samples; the next start-up's [`repair_at_startup`] makes the header cover
//! them. At the
//! end the driver closes the channel and waits for the final header.
//! The WAV format itself (header, interleave, repair plan) is
//! `media::recording`, sans-IO.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::calls::CallRegistry;
use crate::media::pcm;
use crate::media::recording::{
    self, plan_repair, Repair, RepairError, StereoFrame, CHANNELS, MAX_DATA_LEN,
};

/// Frames the channel holds before the driver drops them: 5 s of 20 ms
/// ticks, far more than a healthy disk ever lags.
const QUEUE_FRAMES: usize = 250;
/// The writer flushes and rewrites the header this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Samples reach the file in writes of this size (1/8 s at 8 kHz stereo),
/// so a crash loses little more than this: the header lags by up to
/// [`FLUSH_EVERY`], and [`repair`] recovers what is past it.
const WRITE_BUFFER: usize = 4096;
/// How long the end of a call waits for the last write and header.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Counter of frames dropped because the writer fell behind.
pub const DROPPED_METRIC: &str = "agentline_recording_dropped_frames_total";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Repair { path: PathBuf, source: RepairError },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a call's recording goes: `<dir>/<YYYY-MM-DD>/<call id>.wav`, the
/// call id reduced to a safe file name (it comes from the network).
pub fn recording_path(dir: &Path, call_id: &str, now: SystemTime) -> PathBuf {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    dir.join(recording::utc_date(secs))
        .join(format!("{}.wav", recording::safe_file_stem(call_id)))
}

/// A call's recording as its driver sees it: started at the first recorded
/// tick (media up), fed every loop, finished when the call ends.
pub struct CallRecording {
    dir: PathBuf,
    call_id: String,
    writer: Option<Writer>,
}

struct Writer {
    tx: mpsc::Sender<StereoFrame>,
    task: tokio::task::JoinHandle<Result<PathBuf, RecordError>>,
    /// The file name actually used (another `-N` when the first was taken).
    opened: Option<oneshot::Receiver<PathBuf>>,
    dropped: u64,
    /// Dropped frames already counted in the metric and the call's info.
    reported: u64,
    next_report: Instant,
}

impl CallRecording {
    /// For a call whose route records into `dir`.
    pub fn new(dir: PathBuf, call_id: &str) -> Self {
        CallRecording {
            dir,
            call_id: call_id.to_string(),
            writer: None,
        }
    }

    /// Hands the recorded ticks to the writer without waiting: frames the
    /// writer has no room for are dropped and counted.
    pub fn feed(
        &mut self,
        frames: impl Iterator<Item = StereoFrame>,
        calls: &CallRegistry,
        id: &str,
    ) {
        for frame in frames {
            let w = match &mut self.writer {
                Some(w) => w,
                None => {
                    let path = recording_path(&self.dir, &self.call_id, SystemTime::now());
                    info!(path = %path.display(), rate = frame.rate, "recording");
                    let shown = path.display().to_string();
                    calls.update(id, |c| c.recording = Some(shown));
                    self.writer.insert(Writer::spawn(path, frame.rate))
                }
            };
            match w.tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => w.dropped += 1,
                // The writer failed (its error shows at the end): nothing
                // is recorded any more, which is not the disk falling behind.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let Some(w) = &mut self.writer else {
            return;
        };
        if let Some(rx) = &mut w.opened {
            match rx.try_recv() {
                Ok(p) => {
                    // In the call's record at once: a crash leaves it named.
                    calls.set_recording(id, p.display().to_string());
                    w.opened = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => w.opened = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        if w.dropped > w.reported && Instant::now() >= w.next_report {
            w.report(calls, id);
        }
    }

    /// Closes the recording: waits for the last frames and the final
    /// header, and leaves the path and the drop count in the call's info.
    pub async fn finish(self, calls: &CallRegistry, id: &str) {
        let Some(mut w) = self.writer else {
            return;
        };
        w.report(calls, id);
        let Writer { tx, task, .. } = w;
        drop(tx);
        match tokio::time::timeout(FINISH_TIMEOUT, task).await {
            Ok(Ok(Ok(path))) => {
                info!(path = %path.display(), "recording closed");
                let shown = path.display().to_string();
                calls.update(id, |c| c.recording = Some(shown));
            }
            Ok(Ok(Err(e))) => {
                warn!(error = %e, "recording failed");
                calls.update(id, |c| c.recording = None);
            }
            Ok(Err(e)) => warn!(error = %e, "recording writer task failed"),
            Err(_) => {
                warn!("recording not closed in time: the header is repaired at the next start")
            }
        }
    }
}

impl Writer {
    fn spawn(path: PathBuf, rate: u32) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let (opened_tx, opened_rx) = oneshot::channel();
        let task = tokio::spawn(write_file(path, rate, rx, opened_tx));
        Writer {
            tx,
            task,
            opened: Some(opened_rx),
            dropped: 0,
            reported: 0,
            next_report: Instant::now(),
        }
    }

    fn report(&mut self, calls: &CallRegistry, id: &str) {
        let new = self.dropped - self.reported;
        if new == 0 {
            return;
        }
        warn!(
            dropped = self.dropped,
            "recording fell behind: frames dropped"
        );
        metrics::counter!(DROPPED_METRIC).increment(new);
        let total = self.dropped;
        calls.update(id, |c| c.recording_dropped_frames = total);
        self.reported = self.dropped;
        self.next_report = Instant::now() + FLUSH_EVERY;
    }
}

/// Creates `path` (its folder too), or `<stem>-2.wav`, `-3`... when a file
/// of that name exists: a recording never overwrites another.
async fn create_unique(path: PathBuf) -> Result<(tokio::fs::File, PathBuf), RecordError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(parent))?;
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut candidate = path.clone();
    for n in 2..=1000 {
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
            .await
        {
            Ok(f) => return Ok((f, candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                candidate = path.with_file_name(format!("{stem}-{n}.wav"));
            }
            Err(e) => return Err(io_err(&candidate)(e)),
        }
    }
    Err(io_err(&path)(std::io::ErrorKind::AlreadyExists.into()))
}

/// Flushes what is buffered and makes the header state `data_len`.
async fn rewrite_header(
    w: &mut tokio::io::BufWriter<tokio::fs::File>,
    rate: u32,
    data_len: u64,
) -> std::io::Result<()> {
    w.flush().await?;
    let f = w.get_mut();
    f.seek(SeekFrom::Start(0)).await?;
    f.write_all(&recording::header(rate, CHANNELS, data_len))
        .await?;
    f.seek(SeekFrom::End(0)).await?;
    f.flush().await
}

/// The writer task: header first, then each frame as s16le, the header
/// rewritten every [`FLUSH_EVERY`] and when the channel closes.
async fn write_file(
    path: PathBuf,
    rate: u32,
    mut rx: mpsc::Receiver<StereoFrame>,
    opened: oneshot::Sender<PathBuf>,
) -> Result<PathBuf, RecordError> {
    let (file, path) = create_unique(path).await?;
    let _ = opened.send(path.clone());
    let err = io_err(&path);
    let mut w = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut data_len: u64 = 0;
    let mut stated: u64 = 0;
    let mut skipped: u64 = 0;
    let mut bytes = Vec::with_capacity(4096);
    let result: std::io::Result<()> = async {
        w.write_all(&recording::header(rate, CHANNELS, 0)).await?;
        w.flush().await?;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(f) = f else { break };
                    let len = f.samples.len() as u64 * 2;
                    // A codec change that changed the call's rate, or a
                    // file past what RIFF can state: not this file's audio.
                    if f.rate != rate || data_len + len > MAX_DATA_LEN {
                        skipped += 1;
                        continue;
                    }
                    bytes.clear();
                    pcm::extend_s16le(&f.samples, &mut bytes);
                    w.write_all(&bytes).await?;
                    data_len += len;
                }
                _ = tick.tick() => {
                    if data_len != stated {
                        rewrite_header(&mut w, rate, data_len).await?;
                        stated = data_len;
                    }
                }
            }
        }
        rewrite_header(&mut w, rate, data_len).await?;
        w.get_mut().sync_data().await
    }
    .await;
    if skipped > 0 {
        warn!(
            skipped,
            "recording: frames at another rate or past 4 GB not written"
        );
    }
    result.map_err(err)?;
    Ok(path)
}

/// What [`repair`] did to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repaired {
    UpToDate,
    /// The header now states `data_len` bytes of samples.
    Fixed {
        data_len: u64,
    },
}

/// Makes the sizes in a recording's header match its length (a call cut
/// by a crash), cutting a trailing partial sample frame. A file that is
/// not a 16-bit PCM WAV is an error and is left as it is.
pub fn repair(path: &Path) -> Result<Repaired, RecordError> {
    let err = io_err(path);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut head = Vec::new();
    // Our header is 44 bytes; a foreign one may have more chunks.
    for limit in [4096, crate::media::wav::MAX_HEADER as u64 + 1] {
        head.clear();
        f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        (&mut f)
            .take(limit)
            .read_to_end(&mut head)
            .map_err(io_err(path))?;
        if !matches!(plan_repair(&head, len), Err(RepairError::NoHeader(_))) || len <= limit {
            break;
        }
    }
    let plan = plan_repair(&head, len).map_err(|source| RecordError::Repair {
        path: path.to_path_buf(),
        source,
    })?;
    let Repair::Fix {
        patches,
        truncate_to,
        data_len,
    } = plan
    else {
        return Ok(Repaired::UpToDate);
    };
    if let Some(t) = truncate_to {
        f.set_len(t).map_err(io_err(path))?;
    }
    for (at, bytes) in patches {
        f.seek(SeekFrom::Start(at)).map_err(io_err(path))?;
        f.write_all(&bytes).map_err(io_err(path))?;
    }
    f.sync_data().map_err(io_err(path))?;
    Ok(Repaired::Fixed { data_len })
}

/// What [`repair_recent`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairSummary {
    pub checked: usize,
    pub fixed: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
    /// 0-byte files (a crash before the first header reached the disk):
    /// nothing to repair, left as they are.
    pub empty: Vec<PathBuf>,
}

fn walk(dir: &Path, depth: usize, summary: &mut RepairSummary) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth < 2 {
            walk(&path, depth + 1, summary);
        } else if kind.is_file() {
            repair_one(&path, summary);
        }
    }
}

/// The newest `days` day folders of `dir` (`YYYY-MM-DD`, by name) and the
/// files directly in it: where a crash can have left a stale header, without
/// reading a year of recordings at every start.
pub fn repair_recent(dir: &Path, days: usize) -> RepairSummary {
    let mut summary = RepairSummary::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return summary;
    };
    let mut day_dirs: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let is_day = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 10 && crate::clock::parse_time_ms(n).is_some());
        if kind.is_dir() && is_day {
            day_dirs.push(path);
        } else if kind.is_file() {
            repair_one(&path, &mut summary);
        }
    }
    day_dirs.sort();
    for d in day_dirs.iter().rev().take(days) {
        walk(d, 2, &mut summary);
    }
    summary
}

fn repair_one(path: &Path, summary: &mut RepairSummary) {
    if path.extension().is_none_or(|e| e != "wav") {
        return;
    }
    summary.checked += 1;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        summary.empty.push(path.to_path_buf());
        return;
    }
    match repair(path) {
        Ok(Repaired::UpToDate) => {}
        Ok(Repaired::Fixed { .. }) => summary.fixed.push(path.to_path_buf()),
        Err(e) => summary.failed.push((path.to_path_buf(), e.to_string())),
    }
}

/// The start-up pass: headers a crash left stale are fixed before new
/// calls record - the recordings of the calls the store found lost
/// (wherever they are), and the last two days' folders of `dir`.
pub async fn repair_at_startup(dir: PathBuf, lost: Vec<PathBuf>) {
    let shown = dir.display().to_string();
    let work = move || {
        let mut summary = repair_recent(&dir, 2);
        for p in &lost {
            if !summary.fixed.contains(p) && p.exists() {
                repair_one(p, &mut summary);
            }
        }
        summary
    };
    let summary = match tokio::task::spawn_blocking(work).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "recording repair task failed");
            return;
        }
    };
    for p in &summary.fixed {
        info!(path = %p.display(), "recording header repaired");
    }
    for (p, e) in &summary.failed {
        warn!(path = %p.display(), error = %e, "recording not repaired");
    }
    for p in &summary.empty {
        info!(path = %p.display(), "empty recording left as it is");
    }
    if summary.checked > 0 {
        info!(dir = %shown, checked = summary.checked, repaired = summary.fixed.len(),
              "recordings checked");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::recording::HEADER_LEN;
    use crate::media::wav::Wav;

    fn frame(rate: u32, l: i16, r: i16, n: usize) -> StereoFrame {
        let mut samples = Vec::new();
        recording::interleave(&vec![l; n], &vec![r; n], n, &mut samples);
        StereoFrame { rate, samples }
    }

    #[test]
    fn paths_are_per_day_and_safe() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
        assert_eq!(
            recording_path(Path::new("/rec"), "../x@host:5060", t),
            Path::new("/rec/2027-01-01/_._x_host_5060.wav")
        );
    }

    #[tokio::test]
    async fn the_writer_keeps_the_header_current_and_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let calls = CallRegistry::default();
        let mut rec = CallRecording::new(dir.path().to_path_buf(), "abc@host");
        let frames: Vec<_> = (0..60).map(|i| frame(8000, i, -i, 160)).collect();
        rec.feed(frames.clone().into_iter(), &calls, "x");
        // While the call runs: within a flush interval the header states
        // what is on disk.
        tokio::time::sleep(FLUSH_EVERY + Duration::from_millis(500)).await;
        let path = recording_path(dir.path(), "abc@host", SystemTime::now());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 60 * 640);
        assert_eq!(
            plan_repair(&bytes, bytes.len() as u64),
            Ok(Repair::UpToDate)
        );
        rec.feed((60..70).map(|i| frame(8000, i, -i, 160)), &calls, "x");
        rec.finish(&calls, "x").await;
        let w = Wav::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((w.sample_rate, w.channels), (8000, 2));
        assert_eq!(w.samples.len(), 70 * 320);
        assert_eq!(w.samples[..4], [0, 0, 0, 0]);
        assert_eq!(w.samples[69 * 320..69 * 320 + 2], [69, -69]);
        assert_eq!(repair(&path).unwrap(), Repaired::UpToDate);
    }

    #[tokio::test]
    async fn a_second_recording_of_the_same_call_id_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let calls = CallRegistry::default();
        for _ in 0..2 {
            let mut rec = CallRecording::new(dir.path().to_path_buf(), "same");
            rec.feed(std::iter::once(frame(16000, 1, 2, 320)), &calls, "x");
            rec.finish(&calls, "x").await;
        }
        let first = recording_path(dir.path(), "same", SystemTime::now());
        let second = first.with_file_name("same-2.wav");
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 44 + 1280);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 44 + 1280);
    }

    fn registered_call(calls: &CallRegistry, id: &str) {
        let (hangup, (tx, _rx)) = (
            tokio_util::sync::CancellationToken::new(),
            tokio::sync::mpsc::unbounded_channel(),
        );
        let info = crate::calls::CallInfo::new(
            id.into(),
            "cid".into(),
            "a".into(),
            "b".into(),
            "r".into(),
            "echo".into(),
            1,
        );
        assert!(calls.try_insert(info, hangup, tx, 10));
    }

    #[tokio::test]
    async fn frames_the_writer_has_no_room_for_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let calls = CallRegistry::default();
        registered_call(&calls, "c1");
        let mut rec = CallRecording::new(dir.path().to_path_buf(), "cid");
        // A single-threaded runtime: the writer cannot run while the driver
        // feeds, as if the disk stalled for 6 s.
        rec.feed((0..300).map(|i| frame(8000, i, 0, 160)), &calls, "c1");
        rec.finish(&calls, "c1").await;
        let info = calls.get("c1").unwrap();
        assert_eq!(info.recording_dropped_frames, (300 - QUEUE_FRAMES) as u64);
        let path = PathBuf::from(info.recording.unwrap());
        let w = Wav::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            w.samples.len(),
            QUEUE_FRAMES * 320,
            "the queued frames written"
        );
        assert_eq!(w.samples[(QUEUE_FRAMES - 1) * 320], QUEUE_FRAMES as i16 - 1);
    }

    #[tokio::test]
    async fn a_recording_that_cannot_be_written_leaves_the_call_without_one() {
        let dir = tempfile::tempdir().unwrap();
        // The recording folder is a file: nothing can be created under it.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"x").unwrap();
        let calls = CallRegistry::default();
        registered_call(&calls, "c1");
        let mut rec = CallRecording::new(blocked.clone(), "cid");
        rec.feed(std::iter::once(frame(8000, 1, 1, 160)), &calls, "c1");
        assert!(calls.get("c1").unwrap().recording.is_some(), "set at start");
        tokio::time::sleep(Duration::from_millis(200)).await;
        rec.feed((0..300).map(|_| frame(8000, 1, 1, 160)), &calls, "c1");
        rec.finish(&calls, "c1").await;
        let info = calls.get("c1").unwrap();
        assert_eq!(info.recording, None);
        assert_eq!(info.recording_dropped_frames, 0, "a failure is not a drop");
        assert_eq!(std::fs::read(&blocked).unwrap(), b"x");
    }

    #[test]
    fn repair_fixes_stale_and_cut_files_and_leaves_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2026-12-03");
        std::fs::create_dir_all(&day).unwrap();
        // Stale: header says 0 bytes, 100 frames there, half a frame more.
        let stale = day.join("stale.wav");
        let mut b = recording::header(8000, 2, 0).to_vec();
        pcm::extend_s16le(&vec![7i16; 200], &mut b);
        b.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&stale, &b).unwrap();
        // Good: left alone, byte for byte.
        let good = day.join("good.wav");
        let mut g = recording::header(8000, 2, 8).to_vec();
        pcm::extend_s16le(&[1, 2, 3, 4], &mut g);
        std::fs::write(&good, &g).unwrap();
        // Not a WAV: an error, untouched.
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"definitely not RIFF data, just text").unwrap();
        // Empty (killed before its header was written): skipped, no error.
        let empty = day.join("empty.wav");
        std::fs::write(&empty, b"").unwrap();
        // Not a .wav name: not looked at.
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();

        let s = repair_recent(dir.path(), 2);
        assert_eq!(s.checked, 4);
        assert_eq!(s.empty, vec![empty.clone()]);
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        assert_eq!(s.fixed, vec![stale.clone()]);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.failed[0].0, junk);
        let fixed = std::fs::read(&stale).unwrap();
        assert_eq!(fixed.len(), 44 + 400);
        let w = Wav::parse(&fixed).unwrap();
        assert_eq!(w.samples, vec![7i16; 200]);
        assert_eq!(std::fs::read(&good).unwrap(), g);
        assert_eq!(
            std::fs::read(&junk).unwrap(),
            b"definitely not RIFF data, just text"
        );
        assert!(matches!(
            repair(&junk),
            Err(RecordError::Repair {
                source: RepairError::NotWav(_),
                ..
            })
        ));
        assert!(matches!(
            repair(&dir.path().join("missing.wav")),
            Err(RecordError::Io { .. })
        ));
        assert_eq!(
            repair_recent(&dir.path().join("nope"), 2),
            RepairSummary::default()
        );
    }
}
