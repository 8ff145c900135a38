//! Stage kinds: the contract between the engine and the science.
//!
//! A stage kind is one type implementing [`Stage`]: its name, its semantic version (bump it
//! whenever the meaning of its code changes, so that every cached result it produced is
//! re-keyed), its parameters as a serde struct with defaults and unknown fields refused, the
//! roles of the stages it consumes, and `run`. Adding a kind is adding one file here and one
//! line in [`Registry::builtin`]; the engine never special-cases a kind.

mod context;
pub mod dataset;
mod erased;

pub mod command;
pub mod correlate;
pub mod data_splits;
pub mod evaluate;
pub mod evaluations;
pub mod init;
pub mod lesion;
pub mod model_facts;
pub mod netaug_train;
pub mod path_gradients;
pub mod progress_checkpoints;
pub mod prune;
pub mod reinit;
pub mod repr_drop;
pub mod repr_reinit;
pub mod rewind;
pub mod teacher;
pub mod teacher_data;
pub mod train;

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use context::{InputEntry, ProgressSink, Resume, Runtime, StageContext};
pub use erased::{ParamError, StageKind};

/// One input slot of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub name: &'static str,
    pub required: bool,
    /// A list of stages (gathered, e.g. rows of a table) rather than one.
    pub many: bool,
    /// The artifact the slot takes (`"model"`), checked at plan time against what the
    /// producing kind declares in [`Stage::PRODUCES`]; `None` takes anything.
    pub accepts: Option<&'static str>,
}

impl Role {
    pub const fn one(name: &'static str) -> Role {
        Role {
            name,
            required: true,
            many: false,
            accepts: None,
        }
    }
    pub const fn optional(name: &'static str) -> Role {
        Role {
            name,
            required: false,
            many: false,
            accepts: None,
        }
    }
    /// An optional slot taking a list of stages.
    pub const fn many(name: &'static str) -> Role {
        Role {
            name,
            required: false,
            many: true,
            accepts: None,
        }
    }
    /// Any role name the pipeline writes, each bound to one stage or a list (a kind that
    /// hands its inputs on unread, such as `command`). Written `*` in `pipe kinds`.
    pub const fn any() -> Role {
        Role {
            name: ANY_ROLE,
            required: false,
            many: true,
            accepts: None,
        }
    }
    /// The same slot, taking only `artifact`.
    pub const fn taking(self, artifact: &'static str) -> Role {
        Role {
            accepts: Some(artifact),
            ..self
        }
    }
}

/// The name of [`Role::any`].
pub const ANY_ROLE: &str = "*";

/// The artifact of the model-producing kinds: a checkpoint (`model.*`) that `train`,
/// `prune`, `rewind`, `reinit` and `evaluate` consume. A kind defined outside the crate that
/// writes one declares `PRODUCES = Some(MODEL)` and can feed them.
pub const MODEL: &str = "model";

/// What a stage can learn about the stages it consumes before anything runs, so that
/// cross-stage mistakes (rewinding to an iteration that was never saved) fail at plan time.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub name: String,
    pub kind: String,
    pub params: Value,
    /// What its kind declares it produces ([`Stage::PRODUCES`]).
    pub produces: Option<&'static str>,
    /// What its kind derived at plan time ([`Stage::facts`]): opaque to the engine.
    pub facts: Value,
}

/// Errors a stage raises while running.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("input `{role}`: {message}")]
    Input { role: String, message: String },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("interrupted")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            StageError::Cancelled | StageError::Nn(crate::nn::NnError::Cancelled)
        )
    }
}

/// The typed side of a stage kind; see the module documentation.
pub trait Stage: Send + Sync + 'static {
    type Params: Serialize + DeserializeOwned + Send + Sync;
    const KIND: &'static str;
    const VERSION: u32;
    const ROLES: &'static [Role];
    /// One line for `pipe kinds`.
    const ABOUT: &'static str;

    /// Files whose content enters the key (dataset files), so that changed data re-runs the
    /// stage while a moved dataset does not.
    fn external_inputs(&self, _params: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Files and folders (their files, sorted) whose content enters the key under the path as
    /// written (a user's script), so that an edit re-runs the stage. Unlike
    /// `external_inputs`, whose files are keyed by file name, two deps of the same file name
    /// in different folders are two entries; a dep that does not exist is a plan-time error.
    fn deps(&self, _params: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The parameters as they enter the key: fields that only locate things (a dataset's
    /// directory) are removed here, their content being keyed through `external_inputs`.
    fn key_params(&self, params: Value) -> Value {
        params
    }

    /// The artifact this kind produces, that other kinds' roles may take (see [`Role::accepts`]).
    const PRODUCES: Option<&'static str> = None;

    /// What a stage of these parameters produces, for a kind whose artifact the pipeline
    /// chooses (`command`'s `produces:`); [`Stage::PRODUCES`] otherwise.
    fn produces_for(&self, _params: &Self::Params) -> Option<&'static str> {
        Self::PRODUCES
    }

    /// The metrics this kind can set, as patterns (`*` matches any run of characters:
    /// `density_*`, `single.*`). `plan` checks every metric a `report:`, `claims:` or `plots:`
    /// names against the kinds of the stages it selects, before anything trains; a stage
    /// that sets a metric outside its patterns is a bug, caught in debug builds. The default,
    /// `*`, declares nothing (a kind whose metrics are known only once it has run).
    const METRICS: &'static [&'static str] = &["*"];

    /// Facts about the output known at plan time (for a model: its architecture and the
    /// iterations a training saves), from the parameters and the inputs' own facts. The
    /// engine passes them, unread, to the consuming stages' `check`.
    fn facts(&self, _params: &Self::Params, _inputs: &[(String, Vec<UpstreamInfo>)]) -> Value {
        Value::Null
    }

    /// Checks that need the consumed stages' kinds and parameters.
    fn check(
        &self,
        _params: &Self::Params,
        _inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        Ok(())
    }

    /// Runs the stage: read inputs through `ctx`, write artifacts into `ctx.out_dir()`, set
    /// metrics. Must return `StageError::Cancelled` promptly once `ctx.cancelled()`.
    fn run(&self, params: &Self::Params, ctx: &mut StageContext) -> Result<(), StageError>;
}

/// The stage kinds a binary knows.
pub struct Registry {
    kinds: Vec<Box<dyn StageKind>>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry { kinds: Vec::new() }
    }

    /// The real stage kinds shipped in `pipe`.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        r.register(init::Init);
        r.register(train::Train);
        r.register(prune::Prune);
        r.register(rewind::Rewind);
        r.register(reinit::Reinit);
        r.register(evaluate::Evaluate);
        r.register(teacher::Teacher);
        r.register(teacher_data::TeacherData);
        r.register(correlate::Correlate);
        r.register(repr_drop::ReprDrop);
        r.register(repr_reinit::ReprReinit);
        r.register(lesion::Lesion);
        r.register(path_gradients::PathGradients);
        r.register(netaug_train::NetAugTrain);
        r.register(data_splits::DataSplits);
        r.register(command::Command);
        r
    }

    pub fn register<S: Stage>(&mut self, stage: S) {
        assert!(
            self.get(S::KIND).is_none(),
            "stage kind `{}` registered twice",
            S::KIND
        );
        self.kinds.push(Box::new(erased::Typed(stage)));
    }

    pub fn get(&self, kind: &str) -> Option<&dyn StageKind> {
        self.kinds
            .iter()
            .find(|k| k.kind() == kind)
            .map(|b| b.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.kind()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn StageKind> {
        self.kinds.iter().map(|b| b.as_ref())
    }
}
