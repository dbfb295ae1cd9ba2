//! A Chroma server for tests (the vector store tests of `aida-ai`, LeadService replicas
//! sharing one store), started at most once per test binary.
//!
//! `TEST_CHROMA_URL` names a running server to use. Otherwise the first caller:
//! 1. makes sure `$HOME/.cache/aida/chroma-venv` holds `chromadb` at [`CHROMADB`] (creating
//!    the venv and running `pip install --quiet chromadb==…` when another version or none is
//!    there; about 1.5 min);
//! 2. starts `chroma run --path <fresh temp dir> --port <free port>` under a small `sh`
//!    watchdog whose stdin is a pipe from this process;
//! 3. waits for `GET /api/v2/heartbeat`.
//!
//! The pipe's write end lives in a static, so it closes only when the test process ends (even
//! on SIGKILL, since the kernel closes it). The watchdog then sees EOF, kills the server, waits
//! for it (no zombie) and deletes its data directory and log: no server outlives the test run.
//!
//! If the server cannot be started, every caller panics: Chroma tests fail, they never skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chroma release the client is verified against (HTTP API v2), and the image tag the
/// compose and Swarm files run.
pub const CHROMADB: &str = "1.5.9";

/// Runs the server and cleans up after it. The server is stopped when the watchdog's stdin
/// reaches EOF (seen by the `cat` subshell through fd 3, since a background job's stdin is
/// /dev/null); the watchdog exits when the server does, printing the end of its log, so an
/// early death is seen at once.
const WATCHDOG: &str = r#"
exec 3<&0
"$1" run --path "$2" --port "$3" >"$2.log" 2>&1 3<&- &
server=$!
( cat <&3 >/dev/null; kill "$server" ) 2>/dev/null &
exec 3<&-
wait "$server"
status=$?
tail -c 4000 "$2.log" >&2
rm -rf "$2" "$2.log"
exit "$status"
"#;

/// A `chroma run` server under the watchdog, on a free port with a fresh data directory.
/// Dropping it (or this process ending, even by SIGKILL) stops the server and removes its
/// data.
pub struct ChromaProcess {
    pub url: String,
    /// The server process, when it could be found (for its memory).
    pub server_pid: Option<u32>,
    /// Holding it keeps the watchdog's stdin open.
    watchdog: Mutex<Child>,
}

impl ChromaProcess {
    /// Starts the `chroma` command and waits for its heartbeat.
    pub fn start(chroma: &Path) -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let data = std::env::temp_dir().join(format!("aida-chroma-{}-{nanos}", std::process::id()));
        let port = free_port()?;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("chroma-watchdog")
            .arg(chroma)
            .arg(&data)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning the chroma watchdog: {e}"))?;
        let started = Instant::now();
        while started.elapsed() < STARTUP_TIMEOUT {
            if heartbeat(port) {
                eprintln!(
                    "chroma server on port {port} after {:.1}s (data {})",
                    started.elapsed().as_secs_f32(),
                    data.display()
                );
                return Ok(Self {
                    url: format!("http://127.0.0.1:{port}"),
                    server_pid: server_pid(watchdog.id()),
                    watchdog: Mutex::new(watchdog),
                });
            }
            if let Ok(Some(status)) = watchdog.try_wait() {
                return Err(format!(
                    "`{} run` exited early ({status}); end of its log:\n{}",
                    chroma.display(),
                    log_of(&mut watchdog)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Closing stdin makes the watchdog stop the server, print its log and clean up.
        drop(watchdog.stdin.take());
        let log = log_of(&mut watchdog);
        let _ = watchdog.wait();
        Err(format!(
            "no heartbeat on port {port} within {STARTUP_TIMEOUT:?}; server log:\n{log}"
        ))
    }
}

impl Drop for ChromaProcess {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(watchdog.stdin.take());
        drop(watchdog.stderr.take());
        let _ = watchdog.wait();
    }
}

/// What the watchdog printed: the end of the server's log.
fn log_of(watchdog: &mut Child) -> String {
    let mut log = String::new();
    if let Some(mut stderr) = watchdog.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    log
}

/// The `chroma` child of the watchdog shell.
fn server_pid(watchdog: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{watchdog}/task/{watchdog}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("chroma"))
        })
}

/// The base URL of the test Chroma server, starting it if needed.
pub fn url() -> String {
    if let Ok(url) = std::env::var("TEST_CHROMA_URL") {
        return url;
    }
    static SERVER: OnceLock<Result<ChromaProcess, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => server.url.clone(),
        Err(e) => panic!("could not start a Chroma test server: {e}"),
    }
}

fn venv_dir() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/aida/chroma-venv"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ensure_venv() -> Result<PathBuf, String> {
    let venv = venv_dir()?;
    let chroma = venv.join("bin/chroma");
    let marker = venv.join(".aida-chromadb");
    if chroma.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(CHROMADB) {
        return Ok(chroma);
    }
    eprintln!(
        "installing chromadb into {} (about 1.5 min)",
        venv.display()
    );
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        &format!("chromadb=={CHROMADB}"),
    ]))?;
    if chroma.exists() {
        std::fs::write(&marker, CHROMADB).map_err(|e| format!("{}: {e}", marker.display()))?;
        Ok(chroma)
    } else {
        Err(format!("{} missing after pip install", chroma.display()))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn heartbeat(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /api/v2/heartbeat HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

fn start() -> Result<ChromaProcess, String> {
    ChromaProcess::start(&ensure_venv()?)
}
