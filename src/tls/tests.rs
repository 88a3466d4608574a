use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::lab_pki::LabCa;
use super::*;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "qkd-ipsec-tls-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs one TLS handshake over an in-memory pipe; returns the identity the
/// server saw, or the error text of whichever side failed.
async fn handshake(server: &TlsFiles, client: &TlsFiles) -> Result<String, String> {
    let acceptor = TlsAcceptor::from(server_config(server).map_err(|e| e.to_string())?);
    let connector = TlsConnector::from(client_config(client).map_err(|e| e.to_string())?);
    let (a, b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move {
        let mut tls = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        certificate_identity(&cert).map_err(|e| e.to_string())
    });
    let cli = async move {
        let mut tls = connector
            .connect(server_name("127.0.0.1").unwrap(), b)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(tls)
    };
    let (s, c) = tokio::join!(srv, cli);
    let _keep_open = c?;
    s.unwrap()
}

#[tokio::test]
async fn mutual_tls_names_the_client() {
    let dir = tempdir("ok");
    let ca = LabCa::create(&dir, "kme-ca").unwrap();
    let server = ca.server("kme-a", &["127.0.0.1"]).unwrap();
    let client = ca.client("sae-a").unwrap();
    assert_eq!(handshake(&server, &client).await.unwrap(), "sae-a");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn client_of_another_ca_is_refused() {
    let dir = tempdir("other");
    let ca = LabCa::create(&dir, "kme-ca").unwrap();
    let rogue = LabCa::create(&dir, "rogue-ca").unwrap();
    let server = ca.server("kme-a", &["127.0.0.1"]).unwrap();
    let mut client = rogue.client("sae-a").unwrap();
    // The rogue client trusts the real server, so only its own identity is wrong.
    client.ca = ca.ca_file().to_owned();
    let err = handshake(&server, &client).await.unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer") || err.contains("alert"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn server_of_another_ca_is_refused() {
    let dir = tempdir("srv");
    let ca = LabCa::create(&dir, "kme-ca").unwrap();
    let rogue = LabCa::create(&dir, "rogue-ca").unwrap();
    let mut server = rogue.server("kme-a", &["127.0.0.1"]).unwrap();
    server.ca = ca.ca_file().to_owned();
    let client = ca.client("sae-a").unwrap();
    let err = handshake(&server, &client).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn key_file_must_be_private() {
    let dir = tempdir("mode");
    let ca = LabCa::create(&dir, "kme-ca").unwrap();
    let client = ca.client("sae-a").unwrap();
    let mode = std::fs::metadata(&client.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(client_config(&client).is_ok());
    std::fs::set_permissions(&client.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = client_config(&client).unwrap_err().to_string();
    assert!(err.contains(&client.key.display().to_string()), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_file() {
    let dir = tempdir("bad");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = load_certs(&junk).unwrap_err().to_string();
    assert!(
        err.contains("junk.pem") && err.contains("certificate"),
        "{err}"
    );
    let missing = load_certs(&dir.join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing.pem"), "{missing}");
    std::fs::remove_dir_all(dir).unwrap();
}
