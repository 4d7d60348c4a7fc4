//! The builder against real material from the openssl CLI and a real rustls server on
//! 127.0.0.1 that requires a client certificate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use super::*;

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (install it: the tests use the real CLI)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 key `name.key` (0600) in `dir`.
fn key(dir: &Path, name: &str) -> PathBuf {
    let k = format!("{name}.key");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &k,
        ],
        dir,
    );
    let path = dir.join(k);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// A CA (`ca.crt`), a server certificate for `localhost`/127.0.0.1 and a client certificate
/// `node` (CN `capteur-1`), all signed by the CA.
fn pki(dir: &Path) {
    key(dir, "ca");
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.crt",
        ],
        dir,
    );
    for (name, subj, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("node", "/CN=capteur-1", "extendedKeyUsage=clientAuth\n"),
    ] {
        key(dir, name);
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        openssl(
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subj,
                "-out",
                &format!("{name}.csr"),
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
            dir,
        );
    }
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("node.crt"),
        key_file: dir.join("node.key"),
        server_name: None,
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    read_certs(path, "test certificate").expect("certificates")
}

fn ring_key(path: &Path) -> Arc<dyn SigningKey> {
    let der = PrivateKeyDer::from_pem_file(path).expect("key");
    provider()
        .key_provider
        .load_private_key(der)
        .expect("ring key")
}

/// A key that signs through another and hides nothing but its type: the shape of the chip
/// signer in `firmware`.
#[derive(Debug)]
struct Opaque(Arc<dyn SigningKey>);

impl SigningKey for Opaque {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        self.0.choose_scheme(offered)
    }
    fn public_key(&self) -> Option<rustls_pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.0.public_key()
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// Serves one TLS connection on 127.0.0.1 that requires a client certificate from the CA;
/// returns the port and a handle yielding the client's CN bytes seen and the line read.
fn server(dir: &Path) -> (u16, std::thread::JoinHandle<Result<Vec<u8>, String>>) {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(&dir.join("ca.crt")) {
        roots.add(c).expect("root");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("client verifier");
    let chain = pem_certs(&dir.join("server.crt"));
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server key");
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(Arc::new(cfg)).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if tls.conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            return Err("no client certificate".into());
        }
        tls.write_all(b"pong").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        Ok(buf.to_vec())
    });
    (port, h)
}

/// Connects with `cfg` to a fresh server, says `ping`, expects `pong`.
fn handshake(dir: &Path, cfg: Arc<ClientConfig>, name: &str) -> Result<(), String> {
    let (port, h) = server(dir);
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = ServerName::try_from(name.to_string()).expect("name");
    let conn = ClientConnection::new(cfg, name).expect("client");
    let mut tls = StreamOwned::new(conn, tcp);
    let client = (|| -> std::io::Result<[u8; 4]> {
        tls.write_all(b"ping")?;
        tls.flush()?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)?;
        Ok(buf)
    })();
    drop(tls);
    let served = h.join().expect("server thread");
    let reply = client.map_err(|e| format!("client: {e}; server: {served:?}"))?;
    assert_eq!(&reply, b"pong");
    assert_eq!(served?, b"ping");
    Ok(())
}

#[test]
fn a_good_pair_completes_mutual_tls_with_a_key_file_and_with_a_signer() {
    let d = tempfile::tempdir().expect("tempdir");
    pki(d.path());
    let cfg = client_config(&files(d.path())).expect("key-file config");
    handshake(d.path(), cfg, "localhost").expect("key-file handshake");

    let setup = ClientSetup {
        trust: Trust::Certs {
            source: "ca.crt".into(),
            certs: pem_certs(&d.path().join("ca.crt")),
        },
        auth: ClientAuth::Signer {
            source: "device.crt".into(),
            chain: pem_certs(&d.path().join("node.crt")),
            key: Arc::new(Opaque(ring_key(&d.path().join("node.key")))),
            what: "the chip's key".into(),
        },
        // connect to 127.0.0.1 but check the broker's name, as the boards do
        server_name: Some("localhost".into()),
    };
    let cfg = setup.build().expect("signer config");
    handshake(d.path(), cfg, "127.0.0.1").expect("signer handshake");
}

#[test]
fn the_server_name_is_checked_against_the_configured_name() {
    let d = tempfile::tempdir().expect("tempdir");
    pki(d.path());
    let mut f = files(d.path());
    f.server_name = Some("broker.example".into());
    let cfg = client_config(&f).expect("config");
    let e = handshake(d.path(), cfg, "localhost").expect_err("wrong name");
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for"),
        "{e}"
    );
    f.server_name = Some("not a name!".into());
    let e = client_config(&f).expect_err("bad name").to_string();
    assert!(e.contains("not a DNS name or IP"), "{e}");
}

#[test]
fn a_garbage_ca_file_is_named_and_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    pki(d.path());
    let f = files(d.path());
    std::fs::write(&f.ca_file, "garbage, no PEM at all\n").expect("write");
    let e = client_config(&f).expect_err("no block").to_string();
    assert!(
        e.contains("ca.crt")
            && e.contains("no CERTIFICATE block")
            && e.contains("provisioner emit"),
        "{e}"
    );
    std::fs::write(
        &f.ca_file,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let e = client_config(&f).expect_err("junk certificate").to_string();
    assert!(
        e.contains("ca.crt") && e.contains("unusable CA certificate"),
        "{e}"
    );
    let e = ClientSetup {
        trust: Trust::Certs {
            source: "ca.crt".into(),
            certs: vec![],
        },
        ..ClientSetup::from(&files(d.path()))
    }
    .build()
    .expect_err("empty blob")
    .to_string();
    assert!(
        e.contains("ca.crt") && e.contains("no CERTIFICATE block"),
        "{e}"
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_for_both_kinds() {
    let d = tempfile::tempdir().expect("tempdir");
    pki(d.path());
    let other = key(d.path(), "other");
    let mut f = files(d.path());
    f.key_file = other.clone();
    let e = client_config(&f).expect_err("mismatch").to_string();
    assert!(
        e.contains("node.crt") && e.contains("other.key") && e.contains("usable client identity"),
        "{e}"
    );
    let e = ClientSetup {
        auth: ClientAuth::Signer {
            source: "device.crt".into(),
            chain: pem_certs(&d.path().join("node.crt")),
            key: Arc::new(Opaque(ring_key(&other))),
            what: "the chip's key".into(),
        },
        ..ClientSetup::from(&files(d.path()))
    }
    .build()
    .expect_err("signer mismatch")
    .to_string();
    assert!(
        e.contains("device.crt does not match the chip's key"),
        "{e}"
    );
}

#[test]
fn missing_files_readable_keys_and_non_keys_are_named() {
    let d = tempfile::tempdir().expect("tempdir");
    let f = files(d.path());
    let e = client_config(&f).expect_err("no ca").to_string();
    assert!(e.contains("ca.crt") && e.contains("CA file"), "{e}");
    pki(d.path());
    std::fs::set_permissions(&f.key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = client_config(&f).expect_err("insecure").to_string();
    assert!(e.contains("node.key") && e.contains("chmod 600"), "{e}");
    std::fs::write(
        &f.key_file,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    std::fs::set_permissions(&f.key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let e = client_config(&f).expect_err("junk key").to_string();
    assert!(e.contains("node.key") && !e.contains("AAAA"), "{e}");
}

#[test]
fn the_client_id_must_be_the_certificates_cn() {
    let d = tempfile::tempdir().expect("tempdir");
    pki(d.path());
    let crt = d.path().join("node.crt");
    assert_eq!(certificate_identity(&crt).expect("cn"), "capteur-1");
    check_client_id("capteur-1", &crt).expect("same id");
    let e = check_client_id("garage-1", &crt)
        .expect_err("another id")
        .to_string();
    assert!(
        e.contains("`garage-1`")
            && e.contains("CN `capteur-1`")
            && e.contains("use_username_as_clientid")
            && e.contains("client_id = \"capteur-1\""),
        "{e}"
    );
    key(d.path(), "anon");
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "anon.key",
            "-days",
            "1",
            "-subj",
            "/O=Maison",
            "-out",
            "anon.crt",
        ],
        d.path(),
    );
    let e = certificate_identity(&d.path().join("anon.crt"))
        .expect_err("no cn")
        .to_string();
    assert!(e.contains("no subject CN"), "{e}");
    std::fs::write(
        d.path().join("junk.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let e = certificate_identity(&d.path().join("junk.crt"))
        .expect_err("junk")
        .to_string();
    assert!(e.contains("junk.crt"), "{e}");
}
