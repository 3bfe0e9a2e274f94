//! A cluster node's snapshot image: the engine and the read views at one
//! position of the replicated log, kept in one file (the `replication`
//! crate's image format) and handed between the Raft state machine, the
//! matcher, the views stage and the thread that writes snapshots.
//!
//! Two flows cross the pipeline through here, each in log order:
//!
//! * **Taking an image.** openraft asks for a snapshot; the Raft state
//!   machine ([`crate::cluster`]) queues the log position it has published
//!   up to ([`Requested`]) and publishes [`crate::pipeline::Work::ClusterSnapshot`];
//!   the matcher copies its engine there, the views stage adds the views at
//!   the same sequence number, and the snapshot thread writes the image and
//!   answers the request.
//! * **Installing an image** (from the leader, or this node's own file at
//!   start): the state machine checks it whole, queues the decoded state
//!   ([`Installed`]) and publishes [`crate::pipeline::Work::Install`]; the
//!   matcher takes the engine, the views stage the views, and the
//!   downstream consumers start over from them.
//!
//! With a database writer on the node, one more image may be kept: the
//! writer's base ([`WRITER_BASE_IMAGE_FILE_NAME`]), the newest image at or
//! before the writer's cursor once a newer one has replaced it. The writer
//! regenerates what it missed from that image and the log after it, and
//! the log is purged no further than [`Images::log_needed_from`] says.
//!
//! What this module must never do: let an image be taken or installed out
//! of log order (both queues are first in, first out, and each entry is
//! taken where its marker is in the ring), or keep an image on disk that
//! was not checked whole.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use engine_core::Engine;
use replication::types::SnapshotMeta;
use tokio::sync::oneshot;

use crate::views::Views;

/// A snapshot the Raft state machine asked for, waiting for the matcher
/// to reach it.
pub struct Requested {
    /// The engine's sequence number there: the image is of the engine when
    /// it has applied exactly this many commands.
    pub seq: u64,
    /// The log position and membership there.
    pub meta: SnapshotMeta,
    /// The last command's stamp there.
    pub last_timestamp_ns: u64,
    /// Answered once the image is on disk (or could not be written).
    pub done: oneshot::Sender<Result<ImageTaken, String>>,
}

/// What became of a requested image that was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageTaken {
    /// It is on disk, the node's current image.
    Kept,
    /// An image of a later log position (the leader's) was installed while
    /// this one was being written: the later one stays, as it should.
    Superseded,
}

/// A checked image's state on its way into the pipeline.
pub struct Installed {
    pub engine: Engine,
    pub last_timestamp_ns: u64,
    /// Given to the views stage by the matcher, with a copy of the engine
    /// for the consumers that rebuild from it (the API key table).
    pub views: Views,
    pub engine_copy: Engine,
}

/// What the views stage takes at an install marker.
pub struct InstalledViews {
    pub views: Views,
    pub engine: Engine,
}

/// The image the database writer regenerates from while the newest one is
/// past its cursor.
pub const WRITER_BASE_IMAGE_FILE_NAME: &str = "writer-base.img";

/// An image on disk: its log position and the engine's sequence number.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    meta: SnapshotMeta,
    seq: u64,
}

impl Kept {
    /// The first log entry after the image.
    fn log_after(&self) -> u64 {
        self.meta.last_log_id.map_or(0, |log_id| log_id.index + 1)
    }
}

/// The images on disk, both guarded by one lock.
#[derive(Default)]
struct OnDisk {
    /// The newest image (None: no image yet).
    current: Option<Kept>,
    /// The database writer's base (see the module documentation).
    writer_base: Option<Kept>,
}

/// The shared queues and the image files' place.
pub struct Images {
    dir: PathBuf,
    requested: Mutex<VecDeque<Requested>>,
    installs: Mutex<VecDeque<Installed>>,
    views: Mutex<VecDeque<InstalledViews>>,
    on_disk: Mutex<OnDisk>,
    /// The database writer on this node, whose regeneration holds images
    /// and the log.
    writer: Option<Arc<persistence::WriterStatus>>,
}

impl Images {
    /// The images of a node kept in `dir`. The image already there, if
    /// any, is checked whole now: a node must not start on a damaged one.
    /// `writer` is the node's database writer, if it has one.
    pub fn open(dir: &Path, writer: Option<Arc<persistence::WriterStatus>>) -> io::Result<Images> {
        let kept = |(image, _): (replication::Image, Vec<u8>)| Kept {
            seq: image.engine.last_seq(),
            meta: image.meta,
        };
        let current = replication::read_image_file(dir)?.map(kept);
        let base_path = dir.join(WRITER_BASE_IMAGE_FILE_NAME);
        let writer_base = match writer {
            Some(_) => replication::read_image_at(&base_path)?.map(kept),
            None => {
                // No writer any more: nothing needs the base.
                remove_if_present(&base_path)?;
                None
            }
        };
        Ok(Images {
            dir: dir.to_path_buf(),
            requested: Mutex::default(),
            installs: Mutex::default(),
            views: Mutex::default(),
            on_disk: Mutex::new(OnDisk { current, writer_base }),
            writer,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image on disk: its meta and bytes (checked when written or
    /// when this node started).
    pub fn current(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let Some(kept) = lock(&self.on_disk)?.current.clone() else { return Ok(None) };
        let path = self.dir.join(replication::state_machine::IMAGE_FILE_NAME);
        let bytes =
            std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Some((kept.meta, bytes)))
    }

    pub fn current_meta(&self) -> Option<SnapshotMeta> {
        lock(&self.on_disk).ok().and_then(|on_disk| on_disk.current.as_ref().map(|kept| kept.meta.clone()))
    }

    /// Keeps `bytes` (an image of `meta`, with the engine at `seq`,
    /// checked) as the image on disk, unless the image there is of the
    /// same or a later log position: an image the matcher took before an
    /// install from the leader reaches the disk after it, and must not
    /// replace it (the log behind the installed one is purged: a restart
    /// needs that one). Returns whether it was kept.
    ///
    /// With a database writer behind the new image, the image it replaces
    /// stays as the writer's base if the writer's cursor is at or past it.
    pub fn keep(&self, meta: SnapshotMeta, seq: u64, bytes: &[u8]) -> io::Result<bool> {
        let mut on_disk = lock(&self.on_disk)?;
        if on_disk.current.as_ref().is_some_and(|kept| kept.meta.last_log_id >= meta.last_log_id) {
            return Ok(false);
        }
        if let Some(writer) = &self.writer {
            let base_path = self.dir.join(WRITER_BASE_IMAGE_FILE_NAME);
            // Until the writer has read its cursor, the image replaced
            // becomes the base unless one is kept already (the older one
            // was kept for a cursor behind this image).
            // An image a seeding writes from counts as the cursor already:
            // the writer goes on from it once the seeding commits.
            let seeding = writer.seeding_seq.load(Ordering::Acquire);
            let cursor = writer
                .cursor_known
                .load(Ordering::Acquire)
                .then(|| writer.cursor_seq.load(Ordering::Acquire).max(seeding));
            let replaced = on_disk.current.clone().filter(|kept| match cursor {
                Some(cursor) => kept.seq <= cursor,
                None => on_disk.writer_base.is_none(),
            });
            if cursor.is_some_and(|cursor| seq <= cursor) {
                remove_if_present(&base_path)?;
                on_disk.writer_base = None;
            } else if let Some(replaced) = replaced {
                // A second name for the same file, so that the newest
                // image is never missing for a moment.
                let linked = self.dir.join(format!("{WRITER_BASE_IMAGE_FILE_NAME}.tmp"));
                remove_if_present(&linked)?;
                std::fs::hard_link(self.dir.join(replication::state_machine::IMAGE_FILE_NAME), &linked)?;
                std::fs::rename(&linked, &base_path)?;
                on_disk.writer_base = Some(replaced);
            }
        }
        replication::write_image_file(&self.dir, bytes)?;
        on_disk.current = Some(Kept { meta, seq });
        Ok(true)
    }

    /// The first log entry the database writer may still need, to
    /// regenerate from its cursor: the one after the newest image at or
    /// before the cursor (0 when there is none: the whole log).
    /// `u64::MAX` without a writer.
    pub fn log_needed_from(&self) -> u64 {
        let Some(cursor) = self.writer_cursor() else { return u64::MAX };
        let Ok(on_disk) = lock(&self.on_disk) else { return 0 };
        [&on_disk.current, &on_disk.writer_base]
            .into_iter()
            .flatten()
            .filter(|kept| kept.seq <= cursor)
            .map(Kept::log_after)
            .max()
            .unwrap_or(0)
    }

    /// The writer's cursor: what the database holds for certain (0 until
    /// the writer has read it). None without a writer.
    fn writer_cursor(&self) -> Option<u64> {
        let writer = self.writer.as_ref()?;
        let known = writer.cursor_known.load(Ordering::Acquire);
        Some(if known { writer.cursor_seq.load(Ordering::Acquire) } else { 0 })
    }

    pub fn request(&self, requested: Requested) {
        if let Ok(mut queue) = self.requested.lock() {
            queue.push_back(requested);
        }
    }

    /// The request for the image at `seq`. Older requests the matcher
    /// passed without a snapshot are answered with an error.
    pub fn take_request(&self, seq: u64) -> Option<Requested> {
        let mut queue = self.requested.lock().ok()?;
        while let Some(front) = queue.pop_front() {
            if front.seq == seq {
                return Some(front);
            }
            if front.seq > seq {
                queue.push_front(front);
                return None;
            }
            let _ = front.done.send(Err(format!("no snapshot was taken at sequence {}", front.seq)));
        }
        None
    }

    pub fn push_install(&self, installed: Installed) {
        if let Ok(mut queue) = self.installs.lock() {
            queue.push_back(installed);
        }
    }

    pub fn take_install(&self) -> Option<Installed> {
        self.installs.lock().ok()?.pop_front()
    }

    pub fn push_views(&self, views: InstalledViews) {
        if let Ok(mut queue) = self.views.lock() {
            queue.push_back(views);
        }
    }

    pub fn take_views(&self) -> Option<InstalledViews> {
        self.views.lock().ok()?.pop_front()
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> io::Result<std::sync::MutexGuard<'_, T>> {
    mutex.lock().map_err(|_| io::Error::other("the snapshot images' lock was poisoned; restart the node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of an empty engine at log position `index` (term 1), its
    /// last stamp `index`.
    fn empty_image_at(index: u64) -> (SnapshotMeta, Vec<u8>) {
        let meta = SnapshotMeta {
            last_log_id: Some(replication::types::LogId::new_term_index(1, index)),
            ..SnapshotMeta::default()
        };
        let engine = Engine::new(engine_core::EngineLimits::default());
        let bytes = replication::encode_image(&meta, &engine, index, None).unwrap();
        (meta, bytes)
    }

    /// A node's images with a database writer (its cursor unknown yet),
    /// in a fresh directory, and the path its writer's base image takes.
    fn with_writer() -> (tempfile::TempDir, Arc<persistence::WriterStatus>, Images, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(persistence::WriterStatus::default());
        let images = Images::open(dir.path(), Some(Arc::clone(&writer))).unwrap();
        let base = dir.path().join(WRITER_BASE_IMAGE_FILE_NAME);
        (dir, writer, images, base)
    }

    /// Keeps an empty engine's image at log position and sequence `index`
    /// (one command per entry).
    fn keep_empty_at(images: &Images, index: u64) {
        let (meta, bytes) = empty_image_at(index);
        assert!(images.keep(meta, index, &bytes).unwrap());
    }

    fn requested(seq: u64) -> (Requested, oneshot::Receiver<Result<ImageTaken, String>>) {
        let (done, answer) = oneshot::channel();
        let meta = SnapshotMeta::default();
        (Requested { seq, meta, last_timestamp_ns: 0, done }, answer)
    }

    #[test]
    fn requests_are_taken_in_order_and_a_passed_one_is_answered_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::open(dir.path(), None).unwrap();
        assert!(images.current_meta().is_none() && images.current().unwrap().is_none());
        let (first, mut first_answer) = requested(10);
        let (second, _) = requested(10);
        let (third, _) = requested(30);
        images.request(first);
        images.request(second);
        images.request(third);
        // Two requests at one sequence number (entries without commands
        // between them): each image answers one, first come first.
        let taken = images.take_request(10).unwrap();
        assert_eq!(
            first_answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the writer answers it"
        );
        drop(taken);
        assert_eq!(images.take_request(10).map(|r| r.seq), Some(10));
        // A request not reached yet stays; one passed is answered.
        assert!(images.take_request(20).is_none());
        assert_eq!(images.take_request(30).map(|r| r.seq), Some(30));
        let (late, mut late_answer) = requested(40);
        images.request(late);
        assert!(images.take_request(50).is_none());
        assert!(late_answer.try_recv().unwrap().is_err());
    }

    #[test]
    fn an_image_never_replaces_one_of_a_later_log_position() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::open(dir.path(), None).unwrap();
        let image_at = empty_image_at;
        let (installed, installed_bytes) = image_at(50);
        assert!(images.keep(installed.clone(), 50, &installed_bytes).unwrap());
        // The matcher's own image from before the install arrives late.
        let (older, older_bytes) = image_at(30);
        assert!(!images.keep(older, 30, &older_bytes).unwrap());
        assert_eq!(images.current().unwrap().unwrap(), (installed.clone(), installed_bytes));
        // A node restarted on the directory starts from the installed one.
        assert_eq!(Images::open(dir.path(), None).unwrap().current_meta(), Some(installed));
        let (newer, newer_bytes) = image_at(80);
        assert!(images.keep(newer.clone(), 80, &newer_bytes).unwrap());
        assert_eq!(images.current_meta(), Some(newer));
    }

    #[test]
    fn the_writer_keeps_the_newest_image_at_or_before_its_cursor_and_the_log_after_it() {
        let (dir, writer, images, base) = with_writer();
        let keep_at = |index: u64| keep_empty_at(&images, index);
        // Before the writer has read its cursor, nothing may be purged.
        assert_eq!(images.log_needed_from(), 0);
        keep_at(20);
        assert_eq!(images.log_needed_from(), 0);

        writer.cursor_seq.store(25, Ordering::Release);
        writer.cursor_known.store(true, Ordering::Release);
        assert_eq!(images.log_needed_from(), 21, "the writer starts from the image at 20");
        keep_at(40);
        assert!(base.exists(), "the image at 20 stays for the writer");
        assert_eq!(images.log_needed_from(), 21);
        keep_at(60);
        assert_eq!(images.log_needed_from(), 21, "the base stays while the writer is behind");
        let kept = replication::read_image_at(&base).unwrap().unwrap().0;
        assert_eq!(kept.meta.last_log_id.map(|log_id| log_id.index), Some(20));

        // The writer moves past the newest image: the base goes.
        writer.cursor_seq.store(70, Ordering::Release);
        assert_eq!(images.log_needed_from(), 61);
        keep_at(70);
        assert!(!base.exists());
        assert_eq!(images.log_needed_from(), 71);

        // A restart keeps the base it finds, and drops it without a writer.
        writer.cursor_seq.store(75, Ordering::Release);
        keep_at(80);
        assert!(base.exists());
        let reopened = Images::open(dir.path(), Some(Arc::clone(&writer))).unwrap();
        // Read back from the files (whose engines here are empty, at
        // sequence 0): both images, the base at log position 70.
        let on_disk = reopened.on_disk.lock().unwrap();
        assert_eq!(on_disk.writer_base.as_ref().map(Kept::log_after), Some(71));
        assert_eq!(on_disk.current.as_ref().map(Kept::log_after), Some(81));
        drop(on_disk);
        assert!(base.exists());
        let without_writer = Images::open(dir.path(), None).unwrap();
        assert!(!base.exists());
        assert_eq!(without_writer.log_needed_from(), u64::MAX);
    }

    #[test]
    fn the_image_a_seeding_writes_from_stays_when_a_newer_one_replaces_it() {
        let (_dir, writer, images, base) = with_writer();
        let keep_at = |index: u64| keep_empty_at(&images, index);
        // An empty database the node cannot feed: the writer's cursor is 0.
        writer.cursor_known.store(true, Ordering::Release);
        keep_at(20);
        keep_at(40);
        assert!(!base.exists(), "nothing at or before the cursor to keep");
        // A seeding reads the image at 40; a newer one arrives before it
        // commits: the one it writes from stays.
        writer.seeding_seq.store(40, Ordering::Release);
        keep_at(60);
        let kept = replication::read_image_at(&base).unwrap().unwrap().0;
        assert_eq!(kept.meta.last_log_id.map(|log_id| log_id.index), Some(40));
        // Committed: the cursor is there, and the usual rules keep it.
        writer.cursor_seq.store(40, Ordering::Release);
        writer.seeding_seq.store(0, Ordering::Release);
        keep_at(80);
        assert!(base.exists());
        assert_eq!(images.log_needed_from(), 41);
    }

    #[test]
    fn a_damaged_writer_base_stops_the_node_while_its_writer_needs_it() {
        let (dir, writer, images, base) = with_writer();
        let keep_at = |index: u64| keep_empty_at(&images, index);
        writer.cursor_seq.store(25, Ordering::Release);
        writer.cursor_known.store(true, Ordering::Release);
        keep_at(20);
        keep_at(40);
        assert!(base.exists());
        drop(images);

        // A flipped byte in the middle of the base, as a disk does it. The
        // history between it and the node's own image is on no image any
        // more: starting would mean feeding the database from nowhere.
        let mut bytes = std::fs::read(&base).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        // The base is a second name of an older image: break the link first,
        // so that only the base is damaged.
        std::fs::remove_file(&base).unwrap();
        std::fs::write(&base, &bytes).unwrap();
        let refused =
            Images::open(dir.path(), Some(Arc::clone(&writer))).err().expect("a damaged base is refused");
        assert!(refused.to_string().contains(WRITER_BASE_IMAGE_FILE_NAME), "{refused}");
        assert!(base.exists(), "nothing is removed by a refusal");
        // Without a writer the base is not needed: it goes, and the node starts
        // on its own image.
        let without_writer = Images::open(dir.path(), None).unwrap();
        assert!(!base.exists());
        assert_eq!(without_writer.current_meta().and_then(|m| m.last_log_id).map(|l| l.index), Some(40));
    }
}
