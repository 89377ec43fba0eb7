//! Where a key of the configuration file is: its line, and the key path of a byte
//! offset (for the TOML parser's errors), so that every configuration error reads
//! `FILE:LINE: KEY: reason` whether the parser, the checks or the target found it.

/// Every table and key of the file with its line (1-based), as key paths:
/// `target.reactors`, `subsystem[0].namespace[1].ram`, `bdev[2]`, ...
pub struct Locator {
    entries: Vec<(String, usize)>,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut entries = Vec::new();
        let mut starts = Vec::new();
        let mut table = String::new();
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let mut sub = None::<usize>;
        let mut off = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            starts.push(off);
            off += raw.len();
            let line = n + 1;
            let l = raw.split('#').next().unwrap_or("").trim();
            if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
                let name = name.trim();
                let path = match name.split_once('.') {
                    Some(("subsystem", child)) => {
                        let si = sub.unwrap_or(0);
                        let key = format!("subsystem[{si}].{child}");
                        let i = counts.entry(key.clone()).or_default();
                        *i += 1;
                        format!("{key}[{}]", *i - 1)
                    }
                    _ => {
                        let i = counts.entry(name.to_string()).or_default();
                        *i += 1;
                        if name == "subsystem" {
                            sub = Some(*i - 1);
                        }
                        format!("{name}[{}]", *i - 1)
                    }
                };
                entries.push((path.clone(), line));
                table = path;
            } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                table = name.trim().to_string();
                entries.push((table.clone(), line));
            } else if let Some((k, _)) = l.split_once('=') {
                let k = k.trim().trim_matches('"');
                let path = if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                };
                entries.push((path, line));
            }
        }
        Locator { entries, starts }
    }

    /// The line of `path` (a key, or the table holding it when the key is not in the
    /// file: a missing field, an index into a list).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some((_, l)) = self.entries.iter().find(|(k, _)| *k == p) {
                return Some(*l);
            }
            // subsystem[0].namespace[1].ram -> subsystem[0].namespace[1] -> ...
            let cut = if p.ends_with(']') {
                p.rfind('[')
            } else {
                p.rfind('.')
            };
            match cut {
                Some(i) if i > 0 => p.truncate(i),
                _ => return None,
            }
        }
    }

    /// The line of byte `offset`, and the key path written on it (or of the table it
    /// is in).
    pub fn at(&self, offset: usize) -> (usize, Option<String>) {
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i.max(1),
        };
        let key = self
            .entries
            .iter()
            .rev()
            .find(|(_, l)| *l <= line)
            .map(|(k, _)| k.clone());
        (line, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[target]\nreactors = 1\n\n[[listener]]\naddress = \"x\"\n[[subsystem]]\nnqn = \"a\"\n[[subsystem.namespace]]\nnsid = 1\n[[subsystem.namespace]]\nnsid = 2\nram = \"1GiB\" # comment\n[[subsystem]]\nnqn = \"b\"\n[[subsystem.namespace]]\nnsid = 1\n";

    #[test]
    fn keys_and_tables_have_their_lines() {
        let l = Locator::new(TEXT);
        assert_eq!(l.line_of("target.reactors"), Some(2));
        assert_eq!(l.line_of("listener[0].address"), Some(5));
        assert_eq!(l.line_of("subsystem[0].namespace[1].ram"), Some(12));
        assert_eq!(l.line_of("subsystem[1].namespace[0].nsid"), Some(16));
        // Missing key: its table.
        assert_eq!(l.line_of("subsystem[1].namespace[0].file"), Some(15));
        assert_eq!(l.line_of("target.cores[3]"), Some(1));
        assert_eq!(l.line_of("nothing"), None);
    }

    #[test]
    fn offsets_name_their_key() {
        let l = Locator::new(TEXT);
        let at = TEXT.find("ram").expect("there");
        assert_eq!(
            l.at(at),
            (12, Some("subsystem[0].namespace[1].ram".to_string()))
        );
        assert_eq!(l.at(0), (1, Some("target".to_string())));
    }
}
