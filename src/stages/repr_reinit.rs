//! `repr_reinit`: RePr's re-introduction. Takes the model trained while filters were dropped
//! (`model`) and the `repr_drop` stage that dropped them (`drop`), and brings the dropped
//! filters back orthogonal to the surviving filters and to their own values at drop time
//! (null space by pivoted Householder QR, [`crate::nn::methods::repr::reintroduce`]). Biases of the
//! re-introduced filters restart at 0, their batch-norm entries at scale 1, shift 0, running
//! mean 0 and variance 1. The drop's mask is removed: the output has the mask the model had
//! before the drop (dense, or a pruning mask, which is kept).

use serde::{Deserialize, Serialize};

use super::model_facts::ModelFacts;
use super::repr_drop::DropRecord;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::Checkpoint;
use crate::nn::methods::repr::{ReinitScale, conv_layers, reintroduce, restore_mask};
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReprReinitParams {
    /// How a unit null-space vector becomes a filter: `clamp` (each element to ±1/√fan_in, as
    /// the public re-implementation siahuat0727/RePr does; nearly orthogonal) or `max_abs`
    /// (scaled so the largest element is 1/√fan_in; exactly orthogonal).
    #[serde(default = "clamp")]
    pub scale: ReinitScale,
    /// Seed of the U(±1/√fan_in) filters drawn when a layer's null space is too small.
    #[serde(default)]
    pub seed: u64,
}

fn clamp() -> ReinitScale {
    ReinitScale::Clamp
}

pub struct ReprReinit;

impl Stage for ReprReinit {
    type Params = ReprReinitParams;
    const KIND: &'static str = "repr_reinit";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[
        Role::one("model").taking(MODEL),
        Role::one("drop").taking(MODEL),
    ];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "RePr: re-introduces a repr_drop's filters orthogonal to the survivors and their old values {scale, seed}";
    const METRICS: &'static [&'static str] = &[
        "reintroduced_filters",
        "fallback_filters",
        "max_abs_cos",
        "remaining_pct",
        "null_dim_*",
        "fallback_*",
    ];

    fn check(
        &self,
        _p: &ReprReinitParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        if let Some((d, _)) = ModelFacts::input(inputs, "drop")
            && d.kind != "repr_drop"
        {
            return Err(format!(
                "`drop` must be the repr_drop stage whose filters come back; `{}` is a `{}` stage",
                d.name, d.kind
            ));
        }
        if let (Some(a), Some(b)) = (
            ModelFacts::spec_of(inputs, "model"),
            ModelFacts::spec_of(inputs, "drop"),
        ) && a != b
        {
            return Err(
                "`model` and `drop` are models of different architectures; `model` should be \
                 the training that followed `drop`"
                    .into(),
            );
        }
        Ok(())
    }

    fn facts(
        &self,
        _p: &ReprReinitParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> serde_json::Value {
        ModelFacts::of_spec(ModelFacts::spec_of(inputs, "model")).to_value()
    }

    fn run(&self, p: &ReprReinitParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let now = ctx.input("model")?.load_model()?;
        let drop_entry = ctx.input("drop")?;
        let record: DropRecord = drop_entry.read_json("dropped.json")?;
        let at_drop = drop_entry.load_checkpoint("at_drop")?;
        let input_err = |role: &str, message: String| StageError::Input {
            role: role.into(),
            message,
        };
        if now.spec != at_drop.spec {
            return Err(input_err(
                "model",
                "its architecture differs from the dropped model's".into(),
            ));
        }
        let program = now.spec.program().map_err(StageError::Other)?;
        let all = conv_layers(&program);
        let mut convs = Vec::new();
        let mut drops = Vec::new();
        for l in &record.layers {
            let c = all.iter().find(|c| c.conv == l.conv).ok_or_else(|| {
                input_err("drop", format!("names conv `{}`, unknown here", l.conv))
            })?;
            convs.push(c.clone());
            drops.push(l.dropped.clone());
        }
        // The model must be the drop's descendant: its dropped filters still masked.
        let names = now.spec.prunable();
        for (c, d) in convs.iter().zip(&drops) {
            let k = names
                .iter()
                .position(|n| *n == format!("{}.weight", c.conv))
                .expect("a conv weight is prunable");
            if let Some(&f) = d
                .iter()
                .find(|&&f| now.mask.layers[k][f * c.fan_in..(f + 1) * c.fan_in].contains(&true))
            {
                return Err(input_err(
                    "model",
                    format!(
                        "filter {f} of {} is not masked, so this model was not trained from the \
                         `drop` stage's output; point `model` at the training that followed it",
                        c.conv
                    ),
                ));
            }
        }
        let (mut weights, report) = reintroduce(
            &now.weights,
            &at_drop.weights,
            &convs,
            &drops,
            p.scale,
            p.seed,
        )?;
        let mask = restore_mask(&now.spec, &now.mask, &at_drop.mask, &convs, &drops)?;
        // Elements pruned before the drop stay pruned in the re-introduced filters.
        weights.apply_mask(&mask);

        let scale = match p.scale {
            ReinitScale::Clamp => {
                "each new filter = a unit null-space vector clamped element-wise to ±1/√fan_in \
                 (as siahuat0727/RePr; the clamp makes it nearly, not exactly, orthogonal)"
            }
            ReinitScale::MaxAbs => {
                "each new filter = a unit null-space vector scaled so its largest element is \
                 1/√fan_in (exactly orthogonal)"
            }
        };
        let mut log = format!(
            "repr_reinit: {scale}; fewer null-space vectors than dropped filters → the rest \
             from U(±1/√fan_in) (seed {}); biases 0; batch norm scale 1, shift 0, running mean \
             0, var 1; the next layer's weights unchanged\n",
            p.seed
        );
        let (mut fallback, mut back, mut max_cos) = (0, 0, 0.0f64);
        for r in &report {
            log.push_str(&format!(
                "  {}: {} filters back {:?}, null space {} dims, {} fallback, max |cos| to \
                 survivors/old values {:.2e}\n",
                r.conv,
                r.filters.len(),
                r.filters,
                r.null_dim,
                r.fallback,
                r.max_abs_cos
            ));
            fallback += r.fallback;
            back += r.filters.len();
            max_cos = max_cos.max(r.max_abs_cos);
            ctx.set_metric(&format!("null_dim_{}", r.conv), r.null_dim as u64);
            ctx.set_metric(&format!("fallback_{}", r.conv), r.fallback as u64);
        }
        tracing::info!(stage = ctx.name(), "{}", log.trim_end());
        std::fs::write(ctx.out_dir().join("repr.log"), &log)
            .map_err(|e| StageError::io(ctx.out_dir().join("repr.log"), e))?;
        ctx.write_json("reinit.json", &report)?;
        ctx.set_metric("reintroduced_filters", back as u64);
        ctx.set_metric("fallback_filters", fallback as u64);
        ctx.set_metric("max_abs_cos", max_cos);
        ctx.set_metric("remaining_pct", round4(mask.remaining_fraction() * 100.0));
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: now.spec,
                weights,
                mask,
                step: now.step,
                seed: now.seed,
            },
        )
    }
}
