//! `command`: a user's own program (a PyTorch script) as a stage, under the same cache, keys,
//! reports and executors as the built-in kinds.
//!
//! The program runs in the directory `pipe run` runs in, with `PIPE_OUT` (an empty folder:
//! what it writes there becomes the entry, only if it exits 0), `PIPE_PARAMS` (a JSON file of
//! `params`), `PIPE_INPUTS` (a JSON file: role → the input entries' folders, files, metrics and
//! parameters), `PIPE_SEED`, `PIPE_THREADS`, `PIPE_DEVICE` and `PIPE_STAGE`. It reports metrics
//! in `$PIPE_OUT/metrics.json` and may leave a `curve.json` in `train`'s layout; a stage that
//! declares `produces: model` must leave a model in pipe's layout, which is checked against its
//! spec and rewritten canonically, so that `prune`, `rewind`, `evaluate` and `lesion` take it
//! as they take a model `train` made. See the README, "Your own code".
//!
//! The key holds `run`/`shell`, `params`, `seed`, `produces`, the digest of every file `deps`
//! names (see [`super::Stage::deps`]) and the inputs' keys; the environment, the thread count,
//! the device and `timeout` stay out.

mod output;
mod process;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use super::{MODEL, Role, Stage, StageContext, StageError};
use crate::data::generated::DATASET;

/// The folder of the entry that holds pipe's own files about the run (its log, and the
/// parameters and inputs the program was given); a program may not write it.
pub const OWN_DIR: &str = "command";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Produces {
    Model,
    Dataset,
    Curve,
    #[default]
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program and its arguments, run without a shell (numbers are taken as written).
    #[serde(
        default,
        deserialize_with = "argv",
        skip_serializing_if = "Option::is_none"
    )]
    pub run: Option<Vec<String>>,
    /// A command line for `sh -c`, instead of `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Files and folders whose content enters the key.
    #[serde(default)]
    pub deps: Vec<PathBuf>,
    /// Free-form parameters, handed to the program in `PIPE_PARAMS`.
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub produces: Produces,
    /// `PIPE_SEED`.
    #[serde(default = "one")]
    pub seed: u64,
    /// Stop the program after this long (`30m`); not in the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

fn one() -> u64 {
    1
}

/// `run:` as a list of strings, numbers and booleans taken as written (`--epochs, 3`).
fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let items: Option<Vec<Value>> = Option::deserialize(d)?;
    let Some(items) = items else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "`run` takes a list of words (strings or numbers), not {other}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl CommandParams {
    /// The program and its arguments, checked.
    fn argv(&self) -> Result<Vec<String>, String> {
        match (&self.run, &self.shell) {
            (Some(_), Some(_)) => Err(
                "give either `run` (a list of words) or `shell` (a command line), not both".into(),
            ),
            (None, None) => Err(
                "a command stage needs `run: [program, arg, ...]` or `shell: \"command line\"`"
                    .into(),
            ),
            (Some(argv), None) if argv.is_empty() || argv[0].is_empty() => {
                Err("`run` is empty; write `run: [program, arg, ...]`".into())
            }
            (Some(argv), None) => Ok(argv.clone()),
            (None, Some(line)) => Ok(vec!["sh".into(), "-c".into(), line.clone()]),
        }
    }

    fn timeout(&self) -> Result<Option<Duration>, String> {
        match &self.timeout {
            None => Ok(None),
            Some(t) => match crate::clock::parse_duration(t) {
                Ok(d) if d.is_zero() => Ok(None),
                Ok(d) => Ok(Some(d)),
                Err(e) => Err(format!("timeout: {e}")),
            },
        }
    }
}

pub struct Command;

impl Stage for Command {
    type Params = CommandParams;
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::any()];
    const ABOUT: &'static str = "runs your program (a PyTorch script) with PIPE_OUT, PIPE_PARAMS, PIPE_INPUTS, ...; its metrics.json are the stage's metrics {run | shell, deps, params, produces, seed, timeout}; inputs: any roles";

    fn deps(&self, p: &CommandParams) -> Vec<PathBuf> {
        p.deps.clone()
    }

    fn produces_for(&self, p: &CommandParams) -> Option<&'static str> {
        match p.produces {
            Produces::Model => Some(MODEL),
            Produces::Dataset => Some(DATASET),
            Produces::Curve => Some("curve"),
            Produces::None => None,
        }
    }

    /// `timeout` changes whether a run finishes, not what it computes.
    fn key_params(&self, mut params: Value) -> Value {
        if let Some(m) = params.as_object_mut() {
            m.remove("timeout");
        }
        params
    }

    fn check(
        &self,
        p: &CommandParams,
        _inputs: &[(String, Vec<super::UpstreamInfo>)],
    ) -> Result<(), String> {
        p.argv()?;
        p.timeout()?;
        Ok(())
    }

    fn run(&self, p: &CommandParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let argv = p.argv().map_err(StageError::Other)?;
        let timeout = p.timeout().map_err(StageError::Other)?;
        let own = ctx.out_dir().join(OWN_DIR);
        let out = ctx.out_dir().join(".out");
        for d in [&own, &out] {
            std::fs::create_dir_all(d).map_err(|e| StageError::io(d, e))?;
        }
        let params_file = own.join("params.json");
        let inputs_file = own.join("inputs.json");
        ctx.write_json(&format!("{OWN_DIR}/params.json"), &p.params)?;
        ctx.write_json(&format!("{OWN_DIR}/inputs.json"), &inputs_json(ctx))?;
        let threads = ctx
            .cpu_threads()
            .unwrap_or_else(rayon::current_num_threads)
            .max(1);
        let env = vec![
            ("PIPE_OUT", absolute(&out)),
            ("PIPE_PARAMS", absolute(&params_file)),
            ("PIPE_INPUTS", absolute(&inputs_file)),
            ("PIPE_SEED", p.seed.to_string()),
            ("PIPE_THREADS", threads.to_string()),
            ("PIPE_DEVICE", ctx.device().to_string()),
            ("PIPE_STAGE", ctx.name().to_string()),
        ];
        process::run(
            ctx,
            &process::Job {
                argv: &argv,
                env: &env,
                threads,
                timeout: timeout.zip(p.timeout.as_deref()),
                log: &own.join("log.txt"),
            },
        )?;
        output::collect(ctx, &out, p.produces)
    }
}

fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// `PIPE_INPUTS`: per role, the input entries as a script needs them.
fn inputs_json(ctx: &StageContext) -> Value {
    let mut roles = Map::new();
    for (role, entries) in &ctx.inputs {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "kind": e.kind,
                    "key": e.key,
                    "dir": absolute(&e.dir),
                    "files": e.files,
                    "metrics": e.metrics,
                    "params": e.params,
                })
            })
            .collect();
        roles.insert(role.clone(), Value::Array(list));
    }
    Value::Object(roles)
}
