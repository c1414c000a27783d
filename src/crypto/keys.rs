//! X25519 key pairs with the public half cached (recomputing it costs a scalar
//! multiplication) and a `Debug` that shows only public data.

use crate::entropy::Entropy;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: [u8; 32],
}

impl KeyPair {
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// Restore a pair whose public half was saved with it.
    pub fn from_parts(secret: [u8; 32], public: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(secret),
            public,
        }
    }

    pub fn generate(rng: &mut dyn Entropy) -> Self {
        let mut b = rng.array32();
        let kp = Self::from_secret(b);
        zeroize::Zeroize::zeroize(&mut b);
        kp
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    pub fn secret_bytes(&self) -> &[u8; 32] {
        self.secret.as_bytes()
    }

    /// X25519 with the peer's public key. A low-order peer point gives an
    /// all-zero output that every party could compute; refuse it.
    pub fn agree(
        &self,
        their_public: &[u8; 32],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, LowOrderPoint> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(LowOrderPoint);
        }
        Ok(zeroize::Zeroizing::new(shared.to_bytes()))
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyPair {{ public: {} }}",
            crate::codec::hex::encode(&self.public)
        )
    }
}

/// The peer supplied a low-order X25519 point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowOrderPoint;
