//! Microchip compressed certificates (cryptoauthlib's `atcacert`, format version 0): a
//! certificate reduced to the 72 bytes that vary between devices of one template, and the
//! certificates this CA issues so that they can be compressed.
//!
//! ```text
//! bytes 0..64   signature R || S
//! bytes 64..67  encoded dates: issue year - 2000 (5 bits), month (4), day (5), hour (5),
//!               expire years (5); minutes and seconds are always zero
//! bytes 67..69  signer id
//! byte  69      template id (high 4 bits) | chain id (low 4 bits)
//! byte  70      serial-number source (high 4 bits) | format version (low 4 bits, 0)
//! byte  71      reserved (0)
//! ```
//!
//! A compressible certificate has nothing else that varies: its serial number comes from a
//! source the chip can recompute (here `SNSRC_PUB_KEY_HASH`: SHA-256 of the public key and
//! the encoded dates, 16 bytes, top bits `01`), its issue date is on the hour, its lifetime is
//! whole years, its key identifiers are SHA-1 of the public key (what atcacert computes), its
//! dates are UTCTime (years before 2050), and its subject has a fixed length. The template
//! and the locations of the variable parts are in [`crate::certdef`].

use rcgen::{CertificateParams, KeyIdMethod, SerialNumber};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::error::{Error, Result};

/// Size of a compressed certificate (and of an ATECC508A slot 9..15).
pub const COMP_CERT_LEN: usize = 72;
/// `SNSRC_PUB_KEY_HASH`: serial = SHA-256(public key || encoded dates), top bits `01`.
pub const SNSRC_PUB_KEY_HASH: u8 = 0xA;
/// Length of the serial numbers this module derives.
pub const SERIAL_LEN: usize = 16;
/// Largest lifetime the 5-bit field holds.
pub const MAX_EXPIRE_YEARS: u8 = 31;

/// An issue date on the hour, as the compressed format carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourDate {
    /// 2000..=2031 (format version 0).
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
}

impl HourDate {
    /// The hour `t` falls in (minutes and seconds dropped).
    pub fn floor(t: OffsetDateTime) -> Result<HourDate> {
        let d = HourDate {
            year: u16::try_from(t.year()).unwrap_or(0),
            month: u8::from(t.month()),
            day: t.day(),
            hour: t.hour(),
        };
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<()> {
        if !(2000..=2031).contains(&self.year) {
            return Err(Error::BadRequest(format!(
                "compressed certificates (format 0) carry issue years 2000..2031, not {}",
                self.year
            )));
        }
        self.at(0).map(|_| ())
    }

    /// The date as a time, `years_later` years on (same month, day and hour).
    pub fn at(&self, years_later: u8) -> Result<OffsetDateTime> {
        let month = Month::try_from(self.month)
            .map_err(|_| Error::BadRequest(format!("month {} out of range", self.month)))?;
        let year = i32::from(self.year) + i32::from(years_later);
        let date = Date::from_calendar_date(year, month, self.day).map_err(|_| {
            Error::BadRequest(format!(
                "{year}-{:02}-{:02} does not exist: a whole-year lifetime cannot start on that day",
                self.month, self.day
            ))
        })?;
        let time = Time::from_hms(self.hour, 0, 0)
            .map_err(|_| Error::BadRequest(format!("hour {} out of range", self.hour)))?;
        Ok(PrimitiveDateTime::new(date, time).assume_utc())
    }

    /// The 3 encoded date bytes (format 0) with `expire_years`.
    pub fn encode(&self, expire_years: u8) -> [u8; 3] {
        let y = (self.year - 2000) as u8 & 0x1f;
        [
            (y << 3) | ((self.month >> 1) & 0x07),
            ((self.month & 1) << 7) | ((self.day & 0x1f) << 2) | ((self.hour >> 3) & 0x03),
            ((self.hour & 0x07) << 5) | (expire_years & 0x1f),
        ]
    }

    /// Decodes 3 date bytes into the issue date and the lifetime in years.
    pub fn decode(b: [u8; 3]) -> Result<(HourDate, u8)> {
        let d = HourDate {
            year: 2000 + u16::from(b[0] >> 3),
            month: ((b[0] & 0x07) << 1) | (b[1] >> 7),
            day: (b[1] >> 2) & 0x1f,
            hour: ((b[1] & 0x03) << 3) | (b[2] >> 5),
        };
        d.check()?;
        Ok((d, b[2] & 0x1f))
    }

    /// UTCTime text `YYMMDDhh0000Z` (`DATEFMT_RFC5280_UTC`), `years_later` years on.
    pub fn utc_time(&self, years_later: u8) -> [u8; 13] {
        let y = (self.year + u16::from(years_later)) % 100;
        let s = format!(
            "{y:02}{:02}{:02}{:02}0000Z",
            self.month, self.day, self.hour
        );
        let mut out = [b'0'; 13];
        out.copy_from_slice(&s.as_bytes()[..13]);
        out
    }
}

/// The parts of a compressed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompCert {
    /// ECDSA signature R || S (32 bytes each).
    pub signature: [u8; 64],
    /// Issue date.
    pub issue: HourDate,
    /// Lifetime in whole years (1..=31).
    pub expire_years: u8,
    /// Signer id (the issuing CA's).
    pub signer_id: [u8; 2],
    /// Template id (4 bits).
    pub template_id: u8,
    /// Chain id (4 bits).
    pub chain_id: u8,
    /// Serial-number source (4 bits).
    pub sn_source: u8,
}

impl CompCert {
    /// The 72 bytes.
    pub fn to_bytes(&self) -> [u8; COMP_CERT_LEN] {
        let mut b = [0u8; COMP_CERT_LEN];
        b[..64].copy_from_slice(&self.signature);
        b[64..67].copy_from_slice(&self.issue.encode(self.expire_years));
        b[67..69].copy_from_slice(&self.signer_id);
        b[69] = (self.template_id << 4) | (self.chain_id & 0x0f);
        b[70] = self.sn_source << 4; // format version 0
        b
    }

    /// Parses 72 bytes read from a chip; refuses other format versions.
    pub fn parse(b: &[u8]) -> Result<CompCert> {
        if b.len() != COMP_CERT_LEN {
            return Err(Error::BadRequest(format!(
                "a compressed certificate is {COMP_CERT_LEN} bytes, got {}",
                b.len()
            )));
        }
        if b[70] & 0x0f != 0 {
            return Err(Error::BadRequest(format!(
                "compressed certificate format version {} is not supported (only 0)",
                b[70] & 0x0f
            )));
        }
        let (issue, expire_years) = HourDate::decode([b[64], b[65], b[66]])?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[..64]);
        Ok(CompCert {
            signature,
            issue,
            expire_years,
            signer_id: [b[67], b[68]],
            template_id: b[69] >> 4,
            chain_id: b[69] & 0x0f,
            sn_source: b[70] >> 4,
        })
    }
}

/// atcacert's key identifier: SHA-1 of the uncompressed point `04 || X || Y`.
pub fn key_id(xy: &[u8; 64]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update([0x04]);
    h.update(xy);
    h.finalize().into()
}

/// `SNSRC_PUB_KEY_HASH` serial number: SHA-256(X || Y || encoded dates), first 16 bytes,
/// top bit cleared and the next one set.
pub fn pub_key_hash_serial(xy: &[u8; 64], dates: [u8; 3]) -> [u8; SERIAL_LEN] {
    let mut h = Sha256::new();
    h.update(xy);
    h.update(dates);
    let d = h.finalize();
    let mut sn = [0u8; SERIAL_LEN];
    sn.copy_from_slice(&d[..SERIAL_LEN]);
    sn[0] = (sn[0] & 0x7f) | 0x40;
    sn
}

/// The ids a certificate of one template carries in its compressed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateIds {
    /// Template id (0..=15).
    pub template_id: u8,
    /// Chain id (0..=15).
    pub chain_id: u8,
    /// The signer id (the issuing CA's, in its name as 4 upper-case hex digits).
    pub signer_id: [u8; 2],
}

/// Turns certificate parameters (from [`crate::profile::params`]) into a compressible
/// certificate of the key `xy`: issue date on the hour, `years` whole years, serial from
/// the key and the dates, key identifier SHA-1. Returns the parameters and the date.
pub fn make_compressible(
    mut p: CertificateParams,
    xy: &[u8; 64],
    issue: HourDate,
    years: u8,
) -> Result<CertificateParams> {
    check_years(years)?;
    let not_after = issue.at(years)?;
    if not_after.year() >= 2050 {
        return Err(Error::BadRequest(format!(
            "a compressible certificate must expire before 2050 (UTCTime), not in {}",
            not_after.year()
        )));
    }
    p.not_before = issue.at(0)?;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(&pub_key_hash_serial(
        xy,
        issue.encode(years),
    )));
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(xy).to_vec());
    Ok(p)
}

/// Checks a lifetime in whole years.
pub fn check_years(years: u8) -> Result<()> {
    if !(1..=MAX_EXPIRE_YEARS).contains(&years) {
        return Err(Error::BadRequest(format!(
            "a compressible lifetime is 1..{MAX_EXPIRE_YEARS} whole years, not {years}"
        )));
    }
    Ok(())
}

/// The signer id in a CA common name: its last 4 characters, upper-case hex.
pub fn signer_id_of(common_name: &str) -> Option<[u8; 2]> {
    let tail = common_name.get(common_name.len().checked_sub(4)?..)?;
    if !tail
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    let v = u16::from_str_radix(tail, 16).ok()?;
    Some(v.to_be_bytes())
}

/// The issue date of a compressible certificate issued at `t`: the hour before `t`
/// (backdated as every certificate is, for clocks a little behind).
pub fn issue_hour(t: OffsetDateTime) -> Result<HourDate> {
    HourDate::floor(t - time::Duration::minutes(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_encode_to_the_hour_and_back() {
        let d = HourDate {
            year: 2026,
            month: 12,
            day: 2,
            hour: 13,
        };
        let b = d.encode(5);
        assert_eq!(HourDate::decode(b).expect("decode"), (d, 5));
        assert_eq!(&d.utc_time(5), b"311202130000Z");
        let late = HourDate { year: 2032, ..d };
        assert!(late.check().is_err());
        let leap = HourDate {
            year: 2028,
            month: 2,
            day: 29,
            hour: 0,
        };
        assert!(leap.at(1).is_err(), "2029-02-29 does not exist");
    }

    #[test]
    fn a_compressed_certificate_round_trips_and_refuses_other_formats() {
        let c = CompCert {
            signature: [7; 64],
            issue: HourDate {
                year: 2026,
                month: 1,
                day: 31,
                hour: 23,
            },
            expire_years: 2,
            signer_id: [0xab, 0xcd],
            template_id: 3,
            chain_id: 1,
            sn_source: SNSRC_PUB_KEY_HASH,
        };
        let b = c.to_bytes();
        assert_eq!(CompCert::parse(&b).expect("parse"), c);
        let mut v1 = b;
        v1[70] |= 1;
        assert!(CompCert::parse(&v1).is_err());
        assert!(CompCert::parse(&b[..71]).is_err());
        assert_eq!(signer_id_of("maison Issuing CA 00A1"), Some([0x00, 0xa1]));
        assert_eq!(signer_id_of("maison Issuing CA"), None);
    }
}
