//! NVMe/TCP header and data digests: CRC32C (Castagnoli), as iSCSI uses it,
//! carried little-endian on the wire (NVMe/TCP 1.0 section 3.6.1.1).
//!
//! The value is the standard CRC32C (initial value !0, final XOR !0); Linux
//! writes it with `put_unaligned_le32(~crc32c(~0, buf, len), ...)`, the same
//! bytes as `crc32c(buf).to_le_bytes()` here.

use super::DIGEST_SIZE;

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends a finished CRC32C value with more bytes, so a data digest can be
/// computed across partial reads: `crc32c_append(crc32c(a), b) ==
/// crc32c(a ++ b)`. Start from 0 for an empty prefix.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The header digest bytes for a PDU header of `hdr.len()` (= HLEN) bytes.
pub fn header_digest(hdr: &[u8]) -> [u8; DIGEST_SIZE] {
    crc32c(hdr).to_le_bytes()
}

/// True when `digest` is the header digest of `hdr`.
pub fn header_digest_ok(hdr: &[u8], digest: &[u8; DIGEST_SIZE]) -> bool {
    header_digest(hdr) == *digest
}

/// The data digest bytes of `data` received or sent in one piece.
pub fn data_digest(data: &[u8]) -> [u8; DIGEST_SIZE] {
    crc32c(data).to_le_bytes()
}

/// Wire bytes of a data digest from its running CRC.
pub fn digest_bytes(crc: u32) -> [u8; DIGEST_SIZE] {
    crc.to_le_bytes()
}

/// The CRC a received digest carries.
pub fn digest_value(digest: &[u8; DIGEST_SIZE]) -> u32 {
    u32::from_le_bytes(*digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The CRC-32C "check" value from the catalogue of CRC parameters.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn rfc3720_vectors_and_byte_order() {
        // RFC 3720 appendix B.4: 32 bytes of zeros give 0x8a9136aa, sent as
        // aa 36 91 8a - little-endian, the NVMe/TCP order too.
        let zeros = [0u8; 32];
        assert_eq!(crc32c(&zeros), 0x8A91_36AA);
        assert_eq!(header_digest(&zeros), [0xAA, 0x36, 0x91, 0x8A]);
        // 32 bytes of 0xff give 0x62a8ab43.
        assert_eq!(crc32c(&[0xFF; 32]), 0x62A8_AB43);
        // Incrementing 0..31 gives 0x46dd794e.
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
    }

    #[test]
    fn append_matches_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let whole = crc32c(&data);
        for split in [0, 1, 3, 500, 999, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), whole);
        }
        assert_eq!(crc32c_append(0, &data), whole);
        let mut running = 0;
        for chunk in data.chunks(17) {
            running = crc32c_append(running, chunk);
        }
        assert_eq!(running, whole);
    }

    #[test]
    fn digest_roundtrip() {
        let hdr = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let d = header_digest(&hdr);
        assert!(header_digest_ok(&hdr, &d));
        assert!(!header_digest_ok(&hdr[..7], &d));
        assert_eq!(digest_value(&d), crc32c(&hdr));
        assert_eq!(digest_bytes(crc32c(&hdr)), d);
        assert_eq!(data_digest(&hdr), d);
    }
}
