//! The object-safe face of [`Stage`], so that the engine can hold kinds of different parameter
//! types in one registry and speak to them in JSON.

use std::path::PathBuf;

use serde_json::Value;

use super::{Role, Stage, StageContext, StageError, UpstreamInfo};

/// A parameter error with the path of the offending field (e.g. `["data", "val_size"]`).
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: Vec<String>,
    pub message: String,
}

pub trait StageKind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn roles(&self) -> &'static [Role];
    fn about(&self) -> &'static str;
    /// Deserialises the parameters (defaults applied, unknown fields refused) and returns
    /// them in canonical form: every field present, so that writing a default explicitly and
    /// leaving it out give the same key.
    fn normalize(&self, params: &Value) -> Result<Value, ParamError>;
    fn external_inputs(&self, params: &Value) -> Vec<PathBuf>;
    fn key_params(&self, params: Value) -> Value;
    fn deps(&self, params: &Value) -> Vec<PathBuf>;
    /// What a stage of these (normalised) parameters produces.
    fn produces_for(&self, params: &Value) -> Option<&'static str>;
    fn check(&self, params: &Value, inputs: &[(String, Vec<UpstreamInfo>)]) -> Result<(), String>;
    fn produces(&self) -> Option<&'static str>;
    fn metrics(&self) -> &'static [&'static str];
    /// Every parameter the kind accepts, as written in YAML, in declaration order.
    fn fields(&self) -> Vec<&'static str>;
    fn facts(&self, params: &Value, inputs: &[(String, Vec<UpstreamInfo>)]) -> Value;
    fn run(&self, params: &Value, ctx: &mut StageContext) -> Result<(), StageError>;
}

pub(super) struct Typed<S>(pub S);

fn typed<P: serde::de::DeserializeOwned>(v: &Value) -> Result<P, ParamError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        ParamError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

impl<S: Stage> StageKind for Typed<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn roles(&self) -> &'static [Role] {
        S::ROLES
    }
    fn about(&self) -> &'static str {
        S::ABOUT
    }
    fn normalize(&self, params: &Value) -> Result<Value, ParamError> {
        let p: S::Params = typed(params)?;
        serde_json::to_value(&p).map_err(|e| ParamError {
            path: Vec::new(),
            message: e.to_string(),
        })
    }
    fn external_inputs(&self, params: &Value) -> Vec<PathBuf> {
        match typed::<S::Params>(params) {
            Ok(p) => self.0.external_inputs(&p),
            Err(_) => Vec::new(),
        }
    }
    fn key_params(&self, params: Value) -> Value {
        self.0.key_params(params)
    }
    fn deps(&self, params: &Value) -> Vec<PathBuf> {
        match typed::<S::Params>(params) {
            Ok(p) => self.0.deps(&p),
            Err(_) => Vec::new(),
        }
    }
    fn produces_for(&self, params: &Value) -> Option<&'static str> {
        match typed::<S::Params>(params) {
            Ok(p) => self.0.produces_for(&p),
            Err(_) => S::PRODUCES,
        }
    }
    fn check(&self, params: &Value, inputs: &[(String, Vec<UpstreamInfo>)]) -> Result<(), String> {
        let p: S::Params = typed(params).map_err(|e| e.message)?;
        self.0.check(&p, inputs)
    }
    fn metrics(&self) -> &'static [&'static str] {
        S::METRICS
    }
    fn fields(&self) -> Vec<&'static str> {
        crate::serde_fields::field_names::<S::Params>()
    }
    fn produces(&self) -> Option<&'static str> {
        S::PRODUCES
    }
    fn facts(&self, params: &Value, inputs: &[(String, Vec<UpstreamInfo>)]) -> Value {
        match typed::<S::Params>(params) {
            Ok(p) => self.0.facts(&p, inputs),
            Err(_) => Value::Null,
        }
    }
    fn run(&self, params: &Value, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: S::Params = typed(params).map_err(|e| StageError::Other(e.message))?;
        self.0.run(&p, ctx)
    }
}
