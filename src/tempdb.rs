//! A throwaway PostgreSQL cluster from the machine's own binaries, for tests and the demo.
//!
//! `initdb` into a temporary directory, a unix socket in it plus a loopback TCP port, `pg_ctl`
//! to start and stop (tests stop and restart it to cause outages). PostgreSQL refuses to run as
//! root, so as root the cluster runs as the `postgres` user (through `runuser`). A small reaper
//! process removes the cluster when the owning process dies, even by SIGKILL, so no test run
//! leaves a server behind.
//!
//! We wrote this instead of using a crate: the crates we looked at either download PostgreSQL
//! (no internet here) or run `initdb` as the current user, which fails as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// A running throwaway cluster; dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    reaper: Option<std::process::Child>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("temporary PostgreSQL: {what}: {e}"))
}

/// Finds the directory with `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Ok(dir);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        if let Some(dir) = versions.pop() {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        })
        .ok_or_else(|| {
            Error::internal("temporary PostgreSQL: initdb/pg_ctl not found (install postgresql)")
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| io_err("no free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| io_err("no free port", e))
}

impl TempCluster {
    /// Creates and starts a cluster. Blocking; takes a few seconds.
    pub fn start() -> Result<TempCluster> {
        let bin = find_bin_dir()?;
        let run_as = if is_root() {
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("authstate-pg-")
            .tempdir()
            .map_err(|e| io_err("temp dir", e))?;
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .map_err(|e| io_err("chown", e))?;
            if !status.success() {
                return Err(io_err("chown", format!("exit {status}")));
            }
        }
        let mut cluster = TempCluster {
            dir,
            bin,
            port: free_port()?,
            run_as,
            reaper: None,
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 200\nshared_buffers = 128MB\nlog_min_messages = warning\n",
            cluster.port,
            cluster.dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .map_err(|e| io_err("postgresql.conf", e))?;
        cluster.start_server()?;
        cluster.spawn_reaper()?;
        Ok(cluster)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq URL for `dbname` over the unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname} sslmode=disable",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A `postgres://` URL for `dbname` over TCP on 127.0.0.1.
    pub fn tcp_url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// The command prefix that runs `pg_ctl` for this cluster (with `runuser` when needed).
    pub fn pg_ctl_command(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(user) = &self.run_as {
            argv.extend([
                "runuser".to_string(),
                "-u".into(),
                user.clone(),
                "--".into(),
            ]);
        }
        argv.push(self.bin.join("pg_ctl").display().to_string());
        argv.extend(["-D".to_string(), self.data_dir().display().to_string()]);
        argv
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err(program, e))?;
        if !out.status.success() {
            return Err(io_err(
                program,
                format!(
                    "exit {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        Ok(())
    }

    /// Starts the server (again, after [`TempCluster::stop`]) and waits until it accepts
    /// connections.
    pub fn start_server(&self) -> Result<()> {
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server; `mode` is `smart`, `fast` or `immediate` (a crash-like stop).
    pub fn stop(&self, mode: &str) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().display().to_string(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        )
    }

    /// The postmaster's pid, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates a database (idempotent) through `psql` on the socket.
    pub fn create_database(&self, name: &str) -> Result<()> {
        crate::validate::company_id(name)
            .map_err(|_| Error::invalid("database names are limited to [A-Za-z0-9_-]"))?;
        let exists = self.psql(&format!(
            "SELECT 1 FROM pg_database WHERE datname = '{name}'"
        ))?;
        if exists.trim() != "1" {
            self.psql(&format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(())
    }

    /// Runs one SQL command as `postgres` on the socket; its unaligned output.
    fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .map_err(|e| io_err("psql", e))?;
        if !out.status.success() {
            return Err(io_err("psql", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A process that stops the server and removes the directory once we are gone.
    fn spawn_reaper(&mut self) -> Result<()> {
        let pg_ctl: Vec<String> = self
            .pg_ctl_command()
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {ctl} -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            ctl = pg_ctl.join(" "),
            dir = self.dir.path().display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io_err("reaper", e))?;
        self.reaper = Some(child);
        Ok(())
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        if let Some(mut r) = self.reaper.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        // TempDir removes the directory (we are root or its owner's peer: rm works as root).
    }
}
