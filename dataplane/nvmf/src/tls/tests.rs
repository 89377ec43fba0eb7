//! Vectors: libnvme `test/psk.c` (github.com/linux-nvme/libnvme at 03297d8b, the
//! interchange strings and the version-1 identities, standard and compat), RFC 5869
//! appendix A.1 (HKDF), and TLS PSKs computed independently with OpenSSL's HKDF
//! (`openssl kdf -keylen L -kdfopt digest:SHA2-256 -kdfopt hexkey:<retained>
//! -kdfopt hexinfo:<HkdfLabel> HKDF`, OpenSSL 3.0.22).

use super::key::hkdf;
use super::*;
use crate::auth::HashFn;

const KEY32: [u8; 32] = [
    0x55, 0x12, 0xDB, 0xB6, 0x73, 0x7D, 0x01, 0x06, 0xF6, 0x59, 0x75, 0xB7, 0x73, 0xDF, 0xB0, 0x11,
    0xFF, 0xC3, 0x44, 0xBC, 0xF4, 0x42, 0xE2, 0xDD, 0x6D, 0x8B, 0xC4, 0x87, 0x0B, 0x5D, 0x5B, 0x03,
];

fn key48() -> Vec<u8> {
    let mut k = KEY32.to_vec();
    k.extend_from_slice(&KEY32[16..]);
    k
}

const HOST: &str = "nqn.psk-test-host";
const SUBSYS: &str = "nqn.psk-test-subsys";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn interchange_strings_of_libnvme_are_read_and_written() {
    let cases = [
        (
            "NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
            None,
            KEY32.to_vec(),
        ),
        (
            "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
            Some(PskHash::Sha256),
            KEY32.to_vec(),
        ),
        (
            "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:",
            Some(PskHash::Sha384),
            key48(),
        ),
    ];
    for (s, transform, key) in cases {
        let k = ConfiguredPsk::parse(s).expect(s);
        assert_eq!(k, ConfiguredPsk::new(transform, &key).expect("valid"));
        assert_eq!(k.transform(), transform);
        assert_eq!(k.to_interchange(), s);
    }
}

#[test]
fn bad_interchange_strings_are_refused_with_the_reason() {
    let good = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
    assert_eq!(
        ConfiguredPsk::parse("DHHC-1:01:VRLb:"),
        Err(PskError::Prefix)
    );
    assert!(matches!(
        ConfiguredPsk::parse(&good.replace(":01:", ":03:")),
        Err(PskError::HashId(h)) if h == "03"
    ));
    // One character of the key changed: the CRC no longer matches.
    assert_eq!(
        ConfiguredPsk::parse(&good.replace("VRLb", "VRLc")),
        Err(PskError::Crc)
    );
    assert!(matches!(
        ConfiguredPsk::parse("NVMeTLSkey-1:00:not*base64:"),
        Err(PskError::Base64(_))
    ));
    // 48 bytes with the SHA-256 transformation.
    let k48 = ConfiguredPsk::new(None, &key48())
        .expect("valid")
        .to_interchange();
    assert!(matches!(
        ConfiguredPsk::parse(&k48.replace(":00:", ":01:")),
        Err(PskError::HashLength {
            want: 32,
            got: 48,
            ..
        })
    ));
    assert_eq!(
        ConfiguredPsk::new(None, &[0u8; 64]),
        Err(PskError::Length(64))
    );
}

#[test]
fn version_1_identities_are_libnvmes() {
    let k256 = ConfiguredPsk::new(Some(PskHash::Sha256), &KEY32).expect("valid");
    let k384 = ConfiguredPsk::new(Some(PskHash::Sha384), &key48()).expect("valid");
    let cases = [
        (&k256, Derivation::Standard, "NVMe1R01 nqn.psk-test-host nqn.psk-test-subsys iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU="),
        (&k384, Derivation::Standard, "NVMe1R02 nqn.psk-test-host nqn.psk-test-subsys QhW2+Rp6RzHlNtCslyRxMnwJ11tKKhz8JCAQpQ+XUD8f9td1VeH5h53yz2wKJG1a"),
        (&k256, Derivation::Compat, "NVMe1R01 nqn.psk-test-host nqn.psk-test-subsys 66GuqV08TsAGII39teWUfwQwizjv06Jy8jOcX3NAAzM="),
        (&k384, Derivation::Compat, "NVMe1R02 nqn.psk-test-host nqn.psk-test-subsys RsKmYJ3nAn1ApjjMloJFbAkLPivONDAX/xW327YBUsn2eGShXSjCZvBaOxscLqmz"),
    ];
    for (k, d, want) in cases {
        let p = k
            .tls_psk(HOST, SUBSYS, IdentityVersion::V1, d)
            .expect("derives");
        assert_eq!(p.identity, want, "{d:?}");
        assert_eq!(p.key.len(), k.cipher_hash().key_len());
    }
}

#[test]
fn version_0_identity_names_the_hash_and_the_pair() {
    let k = ConfiguredPsk::new(None, &key48()).expect("valid");
    let p = k
        .tls_psk(HOST, SUBSYS, IdentityVersion::V0, Derivation::Standard)
        .expect("derives");
    assert_eq!(p.identity, "NVMe0R02 nqn.psk-test-host nqn.psk-test-subsys");
    assert_eq!(p.hash, PskHash::Sha384);
    assert_eq!(p.hash.cipher_suite(), "TLS_AES_256_GCM_SHA384");
    let k = ConfiguredPsk::new(None, &KEY32).expect("valid");
    assert_eq!(k.cipher_hash(), PskHash::Sha256);
}

#[test]
fn hkdf_is_rfc_5869() {
    // Appendix A.1 with the salt dropped is not in the RFC; A.3 is the no-salt case.
    let ikm = [0x0bu8; 22];
    let okm = hkdf(HashFn::Sha256, &ikm, &[], 42);
    assert_eq!(
        hex(&okm),
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    );
}

#[test]
fn tls_psk_matches_openssl_hkdf() {
    // Untransformed 32-byte key: the retained PSK is the key; version-0 context.
    let k = ConfiguredPsk::new(None, &KEY32).expect("valid");
    let p = k
        .tls_psk(HOST, SUBSYS, IdentityVersion::V0, Derivation::Standard)
        .expect("derives");
    assert_eq!(hex(&p.key), TLS_PSK_V0_SHA256);
    // SHA-256 transform, version 1: through the retained PSK and the digest.
    let k = ConfiguredPsk::new(Some(PskHash::Sha256), &KEY32).expect("valid");
    let p = k
        .tls_psk(HOST, SUBSYS, IdentityVersion::V1, Derivation::Standard)
        .expect("derives");
    assert_eq!(
        hex(&k.retained(HOST, Derivation::Standard).expect("derives")),
        RETAINED_SHA256
    );
    assert_eq!(hex(&p.key), TLS_PSK_V1_SHA256);
}

#[test]
fn a_target_knows_every_identity_a_host_may_offer() {
    let k = ConfiguredPsk::new(Some(PskHash::Sha256), &KEY32).expect("valid");
    let all = k.all_tls_psks(HOST, SUBSYS).expect("derives");
    let ids: Vec<&str> = all.iter().map(|p| p.identity.as_str()).collect();
    // Two version-1 identities (standard, compat) and one version-0 identity.
    assert_eq!(all.len(), 3, "{ids:?}");
    assert!(ids.contains(&"NVMe0R01 nqn.psk-test-host nqn.psk-test-subsys"));
    assert!(ids
        .iter()
        .any(|i| i.ends_with("iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=")));
    // Different NQNs, different identities and keys.
    let other = k.all_tls_psks("nqn.other-host", SUBSYS).expect("derives");
    assert!(other.iter().all(|o| all
        .iter()
        .all(|a| a.identity != o.identity && a.key != o.key)));
}

#[test]
fn generated_keys_round_trip() {
    for (t, n) in [
        (Some(PskHash::Sha256), 32),
        (Some(PskHash::Sha384), 48),
        (None, 32),
    ] {
        let k = ConfiguredPsk::generate(t, n).expect("random");
        assert_eq!(ConfiguredPsk::parse(&k.to_interchange()).expect("reads"), k);
    }
    assert!(!format!("{:?}", ConfiguredPsk::generate(None, 32).expect("random")).contains('='));
}

const TLS_PSK_V0_SHA256: &str = "ec85300ba827726bd3bc4fc07f3a34aec5fe7c8ccac05fefc2f021c74e0df9ef";
const RETAINED_SHA256: &str = "073311dec37e219ff3acd43f130130c5bdd443c066e1cc3424e49030234ff7d5";
const TLS_PSK_V1_SHA256: &str = "8fc3c0badfd4c0c66fa3ca33aadd0314f85536cc9bc47338b60f3e6e563786ca";
