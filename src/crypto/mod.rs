//! Keys and the cryptographic protocols: identity (Ed25519 + derived X25519),
//! X3DH, the Double Ratchet and AES-256-GCM sealing of state at rest.

pub mod aead;
pub mod identity;
pub mod kdf;
pub mod keys;
pub mod ratchet;
pub mod seal;
pub mod x3dh;

pub use identity::Identity;
pub use keys::KeyPair;
