//! What the scheduler reports while it runs, and the two ways of showing it: plain lines
//! (deterministic, for CI, pipes and tests) and indicatif bars on a terminal.
//!
//! Both can follow the whole pipeline ([`Overview`]): stages done / running / to do, and on a
//! terminal an ETA from how long similar stages took before: the same stage in earlier runs'
//! records, else stages of the same kind, in earlier runs and in this run as they finish.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// One stage of the plan as the progress view sees it.
#[derive(Debug, Clone)]
pub struct PlannedItem {
    pub name: String,
    pub key: String,
    pub kind: String,
    /// A cache hit at planning time: costs nothing.
    pub cached: bool,
}

/// How long a stage is expected to take. The closest match in earlier runs gives the base: the
/// same stage (by name) — a re-run after an upstream change recomputes stages of the same
/// shape — else the mean of its kind. Stages of this run correct it as they finish: the ratio of
/// their actual to their expected durations, per kind, scales the base (a changed iteration
/// count makes every training of the run longer by about the same factor). A kind with no
/// history goes by this run's mean for it.
#[derive(Debug, Clone, Default)]
pub struct Estimates {
    by_name: HashMap<String, (f64, u32)>,
    by_kind: HashMap<String, (f64, u32)>,
    /// This run, per kind: (actual seconds, expected seconds) of finished stages that had a base.
    drift: HashMap<String, (f64, f64)>,
    /// This run's finished durations per kind.
    this_run: HashMap<String, (f64, u32)>,
}

fn add(map: &mut HashMap<String, (f64, u32)>, k: &str, seconds: f64) {
    let slot = map.entry(k.to_string()).or_insert((0.0, 0));
    slot.0 += seconds;
    slot.1 += 1;
}

fn mean(map: &HashMap<String, (f64, u32)>, k: &str) -> Option<f64> {
    map.get(k)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| s / f64::from(*n))
}

impl Estimates {
    /// From (stage name, kind, seconds) of stages that ran before.
    pub fn from_history(history: impl IntoIterator<Item = (String, String, f64)>) -> Self {
        let mut e = Estimates::default();
        for (name, kind, s) in history {
            if s.is_finite() && s >= 0.0 {
                add(&mut e.by_name, &name, s);
                add(&mut e.by_kind, &kind, s);
            }
        }
        e
    }

    /// The uncorrected expectation from earlier runs.
    fn base(&self, name: &str, kind: &str) -> Option<f64> {
        mean(&self.by_name, name).or_else(|| mean(&self.by_kind, kind))
    }

    /// Stage `name` of this run finished in `seconds`.
    pub fn record(&mut self, name: &str, kind: &str, seconds: f64) {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        if let Some(expected) = self.base(name, kind) {
            let d = self.drift.entry(kind.to_string()).or_insert((0.0, 0.0));
            d.0 += seconds;
            d.1 += expected;
        }
        add(&mut self.this_run, kind, seconds);
    }

    /// The expected seconds of stage `name` of kind `kind`, if anything is known.
    pub fn get(&self, name: &str, kind: &str) -> Option<f64> {
        match self.base(name, kind) {
            Some(b) => Some(match self.drift.get(kind) {
                Some((actual, expected)) if *expected > 0.0 => b * actual / expected,
                _ => b,
            }),
            None => mean(&self.this_run, kind),
        }
    }

    /// The expectation for a stage of a kind nothing is known about: the mean over known kinds.
    fn fallback(&self) -> Option<f64> {
        let kinds: HashSet<&String> = self.by_kind.keys().chain(self.this_run.keys()).collect();
        // No stage is named "": this is the kind's (corrected) estimate.
        let known: Vec<f64> = kinds.iter().filter_map(|k| self.get("", k)).collect();
        (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
    }
}

/// Counts for the whole pipeline and the ETA. Stages that share a key are computed once, so
/// only the first name of a key to be run counts as work.
#[derive(Debug)]
pub struct Overview {
    items: HashMap<String, PlannedItem>,
    total: usize,
    jobs: usize,
    finished: HashSet<String>,
    running: HashMap<String, Instant>,
    ran: usize,
    hit: usize,
    failed: usize,
    /// Keys whose work is already counted for a to-do stage (so aliases cost nothing).
    work_keys: HashMap<String, String>,
    /// Every stage name of each key: one computation finishes them all.
    by_key: HashMap<String, Vec<String>>,
    estimates: Estimates,
}

impl Overview {
    pub fn new(plan: Vec<PlannedItem>, estimates: Estimates, jobs: usize) -> Self {
        let total = plan.len();
        let mut work_keys = HashMap::new();
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for it in &plan {
            by_key
                .entry(it.key.clone())
                .or_default()
                .push(it.name.clone());
            if !it.cached {
                work_keys
                    .entry(it.key.clone())
                    .or_insert_with(|| it.name.clone());
            }
        }
        Overview {
            items: plan.into_iter().map(|i| (i.name.clone(), i)).collect(),
            total,
            jobs: jobs.max(1),
            finished: HashSet::new(),
            running: HashMap::new(),
            ran: 0,
            hit: 0,
            failed: 0,
            work_keys,
            by_key,
            estimates,
        }
    }

    /// Follows one event; finished durations refine the estimate of their kind.
    pub fn observe(&mut self, e: &Event, now: Instant) {
        match e {
            Event::Start { name, .. } => {
                self.running.insert(name.to_string(), now);
            }
            Event::Done { name, seconds, .. } => {
                if let Some(kind) = self.items.get(*name).map(|i| i.kind.clone()) {
                    self.estimates.record(name, &kind, *seconds);
                }
                self.ran += self.finish(name);
            }
            Event::Hit { name, .. } => {
                self.hit += self.finish(name);
            }
            Event::Failed { name, .. } | Event::Skipped { name, .. } => {
                self.failed += self.finish(name);
            }
            // Queued on an executor (Slurm): still to do until it starts or ends.
            Event::Waiting { .. } | Event::Corrupt { .. } | Event::Submitted { .. } => {}
        }
    }

    /// Marks `name` and every stage sharing its key finished (the scheduler computes a shared
    /// key once and reports it under one name); returns how many were newly finished.
    fn finish(&mut self, name: &str) -> usize {
        self.running.remove(name);
        let Some(key) = self.items.get(name).map(|it| it.key.clone()) else {
            return usize::from(self.finished.insert(name.to_string()));
        };
        self.work_keys.remove(&key);
        let mut names = vec![name.to_string()];
        if let Some(aliases) = self.by_key.get(&key) {
            names.extend(aliases.iter().filter(|n| *n != name).cloned());
        }
        names
            .into_iter()
            .filter(|n| self.finished.insert(n.clone()))
            .count()
    }

    pub fn done(&self) -> usize {
        self.finished.len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// `12/258 stages: 10 ran, 2 cached, 0 failed · 2 running · 244 to do`
    pub fn counts(&self) -> String {
        format!(
            "{}/{} stages: {} ran, {} cached, {} failed · {} running · {} to do",
            self.done(),
            self.total,
            self.ran,
            self.hit,
            self.failed,
            self.running.len(),
            self.total
                .saturating_sub(self.done())
                .saturating_sub(self.running.len())
        )
    }

    /// Remaining work over the parallelism it can use. `None` until some stage kind that is
    /// still to run has a duration to go by.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        let fallback = self.estimates.fallback();
        let mut work = 0.0;
        let mut stages = 0usize;
        let mut known_any = false;
        for name in self.work_keys.values() {
            let Some(it) = self.items.get(name) else {
                continue;
            };
            let est = match self.estimates.get(&it.name, &it.kind) {
                Some(e) => {
                    known_any = true;
                    e
                }
                None => fallback?,
            };
            let left = match self.running.get(name) {
                Some(t0) => (est - now.duration_since(*t0).as_secs_f64()).max(0.0),
                None => est,
            };
            work += left;
            stages += 1;
        }
        if stages == 0 {
            return Some(Duration::ZERO);
        }
        if !known_any {
            return None;
        }
        let lanes = self.jobs.min(stages) as f64;
        Some(Duration::from_secs_f64(work / lanes))
    }
}

/// `1h 02m`, `4m 10s`, `35s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One line per event on stderr, nothing that varies between identical runs except what the
/// stage reports. Progress lines are throttled to every 10% of a stage. With an
/// [`Overview`], a line of whole-pipeline counts follows each tenth of the stages (no ETA:
/// these lines stay free of timings).
pub struct PlainSink {
    last: Mutex<HashMap<String, u64>>,
    quiet: bool,
    overview: Option<Mutex<(Overview, usize)>>,
}

impl PlainSink {
    pub fn new(quiet: bool) -> Self {
        PlainSink {
            last: Mutex::new(HashMap::new()),
            quiet,
            overview: None,
        }
    }

    pub fn with_overview(quiet: bool, overview: Overview) -> Self {
        PlainSink {
            overview: Some(Mutex::new((overview, 0))),
            ..PlainSink::new(quiet)
        }
    }

    fn follow(&self, e: &Event) {
        let Some(ov) = &self.overview else { return };
        let mut g = ov.lock().unwrap_or_else(|e| e.into_inner());
        let (o, last_decile) = &mut *g;
        o.observe(e, Instant::now());
        let decile = o.done() * 10 / o.total().max(1);
        if decile > *last_decile {
            *last_decile = decile;
            let line = format!("progress {}", o.counts());
            drop(g);
            self.line(&line);
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
        self.plain_line(e);
        self.follow(e);
    }
}

impl PlainSink {
    fn plain_line(&self, e: &Event) {
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

/// A bar per running stage on a terminal, under a line for the whole pipeline when given an
/// [`Overview`].
pub struct BarSink {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    overall: Option<(ProgressBar, Mutex<Overview>)>,
}

impl BarSink {
    pub fn new() -> Self {
        BarSink {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            overall: None,
        }
    }

    pub fn with_overview(overview: Overview) -> Self {
        let multi = MultiProgress::new();
        let bar = multi.add(ProgressBar::new(overview.total() as u64));
        bar.set_style(
            ProgressStyle::with_template("pipeline [{bar:30.cyan/blue}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(overview.counts());
        bar.enable_steady_tick(Duration::from_millis(500));
        BarSink {
            multi,
            bars: Mutex::new(HashMap::new()),
            overall: Some((bar, Mutex::new(overview))),
        }
    }

    /// Refreshes the pipeline line; `e` is the event that changed it, if any.
    fn refresh(&self, e: Option<&Event>) {
        let Some((bar, ov)) = &self.overall else {
            return;
        };
        let mut o = ov.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(e) = e {
            o.observe(e, now);
        }
        bar.set_position(o.done() as u64);
        let eta = match o.eta(now) {
            Some(d) => format!(" · ETA {}", human_duration(d)),
            None => " · ETA after the first stage of each kind".into(),
        };
        bar.set_message(format!("{}{eta}", o.counts()));
    }
}

impl Default for BarSink {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for BarSink {
    fn progress(&self, stage: &str, done: u64, total: u64, message: &str) {
        {
            let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = bars.get(stage) {
                if b.length() != Some(total) {
                    b.set_length(total);
                }
                b.set_position(done);
                b.set_message(message.to_string());
            }
        }
        // The ETA counts running stages down as they progress.
        self.refresh(None);
    }
}

impl EventSink for BarSink {
    fn event(&self, e: &Event) {
        self.refresh(Some(e));
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
        if let Some((bar, _)) = &self.overall {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, key: &str, kind: &str, cached: bool) -> PlannedItem {
        PlannedItem {
            name: name.into(),
            key: key.into(),
            kind: kind.into(),
            cached,
        }
    }

    #[test]
    fn counts_and_eta_follow_events_with_shared_keys_counted_once() {
        let plan = vec![
            item("init", "k0", "init", true),
            item("a", "k1", "train", false),
            item("b", "k2", "train", false),
            item("b_alias", "k2", "train", false),
            item("e", "k3", "evaluate", false),
        ];
        let est = Estimates::from_history([
            ("old1".to_string(), "train".to_string(), 10.0),
            ("old2".to_string(), "train".to_string(), 20.0),
        ]);
        let mut o = Overview::new(plan, est, 2);
        let t0 = Instant::now();
        // Two trainings of 15 s each and an evaluate (unknown kind: the mean of known kinds)
        // on two lanes: (15 + 15 + 15) / 2.
        assert_eq!(o.eta(t0), Some(Duration::from_secs_f64(22.5)));
        o.observe(
            &Event::Hit {
                name: "init",
                key: "k0",
            },
            t0,
        );
        o.observe(
            &Event::Start {
                name: "a",
                key: "k1",
            },
            t0,
        );
        assert_eq!(
            o.counts(),
            "1/5 stages: 0 ran, 1 cached, 0 failed · 1 running · 3 to do"
        );
        // Five seconds into `a`: 10 + 15 + 15 left.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(o.eta(later), Some(Duration::from_secs(20)));
        o.observe(
            &Event::Done {
                name: "a",
                seconds: 30.0,
                headline: "",
            },
            later,
        );
        // `a` took twice its expected 15 s: trainings of this run are expected to take 30 s,
        // and the unknown kind the mean of known kinds, 30 s too: (30 + 30) / 2.
        assert_eq!(o.eta(later), Some(Duration::from_secs(30)));
        o.observe(
            &Event::Start {
                name: "b",
                key: "k2",
            },
            later,
        );
        o.observe(
            &Event::Done {
                name: "b",
                seconds: 20.0,
                headline: "",
            },
            later,
        );
        // `b_alias` shares b's key: the scheduler reports it under `b` only, and it is done too.
        assert_eq!(
            o.counts(),
            "4/5 stages: 3 ran, 1 cached, 0 failed · 0 running · 1 to do"
        );
        // Were it reported as well, it would not count twice.
        o.observe(
            &Event::Hit {
                name: "b_alias",
                key: "k2",
            },
            later,
        );
        o.observe(
            &Event::Failed {
                name: "e",
                error: "x",
                detail: None,
            },
            later,
        );
        assert_eq!(
            o.counts(),
            "5/5 stages: 3 ran, 1 cached, 1 failed · 0 running · 0 to do"
        );
        assert_eq!(o.eta(later), Some(Duration::ZERO));
    }

    #[test]
    fn the_same_stage_in_earlier_runs_is_the_closest_estimate() {
        // `dense` took 100 s before, two other trainings 10 s each (kind mean 40 s). `x` is
        // estimated by its own name too: the remaining work over two lanes, (100 + 10) / 2.
        let est = Estimates::from_history([
            ("dense".to_string(), "train".to_string(), 100.0),
            ("x".to_string(), "train".to_string(), 10.0),
            ("y".to_string(), "train".to_string(), 10.0),
        ]);
        assert_eq!(est.get("dense", "train"), Some(100.0));
        assert_eq!(est.get("new", "train"), Some(40.0));
        assert_eq!(est.get("new", "prune"), None);
        let plan = vec![
            item("dense", "k1", "train", false),
            item("x", "k2", "train", false),
        ];
        let mut o = Overview::new(plan, est, 2);
        let t0 = Instant::now();
        assert_eq!(o.eta(t0), Some(Duration::from_secs(55)));
        // This run's trainings are slower (say, more iterations): `dense` takes 300 s, three
        // times its history, so `x` is now expected to take 30 s; one stage left, one lane.
        o.observe(
            &Event::Done {
                name: "dense",
                seconds: 300.0,
                headline: "",
            },
            t0,
        );
        assert_eq!(o.eta(t0), Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_kind_without_history_goes_by_this_run() {
        let mut est = Estimates::default();
        assert_eq!(est.get("a", "train"), None);
        est.record("a", "train", 4.0);
        est.record("b", "train", 8.0);
        assert_eq!(est.get("c", "train"), Some(6.0));
        assert_eq!(est.get("c", "prune"), None);
    }

    #[test]
    fn no_eta_without_any_duration_to_go_by() {
        let o = Overview::new(
            vec![item("a", "k1", "train", false)],
            Estimates::default(),
            1,
        );
        assert_eq!(o.eta(Instant::now()), None);
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h 02m");
        assert_eq!(human_duration(Duration::from_secs(250)), "4m 10s");
    }
}
