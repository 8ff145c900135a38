//! When a training stage hands its state over for a progress checkpoint: every
//! `--checkpoint-every`, and when the run is stopped from outside (Ctrl-C, SIGTERM from
//! Slurm). Shared by the stages that train, so that they stop and save alike.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{StageContext, StageError};
use crate::nn::{Directive, NnError, Progress};

/// The state an earlier attempt of this entry left in a progress checkpoint, read by `load`,
/// with the iterations it has done (`done`); `check` says why a state that reads is not one
/// this training can continue from. A checkpoint that does not read or fit is passed over
/// with a warning, and the training starts from its input.
pub fn resume_point<S>(
    ctx: &mut StageContext,
    load: impl FnOnce(&Path) -> Result<S, NnError>,
    done: impl Fn(&S) -> u64,
    check: impl FnOnce(&S) -> Result<(), String>,
) -> Option<S> {
    let snap = ctx.resume_point()?.clone();
    let problem = match load(&snap.dir) {
        Ok(state) => match check(&state) {
            Ok(()) => {
                tracing::info!(
                    stage = ctx.name(),
                    "resuming at iteration {}/{}",
                    done(&state),
                    snap.total
                );
                ctx.mark_resumed(done(&state));
                return Some(state);
            }
            Err(why) => format!("at iteration {}: {why}", done(&state)),
        },
        Err(e) => format!("unreadable ({e})"),
    };
    tracing::warn!(
        "{}: progress checkpoint {} {problem}; starting over",
        ctx.name(),
        snap.dir.display()
    );
    None
}

pub struct CheckpointClock {
    every: Option<Duration>,
    last: Instant,
}

impl CheckpointClock {
    /// Starts the interval now, at the stage's `--checkpoint-every`.
    pub fn new(ctx: &StageContext) -> CheckpointClock {
        CheckpointClock {
            every: ctx.checkpoint_every(),
            last: Instant::now(),
        }
    }

    /// What the loop does after `progress`: stop when cancelled (handing its state over
    /// first, unless checkpoints are off), hand it over when the interval has passed (never
    /// after the last step: the entry is about to be published), else go on.
    pub fn directive(&self, ctx: &StageContext, progress: &Progress) -> Directive {
        match self.every {
            Some(_) if ctx.cancelled() => Directive::CheckpointAndStop,
            None if ctx.cancelled() => Directive::Stop,
            Some(every) if progress.iteration < progress.total && self.last.elapsed() >= every => {
                Directive::Checkpoint
            }
            _ => Directive::Continue,
        }
    }

    /// Saves a progress checkpoint at `done` of `total` through `write`. A checkpoint only
    /// saves time: one that cannot be written (a full disk) is reported and the training
    /// goes on.
    pub fn save(
        &mut self,
        ctx: &StageContext,
        done: u64,
        total: u64,
        write: impl FnOnce(&Path) -> Result<(), NnError>,
    ) {
        let saved = ctx.save_progress(done, total, |dir| write(dir).map_err(StageError::from));
        if let Err(e) = saved {
            tracing::warn!(
                "{}: progress checkpoint at iteration {done} not saved: {e}",
                ctx.name()
            );
        }
        self.last = Instant::now();
    }
}
