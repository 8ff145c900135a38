//! Running the user's program: its environment, its output into the entry's log and the
//! progress line, and stopping it (Ctrl-C, a timeout) together with whatever it started.
//!
//! The program gets a process group of its own, so that stopping it reaches the children it
//! started too (a `shell:` line's commands, a data loader's workers) and so that the terminal's
//! Ctrl-C reaches pipe alone, which then stops the group: first politely (SIGTERM), then, after
//! a grace period, with SIGKILL.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::stages::{StageContext, StageError};

/// How long a stopped program has to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// How long pipe waits for the output of a program that has exited (a child it left behind
/// may hold the pipes open) before it stops the rest of its group.
const LINGER: Duration = Duration::from_secs(2);
/// Lines of the log shown with a failure.
const TAIL: usize = 25;
/// A longer output line is cut in the progress line and the failure message (not in the log).
const SHOWN_CHARS: usize = 300;
/// The prefix of a line that moves the progress bar: `pipe-progress: DONE/TOTAL message`.
pub const PROGRESS_PREFIX: &str = "pipe-progress:";

pub struct Job<'a> {
    pub argv: &'a [String],
    pub env: &'a [(&'static str, String)],
    pub threads: usize,
    /// The limit, and as the pipeline wrote it.
    pub timeout: Option<(Duration, &'a str)>,
    pub log: &'a Path,
}

/// Runs the program to its end; `Ok` only when it exited with status 0.
pub fn run(ctx: &StageContext, job: &Job) -> Result<(), StageError> {
    let mut cmd = std::process::Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The libraries' own thread pools follow pipe's share of the cores unless the user chose;
    // Python writes no byte-code next to the scripts, which would otherwise change a folder
    // named in `deps` (pipe skips `__pycache__` anyway).
    let threads = job.threads.to_string();
    for (var, value) in [
        ("OMP_NUM_THREADS", threads.as_str()),
        ("MKL_NUM_THREADS", threads.as_str()),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
    ] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, value);
        }
    }
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let program = &job.argv[0];
    let mut child = cmd.spawn().map_err(|e| {
        StageError::Other(format!(
            "cannot start `{program}`: {e}; check that it is installed and on PATH (or give its path), and that `run` names it first"
        ))
    })?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || forward_lines(stream, tx));
    }
    drop(tx);
    let mut out = Output::create(job.log)?;
    let started = Instant::now();
    let mut open = true;
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let status = loop {
        if open {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => out.line(ctx, &line)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if exited.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => exited = Some((s, Instant::now())),
                Ok(None) => {}
                Err(e) => return Err(StageError::Other(format!("waiting for `{program}`: {e}"))),
            }
        }
        if let Some((s, at)) = exited {
            if !open || at.elapsed() > LINGER {
                if open {
                    signal_group(&child, Signal::Kill);
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        out.line(ctx, &line)?;
                    }
                }
                break s;
            }
            continue;
        }
        if ctx.cancelled() {
            stop(&mut child);
            out.note("stopped: pipe was interrupted")?;
            return Err(StageError::Cancelled);
        }
        if let Some((limit, written)) = job.timeout
            && started.elapsed() > limit
        {
            stop(&mut child);
            out.note(&format!("stopped: it ran past its timeout of {written}"))?;
            return Err(StageError::Other(format!(
                "`{program}` ran past its timeout of {written} and was stopped (raise `timeout:` if it needs longer){}",
                out.tail_text()
            )));
        }
    };
    out.flush()?;
    if status.success() {
        return Ok(());
    }
    let how = match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => signal_text(&status),
    };
    Err(StageError::Other(format!(
        "`{program}` {how}{}",
        out.tail_text()
    )))
}

fn signal_text(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(s) = status.signal() {
            return format!("was killed by signal {s}");
        }
    }
    format!("ended with {status}")
}

/// Sends each line of `stream` (split at `\n`; a `\r` progress redraw keeps its last part),
/// decoded leniently, until the stream ends.
fn forward_lines(stream: Box<dyn Read + Send>, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                let line = text.rsplit('\r').next().unwrap_or("").to_string();
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// The log file, the last lines for a failure message, and the progress line.
struct Output {
    file: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    tail: VecDeque<String>,
    progress: (u64, u64),
}

impl Output {
    fn create(path: &Path) -> Result<Output, StageError> {
        let file = std::fs::File::create(path).map_err(|e| StageError::io(path, e))?;
        Ok(Output {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            tail: VecDeque::with_capacity(TAIL),
            progress: (0, 0),
        })
    }

    fn line(&mut self, ctx: &StageContext, line: &str) -> Result<(), StageError> {
        writeln!(self.file, "{line}").map_err(|e| StageError::io(&self.path, e))?;
        tracing::debug!(stage = ctx.name(), "{line}");
        let shown: String = line.chars().take(SHOWN_CHARS).collect();
        if let Some(rest) = line.strip_prefix(PROGRESS_PREFIX) {
            if let Some((done, total, message)) = parse_progress(rest) {
                self.progress = (done, total);
                ctx.progress(done, total, message);
                return Ok(());
            }
        } else if self.progress.1 > 0 {
            ctx.progress(self.progress.0, self.progress.1, &shown);
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(shown);
        Ok(())
    }

    /// A line of pipe's own in the log.
    fn note(&mut self, text: &str) -> Result<(), StageError> {
        writeln!(self.file, "[pipe] {text}")
            .and_then(|()| self.file.flush())
            .map_err(|e| StageError::io(&self.path, e))
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.file.flush().map_err(|e| StageError::io(&self.path, e))
    }

    /// The last lines of the output, for a failure message.
    fn tail_text(&mut self) -> String {
        let _ = self.file.flush();
        if self.tail.is_empty() {
            return "; it printed nothing".into();
        }
        let mut s = format!("; the last {} line(s) it printed:", self.tail.len());
        for l in &self.tail {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }
}

/// `DONE/TOTAL message` → its parts; `None` when it is not that.
fn parse_progress(rest: &str) -> Option<(u64, u64, &str)> {
    let rest = rest.trim_start();
    let (counts, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let (done, total) = counts.split_once('/')?;
    let (done, total) = (done.parse().ok()?, total.parse().ok()?);
    (done <= total).then_some((done, total, message.trim()))
}

enum Signal {
    Term,
    Kill,
}

fn signal_group(child: &Child, signal: Signal) {
    #[cfg(unix)]
    {
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // The group's id is the child's pid (`process_group(0)`).
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; it touches
            // no memory of ours.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (child, signal);
    }
}

/// Stops the program and its group: SIGTERM, then SIGKILL after [`GRACE`].
fn stop(child: &mut Child) {
    signal_group(child, Signal::Term);
    let asked = Instant::now();
    while asked.elapsed() < GRACE {
        if let Ok(Some(_)) = child.try_wait() {
            // Its children may outlive it; they are in its group.
            signal_group(child, Signal::Kill);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(child, Signal::Kill);
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress(" 3/10 epoch 1"), Some((3, 10, "epoch 1")));
        assert_eq!(parse_progress("10/10"), Some((10, 10, "")));
        assert_eq!(parse_progress(" 11/10 x"), None);
        assert_eq!(parse_progress(" a/10"), None);
        assert_eq!(parse_progress(" 3 of 10"), None);
    }
}
