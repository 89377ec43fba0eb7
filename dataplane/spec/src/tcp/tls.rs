//! TLS 1.3 as NVMe/TCP uses it: the HkdfLabel of HKDF-Expand-Label, which both the
//! TLS PSK derivation (NVMe/TCP 3.6.1) and the record keys (RFC 8446 7.3) expand with.

/// RFC 8446 section 7.1 HkdfLabel: length (big-endian), "tls13 " + label and context,
/// each after its length byte.
pub fn hkdf_label(len: usize, label: &[u8], context: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    info
}
