//! `--executor subprocess`: each job is a `pipe worker JOB.json` child process on this
//! machine, its output in the run's folder. It exists to show (and test, without a cluster)
//! that another engine is one small file behind the [`Executor`] seam: an `ssh host pipe
//! worker …` or HyperQueue executor would differ only in the command it starts.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::executor::{Executor, Report, Submitted, Ticket};
use super::job::{Finished, JobSpec};
use super::remote::{self, JobFiles, LOG_TAIL};
use crate::cache::Store;

pub struct SubprocessConfig {
    /// The `pipe` binary (one with the same stage kinds as this one).
    pub exe: PathBuf,
    /// The cache, as an absolute path.
    pub cache: PathBuf,
    /// The run's folder for job files and logs.
    pub run_dir: PathBuf,
    /// Global flags handed to every worker (`--threads 1`).
    pub worker_args: Vec<String>,
    pub slots: usize,
}

struct Child {
    key: String,
    files: JobFiles,
    pid: u32,
    cancelled: bool,
}

pub struct SubprocessExecutor {
    cfg: SubprocessConfig,
    store: Store,
    children: Mutex<HashMap<Ticket, Child>>,
    tx: Sender<(Ticket, Option<i32>)>,
    rx: Mutex<Receiver<(Ticket, Option<i32>)>>,
}

impl SubprocessExecutor {
    pub fn new(cfg: SubprocessConfig, store: Store) -> Self {
        let (tx, rx) = mpsc::channel();
        SubprocessExecutor {
            cfg,
            store,
            children: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Executor for SubprocessExecutor {
    fn name(&self) -> &'static str {
        "subprocess"
    }
    fn slots(&self) -> usize {
        self.cfg.slots.max(1)
    }
    fn orders_dependencies(&self) -> bool {
        false
    }
    fn remote(&self) -> bool {
        true
    }

    fn submit(&self, job: &JobSpec, _after: &[Ticket]) -> Result<Submitted, String> {
        let files = remote::write_job(&self.cfg.run_dir, job)?;
        let log = File::create(&files.log).map_err(|e| format!("{}: {e}", files.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", files.log.display()))?;
        let argv = remote::worker_argv(
            &self.cfg.exe,
            &self.cfg.cache,
            &self.cfg.worker_args,
            &files.job,
        );
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        let ticket = Ticket(child.id().to_string());
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                ticket.clone(),
                Child {
                    key: job.key.clone(),
                    files,
                    pid: child.id(),
                    cancelled: false,
                },
            );
        let (tx, t) = (self.tx.clone(), ticket.clone());
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            let _ = tx.send((t, code));
        });
        Ok(Submitted {
            ticket,
            adopted: false,
        })
    }

    fn wait(&self, timeout: Duration) -> Option<Report> {
        let (ticket, code) = {
            let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv_timeout(timeout) {
                Ok(x) => x,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        };
        let child = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket)?;
        let end = match remote::judge(&self.store, &child.key, &child.files) {
            Some(end) => end,
            None if child.cancelled => Finished::Cancelled,
            None => Finished::Failed {
                error: match code {
                    Some(c) => format!("the worker (pid {}) exited with status {c}", child.pid),
                    None => format!("the worker (pid {}) was killed by a signal", child.pid),
                },
                detail: remote::log_tail(&child.files.log, LOG_TAIL),
            },
        };
        Some(Report::Ended(ticket, end))
    }

    fn cancel(&self, tickets: &[Ticket]) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for t in tickets {
            if let Some(c) = children.get_mut(t) {
                c.cancelled = true;
                // SIGTERM: the worker stops its stage at the next check and removes its
                // unfinished folder, as on Ctrl-C.
                #[cfg(unix)]
                // SAFETY: kill(2) with a pid we started and have not reaped yet.
                unsafe {
                    libc::kill(c.pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
    }
}
