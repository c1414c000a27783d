//! The ground encodings: base64 (both alphabets), hex, base58 and ISO
//! timestamps. Pure functions over bytes and text, used by `crypto` (DIDs,
//! AMIDs, debug output) and by `wire` (every frame and body); they import
//! nothing of either.

pub mod b64;
pub mod base58;
pub mod hex;
pub mod time;
