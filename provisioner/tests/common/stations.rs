//! Bench-station fixtures: one PostgreSQL server shared by the tests of a binary that run at
//! the same time, the root's home on it, and station homes made from `station add` bundles
//! (each with its own issuing CA; no root key copied).

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex, Weak};

use test_postgres::PgServer;

use super::{Home, PASSPHRASE, pg_init_args, site_text};

/// The PostgreSQL server of this test binary: started by the first test that asks, shared by
/// every test holding it, stopped when the last one drops it.
pub fn shared_pg() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = shared.upgrade() {
        return pg;
    }
    let pg = Arc::new(PgServer::start());
    *shared = Arc::downgrade(&pg);
    pg
}

/// The root's home: the CA (root and its own issuing CA) on the database `db` of `pg`, with
/// the test site for a broker on `port`.
pub fn root_home(pg: &PgServer, db: &str, port: u16) -> Home {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    let mut args = pg_init_args(pg, db, &site);
    args.push("--issuing-ca".into());
    home.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    home
}

/// A 0600 file holding the test passphrase (the station key's).
pub fn passphrase_file(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("station-passphrase");
    std::fs::write(&path, PASSPHRASE).expect("passphrase file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// A station's home on the ledger `db` of `pg`, from `station add NAME` on `root`: with
/// `csr`, the station makes its key itself (`station request`) and the root certifies the
/// CSR; else the root's home makes the key and puts it in the bundle, encrypted under the
/// test passphrase. Then `init --station BUNDLE` on the same ledger.
pub fn station_home(
    pg: &PgServer,
    db: &str,
    root: &Home,
    name: &str,
    port: u16,
    csr: bool,
) -> Home {
    let bundle = root.work().join(format!("bundle-{name}"));
    let bundle_arg = bundle.to_string_lossy().into_owned();
    let home = Home::new();
    if csr {
        let file = home.work().join(format!("{name}.csr"));
        let file = file.to_string_lossy().into_owned();
        home.ok(&["station", "request", name, "--out", &file]);
        root.ok(&["station", "add", name, "--out", &bundle_arg, "--csr", &file]);
    } else {
        let pass = passphrase_file(&root.work());
        root.ok(&[
            "station",
            "add",
            name,
            "--out",
            &bundle_arg,
            "--station-passphrase-file",
            &pass.to_string_lossy(),
        ]);
    }
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    let mut args = pg_init_args(pg, db, &site);
    args.extend(["--station".into(), bundle_arg]);
    home.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    home
}

/// Runs `args` in `home` with a crash injected at `point` and checks it stopped there.
pub fn crashed_at(home: &Home, args: &[&str], point: &str) -> Output {
    let crashed = home
        .cmd(args)
        .env("PROVISIONER_CRASH_AT", point)
        .output()
        .expect("run");
    assert!(!crashed.status.success(), "{point}: no crash");
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains(&format!("crash injected at `{point}`")),
        "{point}: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    crashed
}
