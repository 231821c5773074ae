//! A device's hardware ids (IMEIs, serial number): validation, normalisation, and the blind
//! indexes that find a device again — after a factory reset, on any account — without the
//! server keeping the ids in clear.

use mica_core::crypto::Keys;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::DevicesError;

/// The ids a device reports about its hardware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// IMEIs (15 digits, with a valid check digit); none for a device without a modem.
    #[serde(default)]
    pub imeis: Vec<String>,
    /// The manufacturer's serial number.
    #[serde(default)]
    pub serial: Option<String>,
}

/// The Luhn check digit that ends an IMEI.
pub fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

impl Hardware {
    /// Checks and normalises the ids: IMEIs without separators, serials upper-case; at
    /// least one id; IMEIs sorted and without repeats.
    pub fn normalised(&self) -> Result<Hardware, DevicesError> {
        if self.imeis.len() > 4 {
            return Err(DevicesError::invalid(
                "imeis",
                "a device has at most 4 IMEIs",
            ));
        }
        let mut imeis = Vec::new();
        for imei in &self.imeis {
            let digits: String = imei.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
            if digits.len() != 15 || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(DevicesError::invalid(
                    "imeis",
                    format!("{imei:?} is not an IMEI: an IMEI is 15 digits"),
                ));
            }
            if !luhn_ok(&digits) {
                return Err(DevicesError::invalid(
                    "imeis",
                    format!("{imei:?} is not an IMEI: its check digit is wrong"),
                ));
            }
            imeis.push(digits);
        }
        imeis.sort();
        imeis.dedup();
        let serial = match &self.serial {
            None => None,
            Some(s) => {
                let s = s.trim().to_ascii_uppercase();
                if s.is_empty()
                    || s.len() > 64
                    || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(DevicesError::invalid(
                        "serial",
                        "a serial number is 1 to 64 letters, digits or dashes",
                    ));
                }
                Some(s)
            }
        };
        if imeis.is_empty() && serial.is_none() {
            return Err(DevicesError::invalid(
                "hardware",
                "give the device's serial number or at least one IMEI",
            ));
        }
        Ok(Hardware { imeis, serial })
    }

    /// Each id as its own blind index: the activation lock's keys, so a device that reports
    /// only some of its ids (a removed SIM tray, a swapped board) is still recognised.
    pub fn id_indexes(&self, keys: &Keys) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .imeis
            .iter()
            .map(|i| keys.blind_index("hardware_id", &format!("imei:{i}")))
            .collect();
        if let Some(s) = &self.serial {
            out.push(keys.blind_index("hardware_id", &format!("serial:{s}")));
        }
        out
    }

    /// The whole set as one blind index (finds an earlier link of the same device).
    pub fn index(&self, keys: &Keys) -> Vec<u8> {
        let serial = self.serial.as_deref().unwrap_or("");
        keys.blind_index("hardware", &format!("{serial}|{}", self.imeis.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imeis_need_their_check_digit() {
        assert!(luhn_ok("490154203237518"));
        assert!(!luhn_ok("490154203237519"));
        let ok = Hardware {
            imeis: vec!["49-015420-323751-8".into()],
            serial: Some(" c02xl0 ".into()),
        }
        .normalised();
        assert!(
            matches!(ok, Ok(ref h) if h.imeis == ["490154203237518"] && h.serial.as_deref() == Some("C02XL0"))
        );
        let bad = Hardware {
            imeis: vec!["490154203237519".into()],
            serial: None,
        }
        .normalised();
        assert!(matches!(
            bad,
            Err(DevicesError::Invalid { field: "imeis", .. })
        ));
        assert!(Hardware::default().normalised().is_err());
    }
}
