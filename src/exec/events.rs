//! What the scheduler reports while it runs, and the two ways of showing it: plain lines
//! (deterministic, for CI, pipes and tests) and indicatif bars on a terminal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::stages::ProgressSink;

#[derive(Debug, Clone)]
pub enum Event<'a> {
    Hit {
        name: &'a str,
        key: &'a str,
    },
    Start {
        name: &'a str,
        key: &'a str,
    },
    /// Another process holds the key's lock; we wait, then (usually) hit.
    Waiting {
        name: &'a str,
    },
    Done {
        name: &'a str,
        seconds: f64,
        headline: &'a str,
    },
    Failed {
        name: &'a str,
        error: &'a str,
        /// Shown under the error (a remote job's log tail).
        detail: Option<&'a str>,
    },
    /// Handed to an executor whose jobs run elsewhere (a Slurm job id).
    Submitted {
        name: &'a str,
        key: &'a str,
        ticket: &'a str,
        executor: &'a str,
        /// Already in flight from an earlier run; followed, not submitted again.
        adopted: bool,
    },
    Skipped {
        name: &'a str,
        because: &'a str,
    },
    Corrupt {
        name: &'a str,
        reason: &'a str,
    },
}

pub trait EventSink: ProgressSink {
    fn event(&self, e: &Event);
    /// Called once at the end so bars can be cleared before the summary prints.
    fn finish(&self) {}
}

/// One line per event on stderr, nothing that varies between identical runs except what the
/// stage reports. Progress lines are throttled to every 10% of a stage.
pub struct PlainSink {
    last: Mutex<HashMap<String, u64>>,
    quiet: bool,
}

impl PlainSink {
    pub fn new(quiet: bool) -> Self {
        PlainSink {
            last: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    fn line(&self, s: &str) {
        if !self.quiet {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{s}");
        }
    }
}

impl ProgressSink for PlainSink {
    fn progress(&self, stage: &str, done: u64, total: u64, message: &str) {
        if total == 0 {
            return;
        }
        let decile = done * 10 / total;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.entry(stage.to_string()).or_insert(0);
        if decile > *prev && done < total {
            *prev = decile;
            drop(last);
            self.line(&format!("  {stage}: {done}/{total} {message}"));
        }
    }
}

impl EventSink for PlainSink {
    fn event(&self, e: &Event) {
        match e {
            Event::Hit { name, key } => self.line(&format!("hit     {name} ({})", &key[..12])),
            Event::Start { name, key } => self.line(&format!("run     {name} ({})", &key[..12])),
            Event::Waiting { name } => self.line(&format!(
                "wait    {name}: another pipe process is computing it"
            )),
            Event::Done { name, headline, .. } => {
                if headline.is_empty() {
                    self.line(&format!("done    {name}"))
                } else {
                    self.line(&format!("done    {name}: {headline}"))
                }
            }
            Event::Failed {
                name,
                error,
                detail,
            } => {
                self.line(&format!("FAILED  {name}: {error}"));
                if let Some(d) = detail {
                    self.line(&indent(d));
                }
            }
            Event::Submitted { .. } => self.line(&submitted_line(e)),
            Event::Skipped { name, because } => self.line(&format!("skip    {name}: {because}")),
            Event::Corrupt { name, reason } => {
                self.line(&format!("CORRUPT {name}: {reason}; recomputing"))
            }
        }
    }
}

fn submitted_line(e: &Event) -> String {
    let Event::Submitted {
        name,
        key,
        ticket,
        executor,
        adopted,
    } = e
    else {
        return String::new();
    };
    if *adopted {
        format!(
            "follow  {name} ({}): {executor} job {ticket}, submitted earlier",
            &key[..12]
        )
    } else {
        format!("submit  {name} ({}): {executor} job {ticket}", &key[..12])
    }
}

/// Every line of `text`, indented under an event line.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("        | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A bar per running stage on a terminal.
pub struct BarSink {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl BarSink {
    pub fn new() -> Self {
        BarSink {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for BarSink {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for BarSink {
    fn progress(&self, stage: &str, done: u64, total: u64, message: &str) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = bars.get(stage) {
            if b.length() != Some(total) {
                b.set_length(total);
            }
            b.set_position(done);
            b.set_message(message.to_string());
        }
    }
}

impl EventSink for BarSink {
    fn event(&self, e: &Event) {
        match e {
            Event::Start { name, .. } => {
                let b = self.multi.add(ProgressBar::new(1));
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:30!} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(name.to_string());
                b.enable_steady_tick(Duration::from_millis(200));
                self.bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), b);
            }
            Event::Done { name, headline, .. } => {
                if let Some(b) = self
                    .bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(*name)
                {
                    b.finish_and_clear();
                }
                let _ = self.multi.println(if headline.is_empty() {
                    format!("done    {name}")
                } else {
                    format!("done    {name}: {headline}")
                });
            }
            Event::Failed {
                name,
                error,
                detail,
            } => {
                if let Some(b) = self
                    .bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(*name)
                {
                    b.abandon();
                }
                let _ = self.multi.println(format!("FAILED  {name}: {error}"));
                if let Some(d) = detail {
                    let _ = self.multi.println(indent(d));
                }
            }
            Event::Hit { name, .. } => {
                let _ = self.multi.println(format!("hit     {name}"));
            }
            Event::Submitted { .. } => {
                let _ = self.multi.println(submitted_line(e));
            }
            Event::Waiting { name } => {
                let _ = self.multi.println(format!(
                    "wait    {name}: another pipe process is computing it"
                ));
            }
            Event::Skipped { name, because } => {
                let _ = self.multi.println(format!("skip    {name}: {because}"));
            }
            Event::Corrupt { name, reason } => {
                let _ = self
                    .multi
                    .println(format!("CORRUPT {name}: {reason}; recomputing"));
            }
        }
    }

    fn finish(&self) {
        let _ = self.multi.clear();
    }
}
