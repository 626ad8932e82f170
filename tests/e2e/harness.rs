//! Starts the real `tessera` binary on free loopback ports with its own data directory, and
//! follows its log so tests wait on events, not sleeps.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct TestBroker {
    child: Child,
    pub dir: tempfile::TempDir,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    /// The OAuth2 endpoint (HTTPS with the development certificate).
    pub oauth: SocketAddr,
    /// The operations listener: `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    pub metrics: SocketAddr,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        TestBroker::start_with("")
    }

    /// `extra` is appended to the generated configuration (e.g. an `mqtt:` block).
    pub fn start_with(extra: &str) -> TestBroker {
        TestBroker::start_in(
            tempfile::tempdir().unwrap(),
            &format!("auth:\n  allow_anonymous: true\n{extra}"),
        )
    }

    /// The broker as shipped: no anonymous clients; logins through the token service.
    pub fn start_secure(extra: &str) -> TestBroker {
        TestBroker::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// As `start_secure`, with `tls_options` (indented listener fields: client certificates)
    /// on the tls and wss listeners.
    pub fn start_with_tls(tls_options: &str, extra: &str) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let child = TestBroker::spawn_config(&dir, extra, tls_options, false);
        TestBroker::follow(dir, child)
    }

    /// Writes the configuration for `dir` (free ports, `extra` appended) and starts the binary.
    fn spawn(dir: &tempfile::TempDir, extra: &str) -> Child {
        TestBroker::spawn_with(dir, extra, false)
    }

    /// As `start_secure`, the binary started with SIGXFSZ ignored, so a file size limit set
    /// on it later (`prlimit --fsize`) fails its writes (EFBIG) instead of killing it: a full
    /// disk, for one process.
    pub fn start_with_file_limit_allowed(extra: &str) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let child = TestBroker::spawn_with(&dir, extra, true);
        TestBroker::follow(dir, child)
    }

    fn spawn_with(dir: &tempfile::TempDir, extra: &str, ignore_xfsz: bool) -> Child {
        TestBroker::spawn_config(dir, extra, "", ignore_xfsz)
    }

    fn spawn_config(
        dir: &tempfile::TempDir,
        extra: &str,
        tls_options: &str,
        ignore_xfsz: bool,
    ) -> Child {
        let mut head = String::new();
        if !extra.contains("oauth:") {
            head.push_str("oauth:\n  bind: 127.0.0.1:0\n");
        }
        if !extra.contains("metrics:") {
            head.push_str("metrics:\n  bind: 127.0.0.1:0\n");
        }
        let oauth = head;
        let config = format!(
            "{oauth}data_dir: {data}\nlisteners:\n  - type: tcp\n    bind: 127.0.0.1:0\n  - type: tls\n    bind: 127.0.0.1:0\n{tls_options}  - type: ws\n    bind: 127.0.0.1:0\n  - type: wss\n    bind: 127.0.0.1:0\n{tls_options}{extra}\n",
            data = dir.path().join("data").display()
        );
        let config_path = dir.path().join("tessera.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = if ignore_xfsz {
            // An ignored signal stays ignored across exec; the pid stays the broker's.
            let mut c = Command::new("sh");
            c.args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
                .arg(env!("CARGO_BIN_EXE_tessera"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_tessera"))
        };
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            // TESSERA_TEST_LOG: another filter for a run under investigation.
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera")
    }

    /// Starts the broker on `dir` and kills it (SIGKILL) `after` that, ready or not: a crash
    /// while it recovers its state.
    pub fn kill_while_starting(
        dir: tempfile::TempDir,
        extra: &str,
        after: Duration,
    ) -> tempfile::TempDir {
        let mut child = TestBroker::spawn(&dir, extra);
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        dir
    }

    /// Starts on an existing directory (a restart keeps the data directory).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> TestBroker {
        let child = TestBroker::spawn(&dir, extra);
        TestBroker::follow(dir, child)
    }

    /// Follows a started broker's log until it runs, and reads its addresses from it.
    fn follow(dir: tempfile::TempDir, mut child: Child) -> TestBroker {
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, cv) = &*sink;
                lines.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let mut b = TestBroker {
            child,
            dir,
            tcp: addr0(),
            tls: addr0(),
            ws: addr0(),
            wss: addr0(),
            oauth: addr0(),
            metrics: addr0(),
            log,
        };
        assert!(
            b.wait_log("tessera running", Duration::from_secs(30)),
            "broker did not start:\n{}",
            b.log_text()
        );
        for line in b.lines() {
            if line.contains("oauth endpoint ready") {
                b.oauth = field(&line, "addr=").parse().unwrap();
                continue;
            }
            if line.contains("metrics endpoint ready") {
                b.metrics = field(&line, "addr=").parse().unwrap();
                continue;
            }
            if !line.contains("listener ready") {
                continue;
            }
            let addr: SocketAddr = field(&line, "addr=").parse().unwrap();
            match field(&line, "transport=").trim_matches('"') {
                "tcp" => b.tcp = addr,
                "tls" => b.tls = addr,
                "ws" => b.ws = addr,
                "wss" => b.wss = addr,
                other => panic!("unknown transport {other}"),
            }
        }
        b
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if guard.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("data/tls/dev-cert.pem")
    }

    /// Runs an operator command (`tessera --config ... ARGS`) with `stdin`; returns its output.
    pub fn command(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--config")
            .arg(self.dir.path().join("tessera.yml"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker and hands back its directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// SIGKILL (no chance to flush anything), then hand back the directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        send_signal(self.child.id(), 15);
        self.child.wait().unwrap()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its brokers logged (the last part of it); so does any test
        // run with TESSERA_TEST_LOGS set.
        if std::thread::panicking() || std::env::var_os("TESSERA_TEST_LOGS").is_some() {
            let log = self.log.0.lock().map(|l| l.join("\n")).unwrap_or_default();
            let tail: String = log
                .chars()
                .skip(log.chars().count().saturating_sub(6000))
                .collect();
            eprintln!("---- log of the broker on {} ----\n{tail}", self.tcp);
        }
    }
}

fn addr0() -> SocketAddr {
    "0.0.0.0:0".parse().unwrap()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).map(|i| i + key.len()).unwrap_or(line.len());
    line[start..].split_whitespace().next().unwrap_or("")
}

fn send_signal(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}
