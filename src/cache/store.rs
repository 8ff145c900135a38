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
//!
//! The manifest is sealed: `COMPLETE` holds the BLAKE3 of `manifest.json`'s bytes, so an edit
//! to anything the manifest says (metrics, pre-image, output digests) is detected like a
//! changed output file. Entries whose `COMPLETE` holds no seal (written before sealing) are
//! not complete: they are recomputed and the old folder is set aside when the new entry is
//! published.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::key::hash_file;

pub const COMPLETE: &str = "COMPLETE";
pub const MANIFEST: &str = "manifest.json";
/// How the seal in `COMPLETE` starts; the BLAKE3 hex of `manifest.json` follows.
const SEAL_PREFIX: &str = "blake3:";
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
    #[error("run record {path} is unreadable: {reason}")]
    BadRecord { path: PathBuf, reason: String },
}

impl CacheError {
    /// The operating system's error, when this is a failed file operation (a full disk, a
    /// read-only or vanished folder) rather than bad content.
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            CacheError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether `s` has the form of a key: 64 lowercase hex digits. Keys read back from files
/// (run records, `names/`, manifests) are checked before they are used in paths or sliced.
pub fn is_key(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The first `n` characters of a key or digest for display, whatever the string holds.
/// A stage name as a file name: characters other than ASCII letters, digits, `.`, `_` and
/// `-` become `_` (`imp.3.ticket[lr=1.2e-3]` → `imp.3.ticket_lr_1.2e-3_`).
pub fn file_safe(stage: &str) -> String {
    stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn short(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The operating-system error behind `e`, if any: `e` itself or any error in its source
/// chain. Errors a library raises about content (a corrupt gzip stream, truncated JSON) carry
/// no OS error code and are not counted, so "the disk is full" and "the data is bad" stay
/// apart.
pub fn os_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some()
        {
            return Some(io);
        }
        if let Some(c) = err.downcast_ref::<CacheError>()
            && let Some(io) = c.os_error()
            && io.raw_os_error().is_some()
        {
            return Some(io);
        }
        cur = err.source();
    }
    None
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
    /// The work done (a training's iterations) in the progress checkpoint this entry was
    /// continued from, when an earlier attempt was interrupted; a fact of this run, like
    /// `duration_s`, not of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<u64>,
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

    /// The entry folder of `key` (which callers take from a plan or check with [`is_key`]).
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(short(key, 2)).join(key)
    }

    /// The progress checkpoints of `key` (see [`super::resume`]).
    pub fn resume_area(&self, key: &str) -> super::resume::ResumeArea {
        super::resume::ResumeArea::new(&self.root, key)
    }

    /// Whether the entry is finished and sealed (it may still fail verification).
    pub fn is_complete(&self, key: &str) -> bool {
        is_key(key) && is_sealed(&self.entry_dir(key))
    }

    pub fn read_manifest(&self, key: &str) -> Result<Manifest, CacheError> {
        read_manifest(&self.entry_dir(key))
    }

    /// Reads the manifest and checks every output's digest. A corrupt or tampered entry is
    /// reported as such, never used.
    pub fn verify(&self, key: &str) -> Result<Manifest, CacheError> {
        let corrupt = |reason: String| CacheError::Corrupt {
            key: key.into(),
            reason,
        };
        let dir = self.entry_dir(key);
        let seal = fs::read_to_string(dir.join(COMPLETE))
            .map_err(|e| corrupt(format!("{COMPLETE}: {e}")))?;
        let Some(want) = seal.trim_end().strip_prefix(SEAL_PREFIX) else {
            return Err(corrupt(format!(
                "{COMPLETE} holds no seal of {MANIFEST} (written by an older pipe)"
            )));
        };
        let mpath = dir.join(MANIFEST);
        let bytes = fs::read(&mpath).map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
        let got = blake3::hash(&bytes).to_hex();
        if got.as_str() != want {
            return Err(corrupt(format!(
                "{MANIFEST} was changed after it was written: its digest is {}…, {COMPLETE} says {}…",
                short(&got, 12),
                short(want, 12)
            )));
        }
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
        if m.key != key {
            return Err(corrupt(format!(
                "{MANIFEST} names key {}",
                short(&m.key, 64)
            )));
        }
        for (file, want) in &m.outputs {
            if !is_output_path(file) {
                return Err(corrupt(format!(
                    "{MANIFEST} lists `{file}`, which is not a file inside the entry"
                )));
            }
            let path = dir.join(file);
            match hash_file(&path) {
                Ok(got) if &got == want => {}
                Ok(got) => {
                    return Err(corrupt(format!(
                        "{file} has digest {}…, the manifest says {}…",
                        short(&got, 12),
                        short(want, 12)
                    )));
                }
                Err(e) => {
                    return Err(CacheError::Corrupt {
                        key: key.into(),
                        reason: format!("{file}: {e}"),
                    });
                }
            }
        }
        // Publishing lists every file; a manifest that leaves one out (edited, then re-sealed)
        // does not describe the entry, and a stage reading that output would fail on it.
        let files = output_files(&dir).map_err(|e| corrupt(e.to_string()))?;
        if let Some((file, _)) = files.iter().find(|(f, _)| !m.outputs.contains_key(f)) {
            return Err(corrupt(format!(
                "{file} is in the entry but not in its {MANIFEST}"
            )));
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
    ///
    /// On failure (a full disk, say) the unfinished folder is removed, so that it neither
    /// holds the space nor waits for `gc`.
    pub fn publish(&self, tmp: TmpEntry, manifest: Manifest) -> Result<Manifest, CacheError> {
        match self.publish_in_place(&tmp, manifest) {
            Ok(Placed::Ours(m)) => Ok(*m),
            Ok(Placed::First) => self.keep_first(tmp),
            Err(e) => {
                self.abandon(tmp);
                Err(e)
            }
        }
    }

    /// Seals `tmp` and renames it into place, unless a complete entry of its key is there
    /// first ([`Placed::First`]: the caller drops `tmp`).
    fn publish_in_place(
        &self,
        tmp: &TmpEntry,
        mut manifest: Manifest,
    ) -> Result<Placed, CacheError> {
        manifest.outputs = digest_tree(&tmp.dir)?;
        let mpath = tmp.dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(&manifest).expect("manifests serialise");
        write_synced(&mpath, text.as_bytes())?;
        let seal = format!("{SEAL_PREFIX}{}\n", blake3::hash(text.as_bytes()).to_hex());
        write_synced(&tmp.dir.join(COMPLETE), seal.as_bytes())?;
        let dest = self.entry_dir(&tmp.key);
        let parent = dest.parent().expect("entry dirs have a parent");
        fs::create_dir_all(parent).map_err(io(parent))?;
        if self.is_complete(&tmp.key) {
            return Ok(Placed::First);
        }
        if dest.exists() {
            // A leftover without a sealed COMPLETE (complete entries are never re-written; an
            // unsealed one is from an older pipe): move it aside rather than merge into it.
            self.clear_leftover(&dest)?;
            if self.is_complete(&tmp.key) {
                return Ok(Placed::First);
            }
        }
        if let Err(e) = fs::rename(&tmp.dir, &dest) {
            if self.is_complete(&tmp.key) {
                return Ok(Placed::First);
            }
            return Err(io(&dest)(e));
        }
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(Placed::Ours(Box::new(manifest)))
    }

    /// Drops `tmp` in favour of the complete entry already in place, and returns its manifest.
    fn keep_first(&self, tmp: TmpEntry) -> Result<Manifest, CacheError> {
        tracing::info!(
            key = short(&tmp.key, 12),
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

    /// Sets a failed attempt's folder aside (`tmp/failed-<stage>-<key>`, replacing the one an
    /// earlier failure of the same stage and key left), so that what the stage wrote before
    /// it failed (a command stage's log) can be read; `gc` collects it. `None` when the stage
    /// wrote nothing, or the folder could not be moved (it is removed then).
    pub fn keep_failed(&self, tmp: TmpEntry, stage: &str) -> Option<PathBuf> {
        let empty = fs::read_dir(&tmp.dir).map_or(true, |mut d| d.next().is_none());
        if empty {
            self.abandon(tmp);
            return None;
        }
        let dest = self.root.join("tmp").join(format!(
            "failed-{}-{}",
            file_safe(stage),
            short(&tmp.key, 12)
        ));
        let _ = fs::remove_dir_all(&dest);
        match fs::rename(&tmp.dir, &dest) {
            Ok(()) => Some(dest),
            Err(_) => {
                self.abandon(tmp);
                None
            }
        }
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

    /// Moves the folder `dest` (seen without a sealed COMPLETE) out of `entries/`. Where locks do not
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
        if is_sealed(&aside) {
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
        write_then_rename(&tmp, &path, text.as_bytes())
    }

    /// The latest key recorded for stage `name`. A missing, unreadable or hand-edited file
    /// (not JSON, another name, a key that is not 64 hex digits) counts as no record: it only
    /// explains why a stage re-runs.
    pub fn last_for_name(&self, name: &str) -> Option<String> {
        let path = self.name_file(name);
        let text = fs::read_to_string(&path).ok()?;
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("ignoring unreadable {}: {e}", path.display());
                return None;
            }
        };
        let key = v.get("key").and_then(Value::as_str);
        match key {
            Some(k) if is_key(k) && v.get("name").and_then(Value::as_str) == Some(name) => {
                Some(k.to_string())
            }
            _ => {
                tracing::warn!(
                    "ignoring {}: it does not hold stage `{name}` with a 64-digit key",
                    path.display()
                );
                None
            }
        }
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

/// Whether the entry folder `dir` holds a sealed `COMPLETE` (an unsealed one is from an
/// older pipe and counts as unfinished).
fn is_sealed(dir: &Path) -> bool {
    fs::read_to_string(dir.join(COMPLETE)).is_ok_and(|s| s.starts_with(SEAL_PREFIX))
}

/// Where [`Store::publish_in_place`] left things.
enum Placed {
    /// Our folder is the entry now; its manifest as written.
    Ours(Box<Manifest>),
    /// A complete entry of the key was in place first; ours is to be dropped.
    First,
}

/// Reads an entry's manifest without verifying it (for explanations and `gc`; use
/// [`Store::verify`] before trusting what it says).
pub fn read_manifest(dir: &Path) -> Result<Manifest, CacheError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| CacheError::BadManifest {
        path,
        reason: e.to_string(),
    })
}

/// A relative path inside an entry: no root, no `..`, not empty.
fn is_output_path(file: &str) -> bool {
    let p = Path::new(file);
    !file.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let mut f = File::create(path).map_err(io(path))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes `bytes` to `tmp` and renames it onto `dest`; on failure the partial `tmp` is
/// removed (a full disk must not leave half-written files behind).
pub(crate) fn write_then_rename(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let written = fs::write(tmp, bytes)
        .map_err(io(tmp))
        .and_then(|()| fs::rename(tmp, dest).map_err(io(dest)));
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

/// The output files under an entry folder `dir` (all but the manifest and the seal), by
/// relative path ('/'-separated) with their full path.
fn output_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, CacheError> {
    let mut out = Vec::new();
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
                if rel != MANIFEST && rel != COMPLETE {
                    out.push((rel, p));
                }
            }
        }
    }
    Ok(out)
}

/// Digests of every output file under `dir`, by relative path, sorted.
pub(crate) fn digest_tree(dir: &Path) -> Result<BTreeMap<String, String>, CacheError> {
    let mut out = BTreeMap::new();
    for (rel, p) in output_files(dir)? {
        // Output files are flushed before digesting: the digest is what a reader checks.
        if let Ok(f) = File::open(&p) {
            let _ = f.sync_all();
        }
        out.insert(rel, hash_file(&p).map_err(io(&p))?);
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

    fn manifest(key: &str) -> Manifest {
        Manifest {
            key: key.into(),
            name: "eval".into(),
            kind: "evaluate".into(),
            version: 1,
            preimage: serde_json::json!({"kind": "evaluate"}),
            outputs: BTreeMap::new(),
            metrics: serde_json::json!({"accuracy": 0.9123}),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 1.0,
            host: "h".into(),
            device: "cpu".into(),
            pipe_version: "0".into(),
            resumed_at: None,
        }
    }

    fn published(store: &Store) -> String {
        let key = "ab".repeat(32);
        let tmp = store.begin(&key).unwrap();
        fs::write(tmp.dir.join("metrics.json"), "{}").unwrap();
        store.publish(tmp, manifest(&key)).unwrap();
        key
    }

    #[test]
    fn an_edited_metric_breaks_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = published(&store);
        assert!(store.is_complete(&key));
        assert_eq!(store.verify(&key).unwrap().metrics["accuracy"], 0.9123);
        let path = store.entry_dir(&key).join(MANIFEST);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("0.9123", "0.9923")).unwrap();
        let e = store.verify(&key).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json was changed after it was written"),
            "{e}"
        );
    }

    #[test]
    fn entries_without_a_seal_are_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = published(&store);
        // What the code before sealing wrote: an empty marker.
        fs::write(store.entry_dir(&key).join(COMPLETE), "").unwrap();
        assert!(!store.is_complete(&key));
        let e = store.verify(&key).unwrap_err().to_string();
        assert!(e.contains("holds no seal"), "{e}");
        // Publishing the recomputed entry sets the old folder aside.
        let tmp = store.begin(&key).unwrap();
        store.publish(tmp, manifest(&key)).unwrap();
        assert!(store.verify(&key).is_ok());
    }

    #[test]
    fn hand_edited_digests_and_paths_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = published(&store);
        let entry = store.entry_dir(&key);
        for (file, digest) in [("metrics.json", "é"), ("../../README.md", "00")] {
            let mut m = manifest(&key);
            m.outputs.insert(file.into(), digest.into());
            let text = serde_json::to_string_pretty(&m).unwrap();
            fs::write(entry.join(MANIFEST), &text).unwrap();
            let seal = format!("{SEAL_PREFIX}{}\n", blake3::hash(text.as_bytes()).to_hex());
            fs::write(entry.join(COMPLETE), seal).unwrap();
            let e = store.verify(&key).unwrap_err().to_string();
            assert!(e.contains(file), "{e}");
        }
    }

    #[test]
    fn a_resealed_manifest_that_leaves_out_a_file_is_corrupt() {
        // Found by the fuzz harness (tests/fuzz/): with `metrics.json` removed from the
        // outputs and the seal redone, the entry verified, and the stage reading that output
        // failed (exit 1).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = published(&store);
        let entry = store.entry_dir(&key);
        let text = serde_json::to_string_pretty(&manifest(&key)).unwrap();
        fs::write(entry.join(MANIFEST), &text).unwrap();
        let seal = format!("{SEAL_PREFIX}{}\n", blake3::hash(text.as_bytes()).to_hex());
        fs::write(entry.join(COMPLETE), seal).unwrap();
        let e = store.verify(&key).unwrap_err().to_string();
        assert!(
            e.contains("metrics.json is in the entry but not in its manifest.json"),
            "{e}"
        );
    }

    #[test]
    fn names_files_that_were_edited_by_hand_count_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.record_name("dense", &"0f".repeat(32)).unwrap();
        assert_eq!(store.last_for_name("dense"), Some("0f".repeat(32)));
        let path = store.name_file("dense");
        for text in [
            r#"{"name": "dense", "key": "0f0"}"#,
            r#"{"name": "other", "key": "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"}"#,
            r#"{"name": "dense", "ke"#,
            "",
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(store.last_for_name("dense"), None, "{text}");
        }
    }

    #[test]
    fn keys_and_their_short_forms() {
        assert!(is_key(&"0a".repeat(32)));
        assert!(!is_key(&"0A".repeat(32)));
        assert!(!is_key("0a"));
        assert_eq!(short("abcdef", 3), "abc");
        assert_eq!(short("ab", 12), "ab");
        assert_eq!(short("ééé", 2), "éé");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("writing {0}")]
    struct Wrapper(&'static str, #[source] std::io::Error);

    #[test]
    fn os_errors_are_found_in_the_source_chain_and_content_errors_are_not() {
        // ENOSPC and EROFS, as a full disk and a read-only mount report them.
        for code in [28, 30, 13] {
            let e = Wrapper("model.safetensors", std::io::Error::from_raw_os_error(code));
            assert!(os_error_in(&e).is_some(), "{code}");
            let c = CacheError::Io {
                path: "cache/tmp".into(),
                source: std::io::Error::from_raw_os_error(code),
            };
            assert!(os_error_in(&c).is_some(), "{code}");
        }
        let content = Wrapper(
            "train.gz",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt deflate stream"),
        );
        assert!(os_error_in(&content).is_none());
        let corrupt = CacheError::Corrupt {
            key: "k".into(),
            reason: "r".into(),
        };
        assert!(os_error_in(&corrupt).is_none());
    }

    #[test]
    fn clearing_a_leftover_that_became_complete_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (key, other) = ("cd".repeat(32), "ef".repeat(32));
        // Seen without COMPLETE, then completed by another node before it was moved aside.
        let dest = store.entry_dir(&key);
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("w.bin"), "first").unwrap();
        fs::write(
            dest.join(COMPLETE),
            format!("{SEAL_PREFIX}{}\n", "0".repeat(64)),
        )
        .unwrap();
        store.clear_leftover(&dest).unwrap();
        assert!(store.is_complete(&key));
        assert_eq!(fs::read_to_string(dest.join("w.bin")).unwrap(), "first");
        // A real leftover (no COMPLETE, or an unsealed one from an older pipe) goes, and
        // nothing of it stays in tmp/.
        let left = store.entry_dir(&other);
        for complete in [None, Some("")] {
            fs::create_dir_all(&left).unwrap();
            fs::write(left.join("w.bin"), "half").unwrap();
            if let Some(text) = complete {
                fs::write(left.join(COMPLETE), text).unwrap();
            }
            store.clear_leftover(&left).unwrap();
            assert!(!left.exists());
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_second_publish_of_a_key_keeps_the_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = published(&store);
        let tmp = store.begin(&key).unwrap();
        fs::write(tmp.dir.join("metrics.json"), "{\"second\": true}").unwrap();
        let mut second = manifest(&key);
        second.host = "other".into();
        let kept = store.publish(tmp, second).unwrap();
        assert_eq!(kept.host, "h");
        let entry = store.entry_dir(&key);
        assert_eq!(
            fs::read_to_string(entry.join("metrics.json")).unwrap(),
            "{}"
        );
        assert_eq!(store.verify(&key).unwrap().host, "h");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
