//! No ESP: on a kernel without ESP, adding an SA fails with an error that
//! names the missing module (`esp4`) and how to load it — and installs
//! nothing. The test first proves its precondition with iproute2 in a
//! scratch namespace and fails loudly if the kernel *does* have ESP (the
//! rig runs this test on the host when it lacks ESP, else in a VM booted
//! with `modprobe.blacklist=esp4,esp6`).

use qkd_ipsec::netns::Netns;
use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::{Ownership, XfrmError, XfrmHandle};

use crate::support::*;

/// Whether `ip xfrm state add … proto esp` with a cipher this kernel has
/// (cbc(aes) + hmac(sha256), needed by every IPsec kernel) fails because
/// the ESP type is missing. Returns iproute2's message.
async fn esp_absent_per_iproute2(ns: &str) -> Result<String, String> {
    let out = in_netns(
        ns,
        "ip",
        &[
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x1000",
            "mode",
            "tunnel",
            "enc",
            "cbc(aes)",
            "0x00112233445566778899aabbccddeeff",
            "auth",
            "hmac(sha256)",
            "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ],
    )
    .output()
    .await
    .expect("run ip");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && stderr.contains("Requested type not found") {
        Ok(stderr)
    } else {
        Err(format!("status {}, stderr {stderr:?}", out.status))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_sa_without_esp_names_the_module() {
    let name = Testbed::unique_prefix("noesp");
    let netns = Netns::create_named(&name).expect("scratch namespace");
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = Netns::delete_named(&self.0) {
                eprintln!("{e}");
            }
        }
    }
    let _cleanup = Cleanup(name.clone());

    if let Err(why) = esp_absent_per_iproute2(&name).await {
        panic!(
            "precondition failed: this kernel has ESP ({why}); the no-ESP test must run on a \
             kernel without ESP — netns-tests/run provides one"
        );
    }

    let handle = XfrmHandle::connect(&netns, Ownership::default())
        .await
        .expect("xfrm_user must be present even without ESP");
    let mut spec = qkd_ipsec::xfrm::SaSpec::tunnel(
        "192.0.2.1".parse().unwrap(),
        "192.0.2.2".parse().unwrap(),
        0x5144_0100,
        REQID_AB,
        test_key(1),
    );
    let err = handle
        .add_sa(&spec)
        .await
        .expect_err("SA added without ESP");
    let text = err.to_string();
    eprintln!("no-ESP error: {text}");
    match &err {
        XfrmError::EspMissing { esp, .. } => assert_eq!(*esp, "esp4"),
        other => panic!("expected EspMissing, got {other:?}: {text}"),
    }
    assert!(text.contains("modprobe esp4"), "{text}");
    assert!(text.contains("CONFIG_INET_ESP"), "{text}");

    // The SPI-choosing path fails the same way and leaves no larval SA.
    spec.spi = 0;
    let err = handle
        .add_inbound_sa(&mut spec)
        .await
        .expect_err("inbound SA without ESP");
    assert!(matches!(err, XfrmError::EspMissing { .. }), "{err}");
    assert!(handle.list_owned_sas().await.expect("list").is_empty());
    assert!(
        ip_xfrm_spis(&name).await.is_empty(),
        "something was installed"
    );
}
