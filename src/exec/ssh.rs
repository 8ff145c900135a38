//! `--executor ssh --hosts a,b`: every job is `pipe worker JOB.json` started on one of the
//! hosts with `ssh`, against a cache the hosts share. It is the subprocess executor with a
//! different [`Launch`]: another engine behind the [`super::Executor`] seam is this file.
//!
//! `ssh -tt` gives the remote worker a terminal, so that when `pipe run` cancels a job (it ends
//! the local `ssh`), the remote worker gets SIGHUP and stops like on Ctrl-C. `BatchMode=yes`
//! makes a host that would ask for a password fail the job instead of hanging it.

use super::subprocess::Launch;

/// One place per host, each running its workers through `ssh`.
pub fn launches(hosts: &[String]) -> Vec<Launch> {
    hosts
        .iter()
        .map(|host| Launch::Via {
            label: host.clone(),
            prefix: ["ssh", "-tt", "-o", "BatchMode=yes", "--", host]
                .map(String::from)
                .to_vec(),
        })
        .collect()
}

/// Checks a `--hosts` list: ssh destinations, not options or empty names.
pub fn check_hosts(hosts: &[String]) -> Result<(), String> {
    if hosts.is_empty() {
        return Err(
            "--executor ssh needs --hosts HOST[,HOST...] (ssh destinations that share the cache)"
                .into(),
        );
    }
    for h in hosts {
        if h.is_empty() || h.starts_with('-') || h.chars().any(char::is_whitespace) {
            return Err(format!(
                "--hosts: `{h}` is not an ssh destination (give names like `node1` or `user@node1`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_runs_its_workers_through_ssh() {
        let l = launches(&["node1".into(), "me@node2".into()]);
        assert_eq!(
            l[1],
            Launch::Via {
                label: "me@node2".into(),
                prefix: ["ssh", "-tt", "-o", "BatchMode=yes", "--", "me@node2"]
                    .map(String::from)
                    .to_vec(),
            }
        );
        assert!(check_hosts(&["node1".into()]).is_ok());
        assert!(check_hosts(&[]).unwrap_err().contains("needs --hosts"));
        assert!(
            check_hosts(&["-oProxyCommand=x".into()])
                .unwrap_err()
                .contains("`-oProxyCommand=x` is not an ssh destination")
        );
    }
}
