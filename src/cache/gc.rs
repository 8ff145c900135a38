//! Garbage collection: remove only what no kept run reaches, never an entry being written.
//!
//! Kept runs are all run records, or the newest N with `--keep-last N` (older records are
//! removed with the entries only they reached). An entry is reachable when a kept run record
//! lists its key; run records list every stage of the run, hits included, so this is closed
//! under "consumed by". Entries whose key lock is held by a live process are left alone, and so
//! are `tmp/` folders of live writers. Progress checkpoints (`resume/<key>/`) go with the keys
//! no kept run reaches; an interrupted run's record reaches the stage it left unfinished.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use super::runs;
use super::store::{CacheError, Store, dir_size, read_manifest};

/// How old an unlocked partial file must be before `gc` removes it.
pub const PARTIAL_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    /// `entry`, `resume` (the progress checkpoints of a key), `partial` (an unfinished or
    /// quarantined folder) or `run`.
    pub what: &'static str,
    pub id: String,
    /// The stage name (entries), when known.
    pub name: String,
    pub bytes: u64,
    pub path: PathBuf,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    /// Entries skipped because a process holds their lock.
    pub busy: Vec<String>,
    pub kept_entries: usize,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }
}

pub fn collect(
    store: &Store,
    keep_last: Option<usize>,
    dry_run: bool,
) -> Result<GcReport, CacheError> {
    let cache = store.root();
    // An unreadable record may be the only one that reaches some entries; collecting without
    // it could delete results the user still has a record of. Stop and say which file.
    let (all_runs, bad) = runs::load(cache);
    if let Some(e) = bad.into_iter().next() {
        return Err(e);
    }
    let cut = keep_last.map_or(0, |n| all_runs.len().saturating_sub(n));
    let (dropped, kept) = all_runs.split_at(cut);
    let reachable: BTreeSet<&str> = kept
        .iter()
        .flat_map(|r| r.stages.iter().map(|s| s.key.as_str()))
        .collect();
    let mut report = GcReport::default();

    for (key, dir) in store.list_entries()? {
        if reachable.contains(key.as_str()) {
            report.kept_entries += 1;
            continue;
        }
        let Some(_lock) = store.try_lock(&key)? else {
            report.busy.push(key);
            continue;
        };
        let name = read_manifest(&dir).map(|m| m.name).unwrap_or_default();
        let bytes = remove_tree(&dir, dry_run)?;
        if !dry_run {
            let _ = fs::remove_file(store.root().join("locks").join(format!("{key}.lock")));
        }
        report.removed.push(Removal {
            what: "entry",
            id: key,
            name,
            bytes,
            path: dir,
        });
    }

    // Progress checkpoints: kept while a kept run reaches their key (an interrupted run's
    // record lists the stage it did not finish), and while a writer holds the key's lock.
    for (key, dir) in super::resume::areas(cache) {
        if reachable.contains(key.as_str()) {
            continue;
        }
        let _guard = if super::store::is_key(&key) {
            match store.try_lock(&key)? {
                Some(l) => Some(l),
                None => {
                    report.busy.push(key);
                    continue;
                }
            }
        } else {
            None
        };
        let bytes = remove_tree(&dir, dry_run)?;
        report.removed.push(Removal {
            what: "resume",
            id: key,
            name: "progress checkpoints".into(),
            bytes,
            path: dir,
        });
    }

    // Unfinished folders: `<key>.<pid>.<n>` belongs to a writer only while it holds the key's
    // lock; corrupt-/stale-/failed- folders were set aside by `pipe run` and are always garbage.
    let tmp = store.root().join("tmp");
    if let Ok(rd) = fs::read_dir(&tmp) {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let fname = p
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let set_aside = fname.starts_with("corrupt-")
                || fname.starts_with("stale-")
                || fname.starts_with("failed-");
            let key = fname.split('.').next().unwrap_or("").to_string();
            let _guard = if set_aside {
                None
            } else {
                if key.len() != 64 {
                    continue;
                }
                match store.try_lock(&key)? {
                    Some(l) => Some(l),
                    None => {
                        report.busy.push(fname.clone());
                        continue;
                    }
                }
            };
            let bytes = remove_tree(&p, dry_run)?;
            report.removed.push(Removal {
                what: "partial",
                id: fname,
                name: String::new(),
                bytes,
                path: p,
            });
        }
    }

    // Partial run records and `names/` files: left by a writer that was killed or whose write
    // failed. A live writer holds a lock on its record, and both are renamed into place within
    // milliseconds, so anything unlocked and a minute old is garbage.
    let mut partial = runs::partial(cache, PARTIAL_GRACE);
    if let Ok(rd) = fs::read_dir(cache.join("names")) {
        let mut names: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
                    && runs::stale(p, PARTIAL_GRACE)
            })
            .collect();
        names.sort();
        partial.extend(names);
    }
    for p in partial {
        let bytes = fs::metadata(&p).map_or(0, |m| m.len());
        if !dry_run {
            match fs::remove_file(&p) {
                Ok(()) => {}
                // Renamed into place (or removed) since it was listed: nothing to do.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CacheError::Io {
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        report.removed.push(Removal {
            what: "partial",
            id: p
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            name: String::new(),
            bytes,
            path: p,
        });
    }

    for r in dropped {
        if !dry_run {
            runs::remove(cache, &r.id)?;
        }
        report.removed.push(Removal {
            what: "run",
            id: r.id.clone(),
            name: r.pipeline.clone(),
            bytes: 0,
            path: cache.join("runs").join(format!("{}.json", r.id)),
        });
    }
    Ok(report)
}

/// Removes the folder `dir` (unless `dry_run`) and returns its size.
fn remove_tree(dir: &std::path::Path, dry_run: bool) -> Result<u64, CacheError> {
    let bytes = dir_size(dir);
    if !dry_run {
        fs::remove_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(bytes)
}
