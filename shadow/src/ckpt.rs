//! The checkpoint image store: `DIR/ckpt/C.P/image.SEQ.zst`, stored as the
//! starter sent them (zstd frames). The job's committed image (the queue
//! row's `ckpt_seq`) is either a full image or an increment; an increment
//! needs the images before it back to the last full one (its chain,
//! [`Store::chain`]), which a restart receives concatenated, oldest first.
//! Each increment names its parent (`parent_id` in its header); a commit
//! checks it against the job's committed image ([`Store::check_parent`]).
//! Older images are removed only once a newer full image is committed.
//!
//! An image arrives in `image.tmp` ([`Incoming`]), is fsynced, renamed to
//! `image.SEQ.zst` (a name no committed row uses yet), the directory is
//! fsynced, and only then does the queue row point at it (`ckpt_seq = SEQ`,
//! [`crate::queue::Queue::checkpointed`]); after a full image, older images
//! go. So
//! at every moment the row names a complete, durable file, whatever is
//! killed when. At start-up ([`Store::recover`]) temporary files and images
//! outside the chain of the image a row names are removed, and a row whose file is missing forgets its
//! checkpoint (event `checkpoint_lost`) so the job starts from the beginning.
//!
//! Transfers in progress (an image arriving, or one going to a restarting
//! host) are kept in memory per job ([`Transfers`]) for `roost q`.

use crate::ScheddError;
use crate::queue::Queue;
use proto::JobId;
use proto::ckpt::{ImageHeader, KIND_FULL, KIND_INCREMENT};
use proto::job::{Transfer, TransferKind};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Largest `ImageChunk` payload.
pub const IMAGE_CHUNK: usize = 1 << 20;
const TMP: &str = "image.tmp";

/// Where images live.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Transfers in progress, shared by every clone.
    pub transfers: Transfers,
}

#[derive(Debug)]
struct Live {
    id: u64,
    kind: TransferKind,
    bytes: u64,
    total: Option<u64>,
    started: Instant,
}

/// The image transfers in progress, per job.
#[derive(Debug, Clone, Default)]
pub struct Transfers {
    live: Arc<Mutex<HashMap<JobId, Live>>>,
    next: Arc<AtomicU64>,
}

impl Transfers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts showing a transfer of the job's image (replacing one shown);
    /// it is shown until the returned guard is dropped.
    pub fn begin(&self, job: JobId, kind: TransferKind, total: Option<u64>) -> TransferGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map().insert(
            job,
            Live {
                id,
                kind,
                bytes: 0,
                total,
                started: Instant::now(),
            },
        );
        TransferGuard {
            transfers: self.clone(),
            job,
            id,
        }
    }

    /// The job's transfer in progress.
    pub fn get(&self, job: JobId) -> Option<Transfer> {
        self.map().get(&job).map(|l| Transfer {
            kind: l.kind,
            bytes: l.bytes,
            total: l.total,
            secs: l.started.elapsed().as_secs_f64(),
        })
    }
}

/// One transfer being shown; dropping it ends the showing.
#[derive(Debug)]
pub struct TransferGuard {
    transfers: Transfers,
    job: JobId,
    id: u64,
}

impl TransferGuard {
    /// Counts `n` more bytes moved.
    pub fn add(&self, n: u64) {
        if let Some(l) = self.transfers.map().get_mut(&self.job)
            && l.id == self.id
        {
            l.bytes += n;
        }
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        let mut m = self.transfers.map();
        if m.get(&self.job).is_some_and(|l| l.id == self.id) {
            m.remove(&self.job);
        }
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parse_job(name: &str) -> Option<JobId> {
    name.parse().ok()
}

fn image_name(seq: u32) -> String {
    format!("image.{seq}.zst")
}

fn parse_seq(name: &str) -> Option<u32> {
    name.strip_prefix("image.")?
        .strip_suffix(".zst")?
        .parse()
        .ok()
}

/// The header of a stored image: the first bytes of its zstd stream.
pub fn read_header(path: &Path) -> Result<ImageHeader, String> {
    use std::io::Read;
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut dec = zstd::stream::read::Decoder::new(f)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut b = vec![0u8; size_of::<ImageHeader>()];
    dec.read_exact(&mut b)
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?;
    let h = ImageHeader::from_bytes(&b).ok_or("short header")?;
    h.verify(h.page_size, u32::MAX)
        .map_err(|e| format!("{}: {}", path.display(), e.as_str()))?;
    Ok(h)
}

/// "full" or "incremental", as the event log and `roost q` say.
pub fn kind_name(h: &ImageHeader) -> &'static str {
    if h.kind == KIND_INCREMENT {
        "incremental"
    } else {
        "full"
    }
}

impl Store {
    /// The store under the schedd's state directory.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.join("ckpt"),
            transfers: Transfers::default(),
        }
    }

    /// The job's directory.
    pub fn job_dir(&self, job: JobId) -> PathBuf {
        self.root.join(job.to_string())
    }

    /// The file of the job's image number `seq`.
    pub fn image_path(&self, job: JobId, seq: u32) -> PathBuf {
        self.job_dir(job).join(image_name(seq))
    }

    /// The numbers of the job's stored images, ascending.
    pub fn seqs(&self, job: JobId) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir(self.job_dir(job)) else {
            return Vec::new();
        };
        let mut v: Vec<u32> = rd
            .flatten()
            .filter_map(|e| parse_seq(&e.file_name().to_string_lossy()))
            .collect();
        v.sort_unstable();
        v
    }

    /// The images that restore image `seq`, oldest first: the last full
    /// image up to `seq` and every increment after it, each the child of
    /// the one before. Why not, when one is missing or does not fit.
    pub fn chain(&self, job: JobId, seq: u32) -> Result<Vec<u32>, String> {
        let path = self.image_path(job, seq);
        if !path.is_file() {
            return Err(format!("the image file {} is missing", path.display()));
        }
        let older: Vec<u32> = self.seqs(job).into_iter().filter(|&s| s < seq).collect();
        let mut older = older.into_iter().rev();
        let mut chain = vec![seq];
        let mut h = read_header(&path)?;
        while h.kind != KIND_FULL {
            let Some(prev) = older.next() else {
                return Err(format!(
                    "image {seq} is an increment whose full image is missing"
                ));
            };
            let ph = read_header(&self.image_path(job, prev))?;
            if ph.image_id != h.parent_id {
                return Err(format!(
                    "image {} is an increment whose parent (image {prev}) is not the one it was taken after",
                    chain[chain.len() - 1]
                ));
            }
            chain.push(prev);
            h = ph;
        }
        chain.reverse();
        Ok(chain)
    }

    /// Checks that an arriving image can follow the job's committed image
    /// `last`: a full image always can; an increment only over `last`.
    pub fn check_parent(
        &self,
        job: JobId,
        arriving: &ImageHeader,
        last: Option<u32>,
    ) -> Result<(), String> {
        if arriving.kind == KIND_FULL {
            return Ok(());
        }
        let Some(last) = last else {
            return Err("an increment arrived, but the job has no committed image".into());
        };
        let h = read_header(&self.image_path(job, last))?;
        if h.image_id != arriving.parent_id {
            return Err(format!(
                "an increment arrived that was not taken after the job's committed image {last}"
            ));
        }
        Ok(())
    }

    /// Removes the job's images but those of `keep`'s chain (all but `keep`
    /// itself when its chain cannot be read).
    pub fn prune(&self, job: JobId, keep: u32) {
        let chain = self.chain(job, keep).unwrap_or_else(|_| vec![keep]);
        let Ok(rd) = std::fs::read_dir(self.job_dir(job)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let old = parse_seq(&name.to_string_lossy()).is_some_and(|s| !chain.contains(&s));
            if old && let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(job = %job, "cannot remove the old image {}: {err}", e.path().display());
            }
        }
    }

    /// Removes everything of the job (it completed or was removed).
    pub fn discard(&self, job: JobId) {
        match std::fs::remove_dir_all(self.job_dir(job)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(job = %job, "cannot remove the job's checkpoints: {e}"),
        }
    }

    /// Brings the store and the queue into agreement after a start (see
    /// the module doc).
    pub fn recover(&self, q: &mut Queue) -> Result<(), ScheddError> {
        let err = |source| ScheddError::Images {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(err)?;
        // Images hold the jobs' memory: for the schedd's user only.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(err)?;
        for (job, state, seq) in q.images()? {
            if state.is_final() {
                continue;
            }
            if let Err(why) = self.chain(job, seq) {
                tracing::warn!(job = %job, "{why}; the job starts from the beginning");
                q.image_lost(job, &why)?;
            }
        }
        for e in std::fs::read_dir(&self.root).map_err(err)?.flatten() {
            let name = e.file_name();
            let Some(job) = parse_job(&name.to_string_lossy()) else {
                continue;
            };
            let row = q.get(job)?;
            match row {
                Some(r) if !r.state.is_final() => {
                    let tmp = e.path().join(TMP);
                    if tmp.exists() {
                        tracing::info!(job = %job, "removing an unfinished checkpoint transfer");
                        let _ = std::fs::remove_file(&tmp);
                    }
                    match r.image {
                        Some(img) => self.prune(job, img.seq),
                        None => self.discard(job),
                    }
                }
                _ => self.discard(job),
            }
        }
        Ok(())
    }
}

/// An image being received into `image.tmp`. Dropped before
/// [`Incoming::finish`], it removes the file.
#[derive(Debug)]
pub struct Incoming {
    file: Option<File>,
    path: PathBuf,
    bytes: u64,
    error: Option<std::io::Error>,
    pub reason: String,
    pub started: Instant,
    progress: TransferGuard,
}

impl Incoming {
    /// Creates (or empties) the job's `image.tmp`.
    pub fn begin(store: &Store, job: JobId, reason: String) -> std::io::Result<Incoming> {
        let dir = store.job_dir(job);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            fsync_dir(&store.root)?;
        }
        let path = dir.join(TMP);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Incoming {
            file: Some(file),
            path,
            bytes: 0,
            error: None,
            reason,
            started: Instant::now(),
            progress: store.transfers.begin(job, TransferKind::Checkpoint, None),
        })
    }

    /// Appends a chunk as it came. The first write error is kept for
    /// [`Incoming::finish`]; later chunks are then dropped.
    pub fn append(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(data) {
                Ok(()) => {
                    self.bytes += data.len() as u64;
                    self.progress.add(data.len() as u64);
                }
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Bytes stored so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes the image durable as `image.SEQ.zst` (fsync, rename, fsync of
    /// the directory); returns its path. The queue row is the caller's.
    pub fn finish(mut self, store: &Store, job: JobId, seq: u32) -> std::io::Result<PathBuf> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let f = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("no file"))?;
        f.sync_all()?;
        drop(f);
        let dest = store.image_path(job, seq);
        std::fs::rename(&self.path, &dest)?;
        // Renamed: nothing left for Drop to remove.
        self.path = PathBuf::new();
        fsync_dir(&store.job_dir(job))?;
        Ok(dest)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "cannot remove the unfinished image {}: {e}",
                    self.path.display()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: u64) -> JobId {
        JobId { cluster, proc: 0 }
    }

    #[test]
    fn dropped_transfer_leaves_no_file_and_finish_renames() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let mut inc = Incoming::begin(&s, id(1), "test".into()).unwrap();
        inc.append(b"abc");
        assert!(s.job_dir(id(1)).join(TMP).exists());
        drop(inc);
        assert!(!s.job_dir(id(1)).join(TMP).exists());

        let mut inc = Incoming::begin(&s, id(1), "test".into()).unwrap();
        inc.append(b"abc");
        inc.append(b"def");
        assert_eq!(inc.bytes(), 6);
        let p = inc.finish(&s, id(1), 3).unwrap();
        assert_eq!(p, s.image_path(id(1), 3));
        assert_eq!(std::fs::read(&p).unwrap(), b"abcdef");
        assert!(!s.job_dir(id(1)).join(TMP).exists());
        std::fs::write(s.image_path(id(1), 2), b"old").unwrap();
        s.prune(id(1), 3);
        assert!(!s.image_path(id(1), 2).exists());
        assert!(s.image_path(id(1), 3).exists());
        s.discard(id(1));
        assert!(!s.job_dir(id(1)).exists());
    }

    /// A stored image: a sealed header of `kind` (ids given), compressed.
    fn store_image(s: &Store, job: JobId, seq: u32, kind: u32, id: u64, parent: u64) {
        use proto::ckpt::{ARCH_X86_64, KSigaction, MAGIC, VERSION};
        let mut h = ImageHeader {
            magic: MAGIC,
            version: VERSION,
            arch: ARCH_X86_64,
            page_size: 4096,
            nregions: 0,
            nfds: 0,
            umask: 0,
            fs_base: 0,
            frame: 0,
            brk: 0,
            sigactions: [KSigaction::default(); 65],
            kind,
            flags: 0,
            image_id: id,
            parent_id: parent,
            tables_sum: 0,
            header_sum: 0,
        };
        h.seal();
        std::fs::create_dir_all(s.job_dir(job)).unwrap();
        let z = zstd::stream::encode_all(h.as_bytes(), 1).unwrap();
        std::fs::write(s.image_path(job, seq), z).unwrap();
    }

    #[test]
    fn a_chain_runs_back_to_its_full_image_and_survives_an_unfinished_one() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let job = id(7);
        // An older chain (1, 2), a newer one (3 full, 4 and 5 increments).
        store_image(&s, job, 1, KIND_FULL, 11, 0);
        store_image(&s, job, 2, KIND_INCREMENT, 12, 11);
        store_image(&s, job, 3, KIND_FULL, 13, 0);
        store_image(&s, job, 4, KIND_INCREMENT, 14, 13);
        store_image(&s, job, 5, KIND_INCREMENT, 15, 14);
        assert_eq!(s.chain(job, 5), Ok(vec![3, 4, 5]));
        assert_eq!(s.chain(job, 2), Ok(vec![1, 2]));
        assert_eq!(s.chain(job, 3), Ok(vec![3]));
        let full = read_header(&s.image_path(job, 3)).unwrap();
        assert_eq!(kind_name(&full), "full");

        // An increment must follow the committed image.
        let inc = read_header(&s.image_path(job, 5)).unwrap();
        assert_eq!(kind_name(&inc), "incremental");
        assert!(s.check_parent(job, &inc, Some(4)).is_ok());
        let e = s.check_parent(job, &inc, Some(3)).unwrap_err();
        assert!(e.contains("not taken after"), "{e}");
        assert!(s.check_parent(job, &inc, None).is_err());
        assert!(s.check_parent(job, &full, None).is_ok());

        // The schedd died while image 6 (a new full image, renamed but not
        // committed) and a transfer (image.tmp) were under way: what the
        // queue names (5) keeps its whole chain; the rest goes.
        store_image(&s, job, 6, KIND_FULL, 16, 0);
        std::fs::write(s.job_dir(job).join(TMP), b"half an image").unwrap();
        s.prune(job, 5);
        assert_eq!(s.seqs(job), vec![3, 4, 5]);
        assert_eq!(s.chain(job, 5), Ok(vec![3, 4, 5]));

        // A full image committed: the older chain goes.
        store_image(&s, job, 6, KIND_FULL, 16, 0);
        s.prune(job, 6);
        assert_eq!(s.seqs(job), vec![6]);

        // A missing link is a clear error.
        store_image(&s, job, 8, KIND_INCREMENT, 18, 17);
        let e = s.chain(job, 8).unwrap_err();
        assert!(e.contains("image 8"), "{e}");
        std::fs::remove_file(s.image_path(job, 6)).unwrap();
        let e = s.chain(job, 8).unwrap_err();
        assert!(e.contains("full image is missing"), "{e}");
    }

    #[test]
    fn an_arriving_image_is_shown_until_it_is_finished_or_dropped() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        assert_eq!(s.transfers.get(id(1)), None);
        let mut inc = Incoming::begin(&s, id(1), "test".into()).unwrap();
        inc.append(&[0; 1000]);
        inc.append(&[0; 24]);
        let t = s.transfers.get(id(1)).unwrap();
        assert_eq!(
            (t.kind, t.bytes, t.total),
            (TransferKind::Checkpoint, 1024, None)
        );
        assert_eq!(s.transfers.get(id(2)), None);
        inc.finish(&s, id(1), 1).unwrap();
        assert_eq!(s.transfers.get(id(1)), None);

        // A replaced transfer's guard does not end its successor.
        let old = s.transfers.begin(id(2), TransferKind::Restart, Some(10));
        let new = s.transfers.begin(id(2), TransferKind::Restart, Some(20));
        old.add(5);
        drop(old);
        new.add(7);
        let t = s.transfers.get(id(2)).unwrap();
        assert_eq!((t.bytes, t.total), (7, Some(20)));
        drop(new);
        assert_eq!(s.transfers.get(id(2)), None);
    }
}
