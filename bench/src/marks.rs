//! `--marks`: prints the CLOCK_MONOTONIC window of every timed phase to stderr, so that a
//! profile recorded with `perf record -k CLOCK_MONOTONIC` can be cut to exactly that phase
//! (`perf script --time START,END`). See docs/BENCHMARKS.md, "Profiling".

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns the marks on.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// CLOCK_MONOTONIC now, in seconds (the clock `perf record -k CLOCK_MONOTONIC` stamps with).
pub fn now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Prints `mark START END label` if the marks are on.
pub fn mark(label: &str, start: f64, end: f64) {
    if ON.load(Ordering::Relaxed) {
        eprintln!("mark {start:.6} {end:.6} {label}");
    }
}
