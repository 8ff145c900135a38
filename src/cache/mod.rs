//! The content-addressed cache: keys, the entry store, run records and garbage collection.
//!
//! Layout under the cache directory (default `./cache`):
//!
//! ```text
//! entries/<k0k1>/<key>/   one finished stage: its artifacts, manifest.json, COMPLETE
//! tmp/<key>.<pid>.<n>/    an entry being written (renamed into entries/ when finished)
//! resume/<key>/<n>/    progress checkpoints of a stage that has not finished (cache/resume.rs)
//! locks/<key>.lock        per-key lock files (advisory locks; no repository-wide lock)
//! names/<hash>.json       the last key each stage name had, for "why does this re-run?"
//! runs/<run-id>.json      run records
//! runs/<run-id>/          a run's job descriptions, scripts, logs and worker results
//! slurm/<key>.json        the Slurm job last submitted for a key
//! ```

pub mod gc;
pub mod key;
pub mod resume;
pub mod runs;
pub mod store;

pub use key::{PreImage, digest_file, hash_file};
pub use runs::{RunRecord, StageRecord, StageStatus};
pub use store::{
    COMPLETE, CacheError, MANIFEST, Manifest, Store, file_safe, is_key, os_error_in, short,
};
