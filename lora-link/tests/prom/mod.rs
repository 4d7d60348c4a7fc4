//! Test helpers shared by the lora-link and gateway tests: a strict reader of the Prometheus
//! text exposition format (0.0.4) and a plain HTTP/1.1 GET over std::net.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Parses exposition text strictly: every sample line is `name{labels} value` or
/// `name value`, every family has `# HELP` and `# TYPE` before its samples, counters end in
/// `_total`. Returns the samples as `name{labels}` -> value.
pub fn parse(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest
                .split_once(' ')
                .ok_or(format!("{n}: HELP without text"))?;
            if !is_name(name) || doc.trim().is_empty() || !help.insert(name.to_owned()) {
                return Err(format!("{n}: bad or repeated HELP: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or(format!("{n}: TYPE without kind"))?;
            if !help.contains(name) {
                return Err(format!("{n}: TYPE before HELP: {line}"));
            }
            if !["counter", "gauge"].contains(&kind) {
                return Err(format!("{n}: unexpected type {kind}"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("{n}: counter {name} does not end in _total"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(format!("{n}: repeated TYPE {name}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("{n}: unexpected line: {line:?}"));
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("{n}: no value: {line}"))?;
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or(format!("{n}: unclosed labels: {line}"))?;
                for pair in labels.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or(format!("{n}: bad label {pair}"))?;
                    if !(is_name(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"')) {
                        return Err(format!("{n}: bad label {pair}"));
                    }
                }
                name
            }
        };
        if !is_name(name) {
            return Err(format!("{n}: bad metric name {name:?}"));
        }
        if !types.contains_key(name) {
            return Err(format!("{n}: sample of {name} without HELP/TYPE before it"));
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|e| format!("{n}: value {v:?}: {e}"))?,
        };
        if types[name] == "counter" && (v.is_nan() || v < 0.0) {
            return Err(format!("{n}: negative counter {line}"));
        }
        if samples.insert(series.to_owned(), v).is_some() {
            return Err(format!("{n}: repeated series {series}"));
        }
    }
    Ok(samples)
}

/// `GET path` over HTTP/1.1: (status code, content type, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    if len != body.len() {
        return Err(std::io::Error::other(format!(
            "Content-Length {len}, body {} bytes",
            body.len()
        )));
    }
    Ok((status, ctype, body.to_owned()))
}

/// Scrapes `/metrics` and parses it (panics with the text when it is not valid).
pub fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, ctype, body) = get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{body}"))
}

/// A sample's value, 0 when absent.
pub fn value(m: &BTreeMap<String, f64>, series: &str) -> u64 {
    m.get(series).copied().unwrap_or(0.0) as u64
}

#[test]
fn the_reader_refuses_what_the_format_forbids() {
    assert!(parse("# HELP a_total x\n# TYPE a_total counter\na_total{r=\"b\"} 1\n").is_ok());
    for bad in [
        "a_total 1\n",
        "# HELP a x\n# TYPE a counter\na 1\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total one\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total{r=b} 1\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total 1",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}
