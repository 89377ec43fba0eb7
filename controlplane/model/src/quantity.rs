//! Sizes as users write them: a number of bytes, or a number with a binary (Ki, Mi,
//! Gi, Ti, Pi) or decimal (K, M, G, T, P) suffix, as Kubernetes quantities are
//! written for storage.
//!
//! The raw text is kept as written, so an object edited by hand into nonsense still
//! decodes: the controller then says in its status what to change instead of
//! failing to read the object (and with it the whole list).

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One KiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One TiB.
pub const TIB: u64 = 1 << 40;

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number with an optional suffix.
    #[error(
        "'{0}' is not a size: write a number of bytes, or a whole number with a suffix \
         Ki, Mi, Gi, Ti, Pi (powers of 1024) or K, M, G, T, P (powers of 1000), e.g. 100Gi"
    )]
    Syntax(String),
    /// Larger than 2^64 - 1 bytes.
    #[error("'{0}' is larger than 16 EiB")]
    TooLarge(String),
}

/// A size in bytes, kept as the text the user wrote.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Quantity(String);

impl Quantity {
    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        parse_bytes(&self.0)
    }

    /// The shortest exact text for `bytes` (binary suffixes), e.g. "100Gi".
    pub fn from_bytes(bytes: u64) -> Self {
        Quantity(format_bytes(bytes))
    }

    /// Whatever text the user wrote, to be parsed later.
    pub fn raw(text: impl Into<String>) -> Self {
        Quantity(text.into())
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<u64> for Quantity {
    fn from(bytes: u64) -> Self {
        Quantity::from_bytes(bytes)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, QuantityError> {
        parse_bytes(s)?;
        Ok(Quantity(s.trim().to_string()))
    }
}

/// Parses "100Gi", "1G", "4096" (surrounding spaces allowed).
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(QuantityError::Syntax(text.to_string()));
    }
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => KIB,
        "Mi" => MIB,
        "Gi" => GIB,
        "Ti" => TIB,
        "Pi" => 1 << 50,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => return Err(QuantityError::Syntax(text.to_string())),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| QuantityError::TooLarge(text.to_string()))?;
    n.checked_mul(mult)
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))
}

/// The shortest exact binary-suffixed text for `bytes`.
pub fn format_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (shift, suffix) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A size for people: "20 GiB", "1.5 TiB", "512 B" (rounded to one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 50, "PiB"),
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let tenths = (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
            return if tenths % 10 == 0 {
                format!("{} {name}", tenths / 10)
            } else {
                format!("{}.{} {name}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} B")
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
            Float(f64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(n) => Quantity(n.to_string()),
            Raw::Str(s) => Quantity(s),
            Raw::Float(f) => Quantity(f.to_string()),
        })
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Kubernetes' int-or-string; the syntax is checked by `validate`, which
        // can say what to write instead.
        json_schema!({
            "description": "A size: bytes, or a number with a suffix Ki, Mi, Gi, Ti, Pi (powers of 1024) or K, M, G, T, P (powers of 1000), e.g. 100Gi.",
            "x-kubernetes-int-or-string": true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_bytes("100Gi"), Ok(100 * GIB));
        assert_eq!(parse_bytes(" 1G "), Ok(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(matches!(
            parse_bytes("1.5Gi"),
            Err(QuantityError::Syntax(_))
        ));
        assert!(matches!(parse_bytes("Gi"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_bytes("10GB"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_bytes("99999999Pi"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn message_says_what_to_write() {
        let e = parse_bytes("ten gigs").unwrap_err().to_string();
        assert!(e.contains("'ten gigs' is not a size"), "{e}");
        assert!(e.contains("e.g. 100Gi"), "{e}");
    }

    #[test]
    fn integers_and_strings_decode() {
        let q: Quantity = serde_json::from_str("1073741824").unwrap();
        assert_eq!(q.bytes(), Ok(GIB));
        let q: Quantity = serde_json::from_str("\"2Ti\"").unwrap();
        assert_eq!(q.bytes(), Ok(2 * TIB));
        let q: Quantity = serde_json::from_str("\"bad\"").unwrap();
        assert!(q.bytes().is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(20 * GIB), "20 GiB");
        assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human_bytes(512), "512 B");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }
    }
}
