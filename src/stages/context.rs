//! What a running stage sees: its inputs (as finished cache entries), its output folder, the
//! run-time resources (device, dataset cache), a progress sink, the cancellation flag, and the
//! key's progress checkpoints (to resume from, and to save into).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::StageError;
use super::dataset::DataCache;
use crate::cache::resume::{ResumeArea, SaveError, Snapshot};
use crate::nn::{
    Checkpoint, DeviceSpec, OptimState, Weights, load_checkpoint, load_optim_state,
    save_checkpoint, save_optim_state,
};

/// Receives progress from running stages (a bar on a terminal, plain lines otherwise).
pub trait ProgressSink: Send + Sync {
    fn progress(&self, stage: &str, done: u64, total: u64, message: &str);
}

/// A finished upstream entry, handed to a stage as one of its inputs.
#[derive(Debug, Clone)]
pub struct InputEntry {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub dir: PathBuf,
    /// The files the entry's manifest lists; a stage may read only these.
    pub files: Vec<String>,
    pub metrics: Value,
    pub params: Value,
}

impl InputEntry {
    /// The path of one of the entry's files, refusing files the entry did not publish.
    pub fn file(&self, name: &str) -> Result<PathBuf, StageError> {
        if self.files.iter().any(|f| f == name) {
            Ok(self.dir.join(name))
        } else {
            Err(StageError::Other(format!(
                "stage `{}` ({}) has no output `{name}`",
                self.name, self.kind
            )))
        }
    }

    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f == name)
    }

    pub fn load_checkpoint(&self, stem: &str) -> Result<Checkpoint, StageError> {
        self.file(&format!("{stem}.safetensors"))?;
        Ok(load_checkpoint(&self.dir, stem)?)
    }

    /// The optimiser state saved beside checkpoint `stem`, if any (see [`crate::nn::optim_state`]).
    pub fn load_optimizer(
        &self,
        stem: &str,
        weights: &Weights,
    ) -> Result<Option<OptimState>, StageError> {
        if !self.has_file(&format!("{stem}.optim.safetensors")) {
            return Ok(None);
        }
        Ok(load_optim_state(&self.dir, stem, weights)?)
    }

    /// The model this entry produced: `model.safetensors` for every model-producing kind.
    pub fn load_model(&self) -> Result<Checkpoint, StageError> {
        if !self.has_file("model.safetensors") {
            return Err(StageError::Other(format!(
                "stage `{}` is a `{}` stage, which produces no model; point this input at a stage that does (init, train, prune, rewind, reinit)",
                self.name, self.kind
            )));
        }
        self.load_checkpoint("model")
    }

    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, StageError> {
        let path = self.file(name)?;
        let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StageError::Other(format!("{}: {e}", path.display())))
    }
}

/// What stages of one process share at run time besides their inputs: the device they compute
/// on and the decoded datasets. Built at the edge (the command line) and handed through the
/// engine unopened, so that the scheduler knows nothing of devices or datasets.
pub struct Runtime {
    device: DeviceSpec,
    data: DataCache,
}

impl Runtime {
    pub fn new(device: DeviceSpec) -> Self {
        Runtime {
            device,
            data: DataCache::new(),
        }
    }
}

/// The progress checkpoints of the entry a stage computes (see [`crate::cache::resume`]).
pub struct Resume {
    pub area: ResumeArea,
    /// The newest valid checkpoint an earlier attempt left, if any.
    pub offered: Option<Snapshot>,
    /// How often a long stage saves one; `None`: never (`--checkpoint-every 0`).
    pub every: Option<Duration>,
}

pub struct StageContext<'a> {
    pub(crate) resume: Option<Resume>,
    pub(crate) resumed_at: Option<u64>,
    pub(crate) name: String,
    pub(crate) inputs: Vec<(String, Vec<InputEntry>)>,
    pub(crate) out_dir: PathBuf,
    pub(crate) metrics: Map<String, Value>,
    pub(crate) runtime: &'a Runtime,
    pub(crate) cancel: &'a AtomicBool,
    pub(crate) progress: &'a dyn ProgressSink,
    /// The job's current share of the cores, when it follows the work (`None`: its pool's
    /// size is fixed).
    pub(crate) cpu_share: Option<Arc<AtomicUsize>>,
}

impl<'a> StageContext<'a> {
    pub fn new(
        name: String,
        inputs: Vec<(String, Vec<InputEntry>)>,
        out_dir: PathBuf,
        runtime: &'a Runtime,
        cancel: &'a AtomicBool,
        progress: &'a dyn ProgressSink,
    ) -> Self {
        StageContext {
            resume: None,
            resumed_at: None,
            name,
            inputs,
            out_dir,
            metrics: Map::new(),
            runtime,
            cancel,
            progress,
            cpu_share: None,
        }
    }

    /// The same context with a share of the cores that changes as other jobs start and end.
    pub fn with_cpu_share(mut self, share: Option<Arc<AtomicUsize>>) -> Self {
        self.cpu_share = share;
        self
    }

    /// How many threads the stage should compute on now, when that follows the work: long
    /// stages read it between steps and move their arithmetic to a pool of that size
    /// (results do not depend on it). `None`: the pool the stage started on is its size.
    pub fn cpu_threads(&self) -> Option<usize> {
        Some(self.cpu_share.as_ref()?.load(Ordering::Relaxed))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same context with the key's progress checkpoints.
    pub fn with_resume(mut self, resume: Resume) -> Self {
        self.resume = Some(resume);
        self
    }

    /// The progress checkpoint an earlier attempt of this entry left, to continue from.
    pub fn resume_point(&self) -> Option<&Snapshot> {
        self.resume.as_ref()?.offered.as_ref()
    }

    /// Records that the stage continued from a progress checkpoint at `done` (the run
    /// summary counts resumed stages).
    pub fn mark_resumed(&mut self, done: u64) {
        self.resumed_at = Some(done);
    }

    /// Undoes [`StageContext::mark_resumed`]: the checkpoint turned out unusable and the
    /// stage started over.
    pub fn unmark_resumed(&mut self) {
        self.resumed_at = None;
    }

    /// Where the stage continued from, if it did.
    pub fn resumed_at(&self) -> Option<u64> {
        self.resumed_at
    }

    /// How often to save a progress checkpoint; `None`: never.
    pub fn checkpoint_every(&self) -> Option<Duration> {
        self.resume.as_ref()?.every
    }

    /// Saves a progress checkpoint at `done` of `total`: `write` fills the folder it is given,
    /// which becomes the checkpoint offered to the next attempt only once complete.
    pub fn save_progress(
        &self,
        done: u64,
        total: u64,
        write: impl FnOnce(&Path) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let Some(r) = &self.resume else {
            return Ok(());
        };
        match r.area.save(done, total, write) {
            Ok(_) => Ok(()),
            Err(SaveError::Stage(e)) => Err(e),
            Err(SaveError::Cache(e)) => Err(e.into()),
        }
    }

    /// The single stage bound to `role`.
    pub fn input(&self, role: &str) -> Result<&InputEntry, StageError> {
        match self.inputs(role) {
            [one] => Ok(one),
            [] => Err(StageError::Input {
                role: role.into(),
                message: "not given".into(),
            }),
            _ => Err(StageError::Input {
                role: role.into(),
                message: "expected one stage, got several".into(),
            }),
        }
    }

    pub fn inputs(&self, role: &str) -> &[InputEntry] {
        self.inputs
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub fn device(&self) -> &DeviceSpec {
        &self.runtime.device
    }

    pub fn data(&self) -> &DataCache {
        &self.runtime.data
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn progress(&self, done: u64, total: u64, message: &str) {
        self.progress.progress(&self.name, done, total, message);
    }

    pub fn set_metric(&mut self, name: &str, value: impl Into<Value>) {
        self.metrics.insert(name.to_string(), value.into());
    }

    pub fn metrics(&self) -> &Map<String, Value> {
        &self.metrics
    }

    pub fn save_model(&self, stem: &str, ckpt: &Checkpoint) -> Result<(), StageError> {
        if let Some(parent) = self.out_dir.join(stem).parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        save_checkpoint(&self.out_dir, stem, ckpt)?;
        Ok(())
    }

    /// Saves the optimiser state of checkpoint `stem` (whose weights are `weights`) beside it.
    pub fn save_optimizer(
        &self,
        stem: &str,
        weights: &Weights,
        state: &OptimState,
    ) -> Result<(), StageError> {
        Ok(save_optim_state(&self.out_dir, stem, weights, state)?)
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StageError> {
        let path = self.out_dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let text =
            serde_json::to_string_pretty(value).map_err(|e| StageError::Other(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))
    }
}
