//! Record encoding: one format-version byte, then bincode (standard configuration).

use serde::{de::DeserializeOwned, Serialize};

use crate::StoreError;

/// The on-disk format of every record. Bump it when a record's shape changes.
pub const FORMAT_VERSION: u8 = 5;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding plain structs into a Vec cannot fail.
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|e| unreachable!("bincode encode into Vec failed: {e}"));
    out.extend_from_slice(&body);
    out
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    decode_leading(key, bytes, false)
}

/// The leading fields of a record as `T` (a struct of the record's first fields, in order): the
/// bytes after them are left unread.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_leading(key, bytes, true)
}

fn decode_leading<T: DeserializeOwned>(
    key: &[u8],
    bytes: &[u8],
    rest_allowed: bool,
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if version != FORMAT_VERSION {
        return Err(StoreError::FormatVersion {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() && !rest_allowed {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_view_reads_a_chunk_record_without_its_vector() {
        use crate::records::{ChunkRecord, ChunkView};
        let record = ChunkRecord {
            doc_id: "handbook".into(),
            chunk_index: 3,
            text: "Parking is on level two.".into(),
            start: 120,
            end: 144,
            pages: Some((2, 3)),
            section: Some("Visitors".into()),
            vector: vec![0.25; 384],
        };
        let bytes = encode(&record);
        let view: ChunkView = decode_prefix(b"k", &bytes).unwrap();
        assert_eq!(
            view,
            ChunkView {
                doc_id: record.doc_id.clone(),
                chunk_index: record.chunk_index,
                text: record.text.clone(),
                start: record.start,
                end: record.end,
                pages: record.pages,
                section: record.section.clone(),
            }
        );
        // a whole record is still read whole, and nothing is left over
        assert!(matches!(
            decode::<ChunkView>(b"k", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(decode::<ChunkRecord>(b"k", &bytes).unwrap(), record);
    }

    #[test]
    fn round_trip_and_version_check() {
        let v = (String::from("abc"), vec![1.5f32, -2.0], 7u64);
        let bytes = encode(&v);
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, Vec<f32>, u64) = decode(b"k", &bytes).unwrap();
        assert_eq!(back, v);

        let mut wrong = bytes.clone();
        wrong[0] = FORMAT_VERSION + 1;
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
