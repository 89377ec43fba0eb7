//! NVMe Qualified Names as the NVMe Base Specification defines them (section 4.5,
//! "NVMe Qualified Names"): at most 223 bytes of UTF-8, either
//!
//! - `nqn.yyyy-mm.<reverse domain name>:<name>`: a date code (a year and a month in
//!   which the naming authority owned the domain), the domain reversed (labels of
//!   letters, digits and hyphens, each starting with a letter and not ending with a
//!   hyphen, at most 63 bytes), a colon and a string the authority picks; or
//! - `nqn.2014-08.org.nvmexpress:uuid:<UUID>` (a UUID in its 8-4-4-4-12 hex form).
//!
//! The discovery NQN (`nqn.2014-08.org.nvmexpress.discovery`) has no colon; it is
//! reserved and never configured. Checks as SPDK's `nvmf_valid_nqn` makes them, with
//! messages that say what to write instead.

/// The longest NQN (bytes, without the terminating NUL).
pub const MAX_NQN_LEN: usize = 223;

const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

const EXAMPLE: &str =
    "write it as nqn.YYYY-MM.reverse.domain:name, e.g. nqn.2024-01.com.example:db1";

/// Whether `nqn` is an NVMe Qualified Name; the error says why not and what to write.
pub fn check_nqn(nqn: &str) -> Result<(), String> {
    if nqn.is_empty() {
        return Err(format!("an NQN cannot be empty: {EXAMPLE}"));
    }
    if nqn.len() > MAX_NQN_LEN {
        return Err(format!(
            "{nqn:?} is {} bytes long; an NQN has at most {MAX_NQN_LEN}",
            nqn.len()
        ));
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_PREFIX) {
        return if is_uuid(uuid) {
            Ok(())
        } else {
            Err(format!(
                "{nqn:?} has the UUID form, but {uuid:?} is not a UUID (8-4-4-4-12 hex digits)"
            ))
        };
    }
    let bad = |why: &str| {
        Err(format!(
            "{nqn:?} is not an NVMe Qualified Name ({why}): {EXAMPLE}"
        ))
    };
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return bad("it must begin with \"nqn.\"");
    };
    let b = rest.as_bytes();
    let date_ok = b.len() > 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'.'
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !date_ok {
        return bad("\"nqn.\" must be followed by a date yyyy-mm and a dot");
    }
    let Some((domain, name)) = rest[8..].split_once(':') else {
        return bad("the reverse domain name must be followed by ':' and a name");
    };
    if name.is_empty() {
        return bad("the name after ':' is empty");
    }
    if domain.is_empty() {
        return bad("the reverse domain name is empty");
    }
    for label in domain.split('.') {
        let lb = label.as_bytes();
        let ok = !lb.is_empty()
            && lb.len() <= 63
            && lb[0].is_ascii_alphabetic()
            && lb.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && lb[lb.len() - 1] != b'-';
        if !ok {
            return bad(&format!(
                "domain label {label:?} must start with a letter, hold letters, digits and hyphens, and not end with a hyphen"
            ));
        }
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in [
            "nqn.2024-01.io.lightpool:default",
            "nqn.2014-08.com.example:nvme:nvm-subsystem-sn-d78432",
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "nqn.1999-12.x:y",
        ] {
            assert_eq!(check_nqn(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn invalid_names_say_what_to_write() {
        for (n, why) in [
            ("db1", "must begin with \"nqn.\""),
            ("nqn.db1", "date"),
            ("nqn.2024-13.io.x:y", "date"),
            ("nqn.24-01.io.x:y", "date"),
            ("nqn.2024-01.io.lightpool", "':' and a name"),
            ("nqn.2024-01.io.lightpool:", "name after ':' is empty"),
            ("nqn.2024-01.:x", "reverse domain name is empty"),
            ("nqn.2024-01.1io.x:y", "label \"1io\""),
            ("nqn.2024-01.io-.x:y", "label \"io-\""),
            ("nqn.2024-01.io..x:y", "label \"\""),
            ("nqn.2014-08.org.nvmexpress:uuid:not-a-uuid", "not a UUID"),
            ("", "empty"),
        ] {
            let e = check_nqn(n).expect_err(n);
            assert!(e.contains(why), "{n}: {e}");
        }
        let long = format!("nqn.2024-01.io.x:{}", "a".repeat(220));
        assert!(check_nqn(&long).expect_err("long").contains("at most 223"));
    }
}
