//! The `cachebackd` binary: read the settings (defaults, `--config FILE`, flags), log to
//! stderr, serve until SIGTERM/SIGINT, reload the principals and TLS files on SIGHUP. Also
//! `cachebackd check-config FILE`, `cachebackd ctl …`, `hash-token` and `gen-token`.

mod cli;
mod ctl;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use cachebackd::config::{Config, LogFormat};
use cachebackd::shutdown::Shutdown;
use clap::Parser;
use cli::{Cli, Command, SettingsArgs};
use tokio::signal::unix::{signal, SignalKind};

/// The exit code of a configuration error (sysexits' EX_CONFIG). The systemd unit names it
/// in `RestartPreventExitStatus=`, so a bad config is not restarted in a loop.
const EX_CONFIG: u8 = 78;

/// mimalloc rather than glibc's malloc: the runtime's threads allocate and free each other's
/// buffers on every call, which glibc serves from contended arenas (see docs/BENCHMARKS.md,
/// "Refresh").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` by its number in mimalloc 3's `mi_option_t` (the `mimalloc.h` of
/// libmimalloc-sys 0.1.49, pinned in Cargo.toml); the Rust binding has no name for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory the daemon frees goes back to the OS as glibc's malloc gave it back (see
/// docs/BENCHMARKS.md, "Memory bounds"):
/// - at once, not after mimalloc's delay, which it only acts on when the freeing thread
///   allocates again: after a burst of large answers the runtime's threads may idle, and
///   the daemon kept ~300 MiB it no longer used;
/// - without transparent huge pages, which mimalloc asks for on its arenas (reserved before
///   `main`, so its own option would come too late; the kernel's per-process switch applies
///   to every later fault): each 4 MiB response held 6.3 MiB of RSS in 2 MiB pages, so the
///   unsent budget's worst case was ~1.6× `max_unsent_bytes`.
fn return_freed_memory_as_glibc_did() {
    // SAFETY: sets an option by its number before any other thread runs; mimalloc reads
    // it whenever it purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours. A
    // kernel without it (before 3.15) leaves huge pages as they were, which costs memory
    // only, so its error is ignored.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> ExitCode {
    return_freed_memory_as_glibc_did();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Ctl(args)) => ctl::main(args),
        Some(Command::HashToken) => cachebackd::security::hash_token_main(),
        Some(Command::GenToken) => cachebackd::security::gen_token_main(),
        None => serve(&cli.settings),
    }
}

fn check_config(file: &Path) -> ExitCode {
    match Config::from_file(file)
        .map_err(|e| e.to_string())
        .and_then(|config| cachebackd::security::load(&config, Some(file)).map(|_| config))
    {
        Ok(config) => {
            eprintln!("{}: ok", file.display());
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cachebackd: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn serve(args: &SettingsArgs) -> ExitCode {
    let config = match cli::load(args)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            cachebackd::security::load(&config, args.config.as_deref()).map(|_| config)
        }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachebackd: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // SIGHUP reads the settings as at start: the file again, then the same flags.
    let reload_args = args.clone();
    let reload: cachebackd::security::ReloadSource =
        Box::new(move || cli::load(&reload_args).map(|c| (c, reload_args.config.clone())));
    // SAFETY: no other thread exists yet (the runtime starts below).
    let passed = match unsafe { cachebackd::systemd::take_passed_sockets() } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cachebackd: cannot take the sockets systemd passed: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachebackd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("cachebackd: cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            on_signal.begin_drain();
        });
        match cachebackd::daemon::run_with_reload(config, passed, shutdown, Some(reload)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cachebackd cannot run");
                eprintln!("cachebackd: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to stderr: plain text (colours only on a terminal, so the journal gets clean lines)
/// or JSON. RUST_LOG, when set, overrides `log_level`.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log_format {
        LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}
