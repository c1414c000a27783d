//! base58btc (Bitcoin alphabet), for the display-only AMID.

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

pub fn encode(input: &[u8]) -> String {
    let zeros = input.iter().take_while(|&&b| b == 0).count();
    // Big-endian base conversion; inputs are 20 bytes, so quadratic is fine.
    let mut digits: Vec<u8> = Vec::with_capacity(input.len() * 138 / 100 + 1);
    for &byte in &input[zeros..] {
        let mut carry = byte as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut s = String::with_capacity(zeros + digits.len());
    s.extend(std::iter::repeat_n('1', zeros));
    s.extend(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char));
    s
}

/// Decode base58btc; `None` on a character outside the alphabet.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    let zeros = input.bytes().take_while(|&b| b == b'1').count();
    // Little-endian base-256 digits; inputs are short (AMIDs), so quadratic is fine.
    let mut bytes: Vec<u8> = Vec::with_capacity(input.len());
    for c in input.bytes().skip(zeros) {
        let mut carry = ALPHABET.iter().position(|&a| a == c)? as u32;
        for b in bytes.iter_mut() {
            carry += (*b as u32) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        for input in [&[][..], &[0, 0, 1, 2, 255][..], &[7u8; 20][..]] {
            assert_eq!(decode(&encode(input)).unwrap(), input);
        }
        assert_eq!(decode("0OIl"), None);
    }
}
