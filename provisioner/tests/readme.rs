//! The README's command blocks, run as printed: the shell blocks of "Using the provisioner" and
//! "On real hardware" are extracted from README.md, turned into a bash script command by
//! command, and run against simulated boards, two simulated Pis (local directories reached
//! through `ssh`/`scp` shims) and loopback addresses. A command that fails as printed fails the
//! test with its README line, so the README cannot drift from the tools.
//!
//! Environment knobs: `README_TEST_FILE=PATH` runs the blocks of another copy of the README (to
//! see a broken command fail); `README_TEST_KEEP_GOING=1` runs every command even after one
//! failed and lists them all.
//!
//! # The substitution table (everything the test changes; the commands stay as printed)
//!
//! | README | in the test |
//! |---|---|
//! | `~`, the operator's account | `HOME` is a temporary directory; everything runs as the account running the test |
//! | `manifests/examples/smart-home.toml` | the commands run in a temporary bench directory holding a copy of the repository's site file at that path with `[broker]` moved to the loopback bench (`connect = "127.0.0.1"`, `port` = an ephemeral port P1, its names kept) and readings every second |
//! | the passphrase prompt of `init` | `PROVISIONER_PASSPHRASE` is set |
//! | `/dev/ttyUSBn` | `$README_DEV/ttyUSBn`, the pty link of a simulated board (`provisioner sim-board`, the firmware's `sensor-sim`); before a `device provision` whose `--port` set differs from the previous one, blank boards are plugged at those ports (boards provisioned earlier keep running, "in their rooms") |
//! | `192.168.1.10`, `192.168.1.11` (outside `pi@HOST`) | `127.0.0.1` |
//! | `pi@192.168.1.10`, `pi@192.168.1.11` | Pi #1 and Pi #2: directories `$PI1`, `$PI2` (a skeleton with `/etc/mosquitto`, `/etc/systemd/system`, `/usr/local/bin`, `/var/lib`, `/home/pi`); the `ssh` shim runs the command with bash in `/home/pi` there, with every absolute path under `/etc`, `/usr`, `/var`, `/srv`, `/opt`, `/run` mapped into that root and the Pi's `PATH` (its `/usr/local/bin`, then the system's); `scp [-r] [-p] SRC... pi@HOST:PATH` copies into that root as `cp -R -L` does (no ownership kept; with `-p` modes and times) |
//! | on the Pis: `systemctl`, `pidof`, `sudo` | shims: `systemctl daemon-reload` does nothing, `enable --now`/`start`/`restart UNIT` runs the unit's `ExecStart` in the background with the Pi's paths mapped (in its command line and, through a mapped copy, in the files of its `ConfigurationDirectory`); `pidof` sees only that Pi's processes; `sudo` runs its command |
//! | Pi #1's `--prefix /P`, `--root /path/to/pi1-nfs-root` (steps 3 and 4) | `--prefix $PI1/P`, `--root $PI1` (files name their paths as that Pi's root maps them) |
//! | Pi #2's `--prefix /P` (step 5) | `--prefix $PI2/P` |
//! | Pi #2's broker port (8883) | an ephemeral port P2: `-p 8883` becomes `-p P2`; in step 5, `emit broker` gains `--port P2` and `emit receiver` `--broker-port P2` |
//! | the SX127x radios of the Pis | `deploy gateway` and `emit receiver` gain `--air 127.0.0.1:AIR`; the test runs `lora-link air` on AIR |
//! | `lora-link/cross-check.sh --release` | skipped: `scripts/test.sh` type-checks the cross-build (`--check`); the host build stands in |
//! | `target/aarch64-unknown-linux-gnu/release/` | the directory of the host-built `provisioner`, `gateway`, `lora-link` (also on the bench's `PATH`) |
//! | `mosquitto -c ...` without `-d`, `lora-link rx` | run in the background (killed at the end) |
//! | `mosquitto -c ... -d` | after it exits 0, that Pi's broker port (P1 or P2) must be open within 10 s and still 1 s later, else the line fails |
//! | `mosquitto_sub` | gains `-C 1 -W 30`: it must receive one reading within 30 s |
//!
//! What is checked: every command exits 0; the bench broker of "Using the provisioner" listens;
//! in "On real hardware" the `mosquitto_sub` of step 6 receives a reading that a provisioned
//! simulated sensor published to Pi #1's broker, carried by the gateway over the (emulated)
//! LoRa air to `lora-link rx`, which republished it on Pi #2's broker.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require};

const PI1_ADDR: &str = "192.168.1.10";
const PI2_ADDR: &str = "192.168.1.11";

/// One command of a README block: its first line number and its text (continuations joined).
#[derive(Debug, Clone)]
struct ReadmeCommand {
    line: usize,
    text: String,
    /// The step (`# N.` comment) the command belongs to; 0 before the first.
    step: u32,
}

fn readme() -> (PathBuf, String) {
    let path = std::env::var_os("README_TEST_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

/// The commands of the first ```sh block after the heading `## {heading}`.
fn block(readme: &str, heading: &str) -> Vec<ReadmeCommand> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == format!("## {heading}"))
        .unwrap_or_else(|| panic!("README.md has no section `## {heading}`"));
    let open = (start + 1..lines.len())
        .find(|&i| lines[i].trim_end() == "```sh")
        .unwrap_or_else(|| panic!("section `{heading}` has no ```sh block"));
    let mut out = Vec::new();
    let mut step = 0;
    let mut i = open + 1;
    while i < lines.len() && lines[i].trim_end() != "```" {
        let l = lines[i];
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("# ")
            && let Some((n, _)) = rest.split_once('.')
            && let Ok(n) = n.parse::<u32>()
        {
            step = n;
        }
        if t.is_empty() || t.starts_with('#') {
            i += 1;
            continue;
        }
        let line = i + 1;
        let mut text = String::new();
        loop {
            let cur = lines[i].trim_end();
            // A backslash continues the line; so does a trailing `|`, `&&` or `||`, as in sh.
            let piped = cur.ends_with('|') || cur.ends_with("&&");
            if let Some(head) = cur.strip_suffix('\\').or(piped.then_some(cur)) {
                text.push_str(head.trim_start().trim_end());
                text.push(' ');
                i += 1;
                assert!(
                    i < lines.len(),
                    "README.md:{line}: unterminated continuation"
                );
            } else {
                text.push_str(cur.trim_start());
                i += 1;
                break;
            }
        }
        // Continuation lines are indented: collapse the runs of spaces they leave.
        let text = text
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>();
        out.push(ReadmeCommand {
            line,
            text: text.join(" "),
            step,
        });
    }
    assert!(
        i < lines.len(),
        "section `{heading}`: the ```sh block is not closed"
    );
    assert!(
        !out.is_empty(),
        "section `{heading}`: no command in its block"
    );
    out
}

/// Splits a shell line into its command and its trailing comment (a `#` after whitespace,
/// outside quotes).
fn split_comment(s: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return (s[..i].trim_end(), &s[i..]);
            }
            _ => {}
        }
        prev = c;
    }
    (s.trim_end(), "")
}

/// The value of every `--port` flag of a command.
fn ports_of(cmd: &str) -> Vec<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "--port")
        .map(|w| w[1].to_string())
        .collect()
}

/// The numbers of the test bench: ports and directories.
struct Bench {
    p1: u16,
    p2: u16,
    air: u16,
    dev: PathBuf,
    pi1: PathBuf,
    pi2: PathBuf,
    bin: PathBuf,
}

/// The step of "On real hardware" whose commands concern Pi #2 (the receiver's).
const PI2_STEPS: [u32; 1] = [5];
/// Steps whose files are for Pi #1.
const PI1_STEPS: [u32; 2] = [3, 4];

/// A README command as the test runs it: the substitutions of the table in the doc comment.
/// Returns the shell text and whether it runs in the background.
fn substitute(c: &ReadmeCommand, b: &Bench) -> (String, bool) {
    let (cmd, _comment) = split_comment(&c.text);
    let mut s = cmd.to_string();
    if s.starts_with("lora-link/cross-check.sh") {
        return (
            ": skipped: the host build stands in for the cross-build".into(),
            false,
        );
    }
    let bin = b.bin.to_string_lossy();
    s = s.replace("/dev/ttyUSB", &format!("{}/ttyUSB", b.dev.display()));
    s = s.replace(
        "target/aarch64-unknown-linux-gnu/release/",
        &format!("{bin}/"),
    );
    s = s.replace("/path/to/pi1-nfs-root", &b.pi1.to_string_lossy());
    // Addresses: `pi@HOST` names a simulated Pi (the shims map it); anything else is loopback.
    for (addr, tag) in [(PI1_ADDR, "\u{1}PI1\u{1}"), (PI2_ADDR, "\u{1}PI2\u{1}")] {
        s = s.replace(&format!("@{addr}"), tag);
        s = s.replace(addr, "127.0.0.1");
        s = s.replace(tag, &format!("@{addr}"));
    }
    let pi_root = if PI1_STEPS.contains(&c.step) {
        Some(&b.pi1)
    } else if PI2_STEPS.contains(&c.step) {
        Some(&b.pi2)
    } else {
        None
    };
    if let Some(root) = pi_root {
        s = s.replace("--prefix /", &format!("--prefix {}/", root.display()));
    }
    let on_pi2 = PI2_STEPS.contains(&c.step);
    s = s.replace("-p 8883", &format!("-p {}", b.p2));
    let provisioner = s.starts_with("provisioner ");
    if provisioner && s.contains(" deploy gateway ") {
        s.push_str(&format!(" --air 127.0.0.1:{}", b.air));
    }
    if provisioner && s.contains(" emit receiver ") {
        s.push_str(&format!(" --air 127.0.0.1:{}", b.air));
        if on_pi2 {
            s.push_str(&format!(" --broker-port {}", b.p2));
        }
    }
    if provisioner && on_pi2 && s.contains(" emit broker ") {
        s.push_str(&format!(" --port {}", b.p2));
    }
    if s.starts_with("mosquitto_sub ") {
        s.push_str(" -C 1 -W 30");
    }
    let background = (s.starts_with("mosquitto -c ") && !s.split_whitespace().any(|w| w == "-d"))
        || s.contains("lora-link rx");
    (s, background)
}

/// The port a `mosquitto ... -d` command's broker must listen on: the Pi's broker port.
fn daemon_port(s: &str, step: u32, b: &Bench) -> Option<u16> {
    let daemon =
        s.contains("mosquitto -c ") && s.split_whitespace().any(|w| w == "-d" || w == "-d'");
    if !daemon {
        return None;
    }
    if PI2_STEPS.contains(&step) {
        Some(b.p2)
    } else {
        Some(b.p1)
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const PRELUDE: &str = r#"
exec 2>&1
FAILED=""
__boards=0
# A daemon started with `mosquitto -d` must come up: wait for its port (or fail that line).
# mosquitto opens its sockets before it loads its key: the port must still be open 1 s later.
__wait_listen() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            sleep 1
            (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
            break
        fi
        sleep 0.1
    done
    echo "(test: the broker does not listen on port $1: it stopped; with -d, mosquitto logs to its log_dest or syslog)"
    return 1
}
__step() { printf '\n>>> README.md:%s: %s\n' "$1" "$2"; }
__done() {
    if [ "$2" -ne 0 ]; then
        printf '<<< README.md:%s: FAILED with exit %s\n' "$1" "$2"
        FAILED="$FAILED $1"
        [ -n "${README_TEST_KEEP_GOING:-}" ] || exit 1
    fi
}
# Plugs a blank simulated board at each port: the link moves to the new board's pty; boards
# plugged before keep running (in their rooms).
__plug() {
    for p in "$@"; do
        __boards=$((__boards + 1))
        rm -f "$p"
        "$README_PROVISIONER" sim-board --link "$p" --state "$README_BOARDS/board-$__boards.chip" \
            --baud 0 >"$README_BOARDS/board-$__boards.log" 2>&1 </dev/null &
        for _ in $(seq 200); do [ -e "$p" ] && break; sleep 0.05; done
        [ -e "$p" ] || { echo "board $__boards did not appear at $p"; exit 1; }
        echo "(test: blank board $__boards plugged at $p)"
    done
}
"#;

/// The bash script of a block: each command announced with its README line, run, its exit
/// code checked.
fn script(cmds: &[ReadmeCommand], b: &Bench, logs: &Path) -> (String, usize) {
    let mut out = String::from(PRELUDE);
    let mut last_ports: Option<BTreeSet<String>> = None;
    let mut n = 0;
    for c in cmds {
        let (s, background) = substitute(c, b);
        let _ = writeln!(out, "__step {} {}", c.line, sh_quote(&c.text));
        if s.starts_with("provisioner ") && s.contains(" device provision ") {
            let ports: BTreeSet<String> = ports_of(&s).into_iter().collect();
            if last_ports.as_ref() != Some(&ports) {
                let list: Vec<String> = ports.iter().map(|p| sh_quote(p)).collect();
                let _ = writeln!(out, "__plug {}", list.join(" "));
            }
            last_ports = Some(ports);
        }
        if s != split_comment(&c.text).0 {
            let _ = writeln!(out, "echo {}", sh_quote(&format!("(test runs: {s})")));
        }
        if background {
            let log = logs.join(format!("line-{}.log", c.line));
            let _ = writeln!(
                out,
                "( {s} ) >{} 2>&1 </dev/null &\necho \"(test: in the background, pid $!, log {})\"\n__done {} 0",
                sh_quote(&log.to_string_lossy()),
                log.display(),
                c.line
            );
        } else if let Some(port) = daemon_port(&s, c.step, b) {
            let _ = writeln!(
                out,
                "{s}\n__rc=$?\n[ $__rc -ne 0 ] || __wait_listen {port} || __rc=1\n__done {} $__rc",
                c.line
            );
        } else {
            let _ = writeln!(out, "{s}\n__done {} $?", c.line);
        }
        n += 1;
    }
    out.push_str("[ -z \"$FAILED\" ] || { echo \"README commands that failed (lines):$FAILED\"; exit 1; }\necho '=== every README command exited 0'\n");
    (out, n)
}

/// Maps the absolute paths of a Pi (`/etc/...`, `/usr/...`, ...) into its root `$root`.
const MAP_FN: &str = r#"
__map() {
    sed -E "s#(^|[[:space:]'\"=:(])/(etc|usr|var|srv|opt|run)/#\\1$2/\\2/#g" <<<"$1"
}
"#;

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write shim");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod shim");
}

/// The `ssh` and `scp` shims of the bench and the `systemctl`, `pidof`, `sudo` shims of the Pis.
fn write_shims(bench_bin: &Path, pi_bin: &Path, b: &Bench) {
    let roots = format!(
        r#"
__root_of() {{
    case "$1" in
        {PI1_ADDR}) echo {pi1} ;;
        {PI2_ADDR}) echo {pi2} ;;
        *) echo "ssh: Could not resolve hostname $1 (README test: only {PI1_ADDR} and {PI2_ADDR} exist)" >&2; return 1 ;;
    esac
}}
"#,
        pi1 = sh_quote(&b.pi1.to_string_lossy()),
        pi2 = sh_quote(&b.pi2.to_string_lossy()),
    );
    let pi_path = format!(
        "{}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        pi_bin.display()
    );
    write_exec(
        &bench_bin.join("ssh"),
        &format!(
            r#"#!/bin/bash
# ssh for the README test (provisioner/tests/readme.rs): runs the command on a simulated Pi,
# a local directory, with the Pi's absolute paths mapped into it.
set -u
{roots}{MAP_FN}
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-p|-i|-l|-F|-J) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || {{ echo "ssh (README test shim): give USER@HOST and a command" >&2; exit 255; }}
host=${{1#*@}}; shift
root=$(__root_of "$host") || exit 255
cmd=$(__map "$*" "$root")
cd "$root/home/pi" || exit 255
export PI_ROOT="$root" HOME="$root/home/pi" PATH="$root/usr/local/bin:{pi_path}"
exec bash -c "$cmd"
"#
        ),
    );
    write_exec(
        &bench_bin.join("scp"),
        &format!(
            r#"#!/bin/bash
# scp for the README test (provisioner/tests/readme.rs): copies into a simulated Pi's root as
# scp does: no ownership kept, modes and times only with -p, links followed.
set -u
{roots}
rec=""; pres=""
while getopts "rpqCvB346TP:o:i:F:l:J:S:c:" o; do
    case $o in r) rec=1 ;; p) pres=1 ;; \?) exit 1 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || {{ echo "usage: scp [-rp] SOURCE... [USER@]HOST:PATH" >&2; exit 1; }}
dest=${{@: -1}}
srcs=("${{@:1:$#-1}}")
for s in "${{srcs[@]}}"; do
    case "$s" in *:*) echo "scp (README test shim): remote source $s not supported" >&2; exit 1 ;; esac
done
case "$dest" in *:*) ;; *) echo "scp (README test shim): the destination must be HOST:PATH" >&2; exit 1 ;; esac
host=${{dest%%:*}}; host=${{host#*@}}; path=${{dest#*:}}
root=$(__root_of "$host") || exit 255
case "$path" in /*) target="$root$path" ;; *) target="$root/home/pi/$path" ;; esac
flags=(-L)
[ -n "$rec" ] && flags+=(-R)
[ -n "$pres" ] && flags+=(--preserve=mode,timestamps)
umask 022
exec cp "${{flags[@]}}" -- "${{srcs[@]}}" "$target"
"#
        ),
    );
    write_exec(
        &pi_bin.join("systemctl"),
        &format!(
            r#"#!/bin/bash
# systemctl on a simulated Pi (README test): daemon-reload does nothing; enable --now, start,
# restart run the unit's ExecStart in the background with the Pi's paths mapped into PI_ROOT,
# in its command line and, through a mapped copy, in its ConfigurationDirectory's files.
set -u
{MAP_FN}
root=$PI_ROOT
verb=${{1:-}}; shift || true
now=""; units=()
for a in "$@"; do case "$a" in --now) now=1 ;; -*) ;; *) units+=("${{a%.service}}") ;; esac; done
case "$verb" in
    daemon-reload) exit 0 ;;
    enable) [ -n "$now" ] || exit 0 ;;
    start|restart) ;;
    *) echo "systemctl (README test shim): $verb not supported" >&2; exit 1 ;;
esac
for u in "${{units[@]}}"; do
    f="$root/etc/systemd/system/$u.service"
    [ -f "$f" ] || {{ echo "Failed to start $u.service: Unit $u.service not found." >&2; exit 5; }}
    exec_start=$(sed -n 's/^ExecStart=//p' "$f" | tail -n 1)
    cmd="$exec_start"
    for c in $(sed -n 's/^ConfigurationDirectory=//p' "$f"); do
        view="$root/run/view-$u/etc/$c"
        rm -rf "$view"; mkdir -p "$(dirname "$view")"
        cp -a "$root/etc/$c" "$view"
        for t in $(find "$view" -type f); do
            grep -Iq . "$t" || continue
            mapped=$(sed "s#/etc/$c/#$view/#g" "$t")
            mapped=$(__map "$mapped" "$root")
            printf '%s\n' "$mapped" >"$t"
        done
        cmd=${{cmd//\/etc\/$c\//$view/}}
    done
    cmd=$(__map "$cmd" "$root")
    if [ -f "$root/run/$u.pid" ] && kill -0 "$(cat "$root/run/$u.pid")" 2>/dev/null; then
        kill "$(cat "$root/run/$u.pid")"
    fi
    setsid bash -c "exec $cmd" >"$root/run/$u.log" 2>&1 </dev/null &
    echo $! >"$root/run/$u.pid"
done
"#
        ),
    );
    write_exec(
        &pi_bin.join("pidof"),
        r#"#!/bin/bash
# pidof on a simulated Pi (README test): only the processes started on this Pi.
out=()
for name in "$@"; do
    case "$name" in -*) continue ;; esac
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = "$name" ] || continue
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qxF "PI_ROOT=$PI_ROOT" && out+=("${d#/proc/}")
    done
done
[ ${#out[@]} -gt 0 ] || exit 1
echo "${out[*]}"
"#,
    );
    write_exec(
        &pi_bin.join("sudo"),
        r#"#!/bin/bash
# sudo on a simulated Pi (README test): the test already runs as the Pi's administrator.
while [ $# -gt 0 ]; do case "$1" in -u|-g) shift 2 ;; -*) shift ;; *) break ;; esac; done
exec "$@"
"#,
    );
}

/// Every process carrying this run's tag in its environment (the script and all it started,
/// daemons included): killed at the end.
fn tagged(tag: &str) -> Vec<i32> {
    let needle = format!("README_TEST_RUN={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.split(|&b| b == 0).any(|v| v == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            let pids = tagged(&self.0);
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), sig);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && !tagged(&self.0).is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `gateway` and `lora-link`, built next to `provisioner`.
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_provisioner"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for b in ["gateway", "lora-link"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run `cargo build -p gateway -p lora-link` (or `cargo test --workspace`) first",
            dir.join(b).display()
        );
    }
    dir
}

/// The result of running one block.
struct Run {
    output: String,
    ok: bool,
    _dir: tempfile::TempDir,
    bench: Bench,
    logs: PathBuf,
    _reaper: Reaper,
}

impl Run {
    /// The output of the command at README line `line`.
    fn output_of(&self, line: usize) -> &str {
        let marker = format!("\n>>> README.md:{line}:");
        let Some(start) = self.output.find(&marker) else {
            return "";
        };
        let rest = &self.output[start + 1..];
        let end = rest[1..]
            .find("\n>>> README.md:")
            .map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }
    /// Every log the test and the simulated Pis wrote, for a failure message.
    fn logs(&self) -> String {
        let mut s = String::new();
        let mut files = Vec::new();
        for d in [
            self.logs.clone(),
            self.bench.pi1.join("run"),
            self.bench.pi2.join("run"),
        ] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    files.push(e.path());
                }
            }
        }
        files.sort();
        for f in files {
            let t = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(25).collect();
            let _ = writeln!(s, "--- {} (last lines)", f.display());
            for l in tail.into_iter().rev() {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }
}

/// Runs the block under `heading` on a fresh bench.
fn run_block(heading: &str) -> Run {
    for p in ["mosquitto", "mosquitto_sub", "openssl"] {
        require(p);
    }
    let bin = bin_dir();
    let (readme_path, text) = readme();
    let cmds = block(&text, heading);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path().to_path_buf();
    // mosquitto drops to its own account: it must be able to reach the files under here.
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let air = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .local_addr()
        .expect("addr")
        .port();
    let bench = Bench {
        p1: free_port(),
        p2: free_port(),
        air,
        dev: t.join("dev"),
        pi1: t.join("pi1"),
        pi2: t.join("pi2"),
        bin: bin.clone(),
    };
    let logs = t.join("logs");
    let boards = t.join("boards");
    let home = t.join("home");
    let work = t.join("bench");
    let bench_bin = t.join("shims");
    let pi_bin = t.join("pi-shims");
    for d in [
        &logs, &boards, &home, &work, &bench_bin, &pi_bin, &bench.dev,
    ] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for d in [&home, &work] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for root in [&bench.pi1, &bench.pi2] {
        for d in [
            "etc/mosquitto",
            "etc/systemd/system",
            "usr/local/bin",
            "var/lib",
            "home/pi",
            "run",
            "tmp",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("pi skeleton");
        }
    }
    // The site copy the README's step 1 asks for, with [broker] on the loopback bench.
    let site = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/smart-home.toml"),
    )
    .expect("example site");
    assert!(
        site.contains("port = 8883"),
        "example site: no `port = 8883`"
    );
    let site = site
        .replace(
            "port = 8883",
            &format!("port = {}\nconnect = \"127.0.0.1\"", bench.p1),
        )
        .replace("interval_s = 60", "interval_s = 1")
        .replace("interval_s = 30", "interval_s = 1")
        .replace("interval_s = 10", "interval_s = 1");
    let site_path = work.join("manifests/examples/smart-home.toml");
    std::fs::create_dir_all(site_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&site_path, site).expect("site copy");
    write_shims(&bench_bin, &pi_bin, &bench);

    let (body, n) = script(&cmds, &bench, &logs);
    let script_path = t.join("readme.sh");
    std::fs::write(&script_path, &body).expect("script");

    let tag = t.to_string_lossy().into_owned();
    let reaper = Reaper(tag.clone());
    // The LoRa air between the Pis (the radios are emulated).
    let air_log = logs.join("air.log");
    let air_child = Command::new(bin.join("lora-link"))
        .args(["air", "--listen", &format!("127.0.0.1:{}", bench.air)])
        .env("README_TEST_RUN", &tag)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&air_log).expect("log"))
        .stderr(std::fs::File::create(logs.join("air.err.log")).expect("log"))
        .spawn()
        .expect("lora-link air");
    drop(air_child);

    let path = format!(
        "{}:{}:{}:/usr/sbin:/sbin",
        bench_bin.display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script_path)
        .current_dir(&work)
        .env("HOME", &home)
        .env("PATH", path)
        .env("PROVISIONER_PASSPHRASE", common::PASSPHRASE)
        .env("README_TEST_RUN", &tag)
        .env("README_DEV", &bench.dev)
        .env("README_BOARDS", &boards)
        .env("README_PROVISIONER", env!("CARGO_BIN_EXE_provisioner"))
        .env_remove("PROVISIONER_HOME")
        .env_remove("PROVISIONER_CRASH_AT")
        .env_remove("PROVISIONER_FAKE_NOW")
        .env_remove("PROVISIONER_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let output = format!(
        "(README: {}, section `{heading}`, {n} commands, {:.1} s)\n{}",
        readme_path.display(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{output}");
    Run {
        output,
        ok: out.status.success(),
        _dir: dir,
        bench,
        logs,
        _reaper: reaper,
    }
}

fn line_of(cmds: &[ReadmeCommand], pred: impl Fn(&str) -> bool) -> usize {
    cmds.iter()
        .find(|c| pred(&c.text))
        .map(|c| c.line)
        .expect("command in the block")
}

#[test]
fn using_the_provisioner_runs_as_printed_and_its_broker_listens() {
    let run = run_block("Using the provisioner");
    assert!(
        run.ok,
        "a README command failed as printed:\n{}\n{}",
        run.output,
        run.logs()
    );
    // The last command started the bench broker with the emitted configuration.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", run.bench.p1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "`mosquitto -c ./broker/mosquitto.conf` does not listen on the site's port {}:\n{}",
            run.bench.p1,
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn on_real_hardware_runs_as_printed_and_a_reading_crosses_the_lora_link() {
    let run = run_block("On real hardware");
    assert!(
        run.ok,
        "a README command failed as printed:\n{}\n{}",
        run.output,
        run.logs()
    );
    let (_, text) = readme();
    let cmds = block(&text, "On real hardware");
    let sub = line_of(&cmds, |t| t.starts_with("mosquitto_sub "));
    let seen = run.output_of(sub);
    // `mosquitto_sub -v` prints `TOPIC PAYLOAD`: a reading of a provisioned sensor, published
    // on Pi #1, forwarded over LoRa and republished by the receiver on Pi #2.
    // Only `lora-link rx` may write on Pi #2's broker (its ACL), and the sensors connect to
    // Pi #1's: a reading there crossed the LoRa link.
    let reading = seen.lines().find_map(|l| {
        let (topic, payload) = l.split_once(' ')?;
        let v: serde_json::Value = serde_json::from_str(payload).ok()?;
        Some((topic.to_string(), v))
    });
    let Some((topic, v)) = reading else {
        panic!(
            "step 6: mosquitto_sub on Pi #2 received no reading:\n{seen}\n{}",
            run.logs()
        );
    };
    let device = v["device"].as_str().unwrap_or_default();
    assert!(
        ["salon-1", "chambre_1-1", "chambre_1-2"].contains(&device),
        "step 6: a reading from an unknown device: {topic} {v}"
    );
    let room = device.rsplit_once('-').map_or("", |(r, _)| r);
    assert!(
        topic.starts_with(&format!("maison/{room}/")) && v["value"].is_number(),
        "step 6: {topic} {v} is not a reading of {device}"
    );
}

#[test]
fn the_substitutions_keep_the_commands_and_are_the_documented_ones() {
    let b = Bench {
        p1: 1,
        p2: 2,
        air: 3,
        dev: "/T/dev".into(),
        pi1: "/T/pi1".into(),
        pi2: "/T/pi2".into(),
        bin: "/B".into(),
    };
    let c = |text: &str, step| ReadmeCommand {
        line: 1,
        text: text.into(),
        step,
    };
    let s = |text: &str, step| substitute(&c(text, step), &b);
    assert_eq!(
        s(
            "provisioner device provision --port /dev/ttyUSB0 --id x   # comment",
            2
        )
        .0,
        "provisioner device provision --port /T/dev/ttyUSB0 --id x"
    );
    assert_eq!(
        s("provisioner server issue --dns b --ip 192.168.1.10", 1).0,
        "provisioner server issue --dns b --ip 127.0.0.1"
    );
    assert_eq!(
        s("scp -r ./a/* pi@192.168.1.10:/etc/x/", 3).0,
        "scp -r ./a/* pi@192.168.1.10:/etc/x/"
    );
    assert_eq!(
        s("provisioner emit broker --out ./b --prefix /etc/m", 3).0,
        "provisioner emit broker --out ./b --prefix /T/pi1/etc/m"
    );
    assert_eq!(
        s("provisioner emit broker --out ./b --prefix /etc/m", 5).0,
        "provisioner emit broker --out ./b --prefix /T/pi2/etc/m --port 2"
    );
    assert_eq!(
        s("mosquitto_sub -h 192.168.1.11 -p 8883 -t 'maison/#' -v", 6).0,
        "mosquitto_sub -h 127.0.0.1 -p 2 -t 'maison/#' -v -C 1 -W 30"
    );
    assert!(
        s(
            "ssh pi@192.168.1.11 'lora-link rx --manifest /etc/l/r.toml'",
            5
        )
        .1
    );
    assert!(s("mosquitto -c ./broker/mosquitto.conf", 0).1);
    assert!(
        !s(
            "ssh pi@192.168.1.10 'mosquitto -c /etc/m/mosquitto.conf -d'",
            3
        )
        .1
    );
    assert_eq!(
        split_comment("a 'maison/#' b # c"),
        ("a 'maison/#' b", "# c")
    );
}
