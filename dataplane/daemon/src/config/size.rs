//! Sizes in the configuration: bytes as an integer (`67108864`) or a string with a
//! binary unit (`"64MiB"`). Decimal-looking units (`"64MB"`, `"64M"`, `"1G"`) are
//! refused with what to write instead: a reader cannot tell 10^6 from 2^20.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Parse "1GiB", "512 MiB", "4096", "4096B" into bytes; refuse ambiguous units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"1GiB\", \"512MiB\" or 4096"))?;
    let unit = unit.trim();
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => {
            let binary = match unit.to_ascii_lowercase().trim_end_matches('b') {
                "k" | "ki" => Some(("KiB", 10)),
                "m" | "mi" => Some(("MiB", 20)),
                "g" | "gi" => Some(("GiB", 30)),
                "t" | "ti" => Some(("TiB", 40)),
                _ => None,
            };
            return Err(match binary {
                Some((u, sh)) => format!(
                    "{s:?} is ambiguous (powers of 1000 or of 1024?): write \"{n}{u}\" for {} bytes, or the number of bytes",
                    n.checked_shl(sh).map_or_else(|| "too many".to_string(), |b| b.to_string())
                ),
                None => format!(
                    "unknown size unit {unit:?} in {s:?}: use KiB, MiB, GiB or TiB, or give bytes"
                ),
            });
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The shortest exact way to write `bytes` ("64MiB", "1536KiB", "513").
pub fn format_size(bytes: u64) -> String {
    for (u, sh) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes != 0 && bytes.trailing_zeros() >= sh {
            return format!("{}{u}", bytes >> sh);
        }
    }
    bytes.to_string()
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a size is bytes (67108864) or a string with a unit (\"64MiB\")",
            )
        })? {
            Raw::Bytes(b) => Ok(Size(b)),
            Raw::Text(t) => parse_size(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_and_bytes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn ambiguous_units_are_refused_with_what_to_write() {
        for (s, want) in [
            ("64MB", "write \"64MiB\" for 67108864 bytes"),
            ("64M", "write \"64MiB\""),
            ("1G", "write \"1GiB\""),
            ("1gb", "write \"1GiB\""),
            ("4k", "write \"4KiB\" for 4096 bytes"),
        ] {
            let e = parse_size(s).expect_err(s);
            assert!(e.contains(want) && e.contains("ambiguous"), "{s}: {e}");
        }
    }

    #[test]
    fn sizes_read_from_integers_and_strings_and_written_back_exactly() {
        #[derive(Deserialize, Serialize)]
        struct T {
            a: Size,
            b: Size,
            c: Size,
        }
        let t: T = toml::from_str("a = 67108864\nb = \"1GiB\"\nc = 513\n").expect("parses");
        assert_eq!((t.a, t.b, t.c), (Size(64 << 20), Size(1 << 30), Size(513)));
        let text = toml::to_string(&t).expect("serializes");
        assert!(text.contains("a = \"64MiB\""), "{text}");
        let back: T = toml::from_str(&text).expect("parses back");
        assert_eq!((back.a, back.b, back.c), (t.a, t.b, t.c));
        let e = toml::from_str::<T>("a = \"64MB\"\nb = 1\nc = 1\n")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("ambiguous"), "{e}");
    }
}
