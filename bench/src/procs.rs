//! The processes under test: the daemon, the no-op baseline server and redis-server, each a
//! child process on a loopback port, stopped with SIGTERM (and killed if it lingers).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A child process of the benchmark; killed if dropped while running.
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// When it was spawned (for "time to first Get").
    pub started: Instant,
}

impl Proc {
    /// Starts `program args…` with stdout discarded and stderr written to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Proc, String> {
        let file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            log,
            started,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident set size now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:").map(|k| k * 1024)
    }

    /// Its peak resident set size (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:").map(|k| k * 1024)
    }

    /// The tail of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if it has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            )),
            Err(e) => Err(format!("cannot poll {}: {e}", self.name)),
        }
    }

    /// SIGKILL (a crash), and wait for it to exit.
    pub async fn kill(mut self) -> Result<(), String> {
        self.child
            .start_kill()
            .map_err(|e| format!("cannot kill {}: {e}", self.name))?;
        self.child
            .wait()
            .await
            .map_err(|e| format!("waiting for {}: {e}", self.name))?;
        Ok(())
    }

    /// SIGTERM, then wait for it to exit (SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) -> Result<ExitStatus, String> {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.map_err(|e| format!("waiting for {}: {e}", self.name)),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(format!(
                    "{} did not stop within {grace:?} of SIGTERM and was killed",
                    self.name
                ))
            }
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(
    proc: &mut Proc,
    addr: SocketAddr,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen on {addr} within {within:?}; its log ends:\n{}",
                proc.name,
                proc.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes under `dir`: (apparent size, allocated on disk).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// The workspace this benchmark was built in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ sits in the workspace")
        .to_path_buf()
}

/// The daemon binary to measure: `given`, or the workspace's release build, built (or
/// brought up to date) with `cargo build --release -p cachebackd` so that the benchmark never
/// measures a stale binary.
pub fn daemon_bin(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("--daemon-bin {} is not a file", path.display()))
        };
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("cachebackd");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the daemon: cargo build --release -p cachebackd");
    match std::process::Command::new(&cargo)
        .args(["build", "--release", "-p", "cachebackd"])
        .current_dir(&root)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("cargo build --release -p cachebackd failed ({s})")),
        Err(e) if bin.is_file() => {
            eprintln!(
                "warning: cannot run cargo ({e}); using {} as it is",
                bin.display()
            );
        }
        Err(e) => return Err(format!("cannot run cargo to build the daemon: {e}")),
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} is missing after the build", bin.display()))
    }
}

/// `redis-server` on PATH, if there is one.
pub fn redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// Starts the daemon on a free loopback port with its data in `data_dir`, its log in
/// `log`; returns once it accepts connections.
pub async fn start_daemon(
    bin: &Path,
    data_dir: &Path,
    log: PathBuf,
    extra: &[String],
) -> Result<(Proc, SocketAddr), String> {
    let addr = free_addr();
    let mut args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("cachebackd", bin, &args, log)?;
    wait_listening(&mut proc, addr, Duration::from_secs(300)).await?;
    Ok((proc, addr))
}

/// Starts the no-op baseline server (this program's hidden `serve-noop` command).
pub async fn start_baseline(log: PathBuf) -> Result<(Proc, SocketAddr), String> {
    let addr = free_addr();
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let args = vec![
        "serve-noop".to_string(),
        "--listen".to_string(),
        addr.to_string(),
    ];
    let mut proc = Proc::spawn("baseline (serve-noop)", &me, &args, log)?;
    wait_listening(&mut proc, addr, Duration::from_secs(10)).await?;
    Ok((proc, addr))
}
