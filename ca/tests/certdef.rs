//! A compressible chain (root -> compressible issuing CA -> compressible device): both
//! certificates compress to 72 bytes and rebuild byte for byte from their definitions.

use ca::PublicKey;
use ca::certdef::{self, ChipSlots, DeviceForm, DeviceLoc, zone};
use ca::compressed::{self, TemplateIds};
use ca::profile::{self, Profile, Subject};
use rcgen::{Issuer, KeyPair};

const SLOTS: ChipSlots = ChipSlots {
    key: 0,
    device_cert: 10,
    signer_key: 11,
    signer_cert: 12,
    device_id: 13,
};

fn key() -> (KeyPair, PublicKey) {
    let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let p = PublicKey::from_sec1(k.public_key_raw()).expect("point");
    (k, p)
}

fn xy(p: &PublicKey) -> [u8; 64] {
    p.0[1..].try_into().expect("64")
}

struct Chain {
    root: Vec<u8>,
    signer: Vec<u8>,
    signer_key: KeyPair,
}

fn chain() -> Chain {
    let (root_key, _) = key();
    let now = time::OffsetDateTime::now_utc();
    let rp = profile::params(
        Profile::RootCa,
        &Subject::named("maison Root CA", Some("Maison".into())),
        &[0x41; 16],
        now - time::Duration::hours(2),
        3650,
        1,
    )
    .expect("root params");
    let root = rp.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(rp, &root_key);
    let (signer_key, signer_pub) = key();
    let issue = compressed::issue_hour(now).expect("hour");
    let sp = certdef::signer_params(
        "maison Issuing CA 00A1",
        Some("Maison".into()),
        &signer_pub,
        issue,
        5,
    )
    .expect("signer params");
    let signer = sp.signed_by(&signer_pub, &root_issuer).expect("signer");
    Chain {
        root: root.der().to_vec(),
        signer: signer.der().to_vec(),
        signer_key,
    }
}

/// The device certificate of [`form`] for `id` on the chip with serial `sn`, issued by
/// `issuer` at `issue`: its DER, its compressed form (signer id 00a1) and the chip's first
/// config bytes as the chip holds its serial (bytes 0..4 and 8..13).
fn device_on_chip(
    def: &certdef::CertDef,
    issuer: &Issuer<'_, &KeyPair>,
    id: &str,
    sn: &[u8; 9],
    device_pub: &PublicKey,
    issue: compressed::HourDate,
) -> (Vec<u8>, [u8; 72], [u8; 13]) {
    let p = certdef::device_params(&form(), id, &certdef::chip_sn_hex(sn), device_pub, issue)
        .expect("device params");
    let der = p
        .signed_by(device_pub, issuer)
        .expect("device")
        .der()
        .to_vec();
    let comp = certdef::compress(def, &der, [0x00, 0xa1]).expect("compress");
    let mut config = [0u8; 13];
    config[..4].copy_from_slice(&sn[..4]);
    config[8..].copy_from_slice(&sn[4..]);
    (der, comp, config)
}

fn form() -> DeviceForm {
    DeviceForm {
        organization: Some("Maison".into()),
        id_len: 8,
        years: 2,
        ids: TemplateIds {
            template_id: 2,
            chain_id: 0,
            signer_id: [0x00, 0xa1],
        },
        slots: SLOTS,
    }
}

#[test]
fn a_device_and_its_signer_rebuild_byte_for_byte_from_one_definition() {
    let c = chain();
    let ids = form().ids;
    let signer_def = certdef::signer_def(&c.signer, &c.root, ids, SLOTS).expect("signer def");
    let def = certdef::device_def(&form(), &c.signer, signer_def.clone()).expect("device def");
    let issuer = Issuer::from_ca_cert_der(&c.signer.clone().into(), &c.signer_key).expect("issuer");
    let signer_xy = certdef::public_key_of(&c.signer).expect("signer key");
    for (id, sn) in [
        ("salon-01", [1u8, 0x23, 9, 8, 7, 6, 5, 4, 0xee]),
        (
            "garage-2",
            [1, 0x23, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0xee],
        ),
    ] {
        let (_, device_pub) = key();
        let issue = compressed::issue_hour(time::OffsetDateTime::now_utc()).expect("hour");
        let (der, comp, config) = device_on_chip(&def, &issuer, id, &sn, &device_pub, issue);
        let read = |loc: &DeviceLoc| -> Option<Vec<u8>> {
            let (o, n) = (usize::from(loc.offset), usize::from(loc.count));
            match (loc.zone, loc.slot) {
                (zone::DATA, 13) => Some(id.as_bytes()[o..o + n].to_vec()),
                (zone::CONFIG, _) => Some(config[o..o + n].to_vec()),
                _ => None,
            }
        };
        let rebuilt = def
            .rebuild(&comp, &xy(&device_pub), Some(&signer_xy), &read)
            .expect("rebuild");
        assert_eq!(
            rebuilt,
            der,
            "{}",
            certdef::first_difference(&rebuilt, &der)
        );
        // The same definition, whichever device it came from.
        assert_eq!(
            certdef::device_def(&form(), &c.signer, signer_def.clone()).expect("again"),
            def
        );
    }
    let signer_comp =
        certdef::compress(&signer_def, &c.signer, [0x00, 0xa1]).expect("compress signer");
    let rebuilt = signer_def
        .rebuild(&signer_comp, &signer_xy, None, &|_| None)
        .expect("rebuild signer");
    assert_eq!(rebuilt, c.signer);
}

#[test]
fn a_device_id_of_another_length_is_refused() {
    let (_, p) = key();
    let e = certdef::device_params(
        &form(),
        "salon",
        "0123",
        &p,
        compressed::issue_hour(time::OffsetDateTime::now_utc()).expect("hour"),
    )
    .expect_err("short id");
    assert!(e.to_string().contains("exactly 8"), "{e}");
}

#[test]
fn a_chip_that_holds_something_else_is_caught_with_the_first_difference() {
    let c = chain();
    let signer_def =
        certdef::signer_def(&c.signer, &c.root, form().ids, SLOTS).expect("signer def");
    let def = certdef::device_def(&form(), &c.signer, signer_def).expect("device def");
    let issuer = Issuer::from_ca_cert_der(&c.signer.clone().into(), &c.signer_key).expect("issuer");
    let signer_xy = certdef::public_key_of(&c.signer).expect("signer key");
    let (_, device_pub) = key();
    let sn = [1u8, 0x23, 9, 8, 7, 6, 5, 4, 0xee];
    let issue = compressed::issue_hour(time::OffsetDateTime::now_utc()).expect("hour");
    let (der, comp, config) = device_on_chip(&def, &issuer, "salon-01", &sn, &device_pub, issue);
    let chip = |id: &'static [u8]| {
        move |loc: &DeviceLoc| -> Option<Vec<u8>> {
            let (o, n) = (usize::from(loc.offset), usize::from(loc.count));
            match loc.zone {
                zone::DATA => Some(id[o..o + n].to_vec()),
                _ => Some(config[o..o + n].to_vec()),
            }
        }
    };
    let xy = xy(&device_pub);
    def.check_rebuild(&comp, &xy, Some(&signer_xy), &chip(b"salon-01"), &der)
        .expect("the chip as written");
    // Another id in its slot, a flipped signature bit, another template: each is refused.
    let e = def
        .check_rebuild(&comp, &xy, Some(&signer_xy), &chip(b"salon-02"), &der)
        .expect_err("other id");
    assert!(e.contains("first difference at byte"), "{e}");
    let mut flipped = comp;
    flipped[10] ^= 1;
    let e = def
        .check_rebuild(&flipped, &xy, Some(&signer_xy), &chip(b"salon-01"), &der)
        .expect_err("other signature");
    assert!(e.contains("differs"), "{e}");
    let mut other = comp;
    other[69] = 0x50;
    let e = def
        .check_rebuild(&other, &xy, Some(&signer_xy), &chip(b"salon-01"), &der)
        .expect_err("other template");
    assert!(e.contains("template 5"), "{e}");
}
