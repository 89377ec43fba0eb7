//! Known vectors: the DHHC-1 secret from nvme-cli's documentation (its CRC is the
//! one nvme gen-dhchap-key wrote), and responses computed independently (Python's
//! hmac/hashlib over the byte strings Linux's nvmet hashes, drivers/nvme/target/auth.c).

use std::sync::Arc;

use lightpool_spec::auth::{
    self as wire, failure, msg, Challenge, Failure, Negotiate, Reply, Success1,
};

use super::crypto::{self, DhGroup, DhKey, HashFn};
use super::*;

/// nvme-connect(1)'s example secret: 32 key bytes, no transformation.
const DOC_SECRET: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:a0b1c2d3-0000-4000-8000-000000000001";
const SUBNQN: &str = "nqn.2024-01.io.lightpool:auth";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn nvme_cli_secret_parses_and_round_trips() {
    let s = Secret::parse(DOC_SECRET).unwrap();
    assert_eq!(s.len(), 32);
    assert_eq!(s.transform_hash(), None);
    assert_eq!(s.to_dhhc1(), DOC_SECRET);
    // The trailing colon is optional, as in Linux's parser.
    assert_eq!(Secret::parse(DOC_SECRET.trim_end_matches(':')).unwrap(), s);
    // Nothing of the key in Debug output.
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("ia6z"), "{dbg}");
}

#[test]
fn malformed_secrets_name_what_to_change() {
    assert_eq!(Secret::parse("DHHC-2:00:abc:"), Err(SecretError::Prefix));
    assert_eq!(
        Secret::parse("DHHC-1:04:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:"),
        Err(SecretError::HashId("04".into()))
    );
    assert!(matches!(
        Secret::parse("DHHC-1:00:not*base64:"),
        Err(SecretError::Base64(_))
    ));
    // One character changed: the CRC no longer matches.
    assert_eq!(
        Secret::parse("DHHC-1:00:ja6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:"),
        Err(SecretError::Crc)
    );
    // 16 bytes + CRC: too short a key.
    assert_eq!(
        Secret::parse("DHHC-1:00:AAAAAAAAAAAAAAAAAAAAAAAAAAAA:"),
        Err(SecretError::Length(17))
    );
    let e = Secret::parse("DHHC-1:09:x:").unwrap_err().to_string();
    assert!(e.contains("01 (SHA-256)"), "{e}");
}

#[test]
fn generated_secrets_parse_back() {
    for (h, len) in [
        (None, 32),
        (Some(HashFn::Sha256), 32),
        (Some(HashFn::Sha384), 48),
        (Some(HashFn::Sha512), 64),
    ] {
        let s = Secret::generate(h, len).unwrap();
        assert_eq!(Secret::parse(&s.to_dhhc1()).unwrap(), s);
    }
}

fn doc_key_with(transform: Option<HashFn>) -> Secret {
    let raw = Secret::parse(DOC_SECRET).unwrap();
    Secret::new(transform, &raw.transformed("unused")).unwrap()
}

#[test]
fn transformed_key_matches_the_reference() {
    let s = doc_key_with(Some(HashFn::Sha256));
    assert_eq!(
        hex(&s.transformed(HOSTNQN)),
        "96f752e46d866b8d742ce96dfb898b30f75f69495bf97f6a2c88bea1b4303e25"
    );
    // No transformation: the key itself.
    let raw = doc_key_with(None);
    assert_eq!(raw.transformed(HOSTNQN).len(), 32);
}

#[test]
fn host_and_controller_responses_match_the_reference() {
    let c1: Vec<u8> = (0..32).collect();
    let kh = doc_key_with(Some(HashFn::Sha256)).transformed(HOSTNQN);
    let ca = crypto::challenge_for(HashFn::Sha256, None, &c1);
    let r1 = crypto::host_response(
        HashFn::Sha256,
        &kh,
        &ca[..],
        0x0102_0304,
        0x0a0b,
        HOSTNQN,
        SUBNQN,
    );
    assert_eq!(
        hex(&r1[..32]),
        "0e0a4caf34f0d69709df66326868aff71139a2f5e98a6feffb4fc5ae46ae2990"
    );
    // SHA-384 response with an untransformed key.
    let c1: Vec<u8> = (0..48).collect();
    let k = doc_key_with(None).transformed(HOSTNQN);
    let r1 = crypto::host_response(
        HashFn::Sha384,
        &k,
        &c1,
        0x0102_0304,
        0x0a0b,
        HOSTNQN,
        SUBNQN,
    );
    assert_eq!(
        hex(&r1[..48]),
        "8b4b9fbbb373cae7a96af46a7f98d5b35aea338a21d3b3c06d8fbb155d756af0d5b841d6f31d44ef46af4fbf4676b24f"
    );
    // Controller response: the controller key transformed with the subsystem NQN.
    let c2: Vec<u8> = (0..32).collect();
    let kc = doc_key_with(Some(HashFn::Sha256)).transformed(SUBNQN);
    let r2 = crypto::ctrl_response(HashFn::Sha256, &kc, &c2, 7, 0x0a0b, SUBNQN, HOSTNQN);
    assert_eq!(
        hex(&r2[..32]),
        "abfae2a0bc07263b26e123988c1a2cbbf2d87d46298a4ce45e2c1f80cd04160d"
    );
}

#[test]
fn augmented_challenge_matches_the_reference() {
    let ks: Vec<u8> = (0..256).map(|i| i as u8).collect();
    let c: Vec<u8> = (0..64).collect();
    let a = crypto::challenge_for(HashFn::Sha512, Some(&ks), &c);
    assert_eq!(
        hex(&a[..]),
        "3b542eb6f1f076520d13a9b1d814c56f11ad784fa01b11aa540a694a07873b48447fa015bf5a15665c62b3ceb0eed5fc16bde69bf7e00aa8c5f5a0ea9ef66ebd"
    );
}

/// RFC 7919's primes: ffdhe2048's first and last bytes as the RFC prints them, and for
/// every group the shape of the formula and 2^((p-1)/2) = 1 mod p (2 generates the
/// prime-order subgroup of a safe prime: a wrong X would fail this).
#[test]
fn ffdhe_primes_are_rfc_7919s() {
    let p = DhGroup::Ffdhe2048.prime().unwrap();
    let h = format!("{p:X}");
    assert!(
        h.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1"),
        "{h}"
    );
    assert!(h.ends_with("886B423861285C97FFFFFFFFFFFFFFFF"), "{h}");
    for g in &DhGroup::ALL[1..] {
        let p = g.prime().unwrap();
        assert_eq!(p.bits(), g.bits(), "{g:?}");
        let one = num_bigint::BigUint::from(1u8);
        let q = (p - &one) >> 1u32;
        assert_eq!(num_bigint::BigUint::from(2u8).modpow(&q, p), one, "{g:?}");
    }
}

#[test]
fn dh_both_sides_agree_and_bad_exponentials_are_refused() {
    let a = DhKey::generate(DhGroup::Ffdhe2048).unwrap();
    let b = DhKey::generate(DhGroup::Ffdhe2048).unwrap();
    assert_eq!(a.public().len(), 256);
    assert_eq!(
        *a.shared(b.public()).unwrap(),
        *b.shared(a.public()).unwrap()
    );
    let mut one = vec![0u8; 256];
    one[255] = 1;
    assert_eq!(a.shared(&one).unwrap_err(), crypto::DhError::OutOfRange);
    assert!(a.shared(&[1u8; 255]).is_err());
}

/// A minimal host: what Linux's drivers/nvme/host/auth.c sends.
struct Host {
    key: Secret,
    ctrl_key: Option<Secret>,
    t_id: u16,
}

fn negotiate(t_id: u16, hashes: &[u8], groups: &[u8]) -> Vec<u8> {
    let mut idlist = [0u8; 60];
    idlist[..hashes.len()].copy_from_slice(hashes);
    idlist[30..30 + groups.len()].copy_from_slice(groups);
    let n = Negotiate {
        t_id,
        sc_c: 0,
        napd: 1,
        authid: wire::AUTHID_DHCHAP,
        halen: hashes.len() as u8,
        dhlen: groups.len() as u8,
        idlist,
    };
    let mut b = vec![0u8; 72];
    n.write(&mut b).unwrap();
    b
}

fn peer(keys: &HostKeys) -> Peer<'static> {
    Peer {
        hostnqn: HOSTNQN,
        subnqn: SUBNQN,
        keys: Some(Arc::new(keys.clone())),
    }
}

impl Host {
    /// Run one transaction against `x`; the events the controller reported and whether
    /// the host accepted the controller's proof.
    fn run(&self, x: &mut Exchange, p: &Peer<'_>, groups: &[u8]) -> (Vec<Event>, Option<bool>) {
        let mut events = vec![x.send(&negotiate(self.t_id, &[1, 2, 3], groups), p)];
        let mut buf = vec![0u8; 4096];
        let (n, e) = x.receive(&mut buf, p).unwrap();
        events.push(e);
        if buf[1] == msg::FAILURE1 {
            return (events, None);
        }
        let c = Challenge::parse(&buf[..n]).unwrap();
        let hash = HashFn::from_id(c.hash_id).unwrap();
        let group = DhGroup::from_id(c.dhgroup_id).unwrap();
        let (dhv, ks) = if group == DhGroup::Null {
            (Vec::new(), None)
        } else {
            let k = DhKey::generate(group).unwrap();
            let ks = k.shared(c.dhv).unwrap();
            (k.public().to_vec(), Some(ks))
        };
        let ca = crypto::challenge_for(hash, ks.as_deref().map(|v| &v[..]), c.c1);
        let kh = self.key.transformed(HOSTNQN);
        let r1 = crypto::host_response(hash, &kh, &ca[..], c.seqnum, self.t_id, HOSTNQN, SUBNQN);
        let c2 = [0x5Au8; 64];
        let s2 = if self.ctrl_key.is_some() { 99 } else { 0 };
        let reply = Reply {
            t_id: self.t_id,
            hl: hash.digest_len() as u8,
            cvalid: self.ctrl_key.is_some(),
            seqnum: s2,
            response: &r1[..hash.digest_len()],
            c2: &c2[..hash.digest_len()],
            dhv: &dhv,
        };
        let mut rb = vec![0u8; 2048];
        let rn = reply.write(&mut rb).unwrap();
        events.push(x.send(&rb[..rn], p));
        let (n, e) = x.receive(&mut buf, p).unwrap();
        events.push(e);
        if buf[1] == msg::FAILURE1 {
            return (events, None);
        }
        let s = Success1::parse(&buf[..n]).unwrap();
        let Some(kc) = &self.ctrl_key else {
            assert_eq!(s.response, None);
            return (events, None);
        };
        let ca2 = crypto::challenge_for(
            hash,
            ks.as_deref().map(|v| &v[..]),
            &c2[..hash.digest_len()],
        );
        let want = crypto::ctrl_response(
            hash,
            &kc.transformed(SUBNQN),
            &ca2[..],
            s2,
            self.t_id,
            SUBNQN,
            HOSTNQN,
        );
        let ok = s.response == Some(&want[..hash.digest_len()]);
        let mut sb = [0u8; 16];
        wire::write_success2(self.t_id, &mut sb).unwrap();
        events.push(x.send(&sb, p));
        (events, Some(ok))
    }
}

fn keys(hash: HashFn, dh: DhGroup, bidi: bool) -> HostKeys {
    HostKeys {
        host: Secret::generate(Some(HashFn::Sha256), 32).unwrap(),
        ctrl: bidi.then(|| Secret::generate(Some(HashFn::Sha512), 64).unwrap()),
        hash,
        dhgroup: dh,
    }
}

#[test]
fn unidirectional_null_group_authenticates() {
    let k = keys(HashFn::Sha256, DhGroup::Null, false);
    let host = Host {
        key: k.host.clone(),
        ctrl_key: None,
        t_id: 1,
    };
    let mut x = Exchange::new();
    let (ev, _) = host.run(&mut x, &peer(&k), &[0, 1, 2, 3, 4, 5]);
    assert_eq!(
        ev,
        vec![Event::None, Event::None, Event::Authenticated, Event::None]
    );
    assert_eq!(x.selected(), (HashFn::Sha256, DhGroup::Null));
}

#[test]
fn bidirectional_ffdhe_with_each_hash_authenticates_both_ways() {
    for (hash, dh) in [
        (HashFn::Sha256, DhGroup::Ffdhe2048),
        (HashFn::Sha384, DhGroup::Ffdhe3072),
        (HashFn::Sha512, DhGroup::Ffdhe4096),
    ] {
        let k = keys(hash, dh, true);
        let host = Host {
            key: k.host.clone(),
            ctrl_key: k.ctrl.clone(),
            t_id: 7,
        };
        let mut x = Exchange::new();
        let (ev, ctrl_ok) = host.run(&mut x, &peer(&k), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(x.selected(), (hash, dh));
        assert_eq!(ctrl_ok, Some(true), "{hash:?} {dh:?}");
        assert_eq!(ev.last(), Some(&Event::Authenticated));
        assert!(!ev[..ev.len() - 1].contains(&Event::Authenticated));
    }
}

#[test]
fn wrong_key_gets_failure1_authentication_failed() {
    let k = keys(HashFn::Sha256, DhGroup::Ffdhe2048, false);
    let host = Host {
        key: Secret::generate(Some(HashFn::Sha256), 32).unwrap(),
        ctrl_key: None,
        t_id: 3,
    };
    let mut x = Exchange::new();
    let (ev, _) = host.run(&mut x, &peer(&k), &[0, 1]);
    assert_eq!(
        ev.last(),
        Some(&Event::Failed {
            explanation: failure::FAILED,
            by_host: false
        })
    );
    assert!(!ev.contains(&Event::Authenticated));
}

#[test]
fn a_group_the_host_does_not_offer_falls_back_or_fails() {
    let k = keys(HashFn::Sha256, DhGroup::Ffdhe8192, false);
    let host = Host {
        key: k.host.clone(),
        ctrl_key: None,
        t_id: 3,
    };
    // The host offers only the NULL group: the controller takes it.
    let mut x = Exchange::new();
    let (ev, _) = host.run(&mut x, &peer(&k), &[0]);
    assert_eq!(ev[2], Event::Authenticated);
    assert_eq!(x.selected().1, DhGroup::Null);
    // The host offers no group this side knows: DH group not usable.
    let mut x = Exchange::new();
    let (ev, _) = host.run(&mut x, &peer(&k), &[9]);
    assert_eq!(
        ev.last(),
        Some(&Event::Failed {
            explanation: failure::DHGROUP_UNUSABLE,
            by_host: false
        })
    );
}

#[test]
fn out_of_order_and_foreign_transaction_messages_fail() {
    let k = keys(HashFn::Sha256, DhGroup::Null, false);
    let p = peer(&k);
    let mut buf = [0u8; 64];
    // A Success2 with no transaction.
    let mut x = Exchange::new();
    let mut sb = [0u8; 16];
    wire::write_success2(1, &mut sb).unwrap();
    assert_eq!(x.send(&sb, &p), Event::None);
    let (n, e) = x.receive(&mut buf, &p).unwrap();
    assert_eq!(
        e,
        Event::Failed {
            explanation: failure::INCORRECT_MESSAGE,
            by_host: false
        }
    );
    assert_eq!(Failure::parse(&buf[..n]).unwrap().auth_id, msg::FAILURE1);
    // A Reply under another transaction ID.
    let mut x = Exchange::new();
    x.send(&negotiate(5, &[1], &[0]), &p);
    x.receive(&mut [0u8; 128], &p).unwrap();
    let r = Reply {
        t_id: 6,
        hl: 32,
        cvalid: false,
        seqnum: 0,
        response: &[0; 32],
        c2: &[0; 32],
        dhv: &[],
    };
    let mut rb = [0u8; 128];
    let rn = r.write(&mut rb).unwrap();
    assert_eq!(x.send(&rb[..rn], &p), Event::None);
    let (_, e) = x.receive(&mut buf, &p).unwrap();
    assert_eq!(
        e,
        Event::Failed {
            explanation: failure::INCORRECT_PAYLOAD,
            by_host: false
        }
    );
    // Truncated Negotiate.
    let mut x = Exchange::new();
    x.send(&negotiate(5, &[1], &[0])[..20], &p);
    let (_, e) = x.receive(&mut buf, &p).unwrap();
    assert_eq!(
        e,
        Event::Failed {
            explanation: failure::INCORRECT_PAYLOAD,
            by_host: false
        }
    );
}

#[test]
fn a_host_without_keys_fails_and_failure2_is_reported() {
    let mut x = Exchange::new();
    let p = Peer {
        hostnqn: HOSTNQN,
        subnqn: SUBNQN,
        keys: None,
    };
    let host = Host {
        key: Secret::generate(None, 32).unwrap(),
        ctrl_key: None,
        t_id: 2,
    };
    let (ev, _) = host.run(&mut x, &p, &[0]);
    assert_eq!(
        ev.last(),
        Some(&Event::Failed {
            explanation: failure::FAILED,
            by_host: false
        })
    );
    let f = Failure {
        auth_id: msg::FAILURE2,
        t_id: 2,
        reason: 1,
        explanation: failure::FAILED,
    };
    let mut fb = [0u8; 8];
    f.write(&mut fb).unwrap();
    assert_eq!(
        x.send(&fb, &p),
        Event::Failed {
            explanation: failure::FAILED,
            by_host: true
        }
    );
}

#[test]
fn host_keys_text_checks_each_field() {
    let t = HostKeysText {
        key: DOC_SECRET.into(),
        ..Default::default()
    };
    let k = t.parse().unwrap();
    assert_eq!(
        (k.hash, k.dhgroup, k.ctrl.is_none()),
        (HashFn::Sha256, DhGroup::Null, true)
    );
    assert_eq!(k.to_text().parse().unwrap(), k);
    let bad = HostKeysText {
        hash: "md5".into(),
        ..t.clone()
    };
    assert_eq!(bad.parse().unwrap_err(), KeysError::Hash("md5".into()));
    let bad = HostKeysText {
        dhgroup: "ffdhe1024".into(),
        ..t.clone()
    };
    assert!(bad.parse().unwrap_err().to_string().contains("ffdhe2048"));
    let bad = HostKeysText {
        ctrl_key: "DHHC-1:00:xx:".into(),
        ..t.clone()
    };
    assert!(matches!(bad.parse(), Err(KeysError::CtrlKey(_))));
    assert!(!format!("{t:?}").contains("ia6z"));
}
