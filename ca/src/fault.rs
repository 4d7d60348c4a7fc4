//! Crash injection for the crash-safety tests.
//!
//! In debug builds, `PROVISIONER_CRASH_AT=<point>` aborts the process (no unwinding, no
//! destructors: like a power cut for everything not yet fsynced) when execution reaches the
//! named point. Release builds compile this to nothing.

/// Aborts the process if the environment asks for a crash at `name` (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PROVISIONER_CRASH_AT").is_ok_and(|p| p == name) {
        eprintln!("crash injected at `{name}`");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
