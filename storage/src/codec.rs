//! Record encoding: one version byte, then bincode (standard configuration).

use serde::{de::DeserializeOwned, Serialize};

use crate::StoreError;

/// The encoding of every record, its first byte. Bump it (and [`FORMAT_VERSION`]) when a
/// record's shape changes.
pub const RECORD_VERSION: u8 = 5;

/// The store's format: its records' encoding and where they are kept (under `m/format`).
/// 5: the records of [`RECORD_VERSION`] 5, a chunk's vector inside its record. 6: the same
/// records, each chunk's vector under a key of its own. 7: a collection's spec says its
/// quantization. A store of an older format is moved to this one when opened.
pub const FORMAT_VERSION: u8 = 7;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Encoding plain structs into a Vec cannot fail.
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|e| unreachable!("bincode encode into Vec failed: {e}"));
    out.extend_from_slice(&body);
    out
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if version != RECORD_VERSION {
        return Err(StoreError::FormatVersion {
            found: version,
            expected: RECORD_VERSION,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let v = (String::from("abc"), vec![1.5f32, -2.0], 7u64);
        let bytes = encode(&v);
        assert_eq!(bytes[0], RECORD_VERSION);
        let back: (String, Vec<f32>, u64) = decode(b"k", &bytes).unwrap();
        assert_eq!(back, v);

        let mut wrong = bytes.clone();
        wrong[0] = RECORD_VERSION + 1;
        assert!(matches!(
            decode::<(String, Vec<f32>, u64)>(b"k", &wrong),
            Err(StoreError::FormatVersion { .. })
        ));
        assert!(matches!(
            decode::<(String, Vec<f32>, u64)>(b"k", &bytes[..3]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
