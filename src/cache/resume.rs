//! Progress checkpoints: where a stage that has not finished keeps what it needs to go on.
//!
//! A long stage (a training) saves its state every so often, and when it is stopped, into
//! `resume/<key>/`; the next attempt at the same key — the next `pipe run`, a Slurm requeue,
//! another node — starts from the newest one instead of from the beginning. The cache does not
//! know what the files mean: a stage writes them into a folder it is handed, and reads them
//! back from the folder it is offered.
//!
//! Each checkpoint is one folder, `resume/<key>/<done>/` (`done` zero-padded, so names sort
//! by progress). It is written under a temporary name, its files digested into a `PROGRESS`
//! marker written last, and renamed into place: a checkpoint that a `kill -9` or a full disk
//! interrupted is never under its final name, and one whose files were damaged afterwards
//! fails its digests and is passed over for the one before. The two newest are kept.
//! Progress checkpoints are not part of any key: they only save time. A folder goes when the
//! entry of its key is published, and `pipe gc` removes those of keys no kept run reaches.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key::hash_file;
use super::store::{CacheError, digest_tree, write_synced};

/// The marker that makes a checkpoint folder valid, written last.
pub const PROGRESS: &str = "PROGRESS";
/// How many checkpoints of a key are kept (the newest, and the one before in case the newest
/// turns out damaged).
const KEEP: usize = 2;
const TMP_PREFIX: &str = ".tmp-";

/// What the marker records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Marker {
    done: u64,
    total: u64,
    /// The pipe that wrote it: a checkpoint is only resumed by the same version, whose
    /// computation continues bit for bit.
    pipe_version: String,
    files: BTreeMap<String, String>,
}

/// A valid progress checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub dir: PathBuf,
    /// Units of work done (a training's iterations).
    pub done: u64,
    pub total: u64,
}

/// The progress checkpoints of one key.
#[derive(Debug, Clone)]
pub struct ResumeArea {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder name of the checkpoint at `done`.
fn folder_name(done: u64) -> String {
    format!("{done:020}")
}

impl ResumeArea {
    /// The area of `key` under the cache root (created when the first checkpoint is saved).
    pub fn new(cache_root: &Path, key: &str) -> ResumeArea {
        ResumeArea {
            dir: cache_root.join("resume").join(key),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoint folders under their final names, newest first.
    fn folders(&self) -> Vec<(u64, PathBuf)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let done = name.parse::<u64>().ok().filter(|_| name.len() == 20)?;
                Some((done, e.path()))
            })
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.0));
        out
    }

    /// The newest checkpoint whose marker reads and whose files match their digests, written
    /// by this pipe version. Damaged ones are passed over (and said so in the log).
    pub fn latest(&self) -> Option<Snapshot> {
        self.folders()
            .into_iter()
            .find_map(|(done, dir)| match check(&dir, done) {
                Ok(s) => Some(s),
                Err(why) => {
                    tracing::warn!("progress checkpoint {} passed over: {why}", dir.display());
                    None
                }
            })
    }

    /// `(done, total)` of the newest checkpoint, read from its marker without checking the
    /// files (for `pipe plan`, which says where a stage will resume).
    pub fn peek(&self) -> Option<(u64, u64)> {
        self.folders().into_iter().find_map(|(_, dir)| {
            let m: Marker = serde_json::from_slice(&fs::read(dir.join(PROGRESS)).ok()?).ok()?;
            (m.pipe_version == env!("CARGO_PKG_VERSION")).then_some((m.done, m.total))
        })
    }

    /// Saves a checkpoint at `done` of `total`: `write` fills a fresh folder, which becomes
    /// the newest checkpoint only once all of it is on disk. Older checkpoints beyond the
    /// newest two, and temporary folders left by writers that died, are removed (the caller
    /// holds the key's lock, so no other writer of this key is alive).
    pub fn save<E>(
        &self,
        done: u64,
        total: u64,
        write: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Snapshot, SaveError<E>> {
        fs::create_dir_all(&self.dir).map_err(|e| SaveError::Cache(io(&self.dir)(e)))?;
        self.remove_temporaries();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{done}.{}.{nanos}", std::process::id()));
        let result = (|| {
            fs::create_dir_all(&tmp).map_err(|e| SaveError::Cache(io(&tmp)(e)))?;
            write(&tmp).map_err(SaveError::Stage)?;
            let marker = Marker {
                done,
                total,
                pipe_version: env!("CARGO_PKG_VERSION").into(),
                files: digest_tree(&tmp).map_err(SaveError::Cache)?,
            };
            let text = serde_json::to_vec_pretty(&marker).expect("markers serialise");
            write_synced(&tmp.join(PROGRESS), &text).map_err(SaveError::Cache)?;
            let dest = self.dir.join(folder_name(done));
            if dest.exists() {
                // Saved at the same point already (a stop right after a periodic save).
                let _ = fs::remove_dir_all(&tmp);
            } else {
                fs::rename(&tmp, &dest).map_err(|e| SaveError::Cache(io(&dest)(e)))?;
            }
            if let Ok(d) = fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(Snapshot {
                dir: dest,
                done,
                total,
            })
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        let snap = result?;
        for (_, old) in self.folders().into_iter().skip(KEEP) {
            let _ = fs::remove_dir_all(old);
        }
        Ok(snap)
    }

    fn remove_temporaries(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes the whole area (its entry was published, or `gc` found no run reaching it).
    pub fn clear(&self) -> Result<(), CacheError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

/// Why a checkpoint could not be saved: the stage's own writing failed, or the cache's.
#[derive(Debug)]
pub enum SaveError<E> {
    Stage(E),
    Cache(CacheError),
}

/// Whether `dir` is a valid checkpoint at `done` of this pipe version.
fn check(dir: &Path, done: u64) -> Result<Snapshot, String> {
    let bytes = fs::read(dir.join(PROGRESS)).map_err(|e| format!("{PROGRESS}: {e}"))?;
    let m: Marker = serde_json::from_slice(&bytes).map_err(|e| format!("{PROGRESS}: {e}"))?;
    if m.done != done {
        return Err(format!(
            "{PROGRESS} says {} done, its folder {done}",
            m.done
        ));
    }
    if m.pipe_version != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "written by pipe {}, this is pipe {}",
            m.pipe_version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    let mut present = digest_tree(dir).map_err(|e| e.to_string())?;
    present.remove(PROGRESS);
    if present.keys().ne(m.files.keys()) {
        return Err("its files are not the ones its marker lists".into());
    }
    for (file, want) in &m.files {
        let got = hash_file(&dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
        if &got != want {
            return Err(format!("{file} does not match its digest"));
        }
    }
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        done: m.done,
        total: m.total,
    })
}

/// Every key that has a resume area under the cache root, with the area's folder.
pub fn areas(cache_root: &Path) -> Vec<(String, PathBuf)> {
    let base = cache_root.join("resume");
    let Ok(rd) = fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(area: &ResumeArea, done: u64, text: &str) -> Snapshot {
        area.save(done, 10, |dir| {
            fs::create_dir_all(dir.join("sub"))?;
            fs::write(dir.join("sub/state.bin"), text)
        })
        .map_err(|e| format!("{e:?}"))
        .unwrap()
    }

    #[test]
    fn the_newest_valid_checkpoint_is_offered_and_two_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let area = ResumeArea::new(root.path(), &"ab".repeat(32));
        assert_eq!(area.latest(), None);
        assert_eq!(area.peek(), None);
        for done in [2, 4, 6] {
            save(&area, done, &format!("at {done}"));
        }
        let latest = area.latest().unwrap();
        assert_eq!((latest.done, latest.total), (6, 10));
        assert_eq!(
            fs::read_to_string(latest.dir.join("sub/state.bin")).unwrap(),
            "at 6"
        );
        assert_eq!(area.peek(), Some((6, 10)));
        let kept: Vec<u64> = area.folders().iter().map(|f| f.0).collect();
        assert_eq!(kept, vec![6, 4]);
        // A damaged newest checkpoint is passed over for the one before.
        fs::write(latest.dir.join("sub/state.bin"), "at 7").unwrap();
        assert_eq!(area.latest().unwrap().done, 4);
        // So is one without its marker (what a writer killed before the rename cannot
        // leave, but a hand-made folder can).
        fs::remove_file(area.dir().join(folder_name(4)).join(PROGRESS)).unwrap();
        assert_eq!(area.latest(), None);
        area.clear().unwrap();
        assert!(!area.dir().exists());
        area.clear().unwrap();
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_temporaries_of_dead_writers_go() {
        let root = tempfile::tempdir().unwrap();
        let area = ResumeArea::new(root.path(), &"cd".repeat(32));
        save(&area, 1, "one");
        // What a writer killed mid-checkpoint leaves: a temporary folder, never offered.
        let dead = area.dir().join(format!("{TMP_PREFIX}3.999.1"));
        fs::create_dir_all(&dead).unwrap();
        fs::write(dead.join("state.bin"), "half").unwrap();
        assert_eq!(area.latest().unwrap().done, 1);
        let failed = area.save(2, 10, |dir| {
            fs::write(dir.join("state.bin"), "part")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(matches!(failed, Err(SaveError::Stage(_))));
        assert_eq!(area.latest().unwrap().done, 1);
        let names: Vec<String> = fs::read_dir(area.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![folder_name(1)]);
    }
}
