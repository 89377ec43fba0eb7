//! Fault rules and their text form, shared by the configuration file, the management
//! API and the command line:
//!
//! ```text
//! OPS:FAULT[,KEY=VALUE...]
//!
//! OPS    read, write, flush, zeroes, discard, any; several joined with '+'
//! FAULT  eio           the request fails with EIO, nothing reaches the device
//!        errno=N       the same with another errno
//!        full          a write is refused for lack of space (no space left)
//!        torn          a write lands only on its first blocks (at least one block
//!                      short, chosen at random), then fails with EIO
//!        delay=DUR     the request completes DUR late (e.g. 50ms, 2s, 300us)
//! KEYS   lba=A-B       only requests touching blocks A..=B
//!        skip=N        let the first N matching requests through
//!        every=N       then fault one matching request in N (default 1: each)
//!        count=N       at most N faults, then the rule is spent
//! ```
//!
//! `write:torn,count=1` tears the next write; `read:eio,lba=2048-4095` fails every
//! read of those blocks; `any:delay=200ms,every=100` slows one request in a hundred.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lightpool_bdev::IoOp;
use serde::{Deserialize, Serialize};

/// Why a rule's text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fault rule {rule:?}: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

/// Which operations a rule matches: a bit per [`IoOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ops(u8);

const OP_NAMES: [(&str, u8); 5] = [
    ("read", 1),
    ("write", 2),
    ("flush", 4),
    ("zeroes", 8),
    ("discard", 16),
];

impl Ops {
    fn bit(op: IoOp) -> u8 {
        match op {
            IoOp::Read => 1,
            IoOp::Write => 2,
            IoOp::Flush => 4,
            IoOp::WriteZeroes => 8,
            IoOp::Deallocate => 16,
        }
    }

    /// Whether `op` is one of these.
    pub fn has(self, op: IoOp) -> bool {
        self.0 & Self::bit(op) != 0
    }
}

/// What happens to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Fails with this errno; nothing reaches the device.
    Error(i32),
    /// A write refused for lack of space.
    Full,
    /// A write lands on its first blocks only, then fails with EIO.
    Torn,
    /// Completes this many microseconds late.
    Delay(u64),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub ops: Ops,
    /// Only requests touching blocks `first..=last`.
    pub lba: Option<(u64, u64)>,
    pub skip: u64,
    pub every: u64,
    pub count: Option<u64>,
    pub fault: Fault,
}

impl FaultRule {
    /// Whether a request of `op` on `num_blocks` blocks at `offset` is one this rule
    /// looks at (before its skip, every and count).
    pub fn matches(&self, op: IoOp, offset: u64, num_blocks: u32) -> bool {
        if !self.ops.has(op) {
            return false;
        }
        match self.lba {
            None => true,
            // A flush has no range: it touches every block.
            Some(_) if op == IoOp::Flush => true,
            Some((first, last)) => {
                let end = offset.saturating_add(u64::from(num_blocks.max(1)) - 1);
                offset <= last && end >= first
            }
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return None,
    })
}

fn errno_name(e: i32) -> Option<&'static str> {
    match e {
        libc::EIO => Some("eio"),
        _ => None,
    }
}

impl FromStr for FaultRule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<FaultRule, RuleError> {
        let err = |why: String| RuleError {
            rule: text.to_string(),
            why,
        };
        let (ops_text, rest) = text.split_once(':').ok_or_else(|| {
            err("write it as OPS:FAULT[,KEY=VALUE...], e.g. write:eio,count=1".into())
        })?;
        let mut ops = 0u8;
        for o in ops_text.split('+') {
            if o == "any" {
                ops = 0x1f;
                continue;
            }
            let bit = OP_NAMES
                .iter()
                .find(|(n, _)| *n == o)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    err(format!(
                        "unknown operation {o:?}: use read, write, flush, zeroes, discard or any (joined with '+')"
                    ))
                })?;
            ops |= bit;
        }
        let mut parts = rest.split(',');
        let fault_text = parts.next().unwrap_or_default();
        let fault = match fault_text.split_once('=') {
            None if fault_text == "eio" => Fault::Error(libc::EIO),
            None if fault_text == "full" => Fault::Full,
            None if fault_text == "torn" => Fault::Torn,
            Some(("errno", n)) => match n.parse::<i32>() {
                Ok(n) if n > 0 => Fault::Error(n),
                _ => {
                    return Err(err(format!(
                        "errno={n}: give a positive number, e.g. errno=5"
                    )))
                }
            },
            Some(("delay", d)) => match parse_duration(d) {
                Some(d) if !d.is_zero() => Fault::Delay(d.as_micros() as u64),
                _ => {
                    return Err(err(format!(
                        "delay={d}: give a duration such as 300us, 50ms or 2s"
                    )))
                }
            },
            _ => {
                return Err(err(format!(
                    "unknown fault {fault_text:?}: use eio, errno=N, full, torn or delay=DURATION"
                )))
            }
        };
        let writes_only = ops & !(2 | 8) == 0;
        if matches!(fault, Fault::Full | Fault::Torn) && !writes_only {
            return Err(err(format!(
                "{fault_text} applies to writes only: use write:{fault_text} (or zeroes)"
            )));
        }
        let mut rule = FaultRule {
            ops: Ops(ops),
            lba: None,
            skip: 0,
            every: 1,
            count: None,
            fault,
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err(format!("{kv:?} is not KEY=VALUE")))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| err(format!("{k}={v}: give a whole number")))
            };
            match k {
                "lba" => {
                    let (a, b) = v
                        .split_once('-')
                        .ok_or_else(|| err(format!("lba={v}: give FIRST-LAST, e.g. lba=0-1023")))?;
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(err(format!("lba={v}: the first block is after the last")));
                    }
                    rule.lba = Some((a, b));
                }
                "skip" => rule.skip = num(v)?,
                "every" => {
                    rule.every = num(v)?;
                    if rule.every == 0 {
                        return Err(err("every=0: give 1 (each) or more".into()));
                    }
                }
                "count" => rule.count = Some(num(v)?),
                _ => {
                    return Err(err(format!(
                        "unknown key {k:?}: use lba, skip, every or count"
                    )))
                }
            }
        }
        Ok(rule)
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ops.0 == 0x1f {
            f.write_str("any")?;
        } else {
            let names: Vec<&str> = OP_NAMES
                .iter()
                .filter(|(_, b)| self.ops.0 & b != 0)
                .map(|(n, _)| *n)
                .collect();
            f.write_str(&names.join("+"))?;
        }
        match self.fault {
            Fault::Error(e) => match errno_name(e) {
                Some(n) => write!(f, ":{n}")?,
                None => write!(f, ":errno={e}")?,
            },
            Fault::Full => f.write_str(":full")?,
            Fault::Torn => f.write_str(":torn")?,
            Fault::Delay(us) if us.is_multiple_of(1_000_000) => {
                write!(f, ":delay={}s", us / 1_000_000)?
            }
            Fault::Delay(us) if us.is_multiple_of(1000) => write!(f, ":delay={}ms", us / 1000)?,
            Fault::Delay(us) => write!(f, ":delay={us}us")?,
        }
        if let Some((a, b)) = self.lba {
            write!(f, ",lba={a}-{b}")?;
        }
        if self.skip > 0 {
            write!(f, ",skip={}", self.skip)?;
        }
        if self.every != 1 {
            write!(f, ",every={}", self.every)?;
        }
        if let Some(c) = self.count {
            write!(f, ",count={c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_as_written() {
        for text in [
            "write:eio",
            "read:eio,lba=2048-4095",
            "write:torn,count=1",
            "write+zeroes:full,skip=10",
            "any:delay=200ms,every=100",
            "read+write:errno=110,count=3",
            "flush:delay=2s",
            "read:delay=300us",
        ] {
            let r: FaultRule = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn a_rule_matches_its_operations_and_blocks() {
        let r: FaultRule = "read:eio,lba=100-199".parse().unwrap();
        assert!(r.matches(IoOp::Read, 100, 1));
        assert!(r.matches(IoOp::Read, 90, 11), "overlaps at 100");
        assert!(r.matches(IoOp::Read, 199, 8));
        assert!(!r.matches(IoOp::Read, 90, 10), "ends at 99");
        assert!(!r.matches(IoOp::Read, 200, 1));
        assert!(!r.matches(IoOp::Write, 150, 1));
    }

    #[test]
    fn bad_rules_say_what_to_change() {
        for (text, want) in [
            ("eio", "OPS:FAULT"),
            ("reed:eio", "unknown operation \"reed\""),
            ("write:boom", "unknown fault \"boom\""),
            ("read:torn", "writes only"),
            ("any:full", "writes only"),
            ("write:delay=5", "300us, 50ms or 2s"),
            ("write:eio,lba=9-1", "after the last"),
            ("write:eio,lba=5", "FIRST-LAST"),
            ("write:eio,every=0", "every=0"),
            ("write:eio,often=2", "unknown key \"often\""),
            ("write:eio,count", "not KEY=VALUE"),
            ("write:errno=-1", "positive"),
        ] {
            let e = text.parse::<FaultRule>().unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }
}
