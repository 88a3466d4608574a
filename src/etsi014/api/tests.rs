//! The documents against the examples of ETSI GS QKD 014 V1.1.1 §6 and
//! against hostile bodies.

use super::*;

const LIMITS: RequestLimits = RequestLimits {
    default_size: 256,
    max_per_request: 128,
    min_size: 64,
    max_size: 1024,
};

#[test]
fn status_example_of_6_1() {
    let body = br#"{
        "source_KME_ID": "EEEEFFFFGGGGHHHH",
        "target_KME_ID": "IIIIJJJJKKKKLLLL",
        "master_SAE_ID": "IIIIJJJJKKKKLLLL",
        "slave_SAE_ID": "IIIIJJJJKKKKLLLL",
        "key_size": 352,
        "stored_key_count": 25000,
        "max_key_count": 100000,
        "max_key_per_request": 128,
        "max_key_size": 1024,
        "min_key_size": 64,
        "max_SAE_ID_count": 0
    }"#;
    let s: Status = decode(body).unwrap();
    assert_eq!(s.source_kme_id, "EEEEFFFFGGGGHHHH");
    assert_eq!(s.key_size, 352);
    assert_eq!(s.max_key_per_request, 128);
    assert_eq!(s.max_sae_id_count, 0);
    // Serialising gives the spec's field names back.
    let v: Value = serde_json::to_value(&s).unwrap();
    for f in [
        "source_KME_ID",
        "target_KME_ID",
        "master_SAE_ID",
        "slave_SAE_ID",
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
    ] {
        assert!(v.get(f).is_some(), "missing {f}");
    }
}

#[test]
fn key_request_example_of_6_2() {
    let body = br#"{
        "number": 3,
        "size": 1024,
        "additional_slave_SAE_IDs": ["ABCDEFG", "HIJKLMN"],
        "extension_mandatory": [{"abc_route_type": "direct"}, {"abc_transfer_method": "qkd"}],
        "extension_optional": [{"abc_max_age": 30000}]
    }"#;
    let r: KeyRequest = decode(body).unwrap();
    assert_eq!(r.number, Some(3));
    assert_eq!(r.size, Some(1024));
    // The example asks for a mandatory extension, which is refused first.
    assert_eq!(
        r.validate(&LIMITS),
        Err(ApiError::UnsupportedExtension("abc_route_type".into()))
    );
    let plain = KeyRequest {
        number: Some(3),
        size: Some(1024),
        additional_slave_sae_ids: Some(vec!["ABCDEFG".into()]),
        ..Default::default()
    };
    assert_eq!(plain.validate(&LIMITS), Err(ApiError::Multicast));
    let ok = KeyRequest {
        number: Some(3),
        size: Some(1024),
        extension_optional: Some(vec![serde_json::json!({"abc_max_age": 30000})]),
        ..Default::default()
    };
    assert_eq!(
        ok.validate(&LIMITS),
        Ok(CheckedRequest {
            number: 3,
            size_bits: 1024
        })
    );
}

#[test]
fn key_request_defaults_and_bounds() {
    let empty: KeyRequest = decode(b"{}").unwrap();
    assert_eq!(
        empty.validate(&LIMITS),
        Ok(CheckedRequest {
            number: 1,
            size_bits: 256
        })
    );
    for (number, size) in [(0, 256), (129, 256), (1, 32), (1, 2048), (1, 260)] {
        let r = KeyRequest {
            number: Some(number),
            size: Some(size),
            ..Default::default()
        };
        assert!(
            matches!(r.validate(&LIMITS), Err(ApiError::OutOfRange { .. })),
            "{number} x {size}"
        );
    }
}

#[test]
fn key_container_example_of_6_3() {
    let body = br#"{
        "keys": [
            {"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139",
             "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s="},
            {"key_ID": "0a782fb5-3434-48fe-aa4d-14f41d46cf92",
             "key": "OeGMPxh1+2RpJpNCYixWHFLYRubpOKCw94FcCI7VdJA="}
        ],
        "key_container_extension": {}
    }"#;
    let c: KeyContainer = decode(body).unwrap();
    assert_eq!(c.keys.len(), 2);
    assert_eq!(
        c.keys[0].key_id.to_string(),
        "bc490419-7d60-487f-adc1-4ddcc177c139"
    );
    assert_eq!(c.keys[0].key.len(), 32);
    assert_eq!(&c.keys[0].key.expose()[..3], &[0xc0, 0x71, 0xd5]);
    let back: Value = serde_json::to_value(&c).unwrap();
    assert_eq!(
        back["keys"][1]["key"],
        "OeGMPxh1+2RpJpNCYixWHFLYRubpOKCw94FcCI7VdJA="
    );
    assert_eq!(
        back["keys"][1]["key_ID"],
        "0a782fb5-3434-48fe-aa4d-14f41d46cf92"
    );
}

#[test]
fn key_ids_example_of_6_4() {
    let body = br#"{
        "key_IDs": [
            {"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139"},
            {"key_ID": "0a782fb5-3434-48fe-aa4d-14f41d46cf92"}
        ]
    }"#;
    let ids: KeyIds = decode(body).unwrap();
    assert_eq!(ids.validate(128).unwrap().len(), 2);
    let v = serde_json::to_value(KeyIds::new(ids.validate(128).unwrap())).unwrap();
    assert_eq!(
        v["key_IDs"][0]["key_ID"],
        "bc490419-7d60-487f-adc1-4ddcc177c139"
    );
    let twice = KeyIds::new([ids.key_ids[0].key_id, ids.key_ids[0].key_id]);
    assert!(matches!(
        twice.validate(128),
        Err(ApiError::DuplicateKeyId(_))
    ));
    assert!(matches!(
        KeyIds::new([]).validate(128),
        Err(ApiError::OutOfRange { .. })
    ));
}

#[test]
fn error_example_of_6_5() {
    let body = br#"{
        "message": "key not found",
        "details": [{"message": "key_ID 123 not found"}]
    }"#;
    let e: ErrorBody = decode(body).unwrap();
    assert_eq!(e.message, "key not found");
    let made = ErrorBody::new("bad request").with_detail("field", "size");
    let v = serde_json::to_value(&made).unwrap();
    assert_eq!(v["details"][0]["field"], "size");
}

#[test]
fn hostile_bodies_are_refused_without_echoing_values() {
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    assert!(matches!(
        decode::<KeyIds>(&huge),
        Err(ApiError::TooLarge { .. })
    ));
    for body in [
        &b"{"[..],
        b"[]",
        b"{\"key_IDs\": [{\"key_ID\": \"not-a-uuid\"}]}",
        b"{\"number\": -1}",
        b"{\"number\": 1e99}",
        b"{\"keys\": [{\"key_ID\": \"bc490419-7d60-487f-adc1-4ddcc177c139\", \"key\": \"!!notbase64!!\"}]}",
    ] {
        let err = if body.starts_with(b"{\"keys") {
            decode::<KeyContainer>(body).unwrap_err()
        } else if body.starts_with(b"{\"number") {
            decode::<KeyRequest>(body).unwrap_err()
        } else {
            decode::<KeyIds>(body).unwrap_err()
        };
        let text = err.to_string();
        assert!(matches!(err, ApiError::Json(_)), "{text}");
        assert!(!text.contains("notbase64") && !text.contains("not-a-uuid"), "{text}");
    }
    // A key longer than the limit is refused before it is decoded.
    let long = "A".repeat((MAX_KEY_BITS as usize / 8) * 2);
    let body = format!(
        "{{\"keys\": [{{\"key_ID\": \"bc490419-7d60-487f-adc1-4ddcc177c139\", \"key\": \"{long}\"}}]}}"
    );
    assert!(decode::<KeyContainer>(body.as_bytes()).is_err());
}

#[test]
fn key_item_debug_is_redacted() {
    let item = KeyItem::new(Uuid::nil(), SecretBytes::from_slice(&[0xAB; 32]));
    let dbg = format!("{item:?}");
    assert!(dbg.contains("redacted"));
    assert!(
        !dbg.to_lowercase().contains("ab, ab") && !dbg.contains("171"),
        "{dbg}"
    );
}

#[test]
fn key_container_debug_names_ids_not_keys() {
    let c = KeyContainer {
        keys: vec![KeyItem::new(
            Uuid::nil(),
            SecretBytes::from_slice(&[0xAB; 32]),
        )],
        key_container_extension: None,
    };
    let dbg = format!("{c:?}");
    assert!(
        dbg.contains(&Uuid::nil().to_string()) && dbg.contains("redacted"),
        "{dbg}"
    );
    assert!(
        !dbg.contains("171") && !dbg.to_lowercase().contains("ab, ab"),
        "{dbg}"
    );
}
