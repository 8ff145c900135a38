//! `toy`: a tiny stage kind for exercising the engine without training anything.
//!
//! It adds its `value` to the totals of the stages it consumes and writes the result. It can
//! sleep (to be interrupted or raced), fail on purpose, and append its name to a log file each
//! time it actually computes (so tests can count computations). The sleep and the log are
//! scheduling details, removed from the key.

use std::io::Write;
use std::time::Duration;

use pipe::stages::{Role, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ToyParams {
    #[serde(default)]
    pub value: f64,
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail: bool,
    #[serde(default)]
    pub log: Option<String>,
}

pub struct Toy;

impl Stage for Toy {
    type Params = ToyParams;
    const KIND: &'static str = "toy";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::optional("input"), Role::many("inputs")];
    const ABOUT: &'static str =
        "adds `value` to its inputs' totals (engine tests) {value, sleep_ms, fail, log}";

    fn key_params(&self, mut params: serde_json::Value) -> serde_json::Value {
        if let Some(m) = params.as_object_mut() {
            m.remove("sleep_ms");
            m.remove("log");
        }
        params
    }

    fn run(&self, p: &ToyParams, ctx: &mut StageContext) -> Result<(), StageError> {
        if let Some(log) = &p.log {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| StageError::io(log, e))?;
            // One write of the whole line: `writeln!` on a file issues the name and the newline
            // as separate writes, which two stages appending at once can interleave.
            f.write_all(format!("{}\n", ctx.name()).as_bytes())
                .map_err(|e| StageError::io(log, e))?;
        }
        let steps = p.sleep_ms / 10;
        for i in 0..steps {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            ctx.progress(i, steps, "sleeping");
            std::thread::sleep(Duration::from_millis(10));
        }
        if p.fail {
            return Err(StageError::Other("failed on purpose (fail: true)".into()));
        }
        let mut total = p.value;
        for role in ["input", "inputs"] {
            for e in ctx.inputs(role) {
                let v: serde_json::Value = e.read_json("total.json")?;
                total += v["total"].as_f64().unwrap_or(0.0);
            }
        }
        ctx.write_json("total.json", &serde_json::json!({ "total": total }))?;
        ctx.set_metric("total", total);
        Ok(())
    }
}
