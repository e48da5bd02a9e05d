//! The language-neutral vector value: a 12-byte header then little-endian f32s.
//!
//! | bytes | field | value |
//! | --- | --- | --- |
//! | 0..4 | magic | ASCII `ESV1` |
//! | 4..6 | format version | u16 LE, 1 |
//! | 6..8 | element type | u16 LE, 1 = f32 little-endian |
//! | 8..12 | dimension d | u32 LE |
//! | 12..12+4d | components | d x f32 LE |

/// Header magic.
pub const MAGIC: [u8; 4] = *b"ESV1";
/// Current format version.
pub const VERSION: u16 = 1;
/// Element type code of f32 little-endian.
pub const DTYPE_F32_LE: u16 = 1;
/// Header length in bytes.
pub const HEADER_BYTES: usize = 12;

/// A value that is not a vector of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the header.
    #[error("vector value is {actual} bytes, shorter than the {HEADER_BYTES}-byte header")]
    Truncated { actual: usize },
    /// Wrong magic.
    #[error("vector value does not start with ESV1")]
    BadMagic,
    /// Unknown version or element type.
    #[error("unsupported vector format version {version} element type {dtype}")]
    Unsupported { version: u16, dtype: u16 },
    /// Body length disagrees with the header.
    #[error("vector header says dimension {dim} ({expected} bytes), body has {actual} bytes")]
    LengthMismatch { dim: usize, expected: usize, actual: usize },
    /// Another dimension than the model's.
    #[error("vector has dimension {actual}, expected {expected}")]
    DimensionMismatch { expected: usize, actual: usize },
}

/// Encodes a vector.
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + 4 * vector.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&DTYPE_F32_LE.to_le_bytes());
    bytes.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for value in vector {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// Decodes a vector, checking the dimension when `expected_dim` is given.
///
/// # Errors
/// [`CodecError`] for anything but a well-formed value of the expected dimension.
pub fn decode_vector(bytes: &[u8], expected_dim: Option<usize>) -> Result<Vec<f32>, CodecError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(CodecError::Truncated { actual: bytes.len() });
    };
    if header[0..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    let dtype = u16::from_le_bytes([header[6], header[7]]);
    if version != VERSION || dtype != DTYPE_F32_LE {
        return Err(CodecError::Unsupported { version, dtype });
    }
    let dim = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if body.len() != dim * 4 {
        return Err(CodecError::LengthMismatch { dim, expected: dim * 4, actual: body.len() });
    }
    if let Some(expected) = expected_dim {
        if expected != dim {
            return Err(CodecError::DimensionMismatch { expected, actual: dim });
        }
    }
    Ok(body
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bits() {
        let vector = [1.5f32, -0.0, f32::MIN_POSITIVE, 3.4e38];
        let bytes = encode_vector(&vector);
        assert_eq!(bytes.len(), 12 + 16);
        assert_eq!(&bytes[..4], b"ESV1");
        assert_eq!(&bytes[8..12], &4u32.to_le_bytes());
        let decoded = decode_vector(&bytes, Some(4)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&decoded), bits(&vector));
    }

    #[test]
    fn known_bytes_for_a_two_dimensional_vector() {
        // What a Python reader sees: struct.unpack('<4sHHI', b[:12]) then '<2f'.
        let bytes = encode_vector(&[1.0, -2.0]);
        let expected: [u8; 20] =
            [b'E', b'S', b'V', b'1', 1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn rejects_malformed_values() {
        assert_eq!(decode_vector(b"ESV", None), Err(CodecError::Truncated { actual: 3 }));
        let mut bad_magic = encode_vector(&[1.0]);
        bad_magic[0] = b'X';
        assert_eq!(decode_vector(&bad_magic, None), Err(CodecError::BadMagic));
        let mut truncated = encode_vector(&[1.0, 2.0]);
        truncated.pop();
        assert!(matches!(decode_vector(&truncated, None), Err(CodecError::LengthMismatch { .. })));
        let two = encode_vector(&[1.0, 2.0]);
        assert_eq!(
            decode_vector(&two, Some(3)),
            Err(CodecError::DimensionMismatch { expected: 3, actual: 2 })
        );
        let mut version = encode_vector(&[1.0]);
        version[4] = 9;
        assert!(matches!(decode_vector(&version, None), Err(CodecError::Unsupported { .. })));
    }
}
