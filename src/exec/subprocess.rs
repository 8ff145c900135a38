//! `--executor subprocess`: each job is a `pipe worker JOB.json` child process on this
//! machine, its output in the run's folder. With a [`Launch`] other than `Here`, the child is
//! a command that runs the worker elsewhere (`ssh host …`, see `ssh.rs`): the same code
//! drives both, which is what the [`Executor`] seam is for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::executor::{Executor, Report, Submitted, Ticket};
use super::job::{Finished, JobSpec};
use super::remote::{self, JobFiles, LOG_TAIL, sh_quote};
use crate::cache::Store;

/// Where a worker starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// A child process of this one.
    Here,
    /// `prefix` followed by the worker's command line as one shell-quoted string, which the
    /// prefix hands to a shell elsewhere (as `ssh host` does). `label` names the place in
    /// tickets (`node1:4242`).
    Via { label: String, prefix: Vec<String> },
}

impl Launch {
    /// The command that runs `argv` in the folder `workdir` (a remote shell starts in the
    /// user's home, so the command line changes into the folder first).
    fn command(&self, argv: &[String], workdir: &Path) -> Vec<String> {
        match self {
            Launch::Here => argv.to_vec(),
            Launch::Via { prefix, .. } => {
                let line = argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>();
                let mut cmd = prefix.clone();
                cmd.push(format!(
                    "cd {} && exec {}",
                    sh_quote(&workdir.display().to_string()),
                    line.join(" ")
                ));
                cmd
            }
        }
    }
}

pub struct SubprocessConfig {
    /// What the executor is called in events and run records (`subprocess`, `ssh`).
    pub name: &'static str,
    /// Where workers start; each job goes to the place with the fewest jobs running.
    pub launch: Vec<Launch>,
    /// The `pipe` binary (one with the same stage kinds as this one).
    pub exe: PathBuf,
    /// The cache, as an absolute path.
    pub cache: PathBuf,
    /// The run's folder for job files and logs.
    pub run_dir: PathBuf,
    /// The workers' working directory (relative dataset paths resolve against it).
    pub workdir: PathBuf,
    /// Global flags handed to every worker (`--threads 1`).
    pub worker_args: Vec<String>,
    pub slots: usize,
}

struct Child {
    key: String,
    /// Index into the config's `launch`.
    place: usize,
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
        self.cfg.name
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
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let places = self.cfg.launch.len().max(1);
        let place = (0..places)
            .min_by_key(|&p| children.values().filter(|c| c.place == p).count())
            .unwrap_or(0);
        let launch = self.cfg.launch.get(place).unwrap_or(&Launch::Here);
        let cmd = launch.command(&argv, &self.cfg.workdir);
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .current_dir(&self.cfg.workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd[0]))?;
        let ticket = Ticket(match launch {
            Launch::Here => child.id().to_string(),
            Launch::Via { label, .. } => format!("{label}:{}", child.id()),
        });
        children.insert(
            ticket.clone(),
            Child {
                key: job.key.clone(),
                place,
                files,
                pid: child.id(),
                cancelled: false,
            },
        );
        drop(children);
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
                io: false,
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
                // unfinished folder, as on Ctrl-C. (Through `ssh -tt`, the remote worker gets
                // SIGHUP when the connection closes, which it handles the same way.)
                #[cfg(unix)]
                // SAFETY: kill(2) with a pid we started and have not reaped yet.
                unsafe {
                    libc::kill(c.pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
    }
}
