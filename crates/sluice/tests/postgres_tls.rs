//! The PostgreSQL destination over TLS, against a real server: a throwaway
//! PostgreSQL (initdb/pg_ctl, as scripts/lib/postgres.sh finds them) started under
//! target/ with `ssl=on`, a certificate for `localhost` issued by a CA this test
//! generates, and a pg_hba.conf that refuses any connection without TLS. sluice
//! connects with `sslmode=verify-full` and the CA file, and refuses the same server
//! under a name its certificate does not carry, or without the CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_core::destination::Destination;
use sluice_core::secret::Secret;
use sluice_destinations::{PostgresConfig, PostgresDestination};

/// The folder of initdb/pg_ctl: `pg_config --bindir`, else the newest Debian layout.
fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no initdb found (pg_config --bindir, /usr/lib/postgresql/*/bin): install PostgreSQL; this test never skips")
    })
}

/// initdb refuses to run as root: then the server runs as `postgres` (as in scripts/lib/postgres.sh).
fn server_user() -> Option<(String, u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres account to run the test server as root")
    };
    Some(("postgres".into(), id("-u"), id("-g")))
}

/// A PostgreSQL with TLS only, stopped and deleted on drop.
struct TlsServer {
    dir: PathBuf,
    bindir: PathBuf,
    user: Option<(String, u32, u32)>,
    port: u16,
}

impl TlsServer {
    fn command(&self, program: &str) -> Command {
        match &self.user {
            Some((name, _, _)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", name, "--"]).arg(self.bindir.join(program));
                c
            }
            None => Command::new(self.bindir.join(program)),
        }
    }

    fn own(&self, path: &Path) {
        if let Some((_, uid, gid)) = &self.user {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).unwrap();
        }
    }

    fn start(cert_pem: &str, key_pem: &str) -> TlsServer {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = TlsServer {
            dir: dir.clone(),
            bindir: pg_bindir(),
            user: server_user(),
            port,
        };
        server.own(&dir);
        let data = dir.join("data");
        let status = server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        use std::os::unix::fs::PermissionsExt;
        for (name, content, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = data.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            server.own(&path);
        }
        // TLS or nothing: a connection that works went over TLS.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n",
        )
        .unwrap();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on",
            dir.display()
        );
        let status = server
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pg_ctl start failed: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn destination(url: &str, ca: Option<&Path>) -> PostgresDestination {
    PostgresDestination::new(
        PostgresConfig {
            url: Secret::new(url),
            schema_prefix: String::new(),
            connect_timeout_secs: 5,
            ssl_root_cert: ca.map(Path::to_path_buf),
            d1_readers: Vec::new(),
            readers: Vec::new(),
        },
        Path::new("."),
    )
    .unwrap_or_else(|p| panic!("{}: {}", p.key, p.message))
}

#[tokio::test]
async fn verify_full_with_a_custom_ca_accepts_the_right_name_and_refuses_a_wrong_one() {
    // A CA, and a server certificate for `localhost` only, issued by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let server = TlsServer::start(&server_cert.pem(), &server_key.serialize_pem());
    let ca_file = server.dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let port = server.port;

    // The right name, the CA trusted: connects (over TLS: pg_hba refuses anything else).
    let good = destination(
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
        Some(&ca_file),
    );
    good.check().await.unwrap_or_else(|e| panic!("{e}"));

    // The same server under a name its certificate does not carry: refused.
    let wrong_name = destination(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full"),
        Some(&ca_file),
    );
    let err = wrong_name.check().await.unwrap_err().to_string();
    assert!(err.contains("not valid for name"), "{err}");

    // Without the CA, the certificate is not trusted: refused.
    let untrusted = destination(
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
        None,
    );
    let err = untrusted.check().await.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // And plaintext is what the server refuses: the connection above was TLS.
    let plain = destination(
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=disable"),
        None,
    );
    let err = plain.check().await.unwrap_err().to_string();
    assert!(
        err.contains("no encryption") || err.contains("28000"),
        "{err}"
    );
}
