//! [`FetchRun`]: a `lanshare fetch` client running in the background.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::node::Node;
use super::{client, die_with_parent};

/// A running `lanshare fetch` client; killed on drop.
pub struct FetchRun {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err: Option<std::thread::JoinHandle<String>>,
    pub stderr: String,
}

impl FetchRun {
    /// Stdout lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.lines().join("\n")
    }

    /// The last progress percentage printed ("  12.5%  3.0MiB of ..."), if any.
    pub fn progress(&self) -> Option<f64> {
        self.lines().iter().rev().find_map(|l| {
            l.trim_start()
                .split_once('%')
                .and_then(|(p, _)| p.parse().ok())
        })
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the client to exit; None if it is still running at the deadline.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                self.collect();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `timeout`) for the fetch to exit; panics unless it
    /// succeeded, with `what` went wrong, its output and the tails of the
    /// `logs` nodes' logs. Returns its stdout.
    pub fn finish_ok(&mut self, timeout: Duration, what: &str, logs: &[&Node]) -> String {
        let status = self.wait(timeout);
        let stdout = self.stdout();
        if status.is_none() {
            self.kill();
        }
        let tails: Vec<String> = logs.iter().map(|n| n.log_tail()).collect();
        assert!(
            status.is_some_and(|s| s.success()),
            "{what} ({status:?}): {stdout}\n{}\n{}",
            self.stderr,
            tails.join("\n")
        );
        stdout
    }

    /// Kills the client with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.collect();
    }

    fn collect(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(e) = self.err.take() {
            self.stderr = e.join().unwrap_or_default();
        }
    }
}

impl Drop for FetchRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl FetchRun {
    /// Starts `lanshare fetch NAME --home HOME`.
    pub fn start(home: &Path, name: &str) -> FetchRun {
        let mut cmd = client(home, &["fetch", name]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start lanshare fetch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        FetchRun {
            child: Some(child),
            lines,
            reader: Some(reader),
            err: Some(err),
            stderr: String::new(),
        }
    }
}
