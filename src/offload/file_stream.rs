//! The file a chunked `file_transfer` carries, decoded and hashed as its
//! chunks arrive in order.
//!
//! Without it, the engine call that receives a 30 MiB output's last chunk
//! joins the 40 MB text, parses it, decodes the base64 and hashes the file:
//! about 170 ms in wasm, one call, while a tool call that arrives meanwhile
//! waits. With it, each chunk's call decodes and hashes its own share (a
//! few ms), and the last call parses only the message around the data.
//!
//! It is a cache beside the held chunks, never the only copy: the chunks
//! are still stored and kept as before, and whenever the text is not what
//! this scanner reads for certain, [`FileStream`] gives up and the whole
//! text is parsed as it always was. It gives up on anything unusual:
//! a `file_data` that is not a plain string of base64 characters (an
//! escape, a bad character, padding before the end), a top-level key with
//! an escape in it or a second `file_data` key (so serde, which keeps the
//! last of duplicate keys, cannot read a different file than this did), a
//! chunk out of order, a restart. The decoding is `b64::decode`'s own, run
//! on whole 4-character groups and then on the rest, which is what it
//! gives for the whole string.

use crate::codec::b64;
use crate::crypto::kdf::Sha256Stream;

/// Characters of padding or a final partial group held between chunks: more
/// than this is not base64 this stream will read.
const MAX_CARRY: usize = 8;

/// Where in the message's text the scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the `file_data` string's opening quote.
    Head,
    /// Inside the `file_data` string.
    Data,
    /// After its closing quote.
    Tail,
    /// Not a text this reads for certain: the whole text is parsed instead.
    Failed,
}

/// The JSON structure outside the data: enough to find the top-level
/// `file_data` key and to see that it is there once.
#[derive(Debug, Default)]
struct Scan {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The string being read is a key of the top-level object.
    in_key: bool,
    /// A top-level key may come next (after `{` or `,`).
    expect_key: bool,
    /// The top-level key read last, as written (at most 16 bytes kept).
    key: Vec<u8>,
    key_escaped: bool,
    /// The value after the top-level key `file_data` comes next.
    file_value_next: bool,
}

/// A decoded file and its SHA-256, from a complete stream.
pub struct Decoded {
    /// The message's text with `file_data` empty (`""`).
    pub envelope: String,
    pub bytes: Vec<u8>,
    pub sha256: [u8; 32],
}

/// One transfer's file, read as its chunks come.
pub struct FileStream {
    /// The index of the chunk to read next.
    next: usize,
    place: Place,
    scan: Scan,
    /// The text up to and including the data's opening quote.
    head: String,
    /// The text from the data's closing quote on.
    tail: String,
    /// Base64 characters not decoded yet (a partial group, padding).
    carry: Vec<u8>,
    padded: bool,
    bytes: Vec<u8>,
    sha: Sha256Stream,
}

impl Default for FileStream {
    fn default() -> Self {
        Self::new()
    }
}

impl FileStream {
    /// A stream for a file's chunks, from the first. Its buffer grows with
    /// what arrives, not with the size the sender's manifest claims: eight
    /// open transfers claiming 30 MiB each would otherwise hold 240 MiB of
    /// the core's memory before a byte came.
    pub fn new() -> Self {
        FileStream {
            next: 0,
            place: Place::Head,
            scan: Scan::default(),
            head: String::new(),
            tail: String::new(),
            carry: Vec::new(),
            padded: false,
            bytes: Vec::new(),
            sha: Sha256Stream::default(),
        }
    }

    /// The index of the chunk this stream reads next.
    pub fn next_index(&self) -> usize {
        self.next
    }

    pub fn failed(&self) -> bool {
        self.place == Place::Failed
    }

    /// Read chunk `index`: only the next one in order counts (any other
    /// ends the stream).
    pub fn feed(&mut self, index: usize, text: &str) {
        if self.place == Place::Failed {
            return;
        }
        if index != self.next {
            self.give_up();
            return;
        }
        self.next += 1;
        let mut rest = text;
        while !rest.is_empty() && self.place != Place::Failed {
            rest = match self.place {
                Place::Head | Place::Tail => self.read_json(rest),
                Place::Data => self.read_data(rest),
                Place::Failed => "",
            };
        }
        if self.place == Place::Failed {
            self.give_up();
        }
    }

    /// The whole text will be parsed instead: what was read so far is of
    /// no more use (a transfer may stay open, one chunk short, for hours).
    fn give_up(&mut self) {
        self.place = Place::Failed;
        self.head = String::new();
        self.tail = String::new();
        self.carry = Vec::new();
        self.bytes = Vec::new();
    }

    /// The file, once every one of `chunks` chunks was read and the message
    /// ended as this stream reads it; `None` otherwise (parse the whole).
    pub fn finish(self, chunks: usize) -> Option<Decoded> {
        if self.place != Place::Tail || self.next != chunks || self.scan.depth != 0 {
            return None;
        }
        let mut bytes = self.bytes;
        let mut sha = self.sha;
        // The last group (and its padding) as `b64::decode` reads the whole.
        let last = std::str::from_utf8(&self.carry).ok()?;
        let end = b64::decode(last).ok()?;
        sha.update(&end);
        bytes.extend_from_slice(&end);
        let mut envelope = self.head;
        envelope.push_str(&self.tail);
        Some(Decoded {
            envelope,
            bytes,
            sha256: sha.finish(),
        })
    }

    /// Outside the data: the head, up to the data's opening quote, or the
    /// tail (where scan_json refuses a second `file_data`).
    fn read_json<'a>(&mut self, text: &'a str) -> &'a str {
        let in_head = self.place == Place::Head;
        let (n, found) = self.scan_json(text.as_bytes(), in_head);
        if self.place == Place::Failed {
            // Where it stopped may be inside a character (a non-ASCII
            // byte after `"file_data":`): nothing more is read or kept.
            return "";
        }
        if in_head {
            self.head.push_str(&text[..n]);
        } else {
            self.tail.push_str(&text[..n]);
        }
        if found {
            self.place = Place::Data;
        }
        &text[n..]
    }

    /// Inside the data: up to its closing quote, decoded a group at a time.
    fn read_data<'a>(&mut self, text: &'a str) -> &'a str {
        let bytes = text.as_bytes();
        let end = memchr::memchr(b'"', bytes);
        let data = &bytes[..end.unwrap_or(bytes.len())];
        self.take_base64(data);
        match end {
            _ if self.place == Place::Failed => "",
            Some(e) => {
                // The closing quote is the tail's first character: the
                // scanner sees the string end there.
                self.place = Place::Tail;
                self.scan.in_string = true;
                self.scan.in_key = false;
                self.scan.file_value_next = false;
                &text[e..]
            }
            None => "",
        }
    }

    fn take_base64(&mut self, mut data: &[u8]) {
        if self.padded {
            // Only more padding may follow, and `b64::decode` decides at
            // the end whether it is allowed.
            self.carry.extend_from_slice(data);
            if self.carry.len() > MAX_CARRY {
                self.place = Place::Failed;
            }
            return;
        }
        // Padding ends the data: only a trailing run of '=' is looked for
        // (an '=' anywhere else is a character `b64::decode` refuses).
        let body_len = data.iter().rposition(|&b| b != b'=').map_or(0, |p| p + 1);
        let (body, pad) = data.split_at(body_len);
        data = body;
        // Complete the group held from the chunk before.
        if !self.carry.is_empty() {
            let want = (4 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..want]);
            data = &data[want..];
            if self.carry.len() == 4 {
                let group = std::mem::take(&mut self.carry);
                self.decode_groups(&group);
            }
        }
        let whole = data.len() / 4 * 4;
        self.decode_groups(&data[..whole]);
        self.carry.extend_from_slice(&data[whole..]);
        if !pad.is_empty() {
            self.padded = true;
            self.carry.extend_from_slice(pad);
            if self.carry.len() > MAX_CARRY {
                self.place = Place::Failed;
            }
        }
    }

    /// Whole groups, no padding: decoded and hashed now.
    fn decode_groups(&mut self, groups: &[u8]) {
        if groups.is_empty() || self.place == Place::Failed {
            return;
        }
        // Padding is only ever the data's trailing run, which take_base64
        // holds back: an '=' here is inside the data ("QQ==QQ"), which
        // `b64::decode` refuses in the whole text but would accept as the
        // end of these groups (a group "QQ==" cut off by a chunk's end).
        if memchr::memchr(b'=', groups).is_some() {
            self.place = Place::Failed;
            return;
        }
        let Ok(text) = std::str::from_utf8(groups) else {
            self.place = Place::Failed;
            return;
        };
        match b64::decode(text) {
            Ok(out) => {
                self.sha.update(&out);
                self.bytes.extend_from_slice(&out);
            }
            Err(_) => self.place = Place::Failed,
        }
    }

    /// Scan JSON outside the data. Returns how many bytes were read and
    /// whether they end with the opening quote of the top-level `file_data`
    /// string (`look` true: in the head). Sets `Failed` on what it does
    /// not read for certain.
    fn scan_json(&mut self, text: &[u8], look: bool) -> (usize, bool) {
        let s = &mut self.scan;
        for (i, &c) in text.iter().enumerate() {
            if s.in_string {
                if s.escape {
                    s.escape = false;
                } else if c == b'\\' {
                    s.escape = true;
                    if s.in_key {
                        s.key_escaped = true;
                    }
                } else if c == b'"' {
                    s.in_string = false;
                    if s.in_key {
                        s.in_key = false;
                        if s.key_escaped {
                            // "file\u005fdata" is file_data to serde.
                            self.place = Place::Failed;
                            return (i + 1, false);
                        }
                    }
                } else if s.in_key && s.key.len() < 16 {
                    s.key.push(c);
                }
                continue;
            }
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    if s.depth == 1 && s.file_value_next {
                        if !look {
                            self.place = Place::Failed;
                            return (i + 1, false);
                        }
                        s.file_value_next = false;
                        return (i + 1, true);
                    }
                    s.in_string = true;
                    if s.depth == 1 && s.expect_key {
                        s.in_key = true;
                        s.expect_key = false;
                        s.key.clear();
                        s.key_escaped = false;
                    }
                }
                b':' if s.depth == 1 && s.key == b"file_data" => {
                    if !look {
                        // A second file_data: serde keeps the last.
                        self.place = Place::Failed;
                        return (i + 1, false);
                    }
                    s.file_value_next = true;
                }
                _ if s.depth == 1 && s.file_value_next => {
                    // file_data is not a string (null, a number): the whole
                    // text decides what that means.
                    self.place = Place::Failed;
                    return (i + 1, false);
                }
                b'{' | b'[' => {
                    if s.depth == 0 && c != b'{' {
                        self.place = Place::Failed;
                        return (i + 1, false);
                    }
                    s.depth += 1;
                    if s.depth == 1 {
                        s.expect_key = true;
                    }
                }
                b'}' | b']' => {
                    if s.depth == 0 {
                        self.place = Place::Failed;
                        return (i + 1, false);
                    }
                    s.depth -= 1;
                }
                b',' if s.depth == 1 => s.expect_key = true,
                _ => {}
            }
        }
        (text.len(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn file(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    /// Feed `text` cut at `cuts`; the decoded file, or None.
    fn stream(text: &str, cuts: &[usize]) -> Option<Decoded> {
        let mut s = FileStream::new();
        let mut cuts = cuts.to_vec();
        cuts.sort_unstable();
        cuts.dedup();
        let mut at = 0;
        let mut n = 0;
        for &c in cuts.iter().chain(std::iter::once(&text.len())) {
            s.feed(n, &text[at..c]);
            at = c;
            n += 1;
        }
        s.finish(n)
    }

    /// What the whole-text path reads: the message without file_data, and
    /// the file.
    fn whole(text: &str) -> Option<(Value, Vec<u8>)> {
        let mut v: Value = serde_json::from_str(text).ok()?;
        let data = v.as_object_mut()?.remove("file_data")?;
        Some((v, b64::decode(data.as_str()?).ok()?))
    }

    fn check_same(text: &str, cuts: &[usize]) {
        let d = stream(text, cuts).unwrap_or_else(|| panic!("streamed: {text:.200}"));
        let (v, bytes) = whole(text).expect("the whole text reads");
        assert_eq!(d.bytes, bytes, "cuts {cuts:?}");
        assert_eq!(d.sha256, crate::crypto::kdf::sha256(&bytes));
        let mut env: Value = serde_json::from_str(&d.envelope).expect("envelope is JSON");
        assert_eq!(env["file_data"], json!(""));
        env.as_object_mut().map(|o| o.remove("file_data"));
        assert_eq!(env, v);
    }

    #[test]
    fn a_file_read_in_chunks_is_the_file_the_whole_text_holds() {
        for n in [0usize, 1, 2, 3, 4, 5, 100, 3001, 70_000] {
            let data = file(n);
            for b64text in [b64::encode_std(&data), b64::encode_url(&data)] {
                let text = json!({
                    "type": "file_transfer",
                    "file_name": "out \"q\" \\ {x}.bin",
                    "file_data": b64text,
                    "size_bytes": n,
                    "description": "a [list] , {\"file_data\": 1}",
                })
                .to_string();
                let len = text.len();
                // Cuts everywhere: inside keys, inside the data at every
                // offset mod 4, at the quotes, one chunk per byte near them.
                let start = text.find("\"file_data\"").expect("key");
                let mut cutsets: Vec<Vec<usize>> = vec![vec![], (1..len).step_by(7).collect()];
                for k in 0..8 {
                    cutsets.push(vec![start + k, start + 13 + k, len - 60 - k]);
                }
                cutsets.push((start..(start + 20).min(len)).collect());
                for cuts in cutsets {
                    let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 0 && c < len).collect();
                    check_same(&text, &cuts);
                }
            }
        }
        // Unpadded, with whitespace around the colon, data first.
        let data = file(10);
        let raw = b64::encode_std(&data);
        let text = format!(
            "{{ \"file_data\" : \"{}\" , \"type\":\"file_transfer\"}}",
            raw.trim_end_matches('=')
        );
        check_same(&text, &[3, 17, 20]);
    }

    #[test]
    fn anything_it_does_not_read_for_certain_is_left_to_the_whole_text() {
        let good = b64::encode_std(&file(300));
        let cases = [
            // A JSON escape inside the data ("\/" is "/").
            format!("{{\"file_data\":\"{}\\/AA\"}}", &good[..8]),
            // A character outside both alphabets.
            format!("{{\"file_data\":\"{}*{}\"}}", &good[..8], &good[9..]),
            // Padding in the middle.
            "{\"file_data\":\"AA==AAAA\"}".to_string(),
            // A second file_data (serde keeps the last), written plainly or escaped.
            format!("{{\"file_data\":\"{good}\",\"file_data\":\"\"}}"),
            format!("{{\"file_data\":\"{good}\",\"file\\u005fdata\":\"\"}}"),
            format!("{{\"file\\u005fdata\":\"\",\"file_data\":\"{good}\"}}"),
            // Not a string.
            "{\"file_data\":null}".to_string(),
            "{\"file_data\":[1]}".to_string(),
            // No file_data at the top level.
            format!("{{\"x\":{{\"file_data\":\"{good}\"}}}}"),
            // Not an object; unbalanced.
            format!("[\"file_data\",\"{good}\"]"),
            format!("{{\"file_data\":\"{good}\""),
        ];
        for text in &cases {
            assert!(stream(text, &[5, 9]).is_none(), "{text:.120}");
        }
        // Out of order.
        let text = format!("{{\"file_data\":\"{good}\"}}");
        let mut s = FileStream::new();
        s.feed(0, &text[..20]);
        s.feed(2, &text[40..]);
        s.feed(1, &text[20..40]);
        assert!(s.failed());
        assert!(s.finish(3).is_none());
        // Fewer chunks read than the transfer has.
        let mut s = FileStream::new();
        s.feed(0, &text);
        assert!(s.finish(2).is_none());
    }

    /// Every way to cut `text` into two or three chunks.
    fn every_cut(text: &str, mut each: impl FnMut(&[usize])) {
        let len = text.len();
        each(&[]);
        for a in 1..len {
            if !text.is_char_boundary(a) {
                continue;
            }
            each(&[a]);
            for b in a + 1..len {
                if text.is_char_boundary(b) {
                    each(&[a, b]);
                }
            }
        }
    }

    #[test]
    fn hostile_texts_cut_anywhere_are_left_to_the_whole_text_and_never_stop_the_core() {
        // A peer's chunks: a non-ASCII character where the data's quote
        // should be used to end the scan inside that character (a panic,
        // the core's trap), and padding inside the data was read as the
        // end of a group whenever a chunk ended just after it.
        let cases = [
            "{\"file_data\":é}",
            "{\"file_data\": \u{feff}\"QUJD\"}",
            "{\"a\":\"é\",\"file_data\":€\"QUJD\"}",
            "{\"file_data\":\"QQ==QQ\"}",
            "{\"file_data\":\"QUJD QQ==QUJD\"}",
            "{\"file_data\":\"QUJDQQ==QUJD\"}",
            "{\"file_data\":\"QUI=QUJD\"}",
            "{\"file_data\":\"QQ=\"}",
            "{\"file_data\":\"QQ=é\"}",
            "{\"file_data\":\"QUJDé\"}",
        ];
        for text in cases {
            assert!(whole(text).is_none(), "the whole text reads {text}");
            every_cut(text, |cuts| {
                assert!(stream(text, cuts).is_none(), "{text} cut at {cuts:?}");
            });
        }
        // And texts that do read: at every cut, the same as the whole.
        for text in [
            "{\"file_data\":\"QQ==\",\"n\":\"é\"}",
            "{\"é\":1,\"file_data\":\"QUI=\"}",
            "{\"file_data\":\"QUJDRA\"}",
        ] {
            every_cut(text, |cuts| check_same(text, cuts));
        }
    }

    #[test]
    fn a_stream_that_gives_up_lets_go_of_what_it_read() {
        let good = b64::encode_std(&file(3000));
        let text = format!("{{\"file_data\":\"{good}\",\"file_data\":\"\"}}");
        let mut s = FileStream::new();
        s.feed(0, &text[..text.len() / 2]);
        assert!(!s.bytes.is_empty());
        s.feed(1, &text[text.len() / 2..]);
        assert!(s.failed());
        assert!(
            s.head.capacity() + s.tail.capacity() + s.carry.capacity() + s.bytes.capacity() == 0
        );
    }
}
