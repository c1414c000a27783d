//! Our published prekeys. Ids are persisted counters that never repeat (the
//! reference clients restart them at 0 each process, so a queued KNOCK can
//! meet a different key with the same id). Each one-time prekey is published
//! once: the registry's PUT replaces its whole list, and re-publishing a key
//! it already handed out would let two initiators use the same OPK.

use crate::crypto::identity::Identity;
use crate::crypto::keys::KeyPair;
use crate::entropy::Entropy;
use crate::store::{b64bytes, b64key};
use crate::wire::registry::{prekey_upload_body, PublishedPrekeys};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// One-time prekeys published per upload.
pub const OPK_BATCH: u32 = 20;
/// Replenish when fewer published, unconsumed OPKs remain.
pub const OPK_LOW_WATER: usize = 8;
/// Most OPKs kept locally (oldest dropped first).
pub const OPK_MAX_KEPT: usize = 200;
/// Signed prekey lifetime before rotation.
pub const SPK_ROTATE_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a rotated-out SPK still answers KNOCKs that were in flight.
pub const SPK_GRACE_MS: u64 = 14 * 24 * 3600 * 1000;

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredKey {
    id: u32,
    #[serde(with = "b64key")]
    secret: [u8; 32],
    #[serde(with = "b64key")]
    public: [u8; 32],
    #[serde(default, with = "b64bytes")]
    signature: Vec<u8>,
    created_ms: u64,
    #[serde(default)]
    published: bool,
}

impl StoredKey {
    fn new(id: u32, kp: &KeyPair, now_ms: u64) -> Self {
        Self {
            id,
            secret: *kp.secret_bytes(),
            public: *kp.public(),
            signature: Vec::new(),
            created_ms: now_ms,
            published: false,
        }
    }

    fn pair(&self) -> KeyPair {
        KeyPair::from_parts(self.secret, self.public)
    }
}

#[derive(Serialize, Deserialize)]
pub struct Prekeys {
    spk: StoredKey,
    #[serde(default)]
    previous_spk: Option<StoredKey>,
    opks: Vec<StoredKey>,
    next_spk_id: u32,
    next_opk_id: u32,
    /// Set when the registry is known to hold our current bundle.
    #[serde(default)]
    uploaded: bool,
    /// One-time prekeys the registry still has, as far as we know: the
    /// count from the last upload, less the KNOCKs that consumed one.
    #[serde(default)]
    registry_estimate: usize,
}

impl std::fmt::Debug for Prekeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prekeys")
            .field("spk_id", &self.spk.id)
            .field("opks", &self.opks.len())
            .finish_non_exhaustive()
    }
}

impl Prekeys {
    pub fn generate(identity: &Identity, now_ms: u64, rng: &mut dyn Entropy) -> Self {
        let mut p = Prekeys {
            spk: Self::new_spk(identity, 0, now_ms, rng),
            previous_spk: None,
            opks: Vec::new(),
            next_spk_id: 1,
            next_opk_id: 0,
            uploaded: false,
            registry_estimate: 0,
        };
        p.add_opks(OPK_BATCH, now_ms, rng);
        p
    }

    fn new_spk(identity: &Identity, id: u32, now_ms: u64, rng: &mut dyn Entropy) -> StoredKey {
        let kp = KeyPair::generate(rng);
        let mut k = StoredKey::new(id, &kp, now_ms);
        k.signature = identity.sign(kp.public()).to_vec();
        k
    }

    pub fn add_opks(&mut self, n: u32, now_ms: u64, rng: &mut dyn Entropy) {
        for _ in 0..n {
            let kp = KeyPair::generate(rng);
            self.opks
                .push(StoredKey::new(self.next_opk_id, &kp, now_ms));
            self.next_opk_id = self.next_opk_id.wrapping_add(1);
        }
        if self.opks.len() > OPK_MAX_KEPT {
            let excess = self.opks.len() - OPK_MAX_KEPT;
            self.opks.drain(..excess);
        }
    }

    /// The PUT body publishing the current SPK and a fresh batch of OPKs,
    /// and marks them published. The registry replaces its whole OPK list on
    /// every PUT, so every upload carries a batch never published before
    /// (re-publishing a key it may already have handed out would let two
    /// initiators use the same OPK). Keys published earlier stay valid here
    /// for KNOCKs already on their way.
    pub fn upload_body(
        &mut self,
        identity: &Identity,
        now_ms: u64,
        rng: &mut dyn Entropy,
    ) -> (String, usize) {
        if self.opks.iter().all(|k| k.published) {
            self.add_opks(OPK_BATCH, now_ms, rng);
        }
        let sig: [u8; 64] = self.spk.signature.as_slice().try_into().unwrap_or([0; 64]);
        let fresh: Vec<(u32, &[u8; 32])> = self
            .opks
            .iter()
            .filter(|k| !k.published)
            .map(|k| (k.id, &k.public))
            .collect();
        let count = fresh.len();
        let body = prekey_upload_body(
            identity,
            &PublishedPrekeys {
                signed_prekey_id: self.spk.id,
                signed_prekey: &self.spk.public,
                signed_prekey_signature: &sig,
                one_time: fresh,
            },
        );
        for k in self.opks.iter_mut() {
            k.published = true;
        }
        self.registry_estimate = count;
        (body, count)
    }

    /// The registry's answer to an upload: how many OPKs it holds.
    pub fn set_registry_count(&mut self, n: usize) {
        self.registry_estimate = n;
    }

    /// The registry forgot us (restart): everything it had is gone, so
    /// publish a fresh batch next time.
    pub fn registry_lost(&mut self) {
        self.uploaded = false;
        self.registry_estimate = 0;
    }

    pub fn set_uploaded(&mut self, v: bool) {
        self.uploaded = v;
    }

    pub fn uploaded(&self) -> bool {
        self.uploaded
    }

    /// Consume a one-time prekey named by a KNOCK.
    pub fn take_opk(&mut self, id: u32) -> Option<KeyPair> {
        let pos = self.opks.iter().position(|k| k.id == id)?;
        let k = self.opks.remove(pos);
        self.registry_estimate = self.registry_estimate.saturating_sub(1);
        Some(k.pair())
    }

    pub fn peek_opk(&self, id: u32) -> Option<KeyPair> {
        self.opks.iter().find(|k| k.id == id).map(|k| k.pair())
    }

    /// SPKs a KNOCK may have used: the current one, then the previous one
    /// while its grace period lasts.
    pub fn spk_candidates(&self, now_ms: u64) -> Vec<KeyPair> {
        let mut v = vec![self.spk.pair()];
        if let Some(p) = &self.previous_spk {
            if now_ms.saturating_sub(self.spk.created_ms) < SPK_GRACE_MS {
                v.push(p.pair());
            }
        }
        v
    }

    /// The registry is running low (anyone can drain it: prekey fetches are
    /// unauthenticated), so the next upload should go out now.
    pub fn needs_replenish(&self) -> bool {
        self.registry_estimate < OPK_LOW_WATER
    }

    /// Rotate the SPK when it is older than `SPK_ROTATE_MS`; returns whether
    /// it did (the caller then uploads).
    pub fn rotate_if_due(
        &mut self,
        identity: &Identity,
        now_ms: u64,
        rng: &mut dyn Entropy,
    ) -> bool {
        if now_ms.saturating_sub(self.spk.created_ms) < SPK_ROTATE_MS {
            return false;
        }
        let next = Self::new_spk(identity, self.next_spk_id, now_ms, rng);
        self.next_spk_id = self.next_spk_id.wrapping_add(1);
        self.previous_spk = Some(std::mem::replace(&mut self.spk, next));
        self.uploaded = false;
        true
    }

    pub fn opk_count(&self) -> usize {
        self.opks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    #[test]
    fn every_upload_publishes_a_fresh_batch_and_ids_never_repeat() {
        let mut rng = SeededEntropy::new(1);
        let id = Identity::generate(&mut rng);
        let mut p = Prekeys::generate(&id, 0, &mut rng);
        let ids = |body: &str| -> Vec<u64> {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["one_time_pre_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["key_id"].as_u64().unwrap())
                .collect()
        };
        let (first, n) = p.upload_body(&id, 0, &mut rng);
        assert_eq!(n, OPK_BATCH as usize);
        assert!(!p.needs_replenish());
        let (second, _) = p.upload_body(&id, 0, &mut rng);
        let (a, b) = (ids(&first), ids(&second));
        assert_eq!(
            b.len(),
            OPK_BATCH as usize,
            "an upload never carries an empty list"
        );
        assert!(
            a.iter().all(|x| !b.contains(x)),
            "no key is published twice"
        );
        // Consuming OPKs lowers the registry estimate until a refill is due.
        for k in &b[..(OPK_BATCH as usize - OPK_LOW_WATER + 1)] {
            assert!(p.take_opk(*k as u32).is_some());
        }
        assert!(p.needs_replenish());
        // Keys published earlier still answer KNOCKs already on their way.
        assert!(p.take_opk(a[0] as u32).is_some());
        assert!(p.take_opk(a[0] as u32).is_none(), "consumed once");
    }

    #[test]
    fn rotation_keeps_the_previous_signed_prekey_for_the_grace_period() {
        let mut rng = SeededEntropy::new(2);
        let id = Identity::generate(&mut rng);
        let mut p = Prekeys::generate(&id, 0, &mut rng);
        let old = *p.spk_candidates(0)[0].public();
        assert!(!p.rotate_if_due(&id, SPK_ROTATE_MS - 1, &mut rng));
        assert!(p.rotate_if_due(&id, SPK_ROTATE_MS, &mut rng));
        assert!(!p.uploaded(), "a rotated key must be uploaded");
        let c = p.spk_candidates(SPK_ROTATE_MS + 1);
        assert_eq!(c.len(), 2);
        assert_ne!(*c[0].public(), old);
        assert_eq!(*c[1].public(), old);
        let (body, _) = p.upload_body(&id, SPK_ROTATE_MS, &mut rng);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["signed_pre_key"]["key_id"], 1,
            "SPK ids are persisted counters"
        );
        assert_eq!(
            p.spk_candidates(SPK_ROTATE_MS + SPK_GRACE_MS).len(),
            1,
            "the old SPK expires"
        );
    }
}
