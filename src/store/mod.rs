//! Durable records. Every record is sealed (AES-256-GCM, record type and
//! storage key bound in the AAD) under the host-kept state key. Reads come
//! through the host import; writes leave as `Store` commands, which the host
//! carries out in order before anything that follows them.

use crate::crypto::seal::{self, SealError};
use crate::io::{Command, Host};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

/// Storage key prefixes. A reader should find each record kind here.
pub mod legacy;
pub mod packed;

pub mod keys {
    pub const IDENTITY: &str = "identity";
    pub const PREKEYS: &str = "prekeys";
    pub const SESSION: &str = "session/";
    pub const INBOX: &str = "inbox/";
    pub const INBOX_PAYLOAD: &str = "inboxp/";
    pub const PLAIN_SEEN: &str = "plainseen";
    /// The name this agent registers under: the last one its host gave,
    /// used when a later start gives none.
    pub const NAME: &str = "name";
    /// The name and capabilities the registry last accepted for this agent
    /// (`agent/registration.rs`).
    pub const REGISTERED: &str = "registered";
    pub const OUTBOX: &str = "outbox/";
    pub const SEEN: &str = "seen/";
    pub const META: &str = "meta";
    pub const LEDGER: &str = "ledger";
    /// One pairing (before several were kept); read once, then `PAIRINGS`.
    pub const PAIRING: &str = "pairing";
    pub const PAIRINGS: &str = "pairings";
    pub const OFFLOAD: &str = "offload/active";
    pub const OFFLOAD_RECENT: &str = "offload/recent";
    pub const CONTROLLER_OFFLOADS: &str = "controller/offloads";
    pub const SANDBOX: &str = "sandbox/state";
    pub const TRANSFER: &str = "xfer/";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("record {key}: {source}")]
    Sealed { key: String, source: SealError },
    #[error("record {key} is unreadable ({detail}); move it aside to continue without it")]
    Corrupt { key: String, detail: String },
}

/// A record's opened bytes and the trailer stored after them.
pub type WithTrailer = (Zeroizing<Vec<u8>>, Vec<u8>);

pub struct Vault {
    /// The state key, expanded once; a key of the wrong length is reported
    /// by every read and write, as it was when each expanded its own.
    key: Result<seal::SealKey, SealError>,
    /// Records sealed before they were bound to their key are read only
    /// until the state is migrated (`migrate`).
    accept_v1: bool,
}

/// Marks a state directory whose records are all bound to their keys.
const MIGRATED: &str = "meta/seal-v2";

impl Vault {
    pub fn new(key: Zeroizing<Vec<u8>>) -> Self {
        Self {
            key: seal::SealKey::new(&key),
            accept_v1: false,
        }
    }

    /// Re-seal every record written before records were bound to their
    /// storage keys, once, then mark the state migrated: from then on a
    /// version-1 record (an old copy put back) is refused. A crash half-way
    /// migrates again at the next start. Version 1 stays readable for the
    /// rest of this start, whose reads still see the old bytes.
    pub fn migrate(&mut self, host: &mut dyn Host, out: &mut Vec<Command>) {
        if host.storage_get(MIGRATED).is_some() {
            return;
        }
        self.accept_v1 = true;
        for key in host.storage_list("") {
            let Some(sealed) = host.storage_get(&key) else {
                continue;
            };
            if sealed.first() != Some(&seal::VERSION) {
                continue;
            }
            match self.get_bytes(host, &key) {
                Ok(Some(pt)) => {
                    if let Err(e) = self.put_bytes(host, out, &key, &pt) {
                        host.log(crate::io::LogLevel::Error, &e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => host.log(crate::io::LogLevel::Error, &format!("{e}; left as it is")),
            }
        }
        if let Err(e) = self.put_bytes(host, out, MIGRATED, b"{}") {
            host.log(crate::io::LogLevel::Error, &e.to_string());
        }
    }

    /// The start has read what it needs: from now on only bound records.
    pub fn migrated(&mut self) {
        self.accept_v1 = false;
    }

    fn key(&self) -> Result<&seal::SealKey, SealError> {
        self.key.as_ref().map_err(Clone::clone)
    }

    /// Record type used in the AAD: the key's kind (prefix) plus version.
    fn record_type(key: &str) -> String {
        let kind = key.split('/').next().unwrap_or(key);
        format!("{kind}.v1")
    }

    pub fn put<T: Serialize>(
        &self,
        host: &mut dyn Host,
        out: &mut Vec<Command>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = Zeroizing::new(serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: key.into(),
            detail: crate::wire::describe_json_error(&e),
        })?);
        self.put_bytes(host, out, key, &json)
    }

    pub fn put_bytes(
        &self,
        host: &mut dyn Host,
        out: &mut Vec<Command>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self
            .key()
            .and_then(|k| k.seal_bound(&Self::record_type(key), key, bytes, host));
        Self::push_store(out, key, sealed)
    }

    /// The `Store` of a record just sealed, or why it could not be.
    fn push_store(
        out: &mut Vec<Command>,
        key: &str,
        sealed: Result<Vec<u8>, SealError>,
    ) -> Result<(), StoreError> {
        let rec = sealed.map_err(|source| StoreError::Sealed {
            key: key.into(),
            source,
        })?;
        out.push(Command::Store(key.to_string(), rec));
        Ok(())
    }

    /// Store `head` sealed and `trailer` after it as it is: for bytes that
    /// are already ciphertext end to end (`seal::seal_with_trailer`).
    pub fn put_with_trailer(
        &self,
        host: &mut dyn Host,
        out: &mut Vec<Command>,
        key: &str,
        head: &[u8],
        trailer: &[u8],
    ) -> Result<(), StoreError> {
        let rec = self
            .key()
            .and_then(|k| k.seal_with_trailer(&Self::record_type(key), key, head, trailer, host));
        Self::push_store(out, key, rec)
    }

    /// A record's opened bytes and its trailer (empty for a record without).
    pub fn get_with_trailer(
        &self,
        host: &mut dyn Host,
        key: &str,
    ) -> Result<Option<WithTrailer>, StoreError> {
        let Some(rec) = host.storage_get(key) else {
            return Ok(None);
        };
        let sealed = |source| StoreError::Sealed {
            key: key.into(),
            source,
        };
        if rec.first() == Some(&seal::VERSION_TRAILER) {
            let (head, trailer) = self
                .key()
                .and_then(|k| k.unseal_with_trailer(&Self::record_type(key), key, &rec))
                .map_err(sealed)?;
            return Ok(Some((head, trailer.to_vec())));
        }
        let head = self
            .key()
            .and_then(|k| k.unseal_bound(&Self::record_type(key), key, &rec, self.accept_v1))
            .map_err(sealed)?;
        Ok(Some((head, Vec::new())))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        host: &mut dyn Host,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get_bytes(host, key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.into(),
                        detail: crate::wire::describe_json_error(&e),
                    })
            }
        }
    }

    /// Read a record: the newest `Store` of it still waiting in `pending`
    /// (this call's commands, which the host has not carried out yet), else
    /// what the host has stored.
    pub fn get_pending<T: DeserializeOwned>(
        &self,
        host: &mut dyn Host,
        pending: &[Command],
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let waiting = pending.iter().rev().find_map(|c| match c {
            Command::Store(k, bytes) if k == key => Some(bytes),
            _ => None,
        });
        let Some(sealed) = waiting else {
            return self.get(host, key);
        };
        let bytes = self
            .key()
            .and_then(|k| k.unseal_bound(&Self::record_type(key), key, sealed, false))
            .map_err(|source| StoreError::Sealed {
                key: key.into(),
                source,
            })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.into(),
                detail: crate::wire::describe_json_error(&e),
            })
    }

    pub fn get_bytes(
        &self,
        host: &mut dyn Host,
        key: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match host.storage_get(key) {
            None => Ok(None),
            Some(sealed) => self
                .key()
                .and_then(|k| k.unseal_bound(&Self::record_type(key), key, &sealed, self.accept_v1))
                .map(Some)
                .map_err(|source| StoreError::Sealed {
                    key: key.into(),
                    source,
                }),
        }
    }
}

/// Serde helpers: byte strings as standard base64 inside JSON records.
pub mod b64bytes {
    use crate::wire::b64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64::encode_std(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        b64::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// A message's plaintext in a stored record. A JSON envelope (every
/// plaintext we send) is stored as its text behind a `~`, which base64
/// never starts with; anything else as base64, which is also how builds
/// before this one wrote every plaintext, so both are read. Text is not
/// inflated by a third: for a file sent in 512 KiB chunks that is a third
/// less to seal with AES-GCM and write, and no base64 pass per chunk.
pub mod text_or_b64 {
    use crate::wire::b64;
    use serde::{Deserialize, Deserializer, Serializer};

    const TEXT: char = '~';

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(text) => {
                let mut out = String::with_capacity(text.len() + 1);
                out.push(TEXT);
                out.push_str(text);
                let r = s.serialize_str(&out);
                zeroize::Zeroize::zeroize(&mut out);
                r
            }
            Err(_) => s.serialize_str(&b64::encode_std(v)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let mut s = String::deserialize(d)?;
        if s.starts_with(TEXT) {
            s.remove(0);
            return Ok(s.into_bytes());
        }
        let r = b64::decode(&s).map_err(serde::de::Error::custom);
        zeroize::Zeroize::zeroize(&mut s);
        r
    }
}

pub mod b64key {
    use crate::wire::b64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64::encode_std(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        b64::decode_array::<32>(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use crate::wire::b64;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Rec {
        #[serde(with = "super::text_or_b64")]
        plaintext: Vec<u8>,
    }

    fn round_trip(bytes: &[u8]) -> (String, Vec<u8>) {
        let json = serde_json::to_string(&Rec {
            plaintext: bytes.to_vec(),
        })
        .unwrap();
        let back: Rec = serde_json::from_str(&json).unwrap();
        (json, back.plaintext)
    }

    #[test]
    fn text_plaintext_is_stored_as_text_and_read_back() {
        let env = br#"{"type":"message","content":"hi \"there\""}"#;
        let (json, back) = round_trip(env);
        assert_eq!(back, env);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["plaintext"].as_str().unwrap(),
            format!("~{}", std::str::from_utf8(env).unwrap())
        );
        // A text that starts with the marker itself, and the empty text.
        assert_eq!(round_trip(b"~x").1, b"~x");
        assert_eq!(round_trip(b"").1, b"");
    }

    #[test]
    fn bytes_that_are_not_utf8_stay_base64() {
        let raw = [0xff, 0x00, 0xfe, 0x7e];
        let (json, back) = round_trip(&raw);
        assert_eq!(back, raw);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["plaintext"].as_str().unwrap(), b64::encode_std(&raw));
    }

    #[test]
    fn records_of_older_builds_base64_are_read() {
        let env = br#"{"type":"message","content":"from before"}"#;
        let old = format!(r#"{{"plaintext":"{}"}}"#, b64::encode_std(env));
        let back: Rec = serde_json::from_str(&old).unwrap();
        assert_eq!(back.plaintext, env);
        assert!(serde_json::from_str::<Rec>(r#"{"plaintext":"not base64!"}"#).is_err());
    }
}
