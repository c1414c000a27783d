//! The sealed-state format: round trip, wrong key, tampering, type binding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kars_mesh::crypto::seal::{seal, unseal, SealError, VERSION};
use kars_mesh::entropy::SeededEntropy;

#[test]
fn sealed_records() {
    let mut rng = SeededEntropy::new(1);
    let key = [7u8; 32];
    let data = b"session snapshot bytes".to_vec();
    let sealed = seal(&key, "session.v1", &data, &mut rng).unwrap();
    assert_eq!(sealed[0], VERSION);
    assert_eq!(sealed.len(), 1 + 12 + data.len() + 16);
    assert!(!sealed.windows(data.len()).any(|w| w == data.as_slice()));
    assert_eq!(
        unseal(&key, "session.v1", &sealed).unwrap().as_slice(),
        data.as_slice()
    );
    // Fresh nonce each time.
    assert_ne!(seal(&key, "session.v1", &data, &mut rng).unwrap(), sealed);

    assert_eq!(
        unseal(&[8u8; 32], "session.v1", &sealed).unwrap_err(),
        SealError::Authentication
    );
    assert_eq!(
        unseal(&key, "identity.v1", &sealed).unwrap_err(),
        SealError::Authentication
    );
    for i in 0..sealed.len() {
        let mut t = sealed.clone();
        t[i] ^= 0x01;
        let e = unseal(&key, "session.v1", &t).unwrap_err();
        if i == 0 {
            assert_eq!(e, SealError::UnknownVersion(VERSION ^ 1));
        } else {
            assert_eq!(e, SealError::Authentication, "byte {i}");
        }
    }
    assert_eq!(
        unseal(&key, "session.v1", &sealed[..20]).unwrap_err(),
        SealError::Truncated(20)
    );
    assert_eq!(
        unseal(&key[..16], "session.v1", &sealed).unwrap_err(),
        SealError::BadKey(16)
    );
    let msg = SealError::Authentication.to_string();
    assert!(msg.contains("wrong state key"), "{msg}");
}
