//! Cache entries on disk: atomic publication, per-key locks, verification.
//!
//! An entry is written into `tmp/`, given its manifest and its `COMPLETE` marker last, then
//! renamed into `entries/` (same file system, so the rename is atomic): an interrupted stage
//! leaves at most a folder in `tmp/`, never anything that looks finished. Locks are advisory
//! file locks per key (`std::fs::File::lock`, which is `flock(2)` on Linux), released by the OS
//! when a process dies, so a `kill -9` never leaves a stale lock behind. On a cache shared
//! between nodes, a complete entry is never replaced (the first published wins), so nodes whose
//! locks do not exclude each other waste work but never corrupt an entry (README: "A cache
//! shared between machines").

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::key::hash_file;

pub const COMPLETE: &str = "COMPLETE";
pub const MANIFEST: &str = "manifest.json";
const README: &str = "This folder is pipe's cache: every finished stage, keyed by the BLAKE3 hash of what it means.\nNever edit it by hand; `pipe gc --dry-run` shows what can be removed. Its contents are not committed.\n";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cache entry {path} has an unreadable manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything known about a finished entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub key: String,
    pub name: String,
    pub kind: String,
    pub version: u32,
    pub preimage: Value,
    /// Every output file (relative path) and its BLAKE3 digest.
    pub outputs: BTreeMap<String, String>,
    pub metrics: Value,
    pub started_at: String,
    pub duration_s: f64,
    pub host: String,
    pub device: String,
    pub pipe_version: String,
}

/// A held per-key lock; released on drop (or by the OS if the process dies).
pub struct KeyLock {
    _file: File,
}

/// An entry being written.
pub struct TmpEntry {
    pub dir: PathBuf,
    key: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        for sub in ["entries", "tmp", "locks", "names", "runs"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let readme = root.join("README.md");
        if !readme.exists() {
            fs::write(&readme, README).map_err(io(&readme))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(&key[..2]).join(key)
    }

    pub fn is_complete(&self, key: &str) -> bool {
        self.entry_dir(key).join(COMPLETE).is_file()
    }

    pub fn read_manifest(&self, key: &str) -> Result<Manifest, CacheError> {
        read_manifest(&self.entry_dir(key))
    }

    /// Reads the manifest and checks every output's digest. A corrupt or tampered entry is
    /// reported as such, never used.
    pub fn verify(&self, key: &str) -> Result<Manifest, CacheError> {
        let dir = self.entry_dir(key);
        let m = read_manifest(&dir).map_err(|e| CacheError::Corrupt {
            key: key.into(),
            reason: e.to_string(),
        })?;
        if m.key != key {
            return Err(CacheError::Corrupt {
                key: key.into(),
                reason: format!("manifest names key {}", m.key),
            });
        }
        for (file, want) in &m.outputs {
            let path = dir.join(file);
            match hash_file(&path) {
                Ok(got) if &got == want => {}
                Ok(got) => {
                    return Err(CacheError::Corrupt {
                        key: key.into(),
                        reason: format!(
                            "{file} has digest {}…, the manifest says {}…",
                            &got[..12],
                            &want[..12]
                        ),
                    });
                }
                Err(e) => {
                    return Err(CacheError::Corrupt {
                        key: key.into(),
                        reason: format!("{file}: {e}"),
                    });
                }
            }
        }
        Ok(m)
    }

    fn lock_file(&self, key: &str) -> Result<File, CacheError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))
    }

    /// Blocks until this process holds the key's lock.
    pub fn lock(&self, key: &str) -> Result<KeyLock, CacheError> {
        let f = self.lock_file(key)?;
        f.lock().map_err(io(&self.root.join("locks")))?;
        Ok(KeyLock { _file: f })
    }

    /// The key's lock if nobody holds it now.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>, CacheError> {
        let f = self.lock_file(key)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: f })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(CacheError::Io {
                path: self.root.join("locks"),
                source: e,
            }),
        }
    }

    /// A fresh folder in `tmp/` for writing the entry `key` (hold the key's lock first).
    pub fn begin(&self, key: &str) -> Result<TmpEntry, CacheError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{key}.{}.{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(TmpEntry {
            dir,
            key: key.to_string(),
        })
    }

    /// Digests the outputs, writes the manifest and the completion marker, and renames the
    /// folder into place. Returns the manifest of the entry now in place.
    ///
    /// A complete entry of the same key is never replaced: another process (on another node of
    /// a shared cache, or one whose lock did not exclude us) published it first, so it is kept
    /// and this copy is dropped. The rename cannot overwrite it either: renaming a folder onto
    /// a non-empty one fails.
    pub fn publish(&self, tmp: TmpEntry, mut manifest: Manifest) -> Result<Manifest, CacheError> {
        manifest.outputs = digest_tree(&tmp.dir)?;
        let mpath = tmp.dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(&manifest).expect("manifests serialise");
        write_synced(&mpath, text.as_bytes())?;
        write_synced(&tmp.dir.join(COMPLETE), b"")?;
        let dest = self.entry_dir(&tmp.key);
        let parent = dest.parent().expect("entry dirs have a parent");
        fs::create_dir_all(parent).map_err(io(parent))?;
        if self.is_complete(&tmp.key) {
            return self.keep_first(tmp);
        }
        if dest.exists() {
            // A leftover without COMPLETE (complete entries are never re-written): move it
            // aside rather than merge into it.
            self.clear_leftover(&dest)?;
            if self.is_complete(&tmp.key) {
                return self.keep_first(tmp);
            }
        }
        if let Err(e) = fs::rename(&tmp.dir, &dest) {
            if self.is_complete(&tmp.key) {
                return self.keep_first(tmp);
            }
            return Err(io(&dest)(e));
        }
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(manifest)
    }

    /// Drops `tmp` in favour of the complete entry already in place, and returns its manifest.
    fn keep_first(&self, tmp: TmpEntry) -> Result<Manifest, CacheError> {
        tracing::info!(
            key = &tmp.key[..12],
            "the entry was published meanwhile by another process; keeping it"
        );
        let key = tmp.key.clone();
        self.abandon(tmp);
        self.read_manifest(&key)
    }

    /// Removes an unfinished entry folder.
    pub fn abandon(&self, tmp: TmpEntry) {
        let _ = fs::remove_dir_all(&tmp.dir);
    }

    /// Moves a corrupt entry out of `entries/` (into `tmp/`, where `gc` collects it), so it is
    /// recomputed and can still be inspected.
    pub fn quarantine(&self, key: &str) -> Result<PathBuf, CacheError> {
        let src = self.entry_dir(key);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dest = self.root.join("tmp").join(format!("corrupt-{key}.{nanos}"));
        fs::rename(&src, &dest).map_err(io(&src))?;
        Ok(dest)
    }

    /// Moves the folder `dest` (seen without COMPLETE) out of `entries/`. Where locks do not
    /// exclude another node, that node may have published a complete entry there between our
    /// check and the move: a complete folder is put back (the first entry wins), and only an
    /// unfinished one is removed.
    fn clear_leftover(&self, dest: &Path) -> Result<(), CacheError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Host and time as well as the pid: pids repeat across the nodes sharing `tmp/`.
        let aside = self.root.join("tmp").join(format!(
            "stale-{}.{}.{}.{nanos}",
            dest.file_name().and_then(|s| s.to_str()).unwrap_or("entry"),
            crate::clock::hostname(),
            std::process::id()
        ));
        match fs::rename(dest, &aside) {
            Ok(()) => {}
            // Gone meanwhile (another process cleared it): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(dest)(e)),
        }
        if aside.join(COMPLETE).is_file() {
            // Fails only if yet another complete entry is in place now; this one then goes.
            if fs::rename(&aside, dest).is_ok() {
                return Ok(());
            }
        }
        let _ = fs::remove_dir_all(&aside);
        Ok(())
    }

    fn name_file(&self, name: &str) -> PathBuf {
        let h = blake3::hash(name.as_bytes()).to_hex();
        self.root.join("names").join(format!("{}.json", &h[..32]))
    }

    /// Remembers `key` as the latest entry of stage `name` (for "why does this re-run?").
    pub fn record_name(&self, name: &str, key: &str) -> Result<(), CacheError> {
        let path = self.name_file(name);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::json!({"name": name, "key": key}).to_string();
        fs::write(&tmp, text).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The latest key recorded for stage `name`.
    pub fn last_for_name(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.name_file(name)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v.get("key")?.as_str().map(str::to_string)
    }

    /// Every entry folder (complete or not) with its key.
    pub fn list_entries(&self) -> Result<Vec<(String, PathBuf)>, CacheError> {
        let mut out = Vec::new();
        let base = self.root.join("entries");
        for shard in fs::read_dir(&base).map_err(io(&base))? {
            let shard = shard.map_err(io(&base))?.path();
            if !shard.is_dir() {
                continue;
            }
            for e in fs::read_dir(&shard).map_err(io(&shard))? {
                let p = e.map_err(io(&shard))?.path();
                if let Some(k) = p.file_name().and_then(|s| s.to_str()) {
                    out.push((k.to_string(), p.clone()));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, CacheError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| CacheError::BadManifest {
        path,
        reason: e.to_string(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let mut f = File::create(path).map_err(io(path))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Digests of every file under `dir`, by relative path ('/'-separated), sorted.
fn digest_tree(dir: &Path) -> Result<BTreeMap<String, String>, CacheError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io(&d))? {
            let p = e.map_err(io(&d))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel == MANIFEST || rel == COMPLETE {
                    continue;
                }
                // Output files are flushed before digesting: the digest is what a reader checks.
                if let Ok(f) = File::open(&p) {
                    let _ = f.sync_all();
                }
                out.insert(rel, hash_file(&p).map_err(io(&p))?);
            }
        }
    }
    Ok(out)
}

/// Total size in bytes of a folder tree.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_a_leftover_that_became_complete_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (key, other) = ("cd".repeat(32), "ef".repeat(32));
        // Seen without COMPLETE, then completed by another node before it was moved aside.
        let dest = store.entry_dir(&key);
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("w.bin"), "first").unwrap();
        fs::write(dest.join(COMPLETE), "").unwrap();
        store.clear_leftover(&dest).unwrap();
        assert!(store.is_complete(&key));
        assert_eq!(fs::read_to_string(dest.join("w.bin")).unwrap(), "first");
        // A real leftover (no COMPLETE) goes, and nothing of it stays in tmp/.
        let left = store.entry_dir(&other);
        fs::create_dir_all(&left).unwrap();
        fs::write(left.join("w.bin"), "half").unwrap();
        store.clear_leftover(&left).unwrap();
        assert!(!left.exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
