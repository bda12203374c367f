//! pgbouncer (the Debian package) in transaction pooling mode in front of a PostgreSQL server,
//! configured from `tests/common/pgbouncer.ini` (shared with `scripts/test-via-pgbouncer.sh`).
//!
//! pgbouncer refuses to run as root, so as root it runs as the `postgres` user. A reaper shell
//! (whose stdin is a pipe from this process) stops it when the test process ends, even by
//! SIGKILL, so no run leaves a pooler behind. `scripts/install-pgbouncer.sh` installs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEMPLATE: &str = include_str!("pgbouncer.ini");

/// A running pgbouncer; dropping it stops it and removes its files.
pub struct Bouncer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    reaper: Option<Child>,
}

/// The pgbouncer binary (Debian installs it in /usr/sbin, not on every user's PATH).
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbouncer"))
            .find(|p| p.exists())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"));
    assert!(
        bin.exists(),
        "pgbouncer is not installed: run scripts/install-pgbouncer.sh (scripts/test-all.sh does)"
    );
    bin
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?}: {status}");
}

impl Bouncer {
    /// Starts pgbouncer in front of the server listening on 127.0.0.1:`pg_port`. Blocking.
    pub fn start(pg_port: u16) -> Bouncer {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("authstate-pgbouncer-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let ini = TEMPLATE
            .replace("@PG_PORT@", &pg_port.to_string())
            .replace("@LISTEN_PORT@", &port.to_string())
            .replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        // auth_type = trust still looks the user up in the auth file.
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n")
            .expect("write userlist.txt");
        let run_as = is_root().then_some("postgres");
        if let Some(user) = run_as {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(dir.path()));
        }
        // Stops pgbouncer when our end of its stdin closes (this process exited, however).
        let pidfile = dir.path().join("pgbouncer.pid");
        let reaper = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; [ -f "$1" ] && kill -TERM "$(cat "$1")" 2>/dev/null; exit 0"#)
            .arg("reaper")
            .arg(&pidfile)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the pgbouncer reaper");
        let b = Bouncer {
            dir,
            bin,
            port,
            run_as,
            reaper: Some(reaper),
        };
        b.launch();
        b
    }

    /// Starts the daemon (again) on the same port and waits until it accepts connections.
    pub fn launch(&self) {
        let ini = self.dir.path().join("pgbouncer.ini");
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("-d").arg(&ini).stdout(Stdio::null());
        let started = Instant::now();
        // The port of a just-stopped pgbouncer can take a moment to be free again.
        loop {
            let status = cmd.status().expect("run pgbouncer");
            if status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer did not start ({status}): {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer does not accept connections: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A libpq-style URL of `dbname` through the pooler.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Stops the daemon with SIGTERM (pgbouncer's immediate shutdown: every client connection
    /// is dropped) and waits until the process is gone. Blocking.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.dir.path().join("pgbouncer.pid"));
    }

    /// The end of pgbouncer's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut reaper) = self.reaper.take() {
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
    }
}

/// The third field of /proc/<pid>/stat is `Z` for a process that died and was not reaped.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}
