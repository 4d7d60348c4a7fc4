//! The current time, in whole seconds. Debug builds honour `PROVISIONER_FAKE_NOW` (Unix
//! seconds) so tests can move past a CA's or a CRL's expiry without waiting for it.

use time::OffsetDateTime;

/// Now, UTC, whole seconds.
pub fn now() -> OffsetDateTime {
    #[cfg(debug_assertions)]
    if let Some(t) = std::env::var("PROVISIONER_FAKE_NOW")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
    {
        return t;
    }
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}
