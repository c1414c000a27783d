//! Honest offload progress: transfer meters that count what was really
//! acknowledged (input chunks the sandbox receipted, output chunks this
//! client stored), coalesced into a bounded number of events, and the one
//! way an `--exec` command reports its own progress. Nothing here invents a
//! percentage from elapsed time.

use serde::{Deserialize, Serialize};

/// A transfer meter reports again once another tenth of the file is
/// acknowledged ...
const STEPS: u64 = 10;
/// ... and at least this long after its previous report (the final report
/// is never held back). So a file makes at most `STEPS + 1` events.
pub const MIN_REPORT_GAP_MS: u64 = 1000;

/// The prefix of a progress line on an `--exec` command's stdout.
pub const EXEC_PROGRESS_PREFIX: &str = "KARS_PROGRESS";
/// The command's text is cut to this many characters.
pub const EXEC_PROGRESS_TEXT_CHARS: usize = 300;

/// What an offload event measures, when it is a progress report (the
/// `progress` of an event in `offload_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressKind {
    /// An input file on its way to the sandbox (chunks it receipted).
    Input,
    /// An output file on its way back (chunks this client stored).
    Output,
    /// The sandbox's own report on the run (its executor's percentage, if
    /// the executor gave one).
    Run,
    /// The sandbox's word that it is up and waits (for inputs or the
    /// go-ahead): it runs nothing yet.
    Wait,
}

/// The numbers behind a progress event. Every field is a count that was
/// observed, never an estimate from time; absent when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressInfo {
    pub kind: ProgressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u64>,
    /// Only what the sandbox reported (from its executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct: Option<u64>,
}

impl ProgressInfo {
    /// The sandbox's report (`Run` or `Wait`), with the percentage it gave.
    pub fn sandbox(kind: ProgressKind, pct: Option<u64>) -> Self {
        ProgressInfo {
            kind,
            name: None,
            bytes_done: None,
            bytes_total: None,
            chunks_done: None,
            chunks_total: None,
            pct,
        }
    }
}

/// How far a transfer is, as counted: parts (chunks, or the whole message
/// when it was small enough to go in one) and the bytes of their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub parts_done: u64,
    pub parts_total: u64,
    pub text_done: u64,
    pub text_total: u64,
}

/// A file's parts its recipient receipted so far (the node's pacer tells
/// the offload client): the recipient, the transfer id the sender gave the
/// file, and the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferNews {
    pub to: String,
    pub transfer_id: String,
    pub count: Count,
}

/// One file's transfer, reported a tenth at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    pub kind: ProgressKind,
    /// The file's name as shown (already escaped when a peer chose it).
    pub name: String,
    /// The file's size, when known (ours for inputs; the sandbox's word
    /// for outputs, shown only).
    pub size: Option<u64>,
    /// The tenth reported last (0: none yet).
    reported_step: u64,
    reported_ms: Option<u64>,
    finished: bool,
    /// The last count observed (what `complete` finishes from).
    last: Option<Count>,
}

/// One report of a meter: the event text and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub text: String,
    pub info: ProgressInfo,
    /// The last report of this file.
    pub finished: bool,
}

impl Meter {
    pub fn new(kind: ProgressKind, name: &str, size: Option<u64>) -> Self {
        Meter {
            kind,
            name: name.to_string(),
            size,
            reported_step: 0,
            reported_ms: None,
            finished: false,
            last: None,
        }
    }

    /// The recipient said it has the whole file (a sandbox that started its
    /// task with every input): the final report, unless it was made. Its
    /// last receipts may still be on their way (they are coalesced), and a
    /// task that ends at once would otherwise leave the file's progress
    /// short of its end. Nothing when the meter never counted a part.
    pub fn complete(&mut self, now: u64) -> Option<Report> {
        let c = self.last?;
        if self.finished {
            return None;
        }
        let whole = Count {
            parts_done: c.parts_total,
            text_done: c.text_total,
            ..c
        };
        self.observe(whole, now)
    }

    /// A new count at `now`: a report when it is due (another tenth done
    /// and `MIN_REPORT_GAP_MS` since the last report, or everything done),
    /// else `None`. A finished meter reports nothing more.
    pub fn observe(&mut self, c: Count, now: u64) -> Option<Report> {
        if self.finished || c.parts_total == 0 {
            return None;
        }
        self.last = Some(c);
        let done = c.parts_done >= c.parts_total;
        let step = tenths(c);
        let gap_ok = self
            .reported_ms
            .is_none_or(|t| now.saturating_sub(t) >= MIN_REPORT_GAP_MS);
        if !done && (step <= self.reported_step || !gap_ok) {
            return None;
        }
        self.reported_step = step;
        self.reported_ms = Some(now);
        self.finished = done;
        Some(self.report(c))
    }

    fn report(&self, c: Count) -> Report {
        let done = c.parts_done >= c.parts_total;
        // The file's bytes in the parts counted: its share of their text,
        // exact once every part is in (the text is the file base64-encoded
        // in a small envelope, so the share is within a few hundred bytes).
        let bytes_done = self.size.map(|size| {
            if done {
                size
            } else if c.text_total > 0 {
                share(size, c.text_done, c.text_total)
            } else {
                share(size, c.parts_done, c.parts_total)
            }
        });
        let verb = match self.kind {
            ProgressKind::Output => "received",
            _ => "acknowledged",
        };
        // A file small enough went whole, as one message.
        let counted = if c.parts_total == 1 {
            format!("{} of 1 message {verb}", c.parts_done.min(1))
        } else {
            format!("{} of {} chunks {verb}", c.parts_done, c.parts_total)
        };
        let what = match self.kind {
            ProgressKind::Output => "output",
            _ => "input",
        };
        let text = match (bytes_done, self.size) {
            (Some(d), Some(size)) => {
                format!("{what} {}: {} ({counted})", self.name, of_size(d, size))
            }
            _ => format!("{what} {}: {counted}", self.name),
        };
        Report {
            text,
            info: ProgressInfo {
                kind: self.kind,
                name: Some(self.name.clone()),
                bytes_done,
                bytes_total: self.size,
                chunks_done: Some(c.parts_done),
                chunks_total: Some(c.parts_total),
                pct: None,
            },
            finished: done,
        }
    }
}

/// Whole tenths of the transfer counted (by text bytes when known, else by
/// parts); 10 only when everything is in.
fn tenths(c: Count) -> u64 {
    if c.parts_done >= c.parts_total {
        return STEPS;
    }
    let (done, total) = if c.text_total > 0 {
        (c.text_done.min(c.text_total), c.text_total)
    } else {
        (c.parts_done, c.parts_total)
    };
    (u128::from(done) * u128::from(STEPS) / u128::from(total.max(1))).min(u128::from(STEPS - 1))
        as u64
}

/// `size * done / total`, without overflow, never above `size`.
fn share(size: u64, done: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let v = u128::from(size) * u128::from(done.min(total)) / u128::from(total);
    u64::try_from(v).unwrap_or(size).min(size)
}

/// `12.0 of 30.0 MiB`, `300.5 of 700.0 KiB`, `14 of 14 bytes`: both in the
/// unit of the total.
pub fn of_size(done: u64, total: u64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    if total < 1024 {
        return format!("{done} of {total} bytes");
    }
    let (div, unit) = if total < 1024 * 1024 {
        (KIB, "KiB")
    } else {
        (MIB, "MiB")
    };
    format!(
        "{:.1} of {:.1} {unit}",
        done as f64 / div,
        total as f64 / div
    )
}

/// Why a `KARS_PROGRESS` line was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecProgressError {
    #[error("no percentage: expected a whole number from 0 to 100, or `-`")]
    MissingPct,
    #[error("`{0}` is not a percentage: expected a whole number from 0 to 100, or `-`")]
    BadPct(String),
}

/// What an `--exec` command reported: its percentage (when it gave one) and
/// its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecProgress {
    pub pct: Option<u64>,
    pub text: String,
}

/// Read the rest of a `KARS_PROGRESS <pct> [text]` line (what follows the
/// prefix; the host passes it on unchanged). `<pct>` is a whole number from
/// 0 to 100 (a decimal part is dropped: `37.5` is 37), or `-` for text
/// without a percentage. The text is cut to `EXEC_PROGRESS_TEXT_CHARS`.
pub fn parse_exec_progress(rest: &str) -> Result<ExecProgress, ExecProgressError> {
    let rest = rest.trim();
    let (pct, text) = match rest.split_once(char::is_whitespace) {
        Some((p, t)) => (p, t.trim()),
        None => (rest, ""),
    };
    let pct = match pct {
        "" => return Err(ExecProgressError::MissingPct),
        "-" => None,
        p => {
            let whole = p.split_once('.').map_or(p, |(w, frac)| {
                if frac.chars().all(|c| c.is_ascii_digit()) {
                    w
                } else {
                    p
                }
            });
            match whole.parse::<u64>() {
                Ok(n) if n <= 100 => Some(n),
                _ => {
                    let shown: String = p.chars().take(20).collect();
                    return Err(ExecProgressError::BadPct(shown));
                }
            }
        }
    };
    Ok(ExecProgress {
        pct,
        text: text.chars().take(EXEC_PROGRESS_TEXT_CHARS).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A 30 MiB file as the pacer sends it: 80 chunks of 512 KiB of text.
    fn count(done: u64) -> Count {
        let text_total = 40 * MIB + 300;
        let text_done = (done * 512 * 1024).min(text_total);
        Count {
            parts_done: done,
            parts_total: 80,
            text_done: if done == 80 { text_total } else { text_done },
            text_total,
        }
    }

    #[test]
    fn a_30_mib_input_makes_a_bounded_number_of_reports_ending_at_its_size() {
        let size = 30 * MIB;
        let mut m = Meter::new(ProgressKind::Input, "data.bin", Some(size));
        let mut reports = Vec::new();
        // One receipt per chunk, 100 ms apart: the gap and the tenths bound it.
        for (i, done) in (1..=80).enumerate() {
            if let Some(r) = m.observe(count(done), 1000 + i as u64 * 100) {
                reports.push(r);
            }
        }
        assert!(reports.len() <= 11, "{}", reports.len());
        assert!(reports.len() >= 5, "{}", reports.len());
        let bytes: Vec<u64> = reports
            .iter()
            .map(|r| r.info.bytes_done.expect("bytes"))
            .collect();
        assert!(bytes.windows(2).all(|w| w[0] < w[1]), "{bytes:?}");
        let last = reports.last().expect("a final report");
        assert!(last.finished);
        assert_eq!(last.info.bytes_done, Some(size));
        assert_eq!(
            last.text,
            "input data.bin: 30.0 of 30.0 MiB (80 of 80 chunks acknowledged)"
        );
        assert_eq!(last.info.chunks_done, Some(80));
        assert_eq!(last.info.pct, None);
        // Finished: nothing more, whatever comes.
        assert_eq!(m.observe(count(80), 99_000), None);
    }

    #[test]
    fn reports_wait_for_a_tenth_and_a_second_but_never_hold_back_the_last() {
        let mut m = Meter::new(ProgressKind::Input, "a.bin", Some(30 * MIB));
        // 24 of 80 chunks: 30 % of the text.
        let r = m.observe(count(24), 0).expect("first report");
        assert_eq!(
            r.text,
            "input a.bin: 9.0 of 30.0 MiB (24 of 80 chunks acknowledged)"
        );
        // Further tenths, but within the second: held back.
        assert_eq!(m.observe(count(40), 500), None);
        // A second after the last report: reported.
        let r = m.observe(count(40), 1000).expect("a second later");
        assert_eq!(r.info.chunks_done, Some(40));
        // Seconds later, but no further tenth: nothing.
        assert_eq!(m.observe(count(40), 5000), None, "no new tenth");
        // Everything in, a millisecond later: reported at once.
        let r = m.observe(count(80), 5001).expect("final");
        assert!(r.finished);
    }

    #[test]
    fn a_recipient_that_has_the_whole_file_completes_the_meter_once() {
        let mut m = Meter::new(ProgressKind::Input, "big.bin", Some(30 * MIB));
        assert_eq!(m.complete(0), None, "nothing counted: nothing to complete");
        m.observe(count(40), 0).expect("first report");
        let r = m.complete(10).expect("final");
        assert!(r.finished);
        assert_eq!(r.info.chunks_done, Some(80));
        assert_eq!(r.info.chunks_total, Some(80));
        assert_eq!(r.info.bytes_done, Some(30 * MIB));
        assert_eq!(
            m.observe(count(80), 20),
            None,
            "the late receipts add nothing"
        );
        assert_eq!(m.complete(30), None);
    }

    #[test]
    fn small_files_and_outputs_say_what_was_counted() {
        let mut m = Meter::new(ProgressKind::Input, "notes.txt", Some(14));
        let c = Count {
            parts_done: 1,
            parts_total: 1,
            text_done: 300,
            text_total: 300,
        };
        let r = m.observe(c, 0).expect("report");
        assert_eq!(
            r.text,
            "input notes.txt: 14 of 14 bytes (1 of 1 message acknowledged)"
        );
        let mut out = Meter::new(ProgressKind::Output, "result.bin", Some(700 * 1024));
        let c = Count {
            parts_done: 1,
            parts_total: 2,
            text_done: 512 * 1024,
            text_total: 933_000,
        };
        let r = out.observe(c, 0).expect("report");
        assert!(
            r.text
                .starts_with("output result.bin: 393.4 of 700.0 KiB (1 of 2 chunks received)"),
            "{}",
            r.text
        );
        // No size known (a sandbox that does not name its outputs' sizes).
        let mut anon = Meter::new(ProgressKind::Output, "(transfer t1)", None);
        let r = anon.observe(c, 0).expect("report");
        assert_eq!(r.text, "output (transfer t1): 1 of 2 chunks received");
        assert_eq!(r.info.bytes_done, None);
    }

    #[test]
    fn sizes_are_shown_in_the_unit_of_the_total() {
        assert_eq!(of_size(12 * MIB, 30 * MIB), "12.0 of 30.0 MiB");
        assert_eq!(of_size(512, 2048), "0.5 of 2.0 KiB");
        assert_eq!(of_size(3, 900), "3 of 900 bytes");
        assert_eq!(share(u64::MAX, 1, 2), u64::MAX / 2);
        assert_eq!(share(10, 5, 0), 0);
    }

    #[test]
    fn exec_progress_lines() {
        let p = |s: &str| parse_exec_progress(s);
        assert_eq!(
            p("42 indexing files"),
            Ok(ExecProgress {
                pct: Some(42),
                text: "indexing files".into()
            })
        );
        assert_eq!(
            p(" 37.5\tstill going "),
            Ok(ExecProgress {
                pct: Some(37),
                text: "still going".into()
            })
        );
        assert_eq!(
            p("- warming up"),
            Ok(ExecProgress {
                pct: None,
                text: "warming up".into()
            })
        );
        assert_eq!(
            p("100"),
            Ok(ExecProgress {
                pct: Some(100),
                text: String::new()
            })
        );
        assert_eq!(p(""), Err(ExecProgressError::MissingPct));
        assert_eq!(
            p("101 too far"),
            Err(ExecProgressError::BadPct("101".into()))
        );
        assert_eq!(p("-5 x"), Err(ExecProgressError::BadPct("-5".into())));
        assert_eq!(
            p("half done"),
            Err(ExecProgressError::BadPct("half".into()))
        );
        assert_eq!(p("1.x y"), Err(ExecProgressError::BadPct("1.x".into())));
        let long = format!("5 {}", "é".repeat(1000));
        assert_eq!(
            p(&long).map(|e| e.text.chars().count()),
            Ok(EXEC_PROGRESS_TEXT_CHARS)
        );
    }
}
